"""The CARLA backend against a stand-in server (tests/carla_standin.py), with the real ``carla`` client module."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import carla
import numpy as np
import pytest

from sb3_av.envs.carla import (
    CarlaBackendError,
    CarlaConfig,
    CarlaConnectionError,
    CarlaVersionError,
    make_carla_env,
    parse_server,
    server_for_rank,
)
from sb3_av.envs.carla.backend import CarlaBackend, _server_lost
from sb3_av.envs.carla.errors import CarlaSensorTimeout, CarlaServerRestarted
from sb3_av.envs.carla.route import carla_to_world_xy, carla_to_world_yaw, spawn_transform, start_waypoint
from sb3_av.envs.carla.route import world_to_carla_steer
from sb3_av.envs.carla.sensors import EventQueue, FrameQueue, bgra_to_gray, bgra_to_rgb
from tests import carla_standin as cs


#: A second ego's start on the stand-in's Town01: 30 m ahead of the scenario route's start (road 24, lane -1, s 10 m).
SECOND_START = (24, -1, 40.0)


@pytest.fixture(autouse=True)
def _own_lock_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SB3_AV_CARLA_LOCK_DIR", str(tmp_path / "locks"))
    cs.reset_process_state()  # each test starts as a fresh client process would (no Traffic Manager registered)
    yield
    cs.reset_process_state()


@pytest.fixture
def net():
    return cs.StandinNetwork()


def _backend(net, **kwargs) -> CarlaBackend:
    values = {"npc_vehicles": 5, "reconnect_backoff_s": 0.0, "max_reconnects": 2, "sensor_timeout_s": 0.2}
    values.update(kwargs)
    return CarlaBackend(values, client_factory=net.client_factory, carla_module=cs.standin_carla)


def _own(server: cs.StandinServer, backend: CarlaBackend) -> list:
    """Actors carrying the backend's tag, or attached to one that does."""
    tagged = [a for a in server.alive() if a.attributes.get("role_name", "").startswith(backend.tag + ":")]
    return tagged


# ---------------------------------------------------------------------------------------------- fidelity
def test_standin_offers_only_real_carla_api():
    assert cs.api_mismatches() == []
    assert cs.standin_carla.Transform is carla.Transform
    assert cs.standin_carla.command.DestroyActor is carla.command.DestroyActor
    assert isinstance(
        cs.standin_carla.command.SpawnActor(cs.StandinBlueprint("vehicle.x"), carla.Transform()), carla.command.SpawnActor
    )


def test_backend_uses_real_carla_types(net):
    server = net.add()
    backend = _backend(net)
    backend.reset(seed=0)
    backend.step(0.2, 0.5, 0.0)
    controls = [args[1] for m, args in server.calls if m == "vehicle.apply_control"]
    assert controls and all(isinstance(c, carla.VehicleControl) for c in controls)
    settings = [args[0] for m, args in server.calls if m == "world.apply_settings"]
    assert all(isinstance(s, carla.WorldSettings) for s in settings)
    assert isinstance(server.map._map, carla.Map)
    backend.close()
    assert server.violations == []


def test_importing_the_package_imports_no_carla():
    code = "import sys, sb3_av.envs, sb3_av.envs.carla; assert 'carla' not in sys.modules, 'carla imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ---------------------------------------------------------------------------------------------- geometry
def test_coordinate_conversion():
    assert carla_to_world_xy(3.0, 4.0) == (3.0, -4.0)
    assert carla_to_world_yaw(90.0) == pytest.approx(-math.pi / 2)  # CARLA yaw 90 = facing +y = to the right
    assert carla_to_world_yaw(-90.0) == pytest.approx(math.pi / 2)
    assert carla_to_world_yaw(180.0) == pytest.approx(-math.pi)
    assert world_to_carla_steer(0.3) == -0.3


def test_left_steer_turns_counter_clockwise_and_is_sent_negative(net):
    server = net.add()
    backend = _backend(net)
    first = backend.reset(seed=0)
    frame = first
    for _ in range(30):
        frame = backend.step(0.5, 1.0, 0.0)
    sent = [args[1].steer for m, args in server.calls if m == "vehicle.apply_control"]
    assert all(s == pytest.approx(-0.5) for s in sent)
    assert frame.yaw > first.yaw + 0.3  # counter-clockwise in the env's frame
    dx, dy = frame.x - first.x, frame.y - first.y
    assert math.cos(first.yaw) * dy - math.sin(first.yaw) * dx > 1.0  # and to the left of the start heading
    assert frame.speed_ms > 3.0
    assert frame.sim_time_s == pytest.approx(30 * 0.05)
    backend.close()


def test_route_follows_the_real_map(net):
    net.add()
    backend = _backend(net)
    backend.reset(seed=0)
    route = backend.route
    pts = route.points
    assert route.half_lane_width_m == pytest.approx(2.0)  # Town01's 4 m lanes
    seg = np.hypot(*np.diff(pts, axis=0).T)
    assert seg.sum() == pytest.approx(250.0, abs=3.0)
    assert np.all(seg > 0)
    assert pts[0] == pytest.approx([88.40, -218.33], abs=0.05)  # Town01 road 24's right-hand lane, y flipped from CARLA
    start_heading = math.atan2(*(pts[1] - pts[0])[::-1])
    assert start_heading == pytest.approx(-math.pi / 2, abs=0.05)  # CARLA +y is the env's -y
    end_heading = math.atan2(*(pts[-1] - pts[-2])[::-1])
    assert end_heading == pytest.approx(0.0, abs=0.05)  # after the left turn, heading +x
    backend.close()


def _outline_distance(a, b) -> float:
    """The distance between two actors' boxes seen from above, by brute force on points along their outlines (CARLA's
    own ``BoundingBox.get_world_vertices``; 1 cm apart), independent of the backend's separating-axis maths."""

    def outline(actor) -> np.ndarray:
        vertices = np.array([[v.x, v.y, v.z] for v in actor.bounding_box.get_world_vertices(actor.get_transform())])
        bottom = vertices[vertices[:, 2] < vertices[:, 2].mean(), :2]  # the four below the box's centre
        centre = bottom.mean(axis=0)
        corners = bottom[np.argsort(np.arctan2(*(bottom - centre).T[::-1]))]  # around the box
        edges = zip(corners, np.roll(corners, -1, axis=0), strict=True)
        return np.concatenate([np.linspace(p, q, int(np.hypot(*(q - p)) * 100) + 2) for p, q in edges])

    pa, pb = outline(a), outline(b)
    return float(np.min(np.hypot(pa[:, None, 0] - pb[None, :, 0], pa[:, None, 1] - pb[None, :, 1])))


def test_leader_and_clearance_are_reported_as_on_lite(net):
    """``lead_distance_m`` / ``lead_speed_ms`` / ``clearance_m`` from the actors' boxes and the last tick's transforms:
    an NPC 20 m ahead on the route lane leads, bumper to bumper; one beside the ego in the other lane is the nearest
    box but no leader; one behind the ego leads nothing."""
    net.add()
    backend = _backend(net, npc_vehicles=3)
    backend.reset(seed=0)
    ahead, beside, behind = backend._npcs
    start = backend._route_waypoints[0]
    ego_tf = backend._ego.get_transform()

    def place(npc: cs.StandinVehicle, waypoint, speed: float = 0.0) -> None:
        npc._transform = carla.Transform(waypoint.transform.location, waypoint.transform.rotation)
        npc.speed = speed

    place(ahead, start.next(20.0)[0], speed=3.0)
    place(beside, start.get_left_lane())  # Town01: the other direction's lane, 4 m to the left
    place(behind, start.previous(15.0)[0])
    extra = backend.step(0.0, 0.0, 1.0).extra
    half_length, half_width = cs.CAR_BOX_EXTENT[:2]
    # the road is straight there and both boxes sit 0.1 m ahead of their origins: the gap is the origins' distance
    # less the two half lengths
    origins = ahead.get_transform().location.distance(ego_tf.location)
    assert extra["lead_distance_m"] == pytest.approx(origins - 2 * half_length, abs=0.02)
    assert extra["lead_distance_m"] == pytest.approx(20.0 - 2 * half_length, abs=0.3)
    assert extra["lead_speed_ms"] == pytest.approx(3.0)
    assert type(extra["lead_distance_m"]) is float and type(extra["clearance_m"]) is float  # plain numbers, as on Lite
    # side by side, facing each other's way: the gap between the lanes' centres less the two half widths
    d, f = beside.get_transform().location - ego_tf.location, ego_tf.get_forward_vector()
    lateral = abs(d.x * f.y - d.y * f.x)  # across the (parallel) lanes
    assert extra["clearance_m"] == pytest.approx(lateral - 2 * half_width, abs=0.02)
    assert extra["clearance_m"] == pytest.approx(_outline_distance(backend._ego, beside), abs=0.02)
    assert extra["clearance_m"] == pytest.approx(4.0 - 2 * half_width, abs=0.1)
    place(beside, start.get_left_lane().next(60.0)[0])
    extra = backend.step(0.0, 0.0, 1.0).extra  # the nearest box is now the one 15 m behind: no leader, but near
    # that NPC stands on the curve before the start (turned by 18 degrees): against the boxes' outlines
    assert extra["clearance_m"] == pytest.approx(_outline_distance(backend._ego, behind), abs=0.02)
    assert extra["lead_distance_m"] == pytest.approx(origins - 2 * half_length, abs=0.02)

    place(ahead, start.next(150.0)[0])  # beyond the 100 m range
    place(beside, start.get_left_lane().next(60.0)[0])  # that lane runs the other way: 60 m behind
    place(behind, start.previous(40.0)[0])  # no NPC within 20 m now
    extra = backend.step(0.0, 0.0, 1.0).extra
    assert extra["lead_distance_m"] is None and extra["lead_speed_ms"] is None and extra["clearance_m"] is None
    backend.close()


def test_headway_penalty_and_the_pid_acc_run_on_carla(net):
    """The CARLA env reports the keys HeadwayPenalty and the PID's ACC read: no 'backend does not report' error."""
    from sb3_av.baselines import PIDPurePursuit
    from sb3_av.envs.wrappers import ClearancePenalty, HeadwayPenalty

    net.add()
    carla_env = make_carla_env(
        "CarlaScenario0", client_factory=net.client_factory, carla_module=cs.standin_carla, npc_vehicles=2, max_steps=5
    )
    env = ClearancePenalty(HeadwayPenalty(carla_env))
    obs, info = env.reset(seed=0)
    pid = PIDPurePursuit.from_env(env)
    for _ in range(3):
        obs, _, _, _, info = env.step(pid.act(obs, info))
        assert {"lead_distance_m", "lead_speed_ms", "clearance_m"} <= set(info["backend"])
        assert {"headway", "clearance"} <= set(info["reward_terms"])
    env.close()


# ---------------------------------------------------------------------------------------------- images and frames
def test_bgra_to_gray():
    raw = np.zeros((2, 3, 4), np.uint8)
    raw[0, 0, :3] = (0, 0, 255)  # pure red in BGRA
    raw[0, 1, :3] = (255, 255, 255)
    raw[1, 2, :3] = (255, 0, 0)  # pure blue
    gray = bgra_to_gray(raw.tobytes(), width=3, height=2, size=16)
    assert gray.shape == (16, 16) and gray.dtype == np.uint8
    assert gray[0, 0] == 76 and gray[0, 6] == 255 and gray[15, 15] == 29
    same = bgra_to_gray(raw.tobytes(), width=3, height=2, size=2)
    assert same.shape == (2, 2)
    with pytest.raises(ValueError, match="needs 24 bytes"):
        bgra_to_gray(b"\x00" * 10, width=3, height=2, size=16)


def test_frame_queue_rejects_stale_and_lost_data():
    q = FrameQueue("camera")
    for f in (5, 6, 7):
        q.put(SimpleNamespace(frame=f))
    assert q.get(7, timeout_s=0.1).frame == 7
    assert q.stale_dropped == 2
    with pytest.raises(CarlaSensorTimeout, match="No camera data for frame 8"):
        q.get(8, timeout_s=0.05)
    q.put(SimpleNamespace(frame=10))
    with pytest.raises(CarlaSensorTimeout, match="frame 9 was lost"):
        q.get(9, timeout_s=0.05)
    small = FrameQueue("camera", maxlen=3)
    for f in range(10):
        small.put(SimpleNamespace(frame=f))
    assert small.get(9, timeout_s=0.05).frame == 9 and small.stale_dropped == 9  # bounded, oldest dropped first
    events = EventQueue("collision")
    for f in (3, 4, 5):
        events.put(SimpleNamespace(frame=f))
    assert [e.frame for e in events.take(4)] == [3, 4]
    assert [e.frame for e in events.take(5)] == [5]


def test_stale_images_are_dropped_and_the_ticked_frame_is_used(net):
    server = net.add()
    backend = _backend(net)
    before = backend.reset(seed=0).extra["stale_images_dropped"]
    server.stale_images = 3
    frame = backend.step(0.0, 0.5, 0.0)
    assert backend.last_frame_id == server.frame
    camera = server.alive("sensor.camera")[0]
    assert int(frame.image[0, 0]) == server.image_value(server.frame, camera)  # each frame has its own gray value
    time.sleep(0.1)  # stale images delivered after the fresh one (the stream's delays) are dropped by the next step
    later = backend.step(0.0, 0.5, 0.0)
    assert int(later.image[0, 0]) == server.image_value(server.frame, camera)
    assert later.extra["stale_images_dropped"] - before == 3
    backend.close()


def test_lost_image_times_out_and_restarts_the_episode(net):
    server = net.add()
    backend = _backend(net, sensor_timeout_s=0.1)
    backend.reset(seed=0)
    server.drop_images = 1
    t0 = time.monotonic()
    frame = backend.step(0.0, 0.5, 0.0)
    assert time.monotonic() - t0 < 2.0
    assert frame.extra["episode_restarted"] is True
    assert "camera" in frame.extra["restart_cause"]
    assert int(frame.image[0, 0]) == server.image_value(server.frame, server.alive("sensor.camera")[0])
    assert len(_own(server, backend)) == 4 + 5
    backend.close()
    assert server.violations == []


def test_collision_event_is_reported(net):
    server = net.add()
    backend = _backend(net)
    backend.reset(seed=0)
    assert backend.step(0.0, 0.0, 0.0).collision is False
    server.collide_next_tick = True
    frame = backend.step(0.0, 0.0, 0.0)
    assert frame.collision is True and frame.extra["collision_with"]
    assert backend.step(0.0, 0.0, 0.0).collision is False
    backend.close()


def _chase_camera(server: cs.StandinServer) -> cs.StandinActor:
    (camera,) = [a for a in server.alive("sensor.camera") if a.attributes["role_name"].endswith(":chase")]
    return camera


def _ego_pixels(rgb: np.ndarray) -> np.ndarray:
    """Where the stand-in draws the ego (blue, any of its shades), as a boolean mask."""
    return (rgb[..., 2] > 120) & (rgb[..., 0] < 60) & (rgb[..., 1] < 110)


def test_bgra_to_rgb():
    raw = np.zeros((2, 3, 4), np.uint8)
    raw[0, 0] = (10, 20, 30, 255)  # B, G, R, A
    rgb = bgra_to_rgb(raw.tobytes(), width=3, height=2)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8 and tuple(rgb[0, 0]) == (30, 20, 10)
    with pytest.raises(ValueError, match="needs 24 bytes"):
        bgra_to_rgb(b"\x00" * 10, width=3, height=2)


def test_chase_camera_is_off_by_default_and_its_size_is_validated(net):
    assert CarlaConfig().chase_camera_size is None
    assert CarlaConfig(chase_camera_size=64).chase_camera_size == (64, 64)
    assert CarlaConfig(chase_camera_size=[320, 240]).chase_camera_size == (320, 240)
    for bad in (8, (320,), (320, 8), (320.0, 240), "320x240", True):
        with pytest.raises(ValueError, match="chase_camera_size must be None, an int or"):
            CarlaConfig(chase_camera_size=bad)
    server = net.add()
    backend = _backend(net)
    backend.reset(seed=0)
    assert len(server.alive("sensor.camera")) == 1 and backend.chase_image is None  # training pays for no second camera
    backend.close()


def test_chase_camera_sees_the_ego_from_behind_in_the_ticked_frame(net):
    server = net.add()
    backend = _backend(net, chase_camera_size=(160, 120))
    backend.reset(seed=0)
    chase = _chase_camera(server)
    assert chase.parent is backend._ego and chase.attributes["image_size_x"] == "160"
    assert (chase.attributes["image_size_y"], chase.attributes["fov"]) == ("120", "90.0")
    ego, cam = backend._ego.get_transform(), chase.get_transform()
    yaw = math.radians(ego.rotation.yaw)
    assert cam.location.x == pytest.approx(ego.location.x - 6.0 * math.cos(yaw), abs=1e-3)  # 6 m behind, 3 m above
    assert cam.location.y == pytest.approx(ego.location.y - 6.0 * math.sin(yaw), abs=1e-3)
    assert cam.location.z == pytest.approx(ego.location.z + 3.0, abs=1e-3)
    assert cam.rotation.pitch == pytest.approx(-15.0)
    first = backend.chase_image.copy()
    assert first.shape == (120, 160, 3) and first.dtype == np.uint8
    assert tuple(first[0, 0]) == (server.image_value(server.frame, chase),) * 3  # the sky marks the image's frame
    assert _ego_pixels(first)[60:, 40:120].sum() > 500  # the ego, in front of the camera, low in the picture
    server.stale_images = 3  # stale images reach both cameras; each queue drops them
    for _ in range(30):
        frame = backend.step(0.0, 1.0, 0.0)
        image = backend.chase_image
        assert tuple(image[0, 0]) == (server.image_value(server.frame, chase),) * 3
        assert int(frame.image[0, 0]) == server.image_value(server.frame, server.alive("sensor.camera")[0])
    assert frame.speed_ms > 3.0
    ground = slice(70, 120)
    assert np.abs(image[ground].astype(int) - first[ground].astype(int)).mean() > 2.0  # the road moved under the car
    assert image[ground].std() > 20  # a scene, not a blank frame
    sensor_ids = {a.id for a in server.alive("sensor.")}
    backend.close()
    assert chase.id in {args[0] for m, args in server.calls if m == "sensor.stop"} and chase.id in sensor_ids
    assert _own(server, backend) == [] and server.violations == []  # stopped, and destroyed before the ego


def test_chase_camera_is_bookkept_like_the_other_sensors(net):
    server = net.add()
    backend = _backend(net, chase_camera_size=64)
    for i in range(5):
        if i % 2:
            server.fail("world.spawn_actor", skip=3, error="bad attribute")  # the chase camera (4th sensor) refused
            with pytest.raises(CarlaBackendError, match="chase camera"):
                backend.reset(seed=i)
            assert _own(server, backend) == []
            continue
        backend.reset(seed=i)
        own = _own(server, backend)
        assert len(own) == 1 + 4 + 5 and sum(a.type_id == "sensor.camera.rgb" for a in own) == 2
    _chase_camera(server).callback = lambda data: None  # the chase camera's images are lost from now on
    frame = backend.step(0.0, 0.5, 0.0)
    assert frame.extra["episode_restarted"] is True and "chase camera" in frame.extra["restart_cause"]
    assert len(_own(server, backend)) == 1 + 4 + 5  # a new episode with a new chase camera, the old one gone
    backend.close()
    assert _own(server, backend) == [] and server.violations == []


# ---------------------------------------------------------------------------------------------- actor bookkeeping
def test_1000_resets_leak_nothing_even_with_failures_mid_reset(net):
    server = net.add()
    bp = cs.StandinBlueprint("vehicle.audi.a2", role_name="someone_else", number_of_wheels="4")
    foreign = server._add(cs.StandinVehicle, bp, carla.Transform(carla.Location(1000, 1000, 0)), None)
    foreign_sensor = server._add(cs.StandinSensor, cs.StandinBlueprint("sensor.other.collision"), carla.Transform(), foreign)
    backend = _backend(net, npc_vehicles=20)
    n_npc = None
    unexpected = 0
    t0 = time.monotonic()
    for i in range(1000):
        k = i % 50
        if k == 7:
            server.fail("world.spawn_actor", skip=1)  # the second sensor fails (a CARLA RuntimeError)
        elif k == 19:
            server.fail("client.apply_batch_sync", skip=1, after=True)  # NPCs spawned, their ids lost
        elif k == 31:
            server.fail("world.tick")  # the server hangs on the first tick
        elif k == 43:
            server.fail("world.spawn_actor", skip=2, exception=KeyError)  # an unexpected error, not CARLA's
        try:
            frame = backend.reset(seed=i)
        except KeyError:
            unexpected += 1
            assert _own(server, backend) == []  # what this reset spawned is gone
            continue
        own = _own(server, backend)
        n_npc = frame.extra["npc_vehicles"]
        assert len(own) == 1 + 3 + n_npc, f"reset {i}: {len(own)} own actors"
        assert sum(a.type_id.startswith("sensor.") for a in own) == 3
        if i % 100 == 0:
            backend.step(0.1, 0.5, 0.0)
    elapsed = time.monotonic() - t0
    assert unexpected == 20
    assert n_npc == 20
    assert server.count("world.try_spawn_actor") >= 1000
    backend.close()
    assert _own(server, backend) == []
    assert foreign.is_alive and foreign_sensor.is_alive and server.spectator.is_alive
    assert {a.id for a in server.alive()} == {foreign.id, foreign_sensor.id, server.spectator.id}
    assert server.violations == []
    assert elapsed < 30.0


def test_close_destroys_sensors_before_their_vehicle_and_is_idempotent(net):
    server = net.add()
    backend = _backend(net)
    backend.reset(seed=0)
    sensor_ids = {a.id for a in server.alive("sensor.")}
    backend.close()
    backend.close()
    stops = [args[0] for m, args in server.calls if m == "sensor.stop"]
    assert set(stops) == sensor_ids
    assert server.violations == []  # no sensor destroyed while listening, no vehicle before its sensors
    with pytest.raises(RuntimeError, match="closed"):
        backend.reset()


def test_failed_first_reset_then_close_leaves_nothing(net):
    server = net.add()
    backend = _backend(net, max_reconnects=0)
    server.fail("world.tick", times=5)
    with pytest.raises(CarlaConnectionError):
        backend.reset(seed=0)
    backend.close()
    assert _own(server, backend) == []
    assert server.settings.synchronous_mode is False


# ---------------------------------------------------------------------------------------------- settings, town, TM
def test_settings_are_synchronous_while_open_and_restored_on_close(net):
    server = net.add()
    before = cs._copy_settings(server.settings)
    backend = _backend(net, dt=0.05)
    assert server.settings.synchronous_mode is True
    assert server.settings.fixed_delta_seconds == pytest.approx(0.05)
    tm = server.traffic_managers[8000]
    assert tm.synchronous is True and tm.distance == pytest.approx(2.5)
    backend.reset(seed=11)
    assert tm.seeds[-1] == 11
    ticks = [args[0] for m, args in server.calls if m == "world.tick"]
    assert ticks and all(t == pytest.approx(10.0) for t in ticks)  # world.tick(timeout_s), never without
    backend.close()
    assert server.settings == before
    assert tm.synchronous is False


def test_settings_restored_by_the_last_env_on_a_shared_server(net):
    server = net.add()
    a = _backend(net, tm_port=8100, npc_vehicles=0, share_server=True)
    b = _backend(net, tm_port=8101, route_start=SECOND_START, share_server=True)  # two egos need two start points
    a.reset(seed=0)
    b.reset(seed=1)
    assert len(_own(server, a)) == 4 and len(_own(server, b)) == 4 + 5
    a.close()
    assert server.settings.synchronous_mode is True  # b still runs
    assert len(_own(server, b)) == 4 + 5  # a destroyed only its own actors
    b.step(0.0, 0.5, 0.0)
    b.close()
    assert server.settings.synchronous_mode is False
    assert server.violations == []


def test_a_killed_runs_synchronous_mode_is_not_taken_for_the_original(net):
    server = net.add()
    killed = _backend(net, tm_port=8100)
    killed.reset(seed=0)
    assert server.settings.synchronous_mode is True
    killed.conn._claim.release()  # SIGKILL: the kernel drops the locks; nothing is restored, nothing destroyed
    assert server.settings.synchronous_mode is True
    nxt = _backend(net, tm_port=8101, route_start=SECOND_START)  # the dead run's ego still stands on the route start
    nxt.reset(seed=0)
    nxt.close()
    assert server.settings.synchronous_mode is False  # the user's settings, not the dead run's
    assert server.settings.fixed_delta_seconds is None
    assert not nxt.conn._claim.settings_path.exists()
    again = _backend(net, tm_port=8101)  # the file is gone: the world as found is the original again
    again.close()
    assert server.settings.synchronous_mode is False


def test_town_is_loaded_only_when_another_one_is_loaded(net):
    same = net.add(port=2000, town="Town01")
    other = net.add(port=2010, town="Town02")
    _backend(net, port=2000).close()
    _backend(net, port=2010).close()
    assert same.count("client.load_world") == 0
    assert other.count("client.load_world") == 1 and other.town == "Town01"
    with pytest.raises(CarlaBackendError, match="no map 'Town99'"):
        _backend(net, port=2000, town="Town99")


def test_tm_ports_are_separate_for_two_envs_on_two_servers(net):
    s0 = net.add(port=2000)
    s1 = net.add(port=2002)
    servers = ["127.0.0.1:2000", "127.0.0.1:2002"]
    envs = [_backend(net, servers=servers, rank=r) for r in range(2)]
    for e in envs:
        e.reset(seed=0)
    assert set(s0.traffic_managers) == {8000} and set(s1.traffic_managers) == {8002}
    assert set(s0.autopilot.values()) == {8000} and set(s1.autopilot.values()) == {8002}
    assert len(s0.autopilot) == 5 and len(s1.autopilot) == 5
    for e in envs:
        e.close()
    assert s0.violations == [] and s1.violations == []


def test_envs_without_a_rank_spread_over_the_servers(net):
    servers = [net.add(port=p) for p in (2000, 2010, 2020)]
    listed = ["127.0.0.1:2000", "127.0.0.1:2010", "127.0.0.1:2020"]
    envs = [_backend(net, servers=listed) for _ in range(3)]  # e.g. 2 training envs and an eval env
    assert [e.conn.address for e in envs] == listed
    assert [e.conn.tm_port for e in envs] == [8000, 8010, 8020]
    with pytest.raises(CarlaBackendError, match=r"Every server in servers=.* is already used"):
        _backend(net, servers=listed)
    envs[1].close()
    fourth = _backend(net, servers=listed)
    assert fourth.conn.address == "127.0.0.1:2010"  # the freed server is taken again
    for e in (envs[0], envs[2], fourth):
        e.reset(seed=0)
        e.close()
    assert all(s.violations == [] and len(s.alive()) == 1 for s in servers)


def test_same_tm_port_twice_on_one_machine_is_refused_clearly(net):
    net.add(port=2000)
    net.add(host="10.0.0.2", port=2000)
    first = _backend(net)
    with pytest.raises(CarlaBackendError, match="Traffic Manager port 8000 is already used"):
        _backend(net)  # same server, same TM port
    with pytest.raises(CarlaBackendError, match="host:port:tm_port"):
        _backend(net, host="10.0.0.2")  # another host with the same port: same default TM port
    second = _backend(net, servers=["10.0.0.2:2000:8010"])
    assert second.conn.tm_port == 8010
    first.close()
    second.close()
    _backend(net).close()  # the port is free again after close


def test_tm_bind_error_gives_a_clear_message(net, monkeypatch):
    net.add(port=2000)
    server = net.add(port=2004)
    holder = _backend(net, port=2000, tm_port=8500)
    monkeypatch.setenv("SB3_AV_CARLA_LOCK_DIR", str(Path(holder.conn._claim.tm_path).parent / "other"))
    holders_tms = dict(cs.TM_MAP)
    cs.TM_MAP.clear()  # the holder is another process (a process's own TM map would hand out its TM instead)
    with pytest.raises(CarlaBackendError, match="Could not start the Traffic Manager on port 8500"):
        _backend(net, port=2004, tm_port=8500)  # a TM of another server listens there (another program)
    assert server.settings.synchronous_mode is False  # restored after the failed connect
    cs.TM_MAP.update(holders_tms)
    holder.close()


# ---------------------------------------------------------------------------------------------- lost / hung server
def test_tick_timeout_in_step_reconnects_and_restarts_the_episode(net):
    server = net.add()
    backend = _backend(net)
    backend.reset(seed=0)
    clients_before = len(net.clients)
    server.fail("world.tick")
    frame = backend.step(0.0, 0.5, 0.0)
    assert frame.extra["episode_restarted"] is True and "time-out" in frame.extra["restart_cause"]
    assert frame.extra["restarts"] == 1
    assert frame.sim_time_s == 0.0
    assert len(net.clients) == clients_before + 1
    assert len(_own(server, backend)) == 4 + 5
    later = backend.step(0.0, 0.5, 0.0)
    assert later.extra.get("episode_restarted") is None and later.extra["restarts"] == 1
    backend.close()
    assert server.violations == []


def test_restarted_server_is_not_reconnected_in_the_same_process(net):
    """The process's TM is bound to the old server: a reconnect here would step it and abort; the worker is replaced."""
    server = net.add()
    backend = _backend(net)
    backend.reset(seed=0)
    old_tm = cs.TM_MAP[8000]
    server.restart()  # all actors gone, asynchronous mode, the old connection is dead
    with pytest.raises(CarlaServerRestarted, match="new client process"):
        backend.step(0.0, 0.5, 0.0)
    assert old_tm.ticks > 0 and server.settings.synchronous_mode is False  # nothing was applied (it would have aborted)
    backend.close()  # the server does not know the old connection: the TM is not touched
    assert server.violations == []


def test_lost_server_gives_up_after_bounded_attempts_with_a_clear_error(net, tmp_path):
    server = net.add()
    backend = _backend(net, max_reconnects=3, reconnect_backoff_s=0.01)
    backend.reset(seed=0)
    server.down = True
    t0 = time.monotonic()
    with pytest.raises(CarlaConnectionError) as err:
        backend.step(0.0, 0.5, 0.0)
    assert time.monotonic() - t0 < 2.0
    msg = str(err.value)
    assert "127.0.0.1:2000" in msg and "3 reconnect attempt(s) failed" in msg
    assert "CarlaUE4.sh" in msg and "carlasim/carla:0.9.16" in msg and "checkpoint" in msg
    get_version = server.count("client.get_server_version")
    assert get_version == 1 + 3
    keep = tmp_path / "checkpoint.zip"
    keep.write_bytes(b"saved")
    t0 = time.monotonic()
    backend.close()  # must not hang on the dead server
    assert time.monotonic() - t0 < 1.0
    assert keep.read_bytes() == b"saved"
    server.down = False
    _backend(net).close()  # the TM port was released


def test_only_time_outs_and_lost_connections_count_as_a_lost_server():
    lost = [
        cs._TIMEOUT.format(ms=10000, addr="127.0.0.1:2000"),  # the carla client's TimeoutException text
        "connect: Connection refused",
        "read: End of file",
        "write: Broken pipe",
        "Connection reset by peer",
    ]
    refused = [
        "Spawn failed because of collision at spawn position",
        "ActorBlueprint: invalid value 'abc' for attribute 'image_size_x'",
        "trying to operate on a destroyed actor; an actor's function was called, but the actor is already destroyed.",
    ]
    assert all(_server_lost(RuntimeError(m)) for m in lost)
    assert not any(_server_lost(RuntimeError(m)) for m in refused)
    assert _server_lost(CarlaSensorTimeout("No camera data for frame 3"))
    assert not _server_lost(NotImplementedError("timeout"))  # a RuntimeError subclass: not the client's
    assert not _server_lost(KeyError("connection"))


def test_refused_spawn_fails_at_once_with_a_clear_error_and_no_reconnect(net):
    server = net.add()
    backend = _backend(net, reconnect_backoff_s=5.0)  # a reconnect would sleep 5 s
    backend.reset(seed=0)
    clients_before = len(net.clients)
    server.fail("world.spawn_actor", skip=1, error="Spawn failed because of collision at spawn position")
    t0 = time.monotonic()
    with pytest.raises(CarlaBackendError) as err:
        backend.reset(seed=1)
    assert time.monotonic() - t0 < 2.0
    msg = str(err.value)
    assert "collision at spawn position" in msg and "sensor.other.collision" in msg and "127.0.0.1:2000" in msg
    assert "route_start_index" in msg and "npc_vehicles" in msg and "not a lost connection" in msg
    assert "unstable" not in msg
    assert len(net.clients) == clients_before  # no reconnect
    assert _own(server, backend) == []  # what the failed reset spawned is gone
    assert backend.reset(seed=2).extra["npc_vehicles"] == 5  # the same connection still works
    backend.close()
    assert server.violations == []


def test_refused_request_in_step_is_not_taken_for_a_lost_server(net):
    server = net.add()
    backend = _backend(net, reconnect_backoff_s=5.0)
    backend.reset(seed=0)
    clients_before = len(net.clients)
    server.fail("vehicle.apply_control", error="trying to operate on a destroyed actor")
    with pytest.raises(CarlaBackendError, match=r"step\(\) failed .* destroyed actor.*role_name starts with .sb3av:"):
        backend.step(0.0, 0.5, 0.0)
    assert len(net.clients) == clients_before and backend.restarts == 0
    assert _own(server, backend) == []
    with pytest.raises(RuntimeError, match="before reset"):
        backend.step(0.0, 0.5, 0.0)
    backend.reset(seed=1)
    backend.close()
    assert server.violations == []


def _block_start(server: cs.StandinServer, backend: CarlaBackend) -> cs.StandinActor:
    """A foreign vehicle on the ego's start point."""
    start = spawn_transform(start_waypoint(backend.conn.map, backend.config.start))
    bp = cs.StandinBlueprint("vehicle.audi.a2", role_name="someone_else", number_of_wheels="4")
    return server._add(cs.StandinVehicle, bp, start, None)


def test_briefly_blocked_start_is_retried_after_a_tick(net, monkeypatch):
    server = net.add()
    backend = _backend(net)
    blocker = _block_start(server, backend)
    real_tick = server._tick

    def tick_then_drive_off() -> int:
        blocker._transform = carla.Transform(carla.Location(500.0, 500.0, 0.0))
        return real_tick()

    monkeypatch.setattr(server, "_tick", tick_then_drive_off)
    frame = backend.reset(seed=0)
    assert server.count("world.try_spawn_actor") == 2
    assert (frame.x, frame.y) == pytest.approx((88.40, -218.33), abs=0.1) and len(_own(server, backend)) == 4 + 5
    backend.close()
    assert server.violations == []


def test_blocked_start_fails_with_a_clear_error_and_no_reconnect(net):
    server = net.add()
    backend = _backend(net, reconnect_backoff_s=5.0)
    blocker = _block_start(server, backend)
    clients_before = len(net.clients)
    blocked = r"Town01 scenario route's start \(road 24, lane -1, s 10 m\).* blocked .* 3 tries"
    with pytest.raises(CarlaBackendError, match=blocked + r".*another start \(route_start or route_start_index\)"):
        backend.reset(seed=0)
    assert server.count("world.try_spawn_actor") == 3 and len(net.clients) == clients_before
    assert _own(server, backend) == [] and blocker.is_alive
    backend.close()


def test_version_mismatch_is_refused(net):
    net.add(version="0.9.15")
    with pytest.raises(CarlaVersionError, match=r"0\.9\.15 but the client is 0\.9\.16"):
        _backend(net)


# ---------------------------------------------------------------------------------------------- unreachable server
def test_unreachable_server_fails_within_the_connect_timeout_with_a_clear_message():
    port = cs.free_port()
    t0 = time.monotonic()
    with pytest.raises(CarlaConnectionError) as err:
        CarlaBackend({"port": port, "connect_timeout_s": 1.0})  # the real carla.Client
    elapsed = time.monotonic() - t0
    assert elapsed < 3.0
    msg = str(err.value)
    assert f"127.0.0.1:{port}" in msg and "within 1 s" in msg
    assert "docker run" in msg and "carlasim/carla:0.9.16" in msg and f"-carla-rpc-port={port}" in msg
    assert err.value.port == port


def test_gym_make_with_no_server_fails_the_same_way():
    gym = pytest.importorskip("gymnasium")
    from sb3_av.envs import register_envs

    register_envs()
    port = cs.free_port()
    t0 = time.monotonic()
    with pytest.raises(CarlaConnectionError, match=f"127.0.0.1:{port}"):
        gym.make("CarlaScenario0-v0", port=port, connect_timeout_s=1.0)
    assert time.monotonic() - t0 < 3.0


# ---------------------------------------------------------------------------------------------- config and env
def test_config_validation_and_servers():
    assert CarlaConfig().traffic_manager_port == 8000 and CarlaConfig().rank is None
    with pytest.raises(ValueError, match="rank must be None or an integer >= 0"):
        CarlaConfig(rank=-1)
    assert CarlaConfig(port=2010).traffic_manager_port == 8010
    cfg = CarlaConfig(servers=["a:2000", "b:2010"], rank=3)
    assert cfg.server == ("b", 2010) and cfg.traffic_manager_port == 8010
    assert parse_server("h:2000:8123") == ("h", 2000, 8123)
    assert server_for_rank(["x:1", "y:2"], 4) == ("x", 1, None)
    for bad in ("2000", "h:", "h:abc", "h:70000", ":2000"):
        with pytest.raises(ValueError, match=r"host:port|1\.\.65535"):
            parse_server(bad)
    with pytest.raises(ValueError, match=r"valid keys: .*connect_timeout_s"):
        CarlaConfig.from_dict({"hots": "x"})
    with pytest.raises(ValueError, match="timeout_s must be a finite number > 0"):
        CarlaConfig(timeout_s=0)
    with pytest.raises(ValueError, match="servers must be a non-empty list"):
        CarlaConfig(servers="127.0.0.1:2000")
    with pytest.raises(ValueError, match="junction_choices"):
        CarlaConfig(junction_choices=("up",))
    with pytest.raises(ValueError, match=r"dt must be <= 0\.1"):
        CarlaConfig(dt=0.5)
    assert CarlaConfig(seed=np.int64(3)).seed == 3


def test_make_carla_env_end_to_end_on_the_standin(net):
    from gymnasium.utils.env_checker import check_env

    server = net.add()
    env = make_carla_env(
        "CarlaScenario0",
        client_factory=net.client_factory,
        carla_module=cs.standin_carla,
        npc_vehicles=3,
        max_steps=20,
        reconnect_backoff_s=0.0,
    )
    obs, info = env.reset(seed=0)
    assert obs["image"].shape == (4, 84, 84) and obs["image"].dtype == np.uint8
    assert env.observation_space.contains(obs)
    obs, reward, _, _, info = env.step(np.array([0.0, 1.0], np.float32))
    assert env.observation_space.contains(obs) and np.isfinite(reward)
    assert info["backend"]["server"] == "127.0.0.1:2000"
    assert sum(info["reward_terms"].values()) == pytest.approx(reward)
    check_env(env, skip_render_check=True)
    env.close()
    assert {a.id for a in server.alive()} == {server.spectator.id}
    assert server.violations == []
    with pytest.raises(ValueError, match="valid keys"):
        make_carla_env("CarlaScenario0", client_factory=net.client_factory, carla_module=cs.standin_carla, hots="x")


# ---------------------------------------------------------------------------------------------- what a real server does
def test_npc_blueprints_are_cars_sorted_by_id_so_a_seed_gives_the_same_traffic(net):
    servers = [net.add(port=p) for p in (2000, 2010)]
    while [bp.id for bp in servers[0].blueprints] == [bp.id for bp in servers[1].blueprints]:
        servers[1].blueprints.reverse()  # the two libraries list the blueprints in different orders
    picked = []
    for port, server in zip((2000, 2010), servers, strict=True):
        backend = _backend(net, port=port, npc_vehicles=20)
        backend.reset(seed=7)
        npcs = sorted((a for a in _own(server, backend) if a.attributes["role_name"].endswith(":npc")), key=lambda a: a.id)
        picked.append([a.type_id for a in npcs])
        backend.close()
    vehicles = [bp for bp in servers[0].blueprints if bp.id.startswith("vehicle.")]
    cars = {bp.id for bp in vehicles if bp.get_attribute("base_type").value == "car"}
    assert len(picked[0]) == 20 and set(picked[0]) <= cars and len(set(picked[0])) > 1  # no bus, truck or motorbike
    assert picked[0] == picked[1]


def test_no_rendering_mode_is_forced_off_and_restored(net):
    server = net.add()
    server.settings.no_rendering_mode = True  # a server started for NPC-only work: no camera images at all
    backend = _backend(net)
    assert server.settings.no_rendering_mode is False
    frame = backend.reset(seed=0)
    assert frame.image.shape == (84, 84)
    backend.close()
    assert server.settings.no_rendering_mode is True and server.settings.synchronous_mode is False


def test_missing_first_images_are_waited_for_over_a_few_ticks_not_taken_for_a_lost_server(net):
    server = net.add()
    backend = _backend(net, reconnect_backoff_s=5.0)  # a reconnect would sleep 5 s
    clients = len(net.clients)
    server.drop_images = 3  # the settling tick and the first two ticks after it bring no image
    t0 = time.monotonic()
    frame = backend.reset(seed=0)
    assert time.monotonic() - t0 < 2.0
    assert len(net.clients) == clients and frame.extra.get("episode_restarted") is None
    camera = server.alive("sensor.camera")[0]
    assert int(frame.image[0, 0]) == server.image_value(server.frame, camera) and frame.sim_time_s == 0.0
    backend.close()
    strict = _backend(net, max_reconnects=0)
    server.drop_images = 4  # one tick too many: now it is a lost camera (a hung server)
    with pytest.raises(CarlaConnectionError, match="No camera data"):
        strict.reset(seed=1)
    strict.close()


def test_actors_of_a_killed_run_are_swept_by_the_next_run_on_that_server(net):
    server = net.add()
    killed = _backend(net)
    killed.reset(seed=0)
    left = _own(server, killed)
    assert len(left) == 4 + 5
    killed.conn._claim.release()  # SIGKILL: the kernel drops the locks; nothing is destroyed
    other = _backend(net, tm_port=8001, share_server=True, route_start=SECOND_START)  # another TM port: not a dead run's
    n_other = other.reset(seed=0).extra["npc_vehicles"]
    nxt = _backend(net, share_server=True)  # the next run with the dead run's TM port
    assert nxt.uid != killed.uid
    nxt.reset(seed=1)
    assert not any(a.is_alive for a in left)
    assert len(_own(server, nxt)) == 4 + 5 and len(_own(server, other)) == 4 + n_other  # another live env's stay
    nxt.close()
    other.close()
    assert server.violations == []


# ---------------------------------------------------------------------------------------------- TM lifecycle, callbacks
def test_close_takes_the_tm_out_of_sync_mode_and_shuts_it_down(net):
    server = net.add()
    backend = _backend(net)
    backend.reset(seed=0)
    tm = cs.TM_MAP[8000]
    ticks = tm.ticks
    backend.step(0.0, 0.5, 0.0)
    assert tm.ticks == ticks + 1  # the world's tick stepped it
    backend.close()
    assert tm.synchronous is False and tm.shut and 8000 not in cs.TM_MAP
    assert server.count("tm.shut_down") == 1


def test_close_never_touches_the_tm_of_a_dead_server(net, monkeypatch):
    server = net.add()
    backend = _backend(net)
    backend.reset(seed=0)
    aborts = []
    monkeypatch.setattr(cs.os, "abort", lambda: aborts.append("abort"))  # what LibCarla would do to the process
    server.down = True
    t0 = time.monotonic()
    backend.close()
    assert time.monotonic() - t0 < 5.0
    assert aborts == [] and 8000 in cs.TM_MAP  # left alone (its worker process exits without touching it)


def test_close_does_not_deadlock_against_a_callback_in_progress(net):
    server = net.add()
    backend = _backend(net, sensor_timeout_s=2.0)
    backend.reset(seed=0)
    camera = next(s for s in server.alive("sensor.camera"))
    key = (id(server), camera.id)
    queue = backend._camera
    release = threading.Event()

    def hold_the_queue():
        with queue._cond:  # the camera's callback will block on this lock until released
            release.wait(5.0)

    holder = threading.Thread(target=hold_the_queue, daemon=True)
    holder.start()
    backend.conn.world.tick(1.0)  # an image on its way, nobody waiting for it
    deadline = time.monotonic() + 2.0
    while cs.STREAM._in_flight != key and time.monotonic() < deadline:
        time.sleep(0.005)
    assert cs.STREAM._in_flight == key, "the callback never started"
    threading.Timer(0.3, release.set).start()
    t0 = time.monotonic()
    backend.close()  # stops the camera while its callback runs: waits for it, not for ever
    assert 0.2 < time.monotonic() - t0 < 3.0
    assert server.violations == [] and {a.id for a in server.alive()} == {server.spectator.id}


def test_lane_invasions_come_from_the_client_side_sensor(net):
    """0.9.16's lane-invasion sensor runs in the client: events from the parent's lane changes, no server data."""
    server = net.add()
    backend = _backend(net, npc_vehicles=0)
    backend.reset(seed=0)
    straight = sum(backend.step(0.0, 0.5, 0.0).extra["lane_invasions"] for _ in range(20))
    lanes, invasions = [], 0
    for _ in range(40):  # steer left across the centre line into the other lane
        frame = backend.step(0.3, 0.5, 0.0)
        invasions += frame.extra["lane_invasions"]
        wp = server.map.get_waypoint(carla.Location(frame.x, -frame.y, 0.0), project_to_road=True)
        lanes.append(wp.lane_id)
    time.sleep(0.05)
    frame = backend.step(0.0, 0.0, 1.0)  # an event is at most one step late
    invasions += frame.extra["lane_invasions"]
    lanes.append(server.map.get_waypoint(carla.Location(frame.x, -frame.y, 0.0), project_to_road=True).lane_id)
    changes = sum(1 for a, b in itertools.pairwise(lanes) if a != b)
    assert straight == 0 and lanes[0] == -1 and changes >= 1
    assert invasions == changes
    backend.close()


def test_frame_queue_takes_an_image_that_arrives_after_a_newer_one():
    q = FrameQueue("camera")
    q.put(SimpleNamespace(frame=11))  # frame 11's image came first ...
    threading.Timer(0.05, q.put, args=(SimpleNamespace(frame=10),)).start()  # ... frame 10's comes later
    assert q.get(10, timeout_s=1.0).frame == 10
    assert q.get(11, timeout_s=0.01).frame == 11  # the newer one was kept for its own step
    assert q.stale_dropped == 0


def test_one_server_under_two_names_is_one_server_for_the_claims() -> None:
    from sb3_av.envs.carla.connection import _Claim

    first = _Claim("localhost", 2000, 8000)
    second = _Claim("127.0.0.1", 2000, 8001)  # the same server by address, another TM port
    other = _Claim("127.0.0.1", 3000, 8002)  # another server
    try:
        assert first.acquire()
        assert not second.acquire()  # one env per server: the name does not make it another server
        assert other.acquire()
        first.release()
        assert second.acquire()
    finally:
        for claim in (first, second, other):
            claim.release()
