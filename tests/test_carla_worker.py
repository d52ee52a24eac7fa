"""CARLA envs in worker processes against stand-in servers in processes of their own (tests/carla_standin_remote.py).

The servers are killed (a crash), stopped (a hang) and restarted on the same port; the env's worker is killed by
SIGKILL, aborted (SIGABRT, as LibCarla's Traffic Manager does when its server is gone) and stopped. In each case
the env truncates one episode (``termination = "backend_restarted"``), a fresh worker reconnects, and stepping
goes on; no actor is leaked; the world's settings are restored and the Traffic Manager shut down on close.

``SB3_AV_CARLA_RESETS`` sets the count of the many-resets test (default 60; the issue's bar is 1000).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from sb3_av.envs.carla import CarlaBackendError, CarlaConnectionError, CarlaRouteError, make_carla_env
from sb3_av.envs.carla.worker import CLIENT_MODULE_ENV
from tests import carla_standin_remote as remote
from tests.carla_standin import free_port

ROOT = Path(__file__).resolve().parent.parent
N_EPISODE_ACTORS = 1 + 3 + 3  # ego, camera, collision, lane invasion, 3 NPCs
FAST = {
    "npc_vehicles": 3,
    "timeout_s": 1.0,
    "connect_timeout_s": 1.0,
    "sensor_timeout_s": 0.5,
    "max_reconnects": 1,
    "reconnect_backoff_s": 0.2,
    "server_wait_s": 30.0,
}


@pytest.fixture(autouse=True)
def _standin_client(tmp_path, monkeypatch):
    monkeypatch.setenv(CLIENT_MODULE_ENV, "tests.carla_standin_remote")
    monkeypatch.setenv("SB3_AV_CARLA_LOCK_DIR", str(tmp_path / "locks"))


@pytest.fixture
def servers():
    started: list[remote.StandinProcess] = []

    def start(tick_s: float = 0.0) -> remote.StandinProcess:
        server = remote.StandinProcess(free_port(step=10), tick_s=tick_s).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


def _env(server: remote.StandinProcess | None = None, **kwargs):
    values = dict(FAST, max_steps=1000)
    if server is not None:
        values["port"] = server.port
    values.update(kwargs)
    return make_carla_env("CarlaScenario0", **values)


def _go(env, n: int) -> list[dict]:
    infos = []
    for _ in range(n):
        _, _, terminated, truncated, info = env.step(np.array([0.0, 0.3], np.float32))
        infos.append(info)
        if terminated or truncated:
            break
    return infos


def _assert_clean(server: remote.StandinProcess) -> None:
    """After close: no actor of ours, settings restored, the Traffic Manager shut down, no rule broken."""
    assert server.own_actors() == []
    assert server.control("settings")["synchronous_mode"] is False
    assert server.control("tms") == {}
    assert server.control("violations") == []


# ---------------------------------------------------------------------------------------------- the client API
def test_remote_standin_offers_only_real_carla_api():
    assert remote.remote_api_mismatches() == []


def test_the_chase_camera_image_reaches_the_env_through_shared_memory(servers):
    server = servers()
    env = _env(server, chase_camera_size=(96, 64))
    assert env.backend.chase_image is None
    env.reset(seed=0)
    (chase_id,) = [a[0] for a in server.control("alive") if a[2].endswith(":chase")]
    assert len(server.own_actors()) == N_EPISODE_ACTORS + 1
    images = [env.backend.chase_image]
    for _ in range(8):
        _, _, terminated, truncated, info = env.step(np.array([0.0, 1.0], np.float32))
        image = env.backend.chase_image
        assert image.shape == (64, 96, 3) and image is not images[-1]  # a copy of each frame's image
        assert tuple(image[0, 0]) == (server.control("image_value", chase_id),) * 3  # of the ticked frame
        images.append(image)
    assert not (terminated or truncated) and info["speed_ms"] > 1.0
    assert images[-1][32:].std() > 20 and not np.array_equal(images[0][32:], images[-1][32:])  # the scene, moving
    env.close()
    _assert_clean(server)


def test_env_runs_in_its_own_worker_process(servers):
    server = servers(tick_s=0.02)  # a tick takes 20 ms of the server's time
    env = _env(server)
    pid = env.backend.worker_pid
    assert pid is not None and pid != os.getpid()
    obs, _ = env.reset(seed=0)
    assert obs["image"].shape == (4, 84, 84) and env.observation_space.contains(obs)
    assert np.all(obs["image"][0] == obs["image"][-1])  # the first frame repeated
    t0 = time.monotonic()
    infos = _go(env, 5)
    assert time.monotonic() - t0 >= 5 * 0.02  # each step waited for its tick ...
    assert [i["sim_time_s"] for i in infos] == pytest.approx([0.05 * k for k in range(1, 6)])  # ... simulation time is dt
    assert len(server.own_actors()) == N_EPISODE_ACTORS
    assert server.control("settings") == {"synchronous_mode": True, "fixed_delta_seconds": 0.05, "no_rendering_mode": False}
    env.close()
    assert not _alive(pid)
    _assert_clean(server)


def test_the_default_route_is_town01s_and_a_route_error_crosses_the_worker(servers):
    """The worker plans Town01's scenario route; a junction choice it lacks is a CarlaRouteError in the trainer."""
    server = servers()
    env = _env(server, npc_vehicles=0)
    env.reset(seed=0)
    assert env.backend.route.points[0] == pytest.approx([88.40, -218.33], abs=0.01)  # road 24, lane -1, s 10 m
    env.close()
    bad = _env(server, npc_vehicles=0, junction_choices=["straight"])
    try:
        with pytest.raises(
            CarlaRouteError,
            match=r"^The route on Town01 from the Town01 scenario route's start .*"
            r"Junction 87 reached from road 24 lane -1 .* no 'straight' exit",
        ):
            bad.reset(seed=0)
    finally:
        bad.close()
    _assert_clean(server)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is dead
        return f.read().split()[2] != "Z"


# ---------------------------------------------------------------------------------------------- crashes
def test_server_crash_and_restart_truncates_one_episode_and_stepping_goes_on(servers):
    server = servers()
    env = _env(server)
    env.reset(seed=0)
    _go(env, 5)
    first_pid = env.backend.worker_pid
    server.restart_after(1.0)  # crash now, back in 1 s (a container restart policy)
    t0 = time.monotonic()
    _, reward, terminated, truncated, info = env.step(np.array([0.0, 0.3], np.float32))
    recovered_s = time.monotonic() - t0
    assert (terminated, truncated, reward, info["termination"]) == (False, True, 0.0, "backend_restarted")
    assert info["backend"]["restarts"] == 1 and info["backend"]["workers_started"] == 2
    assert env.backend.worker_pid != first_pid and not _alive(first_pid)
    assert recovered_s < 25.0
    env.reset(seed=1)
    infos = _go(env, 20)
    assert len(infos) == 20 and all(i["termination"] is None for i in infos)  # training goes on
    assert infos[-1]["backend"]["restarts"] == 1
    assert len(server.own_actors()) == N_EPISODE_ACTORS  # the restarted server holds this episode's actors only
    env.close()
    _assert_clean(server)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGABRT], ids=["SIGKILL", "abort"])
def test_killed_worker_is_replaced_and_its_actors_swept(servers, sig):
    server = servers()
    env = _env(server)
    env.reset(seed=0)
    _go(env, 3)
    pid = env.backend.worker_pid
    os.kill(pid, sig)  # SIGABRT: what os.abort() / LibCarla's std::terminate does
    info = _go(env, 1)[0]
    assert info["termination"] == "backend_restarted" and info["backend"]["workers_started"] == 2
    assert "died" in info["backend"]["restart_cause"]
    assert len(server.own_actors()) == N_EPISODE_ACTORS  # the dead worker's episode is still in the world ...
    env.reset(seed=1)
    own = server.own_actors()
    assert len(own) == N_EPISODE_ACTORS  # ... until the new worker swept it
    _go(env, 5)
    env.close()
    _assert_clean(server)


def test_hung_worker_is_detected_within_the_timeout_and_replaced(servers):
    server = servers()
    env = _env(server, worker_timeout_s=3.0)
    env.reset(seed=0)
    pid = env.backend.worker_pid
    os.kill(pid, signal.SIGSTOP)
    t0 = time.monotonic()
    info = _go(env, 1)[0]
    assert 3.0 <= time.monotonic() - t0 < 20.0
    assert info["termination"] == "backend_restarted" and "did not answer within 3 s" in info["backend"]["restart_cause"]
    assert not _alive(pid)
    env.reset(seed=1)
    assert len(server.own_actors()) == N_EPISODE_ACTORS
    env.close()
    _assert_clean(server)


def test_hang_on_a_live_server_is_recovered_inside_the_worker(servers):
    server = servers()
    env = _env(server)
    env.reset(seed=0)
    _go(env, 3)
    pid = env.backend.worker_pid
    server.pause()
    resumer = threading.Timer(1.2, server.resume)  # back before the worker's reconnect attempt: the same world
    resumer.start()
    info = _go(env, 1)[0]
    resumer.join()
    assert info["termination"] == "backend_restarted"
    assert env.backend.worker_pid == pid and info["backend"]["workers_started"] == 1  # no new process was needed
    env.reset(seed=1)
    _go(env, 5)
    assert len(server.own_actors()) == N_EPISODE_ACTORS
    env.close()
    _assert_clean(server)


def test_server_restart_between_episodes_is_waited_for_by_reset(servers):
    server = servers()
    env = _env(server)
    env.reset(seed=0)
    _go(env, 3)
    server.restart_after(1.0)
    _, info = env.reset(seed=1)  # the worker loses the server during the reset; a new one waits for it
    assert env.backend.workers_started == 2 and info["backend"]["restarts"] == 0  # no episode was cut short
    assert len(server.own_actors()) == N_EPISODE_ACTORS
    _go(env, 5)
    env.close()
    _assert_clean(server)


def test_close_on_a_dead_server_is_bounded_and_never_aborts_the_worker(servers):
    server = servers()
    env = _env(server)
    env.reset(seed=0)
    worker = env.backend._proc
    server.kill()
    t0 = time.monotonic()
    env.close()  # the TM is not touched: a TM whose server is gone aborts its process
    assert time.monotonic() - t0 < 15.0
    assert worker.exitcode == 0


def test_server_that_does_not_come_back_ends_with_a_clear_error(servers):
    server = servers()
    env = _env(server, server_wait_s=2.0)
    env.reset(seed=0)
    server.kill()
    t0 = time.monotonic()
    with pytest.raises(CarlaConnectionError) as err:
        _go(env, 1)
    assert time.monotonic() - t0 < 30.0
    msg = str(err.value)
    assert server.address in msg and "server_wait_s" in msg and "checkpoint" in msg and "CarlaUE4.sh" in msg
    t0 = time.monotonic()
    env.close()
    assert time.monotonic() - t0 < 5.0


def test_two_training_envs_and_an_eval_env_on_three_servers_one_dies(servers):
    from stable_baselines3.common.vec_env import DummyVecEnv

    pool = [servers() for _ in range(3)]
    listed = [s.address for s in pool]
    venv = DummyVecEnv([lambda: _env(servers=listed) for _ in range(2)])  # rl-zoo's default --vec-env dummy
    eval_env = _env(servers=listed)
    used = [e.backend.info["address"] for e in venv.envs] + [eval_env.backend.info["address"]]
    assert sorted(used) == sorted(listed)  # one server each
    venv.reset()
    eval_env.reset(seed=0)
    actions = np.tile(np.array([0.0, 0.3], np.float32), (2, 1))
    for _ in range(3):
        venv.step(actions)
    dying = next(s for s in pool if s.address == used[1])
    dying.restart_after(1.0)
    _, _, dones, infos = venv.step(actions)
    assert list(dones) == [False, True]
    assert infos[1]["termination"] == "backend_restarted" and infos[0]["termination"] is None
    for _ in range(10):  # both keep going (the VecEnv reset the second one)
        _, _, dones, infos = venv.step(actions)
        assert not dones.any()
    assert _go(eval_env, 10)[-1]["termination"] is None  # the eval env never noticed
    assert [e.backend.restarts for e in venv.envs] == [0, 1]
    venv.close()
    eval_env.close()
    for server in pool:
        _assert_clean(server)


def test_one_env_per_server_unless_shared(servers):
    server = servers()
    first = _env(server)
    with pytest.raises(CarlaBackendError, match=r"already used by another env.*twice its dt.*share_server=True"):
        _env(server, tm_port=server.port + 6001)
    first.close()
    a = _env(server, share_server=True)
    b = _env(server, share_server=True, tm_port=server.port + 6001, route_start=(24, -1, 40.0))  # 30 m ahead of a
    a.reset(seed=0)
    b.reset(seed=0)
    _go(a, 2)
    a.close()
    assert server.control("settings")["synchronous_mode"] is True  # b still runs
    _go(b, 2)
    b.close()
    _assert_clean(server)


def test_many_resets_with_faults_and_worker_deaths_leak_nothing(servers):
    n = int(os.environ.get("SB3_AV_CARLA_RESETS", "60"))
    server = servers()
    env = _env(server)
    deaths = {n // 3: signal.SIGKILL, (2 * n) // 3: signal.SIGABRT}
    deaths.update({k: signal.SIGKILL for k in range(100, n, 100)})  # the full count: one more every 100 resets
    refused = 0
    for i in range(n):
        k = i % 20
        if i in deaths:
            os.kill(env.backend.worker_pid, deaths[i])
        elif k == 5:
            server.control("fail", "world.tick")  # a hung tick: recovered in the worker
        elif k == 11:
            server.control("fail", "world.spawn_actor", 1, 1, False, "Spawn failed because of collision at spawn position")
        elif k == 17:
            server.control("fail", "client.apply_batch_sync", 1, 1, True)  # NPCs spawned, their ids lost
        try:
            env.reset(seed=i)
        except CarlaBackendError:
            refused += 1
            assert server.own_actors() == []
            continue
        assert len(server.own_actors()) == N_EPISODE_ACTORS, f"reset {i}"
        if i % 10 == 0:
            _go(env, 2)
    assert refused == sum(1 for i in range(n) if i % 20 == 11 and i not in deaths)
    assert env.backend.workers_started == 1 + len(deaths)
    env.close()
    _assert_clean(server)


# ---------------------------------------------------------------------------------------------- without workers
def test_without_workers_a_dead_server_aborts_the_whole_process(servers):
    """The finding the workers fix: with two envs in one process, one server's death aborts the process."""
    a, b = servers(), servers()
    script = f"""
import os, numpy as np
os.environ[{CLIENT_MODULE_ENV!r}] = "tests.carla_standin_remote"
from sb3_av.envs.carla import make_carla_env
from tests import carla_standin_remote as remote
from sb3_av.envs.carla.worker import import_client_module
api, client = import_client_module()
kw = dict(npc_vehicles=0, timeout_s=1.0, connect_timeout_s=1.0, worker=False)
from sb3_av.envs.carla.backend import CarlaBackend
from sb3_av.envs.carla.config import CarlaConfig
envs = [CarlaBackend(CarlaConfig(port=p, **kw), client_factory=client, carla_module=api) for p in ({a.port}, {b.port})]
for e in envs:
    e.reset(seed=0)
print("ready", flush=True)
input()
envs[0].step(0.0, 0.3, 0.0)  # ticks server A, which steps B's Traffic Manager too
print("survived", flush=True)
"""
    env = dict(os.environ, SB3_AV_CARLA_LOCK_DIR=os.environ["SB3_AV_CARLA_LOCK_DIR"])
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdin is not None
    assert proc.stdout.readline().strip() == "ready"
    b.kill()
    out, _ = proc.communicate("\n", timeout=60)
    assert proc.returncode == -signal.SIGABRT and "survived" not in out
