"""The CARLA env against a real CARLA 0.9.16 server; skipped unless ``CARLA_HOST`` is set.

Run with a server up (see the README's CARLA section)::

    CARLA_HOST=127.0.0.1 CARLA_PORT=2000 pytest tests/test_carla_server.py -v

The crash case restarts the server's docker container mid-run (``docker restart``); it runs only when
``CARLA_DOCKER_CONTAINER`` names that container (started with ``--restart unless-stopped``)::

    CARLA_HOST=127.0.0.1 CARLA_PORT=2000 CARLA_DOCKER_CONTAINER=carla0 pytest tests/test_carla_server.py -v
"""

from __future__ import annotations

import gzip
import math
import os
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = [
    pytest.mark.carla_server,
    pytest.mark.skipif(not os.environ.get("CARLA_HOST"), reason="needs a CARLA server: set CARLA_HOST (and CARLA_PORT)"),
]

HOST = os.environ.get("CARLA_HOST", "127.0.0.1")
PORT = int(os.environ.get("CARLA_PORT", "2000"))
CONTAINER = os.environ.get("CARLA_DOCKER_CONTAINER")


@pytest.fixture
def client():
    carla = pytest.importorskip("carla")
    c = carla.Client(HOST, PORT)
    c.set_timeout(20.0)
    return c


def _actor_ids(client) -> set[int]:
    return {a.id for a in client.get_world().get_actors()}


def _ours(client) -> list:
    """Actors that an sb3-av env made (role_name ``sb3av:...``)."""
    return [a for a in client.get_world().get_actors() if str(a.attributes.get("role_name", "")).startswith("sb3av:")]


def _steer_to_route(obs: dict) -> float:
    """Steer toward the second look-ahead point (vector entries 7, 8 = route_x2, route_y2 in the ego frame)."""
    x, y = float(obs["vector"][7]), float(obs["vector"][8])
    return float(np.clip(2.0 * math.atan2(y, max(x, 1e-3)), -1.0, 1.0))


def test_three_episodes_leave_the_world_as_they_found_it(client):
    from sb3_av.envs.carla import make_carla_env

    original = client.get_world().get_settings()
    env = make_carla_env("CarlaScenario0", host=HOST, port=PORT, max_steps=150, npc_vehicles=20)
    try:
        # the env connected (and loaded Town01 if needed): count the actors it did not make
        before_ids = _actor_ids(client)
        settings_in_use = client.get_world().get_settings()
        assert settings_in_use.synchronous_mode is True
        assert settings_in_use.fixed_delta_seconds == pytest.approx(0.05)
        for episode in range(3):
            obs, info = env.reset(seed=episode)
            assert env.observation_space.contains(obs)
            image = obs["image"]
            assert image.shape == (4, 84, 84) and image.std() > 1.0  # a rendered scene, not a blank frame
            spawned = _actor_ids(client) - before_ids
            assert len(spawned) >= 1 + 3 + 10  # ego, camera, collision, lane invasion, most of the 20 NPCs
            prev_time = info["sim_time_s"]
            for _ in range(150):
                action = np.array([_steer_to_route(obs), 0.5], dtype=np.float32)
                obs, reward, terminated, truncated, info = env.step(action)
                assert env.observation_space.contains(obs)
                assert np.isfinite(reward) and np.all(np.isfinite(obs["vector"]))
                assert sum(info["reward_terms"].values()) == pytest.approx(reward)
                assert info["sim_time_s"] == pytest.approx(prev_time + 0.05, abs=1e-6)
                prev_time = info["sim_time_s"]
                if terminated or truncated:
                    break
            assert info["distance_m"] > 1.0  # it drove
        route = env.backend.route
        assert 200.0 < float(np.hypot(*np.diff(route.points, axis=0).T).sum()) < 300.0
    finally:
        env.close()
    after_ids = _actor_ids(client)
    assert after_ids == before_ids
    restored = client.get_world().get_settings()
    assert restored.synchronous_mode == original.synchronous_mode
    assert restored.fixed_delta_seconds == original.fixed_delta_seconds


def test_the_scenario_route_is_town01s_route_planned_offline(client):
    """CarlaScenario0's default route on the server's Town01 equals the one planned on the shipped OpenDRIVE file."""
    carla = pytest.importorskip("carla")
    from sb3_av.envs.carla import make_carla_env
    from sb3_av.envs.carla.route import TOWN01_ROUTE, carla_to_world_xy, plan_route, route_spec, start_waypoint

    xodr = gzip.open(Path(__file__).parent / "data" / "carla" / "Town01.xodr.gz", "rt").read()
    offline_map = carla.Map("Carla/Maps/Town01", xodr)
    start = start_waypoint(offline_map, TOWN01_ROUTE.start)
    offline = route_spec(plan_route(start, TOWN01_ROUTE.length_m, 2.0, TOWN01_ROUTE.junction_choices).waypoints)
    env = make_carla_env("CarlaScenario0", host=HOST, port=PORT, max_steps=20, npc_vehicles=0)
    try:
        env.reset(seed=0)
        route = env.backend.route
        assert route.points.shape == offline.points.shape
        assert np.abs(route.points - offline.points).max() < 0.05
        egos = [a for a in _ours(client) if a.attributes["role_name"].endswith(":ego")]
        assert len(egos) == 1
        loc = egos[0].get_transform().location
        ego_xy = np.array(carla_to_world_xy(loc.x, loc.y))
        assert np.hypot(*(ego_xy - route.points[0])) < 0.5  # spawned on the route's first point
    finally:
        env.close()
    assert _ours(client) == []


def test_the_leader_and_clearance_match_the_servers_actors(client):
    """On a real server (real bounding boxes, TM-driven NPCs): every frame's clearance equals the distance between
    the ego's and the nearest NPC's boxes from CARLA's own vertices, and a leader is an NPC on the route lane ahead."""
    from sb3_av.envs.carla import make_carla_env
    from tests.test_carla_backend import _outline_distance

    env = make_carla_env("CarlaScenario2", host=HOST, port=PORT, max_steps=200, worker=False)
    try:
        obs, info = env.reset(seed=3)
        backend = env.backend
        seen_near = seen_leader = 0
        for _ in range(200):
            obs, _, terminated, truncated, info = env.step(np.array([_steer_to_route(obs), 0.3], dtype=np.float32))
            extra = info["backend"]
            npcs = [npc for npc in backend._npcs if npc.is_alive]
            ego = backend._ego
            near = [n for n in npcs if n.get_location().distance(ego.get_location()) < 20.0]
            if near:
                seen_near += 1
                assert extra["clearance_m"] == pytest.approx(min(_outline_distance(ego, n) for n in near), abs=0.05)
            if extra["lead_distance_m"] is not None:
                seen_leader += 1
                assert 0.0 <= extra["lead_distance_m"] < 100.0 and extra["lead_speed_ms"] >= 0.0
            if terminated or truncated:
                break
        assert seen_near > 0  # 100 NPCs on Town01: some come within 20 m in 10 s
    finally:
        env.close()


def test_server_version_matches_the_client(client):
    assert client.get_server_version().split("-")[0] == client.get_client_version().split("-")[0] == "0.9.16"


def test_two_envs_on_one_server_use_separate_traffic_managers(client):
    from sb3_av.envs.carla import make_carla_env

    shared = {"host": HOST, "port": PORT, "npc_vehicles": 5, "max_steps": 20, "share_server": True}
    a = make_carla_env("CarlaScenario0", **shared)
    b = make_carla_env("CarlaScenario0", tm_port=PORT + 6001, route_start=(24, -1, 40.0), **shared)  # 30 m ahead of a
    try:
        assert a.backend.info["tm_port"] == PORT + 6000 and b.backend.info["tm_port"] == PORT + 6001
        a.reset(seed=0)
        b.reset(seed=0)
        for _ in range(10):
            a.step(np.array([0.0, 0.3], np.float32))
        a.close()  # destroys only a's actors; b keeps running
        obs, *_ = b.step(np.array([0.0, 0.3], np.float32))
        assert b.observation_space.contains(obs)
    finally:
        a.close()
        b.close()


def test_the_env_runs_its_client_in_a_worker_and_leaves_no_actor(client):
    from sb3_av.envs.carla import make_carla_env

    env = make_carla_env("CarlaScenario0", host=HOST, port=PORT, max_steps=30, npc_vehicles=10)
    try:
        assert env.backend.worker_pid not in (None, os.getpid())
        obs, _ = env.reset(seed=0)
        assert obs["image"].std() > 1.0  # rendering on (no_rendering_mode forced off)
        blueprints = {a.type_id for a in _ours(client) if a.attributes["role_name"].endswith(":npc")}
        library = client.get_world().get_blueprint_library()
        assert blueprints and all(library.find(b).get_attribute("base_type").as_str() == "car" for b in blueprints)
    finally:
        env.close()
    assert _ours(client) == []


def test_record_films_one_episode_with_the_chase_camera(client, tmp_path, capsys):
    """``sb3-av record`` on CARLA: the chase camera's view (a rendered scene) beside the agent's frames, no actor left."""
    import imageio.v2 as imageio

    from sb3_av.cli import main

    out = tmp_path / "carla.mp4"
    kwargs = [f"host:{HOST}", f"port:{PORT}", "max_steps:40", "npc_vehicles:10"]
    argv = ["record", "--baseline", "--env", "CarlaScenario0-v0", "-o", str(out), "--view-px", "240", "--seed", "0"]
    assert main([*argv, "--env-kwargs", *kwargs]) == 0
    frames = int(re.search(r"CarlaScenario0-v0: (\d+) frames ->", capsys.readouterr().out).group(1))
    assert 20 + 1 <= frames <= 20 + 40  # the episode's steps (at most max_steps), then the last frame held 1 s at 20 Hz
    video = imageio.get_reader(out)
    assert video.count_frames() == frames and out.with_suffix(".gif").is_file()
    first, last = video.get_data(0), video.get_data(frames - 21)
    assert first.shape[:2] == (352, 576)  # the 320x240 chase view, the agent's 2x2 tiles of 116 px, the panel
    view_first, view_last = first[:240, :320].astype(int), last[:240, :320].astype(int)
    assert view_first[120:].std() > 5.0  # a rendered scene, not a blank frame
    assert np.abs(view_last - view_first).mean() > 2.0  # the PID baseline drove: the view changed
    assert _ours(client) == []  # the chase camera too was destroyed (before the ego)


@pytest.mark.skipif(not CONTAINER, reason="needs CARLA_DOCKER_CONTAINER: the docker container of the server to restart")
def test_stepping_goes_on_across_a_server_restart():
    """``docker restart`` mid-episode: one truncated step, a new worker, then stepping goes on."""
    carla = pytest.importorskip("carla")
    from sb3_av.envs.carla import make_carla_env

    wait_s = float(os.environ.get("CARLA_RESTART_WAIT_S", "300"))
    env = make_carla_env("CarlaScenario0", host=HOST, port=PORT, max_steps=1000, npc_vehicles=10, server_wait_s=wait_s)
    action = np.array([0.0, 0.3], np.float32)
    try:
        env.reset(seed=0)
        for _ in range(20):
            env.step(action)
        pid = env.backend.worker_pid
        subprocess.run(["docker", "restart", "-t", "0", CONTAINER], check=True, timeout=120)
        t0 = time.monotonic()
        _, reward, terminated, truncated, info = env.step(action)
        assert (terminated, truncated, reward, info["termination"]) == (False, True, 0.0, "backend_restarted")
        assert time.monotonic() - t0 < wait_s
        assert env.backend.worker_pid != pid and info["backend"]["restarts"] == 1
        env.reset(seed=1)
        for _ in range(50):
            _, _, terminated, truncated, info = env.step(action)
            assert info["termination"] != "backend_restarted"
            if terminated or truncated:
                env.reset()
    finally:
        env.close()
    fresh = carla.Client(HOST, PORT)
    fresh.set_timeout(20.0)
    assert _ours(fresh) == []
    assert fresh.get_world().get_settings().synchronous_mode is False
