"""Recording CARLA envs: the chase camera view beside the agent's frames, against the stand-in server
(in this process, and in a process of its own behind the env's worker, through ``sb3-av record``)."""

from __future__ import annotations

from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
from PIL import Image

import sb3_av  # noqa: F401  (registers the envs)
from sb3_av.baselines import PIDPurePursuit
from sb3_av.envs.carla import make_carla_env
from sb3_av.envs.carla.worker import CLIENT_MODULE_ENV
from sb3_av.record import RecordError, record_episodes
from tests import carla_standin as cs
from tests import carla_standin_remote as remote

_FAST = {"npc_vehicles": 3, "sensor_timeout_s": 0.5, "max_reconnects": 1, "reconnect_backoff_s": 0.0}


@pytest.fixture(autouse=True)
def _own_lock_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SB3_AV_CARLA_LOCK_DIR", str(tmp_path / "locks"))
    cs.reset_process_state()
    yield
    cs.reset_process_state()


def _ego_pixels(rgb: np.ndarray) -> int:
    """Pixels of the ego as the stand-in draws it (blue, any of its shades)."""
    return int(((rgb[..., 2] > 120) & (rgb[..., 0] < 60) & (rgb[..., 1] < 110)).sum())


def _standin_env(net: cs.StandinNetwork, **kwargs):
    return make_carla_env(
        "CarlaScenario0", client_factory=net.client_factory, carla_module=cs.standin_carla, **_FAST, **kwargs
    )


def test_frames_show_the_chase_camera_of_each_step_beside_the_agent_frames() -> None:
    net = cs.StandinNetwork()
    server = net.add()
    env = _standin_env(net, max_steps=15, chase_camera_size=(160, 120))
    backend = env.unwrapped.backend
    frames = []
    for frame in record_episodes(PIDPurePursuit.from_env(env), env, 1, seed=0, view_px=120, hold_last_s=0.0):
        chase = backend.chase_image
        # the view is the chase camera's image of the frame the env just returned (already 120 px high: not scaled)
        assert np.array_equal(frame[:120, :160], chase)
        chase_camera = next(a for a in server.alive("sensor.camera") if a.attributes["role_name"].endswith(":chase"))
        assert tuple(chase[0, 0]) == (server.image_value(server.frame, chase_camera),) * 3  # the ticked frame
        frames.append(frame)
    assert len(frames) == 15  # one frame per step (max_steps), nothing held
    first, last = frames[0], frames[-1]
    assert first.shape[0] % 16 == 0 and first.shape[1] % 16 == 0
    assert _ego_pixels(first[:120, :160]) > 300  # the ego, seen from behind
    assert first[60:120, :160].std() > 20  # the road and the grass, not a blank image
    assert np.abs(last[60:120, :160].astype(int) - first[60:120, :160].astype(int)).mean() > 2.0  # the car moved
    agent = first[:120, 160 + 8 :]  # the agent's 4 grayscale frames in a 2x2 grid of (120 - 8) // 2 = 56 px tiles
    assert np.all(agent[..., 0] == agent[..., 1]) and agent[:56, :56].std() > 10
    env.close()
    assert server.violations == [] and server.alive("sensor.") == []


def test_the_chase_view_is_scaled_to_the_video_height() -> None:
    net = cs.StandinNetwork()
    net.add()
    env = _standin_env(net, max_steps=3, chase_camera_size=(96, 72))
    frames = list(record_episodes(PIDPurePursuit.from_env(env), env, 1, seed=0, view_px=144, hold_last_s=0.0))
    env.close()
    assert len(frames) == 3
    view = frames[-1][:144, :192]  # 96x72 scaled 2x
    assert view[72:].std() > 20 and _ego_pixels(view) > 4 * 150
    assert np.all(frames[-1][:144, 192:200] == (18, 18, 22))  # the gap (panel colour) right after the 192 px view


def test_a_carla_env_without_its_chase_camera_is_a_clear_error() -> None:
    net = cs.StandinNetwork()
    net.add()
    env = _standin_env(net, max_steps=3)
    with pytest.raises(RecordError, match="chase_camera_size"):
        next(record_episodes(PIDPurePursuit.from_env(env), env, 1))
    env.close()


def test_record_command_films_a_carla_env_through_its_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sb3_av.cli import main

    monkeypatch.setenv(CLIENT_MODULE_ENV, "tests.carla_standin_remote")
    server = remote.StandinProcess(cs.free_port(step=10)).start()
    try:
        out = tmp_path / "carla.mp4"
        kwargs = [f"port:{server.port}", "max_steps:12", "npc_vehicles:3", "timeout_s:2", "sensor_timeout_s:1"]
        argv = ["record", "--baseline", "--env", "CarlaScenario0-v0", "-o", str(out), "--view-px", "96"]
        assert main([*argv, "--env-kwargs", *kwargs]) == 0
        assert "CarlaScenario0-v0: 32 frames" in capsys.readouterr().out
        video = imageio.get_reader(out)
        assert video.get_meta_data()["fps"] == 20
        assert video.count_frames() == 12 + 20  # one frame per step, then the last one held 1 s at 20 Hz
        # the chase camera at 128x96 (4:3 at --view-px 96), the agent's 2x2 tiles of 44 px, the panel below
        first = video.get_data(0)
        assert first.shape == (208, 240, 3)
        view = first[:96, :128].astype(int)
        assert view[48:].std() > 20  # the scene, not a blank view
        assert _ego_pixels(np.clip(view, 0, 255).astype(np.uint8)) > 150  # the ego (lossy H.264: a loose count)
        gif = Image.open(out.with_suffix(".gif"))
        assert gif.n_frames > 1 and gif.size == (120, 104)
        assert server.own_actors() == [] and server.control("violations") == []
    finally:
        server.close()
