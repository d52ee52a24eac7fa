"""``sb3-av plot``: curves read from a run folder (monitor.csv, evaluations.npz, progress.csv) and the PNG."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from sb3_av.plotting import _smooth, add_plot_arguments, load_run_curves, plot_runs, run_plot_command


def _fake_run(run: Path, with_success: bool = True) -> Path:
    run.mkdir(parents=True)
    header = "r,l,t,is_success\n" if with_success else "r,l,t\n"
    lines = [f"{-10 + i},{10 + i},{i * 0.5}" + (f",{i % 2 == 0}" if with_success else "") for i in range(6)]
    (run / "0.monitor.csv").write_text('#{"t_start": 0, "env_id": "LiteScenario0-v0"}\n' + header + "\n".join(lines) + "\n")
    np.savez(
        run / "evaluations.npz",
        timesteps=np.array([30, 60]),
        results=np.array([[1.0, 3.0], [5.0, 7.0]]),
        ep_lengths=np.array([[10, 10], [10, 10]]),
        successes=np.array([[0.0, 1.0], [1.0, 1.0]]),
    )
    (run / "progress.csv").write_text(
        "time/step,time/total_timesteps,debug/critic_cnn_grad_norm_BEFORE_clip,debug/critic_cnn_grad_norm_AFTER_clip,"
        "debug/actor_cnn_grad_norm_BEFORE_clip\n"
        "50,,25.0,10.0,0.5\n"
        "60,60,,,\n"
        "100,,12.0,10.0,\n"
    )
    return run


def test_load_run_curves_reads_every_source(tmp_path: Path) -> None:
    curves = load_run_curves(_fake_run(tmp_path / "LiteScenario0-v0_1"))
    steps, returns = curves.train_return
    np.testing.assert_array_equal(steps, np.cumsum([10, 11, 12, 13, 14, 15]))
    np.testing.assert_array_equal(returns, [-10, -9, -8, -7, -6, -5])
    np.testing.assert_array_equal(curves.train_success[1], [1, 0, 1, 0, 1, 0])
    np.testing.assert_array_equal(curves.eval_return[1], [2.0, 6.0])
    np.testing.assert_array_equal(curves.eval_success[1], [0.5, 1.0])
    x, y = curves.grad_norms["critic_cnn_grad_norm_BEFORE_clip"]
    np.testing.assert_array_equal(x, [50, 100])
    np.testing.assert_array_equal(y, [25.0, 12.0])
    assert curves.grad_norms["actor_cnn_grad_norm_BEFORE_clip"][1].tolist() == [0.5]
    assert not curves.is_empty()


def test_smooth_is_a_trailing_mean() -> None:
    np.testing.assert_allclose(_smooth(np.array([1.0, 2.0, 3.0, 4.0]), 2), [1.0, 1.5, 2.5, 3.5])
    np.testing.assert_allclose(_smooth(np.array([1.0, 2.0]), 1), [1.0, 2.0])


def test_plot_writes_a_png_for_one_and_several_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    a = _fake_run(tmp_path / "a")
    b = _fake_run(tmp_path / "b", with_success=False)
    parser = argparse.ArgumentParser()
    add_plot_arguments(parser)
    assert run_plot_command(parser.parse_args([str(a)])) == 0
    png = a / "learning_curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert capsys.readouterr().out.strip() == str(png)
    monkeypatch.chdir(tmp_path)
    assert run_plot_command(parser.parse_args([str(a), str(b), "--smooth", "3"])) == 0
    assert (tmp_path / "learning_curves.png").is_file()
    out = plot_runs([load_run_curves(a)], tmp_path / "sub" / "x.png", title="t")
    assert out.is_file()


@pytest.mark.parametrize(
    ("make", "args", "message"),
    [
        (lambda p: None, [], "not found"),
        (lambda p: p.mkdir(), [], "no monitor.csv, evaluations.npz or progress.csv"),
        (lambda p: _fake_run(p), ["--smooth", "0"], "--smooth must be >= 1"),
    ],
)
def test_plot_errors_are_one_line(
    make, args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    make(run)
    parser = argparse.ArgumentParser()
    add_plot_arguments(parser)
    assert run_plot_command(parser.parse_args([str(run), *args])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sb3-av plot: error:") and message in err[0]


def test_plot_of_a_real_training_run_folder_layout(tmp_path: Path) -> None:
    """A run folder as train.py writes it also holds models and the <env>/ config folder: they are ignored."""
    run = _fake_run(tmp_path / "LiteScenario0-v0_2")
    (run / "LiteScenario0-v0").mkdir()
    (run / "LiteScenario0-v0" / "config.yml").write_text("policy: MultiInputPolicy\n")
    (run / "best_model.zip").write_bytes(b"PK")
    (run / "meta.json").write_text(json.dumps({}))
    curves = load_run_curves(run)
    assert curves.name == "LiteScenario0-v0_2" and len(curves.eval_return[0]) == 2
