"""Recording evaluation episodes: the frames' content, the encoded MP4/GIF, the alert line, bad input."""

from __future__ import annotations

import itertools
from pathlib import Path

import gymnasium as gym
import imageio.v2 as imageio
import numpy as np
import pytest
from PIL import Image

import sb3_av  # noqa: F401  (registers the envs)
from sb3_av.baselines import PIDPurePursuit
from sb3_av.record import (
    Alert,
    RecordError,
    StepOverlay,
    alerts_line,
    compose_frame,
    read_alerts,
    record_episodes,
    write_video,
)

_EGO_RGB = (60, 200, 90)
_NPC_RGB = (220, 60, 60)
_ROUTE_RGB = (250, 210, 40)


def _count(frame: np.ndarray, rgb: tuple[int, int, int], columns: slice = slice(None)) -> int:
    return int(np.all(frame[:, columns] == rgb, axis=-1).sum())


def _short_env(**kwargs) -> gym.Env:
    return gym.make("LiteScenario2-v0", max_steps=30, **kwargs)


def test_frames_show_the_view_the_agent_frames_and_the_step() -> None:
    env = _short_env()
    frames = list(record_episodes(PIDPurePursuit(), env, 1, seed=3, view_px=160, view_ppm=4.0, hold_last_s=0.0))
    assert len(frames) == 30  # one frame per agent step, the episode hits its 30-step limit
    first = frames[0]
    assert first.shape[0] % 16 == 0 and first.shape[1] % 16 == 0
    view = slice(0, 160)
    assert _count(first, _EGO_RGB, view) > 20  # the ego, in green, in the top-down view
    assert _count(first, _NPC_RGB, view) > 20  # scenario 2's traffic around it
    assert _count(first, _ROUTE_RGB, view) > 20  # the route line
    # The agent's newest frame, scaled up 2x2 tiles of (160 - 8) // 2 = 76 px, nearest neighbour: a pure gray tile.
    agent_tiles = first[:160, 160 + 8 :]
    assert np.all(agent_tiles[..., 0] == agent_tiles[..., 1])  # grayscale
    assert agent_tiles.std() > 10  # not blank


def test_agent_frames_are_the_observation_scaled_up() -> None:
    stack = np.random.default_rng(0).integers(0, 256, (4, 84, 84), dtype=np.uint8)
    view = np.zeros((176, 176, 3), dtype=np.uint8)
    overlay = StepOverlay("t", 1, 0.05, 3.0, np.array([0.5, -0.25]), {"progress": 0.1, "lane": -0.05})
    frame = compose_frame(Image.fromarray(view), stack, overlay)
    tile = (176 - 8) // 2  # 84: the frames at their own size
    newest = frame[tile + 8 : tile + 8 + tile, 176 + 8 + tile + 8 : 176 + 8 + 2 * tile + 8, 0]
    assert np.array_equal(newest, stack[3])
    assert overlay.lines()[1].endswith("steer +0.50  throttle 0.00  brake 0.25")
    assert overlay.lines()[2] == "reward +0.050: progress +0.10  lane -0.05"


def test_mp4_and_gif_hold_the_frames(tmp_path: Path) -> None:
    env = _short_env()
    frames = list(record_episodes(PIDPurePursuit(), env, 2, seed=5, view_px=160, hold_last_s=0.5))
    assert len(frames) == 2 * (30 + 10)  # 0.5 s held at 20 Hz after each episode
    n = write_video(iter(frames), tmp_path / "a.mp4", tmp_path / "a.gif", fps=20, gif_every=2, gif_scale=0.5)
    assert n == len(frames)
    video = imageio.get_reader(tmp_path / "a.mp4")
    assert video.count_frames() == len(frames)
    decoded = video.get_data(0)
    assert decoded.shape == frames[0].shape
    assert np.abs(decoded.astype(int) - frames[0].astype(int)).mean() < 8  # lossy, but the same picture
    gif = Image.open(tmp_path / "a.gif")
    assert gif.size == (frames[0].shape[1] // 2, frames[0].shape[0] // 2)
    durations = []
    for index in range(gif.n_frames):  # Pillow merges repeated frames (the held ones) into one longer frame
        gif.seek(index)
        durations.append(gif.info["duration"])
    assert gif.n_frames <= len(frames) // 2
    assert sum(durations) == pytest.approx(1000 * len(frames) / 20, abs=10 * len(durations))  # real time, as the MP4


def test_the_last_frames_say_how_the_episode_ended() -> None:
    env = _short_env()
    frames = record_episodes(PIDPurePursuit(), env, 1, seed=3, view_px=160, hold_last_s=0.0)
    last = list(itertools.islice(frames, 30))[-1]
    # The ending line is drawn in the alert colour on the panel only for the last step.
    panel = last[160:]
    assert _count(panel, (255, 120, 90)) > 0


def test_alert_line_counts_the_alerts_up_to_the_training_step() -> None:
    alerts = [Alert(100, "warning", 35.0), Alert(300, "critical", float("inf")), Alert(200, "warning", 41.5)]
    assert alerts_line(alerts, 250) == (
        "gradient alerts up to training step 250: 2 warning, 0 critical; last: warning at step 200 (norm 41.5)"
    )
    assert "1 critical; last: critical at step 300 (norm inf)" in alerts_line(alerts, None)
    assert alerts_line(alerts, 50) == ""


def test_a_non_driving_env_is_a_clear_error() -> None:
    with pytest.raises(RecordError, match="LiteScenario"):
        next(record_episodes(PIDPurePursuit(), gym.make("Pendulum-v1"), 1))


def test_nothing_to_write_is_an_error() -> None:
    with pytest.raises(RecordError, match="nothing to write"):
        write_video(iter([]), None, None, fps=20)


def _record_cli(argv: list[str]) -> int:
    from sb3_av.cli import main

    return main(["record", *argv])


_SHORT = ["--env-kwargs", "max_steps:20", "npc_vehicles:3"]


def test_record_command_writes_mp4_and_gif_of_the_baseline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "v" / "pid.mp4"
    argv = ["--baseline", "--env", "LiteScenario0-v0", "-n", "2", "-o", str(out), "--gif-scale", "0.25", *_SHORT]
    assert _record_cli(argv) == 0
    video = imageio.get_reader(out)
    assert video.get_meta_data()["fps"] == 20  # real time: one frame per 0.05 s control period
    assert video.count_frames() == 2 * (20 + 20)  # 20 steps + 1 s held at 20 Hz, twice
    gif = Image.open(out.with_suffix(".gif"))
    assert gif.n_frames > 1 and gif.size == (video.get_data(0).shape[1] // 4, video.get_data(0).shape[0] // 4)
    assert "Recorded 2 episode(s) of PID + pure-pursuit baseline on LiteScenario0-v0" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--baseline", "--env", "LiteScenario0-v0", "-o", "x.avi"], "must end in .mp4"),
        (["--baseline", "--env", "NoSuchEnv-v0"], "unknown env id"),
        (["--baseline", "--env", "LiteScenario0-v0", "-n", "0"], "-n must be >= 1"),
        (["--baseline", "--env", "LiteScenario0-v0", "--gif-scale", "3"], "--gif-scale in [0.05, 1]"),
        (["--model", "missing.zip", "--env", "LiteScenario0-v0"], "not found"),
        (["--baseline", "--env", "CarlaScenario0-v0", "--env-kwargs", "port:2999", "connect_timeout_s:1"], "127.0.0.1:2999"),
    ],
)
def test_record_command_errors_are_one_line(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert _record_cli(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("sb3-av record: error:") and message in err and err.count("\n") == 1
    assert not (tmp_path / "videos").exists() or not any((tmp_path / "videos").iterdir())


def test_alerts_are_read_from_a_runs_tensorboard_events(tmp_path: Path) -> None:
    from stable_baselines3.common.logger import configure

    logger = configure(str(tmp_path / "tb"), ["tensorboard"])
    for step, tag, value in [(10, "warning", 31.0), (20, "critical", float("inf")), (30, "warning", 55.0)]:
        logger.record(f"alerts/gradient_explosion_{tag}", value)
        logger.dump(step)
    logger.close()
    alerts = read_alerts(tmp_path)
    assert alerts == [Alert(10, "warning", 31.0), Alert(20, "critical", float("inf")), Alert(30, "warning", 55.0)]
    assert read_alerts(tmp_path / "tb" / "nothing") == []


def test_enjoy_video_records_a_saved_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sb3_av.td3 import ClippedTD3
    from sb3_av.zoo.enjoy import main

    env = gym.make("LiteScenario0-v0", npc_vehicles=3)
    model = ClippedTD3("MultiInputPolicy", env, buffer_size=10, policy_kwargs={"net_arch": [8]}, device="cpu")
    model.save(tmp_path / "m.zip")
    out = tmp_path / "m.mp4"
    argv = ["--model", str(tmp_path / "m.zip"), "--env", "LiteScenario0-v0", "-n", "1", "--video", str(out), *_SHORT]
    assert main(argv) == 0
    assert "| LiteScenario0-v0 | 1 |" in capsys.readouterr().out  # the evaluation table, then the video
    assert imageio.get_reader(out).count_frames() == 20 + 20
    assert out.with_suffix(".gif").is_file()


def test_the_video_runs_in_real_time_at_the_agents_control_rate(tmp_path: Path) -> None:
    out = tmp_path / "ar.mp4"
    argv = ["--baseline", "--env", "LiteScenario0-v0", "-o", str(out), "--no-gif", *_SHORT, "action_repeat:2", "dt:0.1"]
    assert _record_cli(argv) == 0
    assert imageio.get_reader(out).get_meta_data()["fps"] == 5  # one frame per 2 x 0.1 s
    assert not out.with_suffix(".gif").exists()
