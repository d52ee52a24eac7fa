"""Smoke test of benchmarks/learning.py: the whole code path (train, curves, evaluation, JSON, PNG) on a tiny budget."""

from __future__ import annotations

import json
import math

import numpy as np
from pathlib import Path

import pytest
import torch as th

from tests.benchmark_scripts import load_benchmark

_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "learning.py"


@pytest.fixture(scope="module")
def learning():
    return load_benchmark("learning")


@pytest.mark.slow
def test_tiny_run_writes_three_rows_curves_and_png(learning, tmp_path, capsys):
    out = tmp_path / "learning.json"
    argv = ["--tiny", "--budget", "300", "--seeds", "0", "--eval-episodes", "2", "--curve-every", "150"]
    argv += ["--curve-episodes", "1", "--train-freq", "4", "--out", str(out)]
    learning.main(argv)
    result = json.loads(out.read_text())
    rows = {row["config"]: row for row in result["rows"]}
    assert list(rows) == ["sb3av", "sb3_default", "pid"]
    assert result["settings"]["budget"] == 300
    assert result["machine"]["capability"] == th.backends.cpu.get_cpu_capability()  # which CPU kernels ran
    assert isinstance(result["machine"]["native_bfloat16"], bool)
    for name, row in rows.items():
        assert 0.0 <= row["success_rate_mean"] <= 1.0
        assert 0.0 <= row["route_completion_mean"] <= 1.0
        assert math.isfinite(row["mean_return_mean"])
        assert row["success_rate_std"] == 0.0  # one seed
        (run,) = row["runs"]
        assert run["seed"] == 0
        if name == "pid":
            continue
        # learning_starts = 100 of 300 steps, train_freq 4: 50 train() calls of one gradient step each
        assert run["gradient_steps"] == 50
        assert [p["step"] for p in run["curve"]] == [150, 300]
        assert run["train_episodes"], "training episodes of at most 120 steps must have ended within 300 steps"
        assert all(0 <= e[0] <= 300 and 0.0 <= e[2] <= 1.0 for e in run["train_episodes"])
        assert run["train_time_s"] > 0
    # 120-step episodes at 8 m/s cannot complete a 250 m route; the PID covers a good part of it
    assert rows["pid"]["success_rate_mean"] == 0.0
    assert 0.05 < rows["pid"]["route_completion_mean"] < 0.5
    png = out.with_suffix(".png")
    assert png.stat().st_size > 10_000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = capsys.readouterr().out
    assert "| SB3 TD3, default settings | 0 |" in table


@pytest.mark.slow
def test_action_repeat_counts_simulation_steps_and_keeps_the_compute_budget(learning, tmp_path):
    out = tmp_path / "learning.json"
    argv = ["--tiny", "--budget", "300", "--seeds", "0", "--eval-episodes", "1", "--curve-every", "150"]
    argv += ["--curve-episodes", "1", "--train-freq", "4", "--configs", "sb3av", "--out", str(out)]
    learning.main([*argv, "--set", '{"action_repeat": 2}'])
    (run,) = json.loads(out.read_text())["rows"][0]["runs"]
    # 150 agent steps of 2 simulation steps; learning_starts 50 agent steps, then one gradient step every 2 agent
    # steps (= every 4 simulation steps, as --train-freq 4 says): the 50 gradient steps of the plain run.
    assert run["gradient_steps"] == 50
    assert [p["step"] for p in run["curve"]] == [150, 300]  # simulation steps
    assert run["train_episodes"] and all(e[0] % 2 == 0 and 0 < e[0] <= 300 for e in run["train_episodes"])


@pytest.mark.slow
def test_pid_warmup_drives_the_first_episodes(learning, tmp_path):
    """``pid_warmup`` (simulation steps) = the PID drives that many agent steps / action_repeat: the first training
    episodes (120 simulation steps each, tiny) complete their route share without a crash, where SB3's random warm-up
    actions hardly move the car."""
    argv = ["--tiny", "--budget", "480", "--seeds", "0", "--eval-episodes", "1", "--curve-every", "0", "--configs", "sb3av"]
    routes = {}
    for warmup in (0, 240):
        out = tmp_path / f"learning_{warmup}.json"
        learning.main([*argv, "--out", str(out), "--set", json.dumps({"pid_warmup": warmup})])
        (run,) = json.loads(out.read_text())["rows"][0]["runs"]
        routes[warmup] = [route for step, _, route, _ in run["train_episodes"] if step <= 240]
    assert len(routes[240]) == 2 and len(routes[0]) == 2  # two 120-step episodes in the first 240 steps
    assert min(routes[240]) > 2 * max(routes[0])


@pytest.mark.slow
def test_eval_envs_and_keep_best_report_the_best_snapshot_on_every_env(learning, tmp_path, capsys):
    """Each learner and the PID are evaluated on every --eval-envs id; with --keep-best the reported policy is the
    snapshot of the best curve evaluation (the final one when that is the best)."""
    out = tmp_path / "learning.json"
    envs = ["LiteScenario0-v0", "LiteScenario2-v0"]
    argv = ["--tiny", "--budget", "300", "--seeds", "0", "--eval-episodes", "1", "--curve-every", "100"]
    argv += ["--curve-episodes", "1", "--train-freq", "4", "--configs", "sb3av", "pid", "--out", str(out)]
    saved = tmp_path / "models"
    learning.main([*argv, "--eval-envs", *envs, "--keep-best", "--set", '{"jerk_penalty": 1.0}', "--save-dir", str(saved)])
    result = json.loads(out.read_text())
    rows = {row["config"]: row for row in result["rows"]}
    for row in rows.values():
        (run,) = row["runs"]
        assert list(run["eval"]) == envs
        for metrics in run["eval"].values():
            assert 0.0 <= metrics["success_rate"] <= 1.0 and metrics["mean_abs_jerk_ms3"] >= 0.0
        assert run["success_rate"] == run["eval"]["LiteScenario0-v0"]["success_rate"]  # --env's at the top level
    (run,) = rows["sb3av"]["runs"]
    curve = run["curve"]
    for point in curve:  # how each curve evaluation's episode (--curve-episodes 1) ended
        assert sum(point["terminations"].values()) == 1
        assert point["success_rate"] == point["terminations"].get("route_completed", 0)
    best = max(curve, key=lambda p: (p["success_rate"], p["return"]))
    assert run["reported_step"] == best["step"] and run["reported"] == ("final" if best is curve[-1] else "best")
    assert list(run["eval_final"]) == (envs if run["reported"] == "final" else [envs[0]])
    from sb3_av.evaluation import evaluate
    from sb3_av.td3 import ClippedTD3

    reloaded = evaluate(
        ClippedTD3.load(saved / "sb3av_seed0.zip"),
        learning._make_env(learning._parse(argv), envs[1], action_repeat=learning.RECOMMENDED["action_repeat"]),
        1,
        seed=10_000,
    )
    assert reloaded["success_rate"] == run["eval"][envs[1]]["success_rate"]
    assert reloaded["mean_abs_jerk_ms3"] == pytest.approx(run["eval"][envs[1]]["mean_abs_jerk_ms3"], rel=1e-6)
    table = capsys.readouterr().out
    assert "| sb3-av recommended TD3 | LiteScenario2-v0 |" in table and "| PID + pure pursuit" in table


@pytest.mark.slow
def test_select_episodes_choose_among_the_best_curve_snapshots_on_validation_episodes(learning, tmp_path, capsys):
    """--select-episodes: the --select-top best curve snapshots each drive more episodes (seeds 30000+); the one with
    the best success, then return, over its curve and validation episodes together is the reported model."""
    out = tmp_path / "learning.json"
    argv = ["--tiny", "--budget", "400", "--seeds", "0", "--eval-episodes", "1", "--curve-every", "100"]
    argv += ["--curve-episodes", "1", "--train-freq", "4", "--configs", "sb3av", "--keep-best", "--out", str(out)]
    learning.main([*argv, "--select-episodes", "3", "--select-top", "2"])
    (run,) = json.loads(out.read_text())["rows"][0]["runs"]
    candidates = run["selection"]
    curve = sorted(run["curve"], key=lambda p: (p["success_rate"], p["return"]), reverse=True)
    assert [c["step"] for c in candidates] == [p["step"] for p in curve[:2]]  # the two best curve points
    for candidate in candidates:
        assert sum(candidate["select_terminations"].values()) == 3
        pooled = (candidate["curve_success_rate"] * 1 + candidate["select_success_rate"] * 3) / 4
        assert candidate["pooled_success_rate"] == pytest.approx(pooled)
    chosen = max(candidates, key=lambda c: (c["pooled_success_rate"], c["pooled_return"]))
    assert [c["chosen"] for c in candidates] == [c is chosen for c in candidates]
    assert run["reported_step"] == chosen["step"]
    assert "select: step" in capsys.readouterr().out


@pytest.mark.slow
def test_policy_average_reports_and_saves_the_averaged_weights(learning, tmp_path):
    """The weight average does not change training: with decay 0 (the average is the policy) the run is the plain
    run's; with decay 0.9 the curve, the evaluation and the saved model are those of other (averaged) weights."""
    argv = ["--tiny", "--budget", "300", "--seeds", "0", "--eval-episodes", "1", "--curve-every", "100"]
    argv += ["--curve-episodes", "1", "--train-freq", "4", "--configs", "sb3av"]
    runs, weights = {}, {}
    for decay in (None, 0.0, 0.9):
        out, saved = tmp_path / f"learning_{decay}.json", tmp_path / f"models_{decay}"
        extra = ["--set", json.dumps({"policy_average_decay": decay})] if decay is not None else []
        learning.main([*argv, *extra, "--out", str(out), "--save-dir", str(saved)])
        (runs[decay],) = json.loads(out.read_text())["rows"][0]["runs"]
        weights[decay] = _policy_weights(saved)
    same = ("curve", "eval", "train_episodes", "gradient_steps")
    assert {k: runs[0.0][k] for k in same} == {k: runs[None][k] for k in same}
    assert all(th.equal(weights[0.0][k], weights[None][k]) for k in weights[None])
    assert runs[0.9]["train_episodes"] == runs[None]["train_episodes"]  # the same training
    assert any(not th.equal(weights[0.9][k], weights[None][k]) for k in weights[None])
    assert [p["return"] for p in runs[0.9]["curve"]] != [p["return"] for p in runs[None]["curve"]]


def _policy_weights(save_dir: Path) -> dict[str, th.Tensor]:
    from sb3_av.td3 import ClippedTD3

    return ClippedTD3.load(save_dir / "sb3av_seed0.zip", device="cpu").policy.state_dict()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--set", '{"no_such_key": 1}'], "unknown keys"),
        (["--budget", "0"], "--budget must be >= 1"),
        (["--configs", "ppo"], "invalid choice"),
        (["--set", '{"env_kwargs": {"action_repeat": 2}}'], "its own key"),
        (["--set", '{"learning_rate": "lin_fast"}'], "learning_rate: expected a number > 0 or 'lin_<initial value>'"),
        (["--set", '{"learning_rate": -0.001}'], "learning_rate: expected a number > 0"),
        (["--set", '{"policy_average_decay": 1.0}'], "policy_average_decay: decay must be a number in [0, 1)"),
        (["--select-episodes", "5"], "it needs --keep-best and --curve-every > 0"),
        (["--set", '{"cycle_after": -1}'], "cycle_after must be an integer number of simulation steps >= 0"),
        (["--set", '{"cycle_after": 1.5}'], "cycle_after must be an integer number of simulation steps >= 0"),
        (["--set", '{"curve_on_cycle": "yes"}'], "curve_on_cycle must be true or false"),
        (["--set", '{"pid_warmup": -2}'], "pid_warmup must be an integer number of simulation steps >= 0"),
        (["--set", '{"pid_warmup": true}'], "pid_warmup must be an integer number of simulation steps >= 0"),
        (["--keep-best", "--select-episodes", "5", "--select-top", "0"], "--select-top >= 1"),
        (["--set", '{"pid_teacher": -1}'], "pid_teacher (0 = off) must be a finite number >= 0"),
        (["--set", '{"pid_teacher": true}'], "pid_teacher (0 = off) must be a finite number >= 0"),
        (["--set", '{"teacher_q_filter": 1}'], "teacher_q_filter must be true or false"),
        (["--set", '{"teacher_clone": "mu"}'], "teacher_clone must be one of 'action', 'head', got 'mu'"),
        (["--set", '{"smoothness_weight": -0.5}'], "smoothness_weight (0 = off) must be a finite number >= 0"),
    ],
)
def test_bad_arguments_exit_with_a_message(learning, argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        learning.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_lane_curriculum_trains_on_env_first_and_curves_on_every_lane(learning):
    """``cycle_after`` (simulation steps) becomes ScenarioCycle's agent steps; ``curve_on_cycle`` adds the cycle's
    scenarios, each on its plain env with the entry's own kwargs (not the training env kwargs) to the curve."""
    lanes = [{"env_id": "LiteScenario2-v0", "env_kwargs": {"route_lane": lane}} for lane in (0, 2)]
    overrides = {"cycle_scenarios": lanes, "cycle_after": 1000, "curve_on_cycle": True, "env_kwargs": {"reward_lane": 1.0}}
    args = learning._parse(["--tiny", "--env", "LiteScenario2-v0", "--set", json.dumps(overrides)])
    settings = learning._recommended_settings(args)
    train_env = learning._training_env(args, settings, action_repeat=2)
    cycle = train_env.env.env  # JerkPenalty(OverspeedPenalty(ScenarioCycle))
    assert type(cycle).__name__ == "ScenarioCycle" and cycle.first_env_steps == 500
    eval_env = learning._make_env(args, "LiteScenario2-v0", action_repeat=2)
    curve = learning._curve_envs(args, settings, eval_env, action_repeat=2)
    assert [env.unwrapped.backend.route_lane for env in curve] == [1, 0, 2]
    for env in curve:
        config = env.unwrapped.config
        assert config.action_repeat == 2 and config.max_steps == 120 and config.reward_weights.lane == 0.2
    assert cycle.env.unwrapped.config.reward_weights.lane == 1.0  # the training env kwargs reach training only
    off = learning._curve_envs(args, {**settings, "curve_on_cycle": False}, eval_env, action_repeat=2)
    assert off == [eval_env]
    for env in (train_env, *curve):
        env.close()


@pytest.mark.parametrize("rate, at_half", [(3e-4, 3e-4), ("lin_3e-4", 1.5e-4)])
def test_learning_rate_is_a_constant_or_rl_zoos_linear_schedule(learning, rate, at_half):
    args = learning._parse(["--tiny", "--set", json.dumps({"learning_rate": rate})])
    model = learning._recommended(learning._make_env(args, "LiteScenario0-v0"), 0, args)
    assert model.lr_schedule(1.0) == pytest.approx(3e-4)  # progress remaining: 1 at the start, 0 at the end
    assert model.lr_schedule(0.5) == pytest.approx(at_half)
    model.env.close()


def _part(tmp_path: Path, name: str, seeds: list[int], success: list[float], **settings) -> Path:
    """A result file as run_benchmark writes it, with the fields the merge and the tables read."""
    base = {"env": "LiteScenario2-v0", "eval_envs": ["LiteScenario2-v0"], "keep_best": True, "budget": 40000}
    base |= {"eval_episodes": 20, "curve_every": 4000, "curve_episodes": 5, "tiny": False, "train_freq": 1}
    base |= {"gradient_steps": 1, "batch_size": None, "overrides": {}, **settings}
    runs = [
        {
            "seed": seed,
            "success_rate": rate,
            "route_completion": rate,
            "mean_return": 100 * rate,
            "train_time_s": 60.0 * (seed + 1),
            "eval": {
                "LiteScenario2-v0": {
                    "success_rate": rate,
                    "collisions_per_km": 0.0,
                    "mean_speed_ms": 6.0,
                    "mean_abs_jerk_ms3": 2.0,
                }
            },
            "curve": [{"step": 4000, "success_rate": rate, "return": 1.0}],
        }
        for seed, rate in zip(seeds, success, strict=True)
    ]
    row = {"config": "sb3av", "seeds": seeds, "runs": runs}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"settings": base, "recommended": {"jerk_penalty": 2.0}, "rows": [row], "wall_time_s": 1}))
    return path


def test_merge_joins_the_seeds_of_one_protocol_and_refuses_another(learning, tmp_path, capsys):
    a = _part(tmp_path, "a", [0, 1], [1.0, 0.8], jobs=2)
    b = _part(tmp_path, "b", [5], [0.9], jobs=1, save_dir="models")  # compute placement may differ
    out = tmp_path / "all.json"
    result = learning.main(["--merge", str(a), str(b), "--out", str(out), "--note", "two parts"])
    (row,) = result["rows"]
    assert row["seeds"] == [0, 1, 5]
    assert row["success_rate_mean"] == pytest.approx((1.0 + 0.8 + 0.9) / 3)
    assert row["train_time_s_mean"] == pytest.approx((60 + 120 + 360) / 3)
    saved = json.loads(out.read_text())
    assert saved["note"] == "two parts" and [p["seeds"] for p in saved["parts"]] == [[0, 1], [5]]
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert "| sb3-av recommended TD3 | 0, 1, 5 | 0.90 ± 0.08 (1.00 / 0.80 / 0.90) |" in capsys.readouterr().out
    for other, message in (
        (_part(tmp_path, "c", [2], [1.0], budget=20000), "budget=20000"),
        (_part(tmp_path, "g", [2], [1.0], select_episodes=20), "select_episodes=20"),  # a/b ran without (before it)
        (_part(tmp_path, "d", [2], [1.0], overrides={"jerk_penalty": 5.0}), "in ['jerk_penalty']"),
        (_part(tmp_path, "e", [2], [1.0], train_freq=2), "in ['train_freq']"),
        (_part(tmp_path, "h", [2], [1.0], overrides={"policy_average_decay": 0.5}), "in ['policy_average_decay']"),
        (_part(tmp_path, "f", [1], [1.0]), "sb3av seed 1 is in more than one file"),
        (tmp_path / "missing.json", "no such result file"),
    ):
        with pytest.raises(SystemExit, match=message.replace("[", r"\[").replace("]", r"\]")):
            learning.main(["--merge", str(a), str(other), "--out", str(tmp_path / "x.json")])


def test_merge_reads_an_old_zero_average_decay_as_off(learning, tmp_path):
    """Files run while decay 0.0 meant "off" merge with files of today's None (decay 0 reports the policy itself)."""
    old = _part(tmp_path, "old", [0], [1.0], overrides={"policy_average_decay": 0.0})
    new = _part(tmp_path, "new", [1], [0.9])
    result = learning.main(["--merge", str(old), str(new), "--out", str(tmp_path / "all.json")])
    assert result["rows"][0]["seeds"] == [0, 1] and result["recommended"]["policy_average_decay"] is None


def test_merge_reads_files_from_before_the_teacher_as_without_it(learning, tmp_path, monkeypatch):
    """A file written before ``pid_teacher`` existed ran without a teacher, whatever today's RECOMMENDED says: it
    merges with a file run with ``pid_teacher`` 0 and is refused beside a teacher run."""
    monkeypatch.setitem(learning.RECOMMENDED, "pid_teacher", 1.0)
    monkeypatch.setitem(learning.RECOMMENDED, "teacher_q_filter", False)
    old = _part(tmp_path, "old", [0], [1.0])  # its "recommended" has no teacher keys
    off = _part(tmp_path, "off", [1], [0.9], overrides={"pid_teacher": 0.0, "teacher_q_filter": True})
    result = learning.main(["--merge", str(old), str(off), "--out", str(tmp_path / "all.json")])
    assert result["rows"][0]["seeds"] == [0, 1]
    taught = _part(tmp_path, "taught", [2], [1.0], overrides={"pid_teacher": 1.0, "teacher_q_filter": False})
    with pytest.raises(SystemExit, match="pid_teacher"):
        learning.main(["--merge", str(old), str(taught), "--out", str(tmp_path / "x.json")])


def test_pid_teacher_sets_the_pid_as_teacher_with_its_weight_filter_and_clone(learning, tmp_path, monkeypatch):
    """``pid_teacher`` (a weight), ``teacher_q_filter`` and ``teacher_clone`` reach ``set_teacher`` with the training
    env's PID; the labels are stored from the first step."""
    from sb3_av.baselines import PIDPurePursuit
    from sb3_av.td3 import ClippedTD3

    calls = []
    original = ClippedTD3.set_teacher

    def recording(model, controller, weight, q_filter=True, clone="action"):
        calls.append((controller, weight, q_filter, clone))
        original(model, controller, weight, q_filter, clone)
        recording.model = model

    monkeypatch.setattr(ClippedTD3, "set_teacher", recording)
    argv = ["--tiny", "--budget", "120", "--seeds", "0", "--eval-episodes", "1", "--curve-every", "0", "--configs", "sb3av"]
    overrides = {"pid_teacher": 0.5, "teacher_q_filter": False, "teacher_clone": "head", "smoothness_weight": 0.25}
    learning.main([*argv, "--out", str(tmp_path / "l.json"), "--set", json.dumps(overrides)])
    ((controller, weight, q_filter, clone),) = calls
    assert isinstance(controller, PIDPurePursuit) and weight == 0.5 and q_filter is False and clone == "head"
    assert recording.model.teacher_clone == "head" and recording.model.smoothness_weight == 0.25
    labels = recording.model.replay_buffer.teacher_actions[:120, 0]
    assert np.isfinite(labels).all() and np.abs(labels).max() <= 1.0


def test_merge_reads_teacher_files_from_before_the_clone_setting_as_cloning_the_action(learning, tmp_path, monkeypatch):
    """A teacher run written before ``teacher_clone`` existed cloned the executed action, whatever today's
    RECOMMENDED says: it merges with an ``"action"`` run and is refused beside a ``"head"`` run."""
    monkeypatch.setitem(learning.RECOMMENDED, "teacher_clone", "head")
    taught = {"pid_teacher": 1.0, "teacher_q_filter": False}
    old = _part(tmp_path, "old", [0], [1.0], overrides=taught)  # no teacher_clone key
    action = _part(tmp_path, "action", [1], [0.9], overrides={**taught, "teacher_clone": "action"})
    result = learning.main(["--merge", str(old), str(action), "--out", str(tmp_path / "all.json")])
    assert result["rows"][0]["seeds"] == [0, 1]
    head = _part(tmp_path, "head", [2], [1.0], overrides={**taught, "teacher_clone": "head"})
    with pytest.raises(SystemExit, match="teacher_clone"):
        learning.main(["--merge", str(old), str(head), "--out", str(tmp_path / "x.json")])


@pytest.mark.parametrize("without_config_settings", [False, True])
def test_a_merged_file_merges_again_with_new_parts(learning, tmp_path, without_config_settings):
    """A merged file joins new parts of the same protocol and compute settings (also a merged file written before
    ``config_settings`` existed: its parts' settings are read), and refuses a part with other compute settings."""
    a = _part(tmp_path, "a", [0], [1.0])
    b = _part(tmp_path, "b", [1], [0.8])
    merged = tmp_path / "ab.json"
    learning.main(["--merge", str(a), str(b), "--out", str(merged)])
    if without_config_settings:
        content = json.loads(merged.read_text())
        del content["config_settings"]
        merged.write_text(json.dumps(content))
    c = _part(tmp_path, "c", [2], [0.9])
    result = learning.main(["--merge", str(merged), str(c), "--out", str(tmp_path / "abc.json")])
    assert result["rows"][0]["seeds"] == [0, 1, 2]
    assert result["rows"][0]["success_rate_mean"] == pytest.approx(0.9)
    other = _part(tmp_path, "d", [3], [0.9], train_freq=2)
    with pytest.raises(SystemExit, match=r"differ .* in \['train_freq'\]"):
        learning.main(["--merge", str(merged), str(other), "--out", str(tmp_path / "x.json")])
