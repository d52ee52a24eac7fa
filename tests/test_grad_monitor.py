"""GradientMonitorCallback and `sb3-av check-logs`: tags, actor cadence, alerts, and the log checker."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch as th
from torch.utils.tensorboard import SummaryWriter

from sb3_av.callbacks import GradientMonitorCallback
from sb3_av.cli import main as cli_main
from sb3_av.log_check import load_scalars, find_event_dirs
from sb3_av.td3 import ClippedTD3
from sb3_av.torch_layers import MultiInputExtractor
from tests.image_vector_env import ImageVectorEnv
from tests.test_td3 import _tiny

GROUPS = ("actor_cnn", "actor_mlp", "critic_cnn", "critic_mlp")


def _train_logged(tmp_path: Path, steps: int = 120, callback: GradientMonitorCallback | None = None, **kwargs) -> Path:
    model = ClippedTD3(
        "MultiInputPolicy",
        ImageVectorEnv(),
        max_grad_norms=kwargs.pop("max_grad_norms", {"actor_cnn": 1.0, "critic_cnn": 10.0}),
        tensorboard_log=str(tmp_path),
        **_tiny(**kwargs),
    )
    model.learn(steps, callback=callback or GradientMonitorCallback(dump_freq=20), tb_log_name="run")
    return tmp_path


@pytest.fixture(scope="module")
def healthy_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train_logged(tmp_path_factory.mktemp("healthy"), train_freq=1)


def test_tags_are_written_with_window_values(healthy_run: Path) -> None:
    (event_dir,) = find_event_dirs(healthy_run)
    scalars = load_scalars(event_dir)
    for group in GROUPS:
        for when in ("BEFORE", "AFTER"):
            assert f"debug/{group}_grad_norm_{when}_clip" in scalars, group
        assert f"debug/{group}_grad_clip_ratio" in scalars
    for network in ("actor", "critic"):
        assert f"debug/{network}_grad_norm_BEFORE_clip" in scalars
        assert f"debug/{network}_grad_clip_ratio" in scalars
    assert scalars["debug/actor_cnn_max_grad_norm"][0][1] == 1.0
    assert "alerts/gradient_explosion_critical" not in scalars
    for group, limit in (("actor_cnn", 1.0), ("critic_cnn", 10.0)):
        assert max(value for _, value in scalars[f"debug/{group}_grad_norm_AFTER_clip"]) <= limit * (1 + 1e-5)
    # whole-network norm >= each of its groups (global L2), within the same window
    critic_total = scalars["debug/critic_grad_norm_BEFORE_clip"]
    critic_mlp = scalars["debug/critic_mlp_grad_norm_BEFORE_clip"]
    assert len(critic_total) == len(critic_mlp)
    for (step, total), (mlp_step, value) in zip(critic_total, critic_mlp, strict=True):
        assert step == mlp_step and total >= value * (1 - 1e-6)
    # 80 updates with dumps every 20 env steps: several windows
    assert len(scalars["debug/critic_mlp_grad_norm_BEFORE_clip"]) >= 4


def test_actor_groups_never_logged_as_zero_by_policy_delay(tmp_path: Path) -> None:
    # dump every step and train every step: half the windows hold only a critic step (policy_delay=2)
    run = _train_logged(tmp_path, steps=80, callback=GradientMonitorCallback(dump_freq=1))
    scalars = load_scalars(find_event_dirs(run)[0])
    actor = scalars["debug/actor_mlp_grad_norm_BEFORE_clip"]
    critic = scalars["debug/critic_mlp_grad_norm_BEFORE_clip"]
    assert all(value > 0 for _, value in actor)
    assert len(critic) == 40 and len(actor) == 20


def test_check_logs_passes_healthy_run(healthy_run: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["check-logs", str(healthy_run)]) == 0
    out = capsys.readouterr().out
    assert "actor_mlp norms positive: ok" in out
    assert "1 run(s) passed, 0 failed" in out


def _doctored(tmp_path: Path, after: float, actor_mlp: float, critical: bool) -> Path:
    writer = SummaryWriter(str(tmp_path / "doctored"))
    for step in (10, 20):
        writer.add_scalar("debug/actor_cnn_max_grad_norm", 1.0, step)
        writer.add_scalar("debug/actor_cnn_grad_norm_BEFORE_clip", 5.0, step)
        writer.add_scalar("debug/actor_cnn_grad_norm_AFTER_clip", after, step)
        writer.add_scalar("debug/actor_mlp_grad_norm_BEFORE_clip", actor_mlp, step)
        writer.add_scalar("debug/actor_mlp_grad_norm_AFTER_clip", actor_mlp, step)
    if critical:
        writer.add_scalar("alerts/gradient_explosion_critical", math.inf, 20)
    writer.close()
    return tmp_path


@pytest.mark.parametrize(
    "after, actor_mlp, critical, expected",
    [
        (1.0, 0.3, False, "ok"),
        (1.5, 0.3, False, "actor_cnn: AFTER-clip norm 1.5 exceeds max_norm 1"),
        (1.0, 0.0, False, "actor_mlp: norm <= 0"),
        (1.0, 0.3, True, "critical gradient alert"),
    ],
)
def test_check_logs_fails_doctored_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture, after: float, actor_mlp: float, critical: bool, expected: str
) -> None:
    status = cli_main(["check-logs", str(_doctored(tmp_path, after, actor_mlp, critical))])
    out = capsys.readouterr().out
    assert expected in out
    assert status == (0 if expected == "ok" else 1)


def test_check_logs_unreadable_run_dir(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["check-logs", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert cli_main(["check-logs", str(tmp_path)]) == 2
    assert "no TensorBoard event files" in capsys.readouterr().err
    writer = SummaryWriter(str(tmp_path / "other"))
    writer.add_scalar("rollout/ep_rew_mean", 1.0, 1)
    writer.close()
    assert cli_main(["check-logs", str(tmp_path)]) == 2
    assert "no gradient diagnostics" in capsys.readouterr().err


def test_explosion_alerts_on_before_norms(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # tiny limits: every clipped step is far above warning_ratio * max_norm, and critical_abs is tiny for the rest
    callback = GradientMonitorCallback(
        dump_freq=1000, warning_ratio=2.0, critical_ratio=1e12, warning_abs=1e-9, critical_abs=1e-9
    )
    with caplog.at_level(logging.WARNING, logger="sb3_av.callbacks.grad_monitor"):
        run = _train_logged(tmp_path, steps=50, callback=callback, max_grad_norms={"actor_cnn": 1e-7})
    scalars = load_scalars(find_event_dirs(run)[0])
    assert callback.alert_counts["warning"] > 0 and callback.alert_counts["critical"] > 0
    assert len(scalars["alerts/gradient_explosion_warning"]) == callback.alert_counts["warning"]
    assert all(value > 2e-7 for _, value in scalars["alerts/gradient_explosion_warning"])
    assert any("actor_cnn" in record.message and "warning" in record.message for record in caplog.records)
    assert any("critic_mlp" in record.message and "critical" in record.message for record in caplog.records)


def test_nan_gradient_raises_critical_alert(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = ClippedTD3("MultiInputPolicy", ImageVectorEnv(), tensorboard_log=str(tmp_path), **_tiny())
    poisoned = next(model.critic.q_networks[0].parameters())
    calls = {"n": 0}

    def poison(grad: th.Tensor) -> th.Tensor:
        calls["n"] += 1
        return th.full_like(grad, float("nan")) if calls["n"] == 2 else grad  # update 2, critic phase

    poisoned.register_hook(poison)
    callback = GradientMonitorCallback(dump_freq=1000)
    with caplog.at_level(logging.WARNING, logger="sb3_av.callbacks.grad_monitor"):
        model.learn(50, callback=callback, tb_log_name="nan")
    scalars = load_scalars(find_event_dirs(tmp_path)[0])
    assert [value for _, value in scalars["alerts/gradient_explosion_critical"]] == [math.inf]
    assert callback.alert_counts["critical"] == 1
    assert model.grad_norms.nonfinite_total["critic"] == 1
    assert any("critic_mlp=inf" in record.message for record in caplog.records)
    assert cli_main(["check-logs", str(tmp_path)]) == 1


def test_monitor_needs_a_clipped_algorithm() -> None:
    from stable_baselines3 import TD3

    with pytest.raises(TypeError, match="needs an sb3-av clipped algorithm"):
        TD3(
            "MultiInputPolicy", ImageVectorEnv(), **_tiny(policy_kwargs={"features_extractor_class": MultiInputExtractor})
        ).learn(5, callback=GradientMonitorCallback())
    with pytest.raises(ValueError, match="dump_freq"):
        GradientMonitorCallback(dump_freq=0)


def test_cli_unexpected_error_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sb3_av.log_check

    def broken(args: object) -> int:
        raise OSError("disk on fire")

    monkeypatch.setattr(sb3_av.log_check, "run_check_logs_command", broken)
    monkeypatch.delenv("SB3AV_DEBUG", raising=False)
    assert cli_main(["check-logs", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sb3-av check-logs: error: OSError: disk on fire" in err
