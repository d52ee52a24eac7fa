"""A stand-in for the CARLA 0.9.16 *server*, for testing the CARLA backend without a simulator.

Only the server side is replaced: the backend still imports the real ``carla`` client module and uses its
types (``carla.Transform``, ``carla.Location``, ``carla.Rotation``, ``carla.VehicleControl``,
``carla.WorldSettings``, ``carla.LaneType``, ``carla.command.DestroyActor`` / ``SetAutopilot`` /
``SpawnActor``), and the map is a real ``carla.Map`` built from an OpenDRIVE road (a real client parses
it and answers ``get_waypoint`` / ``Waypoint.next``). A server whose town is Town01 serves the real Town01
(``tests/data/carla/Town01.xodr.gz``), so the backend plans the scenario route on the real road network; another
town name gets a small one-road map (:data:`_XODR`). The spawn points (level data, not in the OpenDRIVE) are the
map's driving waypoints outside junctions, 10 m apart, in a fixed order. The stand-in implements only the calls
the backend makes, records them, and checks the rules the backend must keep (``violations``).

Every ``sensor.camera.rgb`` (the agent's and a chase camera alike) sees the scene from its world transform (its
parent's composed with the one it was attached with) through a pinhole of its ``fov`` and image size
(:func:`render_camera`): the flat ground of the map (grass in 4 m tiles, roads, dashed lane edges) and the vehicles
as boxes, under a sky of one gray value that encodes the frame the image belongs to (:meth:`StandinServer.image_value`).

Two things cannot be built without a server and are stand-ins: ``ActorBlueprint`` (so
``carla.command.SpawnActor(blueprint, transform)`` is replaced, in :data:`standin_carla`, by a function
that returns a real ``carla.command.SpawnActor`` carrying the stand-in blueprint) and sensor data
(``carla.Image``, ``CollisionEvent`` and ``LaneInvasionEvent`` cannot be instantiated from Python).
:func:`api_mismatches` checks that every member of every stand-in class exists on the real class with
the same kind (property or method), so the backend cannot pass the tests by calling an API that CARLA lacks.

What the real *client library* does in the client process is modelled too, after LibCarla 0.9.16's source:

- The Traffic Manager is process-global (``trafficmanager/TrafficManager.cpp``: ``TrafficManager::_tm_map``,
  one instance per port per process). ``Client.get_trafficmanager(port)`` returns the registered one even when
  it was made by another client for a server that has since died; every ``world.tick()`` and
  ``apply_settings()`` of any client steps every registered TM (``client/detail/Simulator.cpp``:
  ``SynchronizeFrame`` -> ``TrafficManager::Tick()``); ``load_world`` resets them all
  (``client/detail/Episode.cpp``: ``OnEpisodeChanged`` -> ``TrafficManager::Reset()``). A TM stepped or shut
  down while its server is gone aborts the process (its RPC throws inside a ``std::thread``: CARLA issues
  #4577, #6748): :func:`os.abort`, so no ``except``/``finally`` runs.
- Sensor data arrive on a background thread (``client/detail/Client.cpp``: ``SubscribeToStream``, asio worker
  threads), with delays: some after ``tick()`` returned, so an image of frame N may come after frame N+1 was
  ticked; the first image after ``listen()`` is lost (the subscription is made while the frame is in flight).
  ``stop()`` waits for a callback in progress (``UnSubscribeFromStream``).
- ``sensor.other.lane_invasion`` is a client-side sensor (``client/LaneInvasionSensor.cpp``): the client
  computes the crossings from the parent's position and the map on every world tick it receives (here: the
  parent's lane changed to one its lane does not lead to, i.e. it crossed a lane's edge).
- ``world.tick()`` takes time (``tick_s``).
"""

from __future__ import annotations

import fnmatch
import gzip
import heapq
import itertools
import math
import os
import random
import socket
import threading
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import carla
import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "TOWN01_XODR",
    "StandinNetwork",
    "StandinServer",
    "api_mismatches",
    "crossed_lane_edge",
    "render_camera",
    "standin_carla",
]

CLIENT_VERSION = carla.Client("127.0.0.1", 1).get_client_version()  # the real client's version, no connection made
_TIMEOUT = "time-out of {ms}ms while waiting for the simulator, make sure the simulator is ready and connected to {addr}"

#: Town01's OpenDRIVE (CC-BY 4.0, see tests/data/carla/README.md): what a stand-in server named Town01 serves.
TOWN01_XODR = Path(__file__).resolve().parent / "data" / "carla" / "Town01.xodr.gz"
SPAWN_SPACING_M = 10.0  # spawn points: one per this many metres of driving lane (Town01: 520; a real Town01 has 255)

# Any other town: a two-lane road: 100 m straight, a 90 degree left curve (radius 20 m), 500 m straight, sidewalks.
_XODR = """<?xml version="1.0" standalone="yes"?>
<OpenDRIVE>
  <header revMajor="1" revMinor="4" name="standin" version="1.00" north="0" south="0" east="0" west="0"/>
  <road name="r1" length="631.4159265" id="1" junction="-1">
    <link/>
    <planView>
      <geometry s="0" x="0" y="0" hdg="0" length="100"><line/></geometry>
      <geometry s="100" x="100" y="0" hdg="0" length="31.4159265"><arc curvature="0.05"/></geometry>
      <geometry s="131.4159265" x="120" y="20" hdg="1.5707963" length="500"><line/></geometry>
    </planView>
    <elevationProfile><elevation s="0" a="0" b="0" c="0" d="0"/></elevationProfile>
    <lateralProfile/>
    <lanes>
      <laneSection s="0">
        <left>
          <lane id="2" type="sidewalk" level="false"><link/><width sOffset="0" a="2.0" b="0" c="0" d="0"/></lane>
          <lane id="1" type="driving" level="false"><link/><width sOffset="0" a="3.5" b="0" c="0" d="0"/>
            <roadMark sOffset="0" type="solid" weight="standard" color="standard" width="0.15"/></lane>
        </left>
        <center><lane id="0" type="driving" level="false"><link/>
          <roadMark sOffset="0" type="broken" weight="standard" color="standard" width="0.15"/></lane></center>
        <right>
          <lane id="-1" type="driving" level="false"><link/><width sOffset="0" a="3.5" b="0" c="0" d="0"/>
            <roadMark sOffset="0" type="solid" weight="standard" color="standard" width="0.15"/></lane>
          <lane id="-2" type="sidewalk" level="false"><link/><width sOffset="0" a="2.0" b="0" c="0" d="0"/></lane>
        </right>
      </laneSection>
    </lanes>
  </road>
</OpenDRIVE>
"""

_MAPS: dict[str, Any] = {}
_SPAWN_POINTS: dict[str, list[tuple[float, float, float, float]]] = {}  # x, y, z (m), yaw (deg) per town


# ---------------------------------------------------------------------------------------------- client process state
class _Stream:
    """The client's sensor-data delivery thread: callbacks run here, each after its own delay.

    :param max_delay_s: images are delivered after a uniform random delay up to this (s).
    :param late_every: every ``late_every``-th image is delivered after ``late_delay_s`` instead (0: never).
    :param late_delay_s: the delay (s) of a late image (long enough to come after ``tick()`` returned).
    """

    def __init__(self, max_delay_s: float = 0.003, late_every: int = 5, late_delay_s: float = 0.02) -> None:
        self.max_delay_s = max_delay_s
        self.late_every = late_every
        self.late_delay_s = late_delay_s
        self._rng = random.Random(0)
        self._count = 0
        self._heap: list[tuple[float, int, Any, Callable[[Any], None], Any]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._in_flight: Any = None  # the key of the callback running now
        self._thread: threading.Thread | None = None
        self.delivered = 0

    def image_delay(self) -> float:
        self._count += 1
        if self.late_every and self._count % self.late_every == 0:
            return self.late_delay_s
        return self._rng.uniform(0.0, self.max_delay_s)

    def submit(self, key: Any, callback: Callable[[Any], None], data: Any, delay_s: float) -> None:
        """Deliver ``callback(data)`` on the stream thread after ``delay_s``; ``key`` identifies the subscription."""
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="standin-stream", daemon=True)
                self._thread.start()
            heapq.heappush(self._heap, (time.monotonic() + delay_s, next(self._seq), key, callback, data))
            self._cond.notify_all()

    def cancel(self, key: Any, timeout_s: float = 5.0) -> bool:
        """Drop the queued data of ``key`` and wait for its callback in progress; False if it did not end in time."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._heap = [item for item in self._heap if item[2] != key]
            heapq.heapify(self._heap)
            while self._in_flight == key and threading.current_thread() is not self._thread:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    self._cond.wait(None if not self._heap else max(self._heap[0][0] - time.monotonic(), 0.0))
                _, _, key, callback, data = heapq.heappop(self._heap)
                self._in_flight = key
            try:
                callback(data)
            except Exception:  # LibCarla logs an exception raised in a sensor callback and goes on
                pass
            finally:
                with self._cond:
                    self._in_flight = None
                    self.delivered += 1
                    self._cond.notify_all()


#: The sensor stream of this process (tests may change its delays).
STREAM = _Stream()
#: ``TrafficManager::_tm_map``: the Traffic Managers of this process by port.
TM_MAP: dict[int, Any] = {}
_TM_LOCK = threading.RLock()
#: Client-side sensors (lane invasion) of this process, computed on every world tick.
_CLIENT_SIDE_SENSORS: dict[Any, Any] = {}


def tick_traffic_managers() -> None:
    """``TrafficManager::Tick()``: step every Traffic Manager of the process (aborts if one's server is gone)."""
    with _TM_LOCK:
        for tm in list(TM_MAP.values()):
            tm._synchronous_tick()


def reset_traffic_managers() -> None:
    """``TrafficManager::Reset()`` on a new episode (``load_world``) of any client of the process."""
    with _TM_LOCK:
        for tm in TM_MAP.values():
            tm.resets += 1


def reset_process_state() -> None:
    """Forget the process-global state (as a fresh process would start): for in-process tests, between tests."""
    with _TM_LOCK:
        TM_MAP.clear()
    _CLIENT_SIDE_SENSORS.clear()


def _tick_client_side_sensors(frame: int) -> None:
    for sensor in list(_CLIENT_SIDE_SENSORS.values()):
        sensor._on_world_tick(frame)


def _real_map(town: str) -> Any:
    """A real ``carla.Map`` (parsed by the real client, once per process) named like a server's map.

    :param town: ``"Town01"``: the real Town01; any other name: the one-road map :data:`_XODR`.
    """
    if town not in _MAPS:
        xodr = gzip.open(TOWN01_XODR, "rt").read() if town == "Town01" else _XODR
        _MAPS[town] = carla.Map(f"Carla/Maps/{town}", xodr)
    return _MAPS[town]


# ---------------------------------------------------------------------------------------------- what a camera sees
_GRASS_RGB = np.array([[52, 96, 48], [64, 112, 58]], dtype=np.uint8)  # alternating 4 m tiles, so motion shows
_ROAD_RGB = (82, 82, 88)
_MARK_RGB = (228, 228, 228)
_CELL_M = 0.25  # ground raster resolution
_TILE_M = 4.0
_FAR_M = 200.0  # the ground beyond this is not drawn (the sky's value instead)
_BOX_M = (4.6, 2.0, 1.5)  # vehicles: length, width, height
_EGO_RGB = (40, 90, 220)
_NPC_RGB = ((200, 50, 50), (220, 140, 40), (150, 60, 170), (230, 230, 230))
_RASTERS: dict[str, tuple[np.ndarray, float, float]] = {}


def _ground(town: str) -> tuple[np.ndarray, float, float]:
    """The town's ground seen from above: 0 grass, 1 road, 2 lane marking (dashed, 1.5 m of every 3 m of a lane's
    edge), one cell per :data:`_CELL_M` metres, built once per process from the map's driving waypoints.

    :return: (raster indexed ``[ix, iy]``, x of cell 0, y of cell 0), CARLA coordinates (m).
    """
    if town in _RASTERS:
        return _RASTERS[town]
    wps = _real_map(town).generate_waypoints(0.5)
    table = [(w.transform.location.x, w.transform.location.y, w.transform.rotation.yaw, w.lane_width, w.s) for w in wps]
    x, y, yaw, width, s = np.array(table).T
    yaw = np.radians(yaw)
    fx, fy, rx, ry = np.cos(yaw), np.sin(yaw), -np.sin(yaw), np.cos(yaw)  # forward, right (CARLA: y to the right)
    x0, y0 = x.min() - 30.0, y.min() - 30.0
    raster = np.zeros((int((x.max() + 30.0 - x0) / _CELL_M) + 1, int((y.max() + 30.0 - y0) / _CELL_M) + 1), np.uint8)

    def paint(px: np.ndarray, py: np.ndarray, value: int) -> None:
        raster[((px - x0) / _CELL_M).astype(int), ((py - y0) / _CELL_M).astype(int)] = value

    for along in np.arange(-0.25, 0.26, 0.125):
        for side in np.linspace(-0.5, 0.5, 33):
            paint(x + along * fx + side * width * rx, y + along * fy + side * width * ry, 1)
    dashed = (s % 3.0) < 1.5
    for along in np.arange(-0.25, 0.26, 0.125):
        for side in (-0.5, 0.5):
            lx, ly = x + along * fx + side * width * rx, y + along * fy + side * width * ry
            paint(lx[dashed], ly[dashed], 2)
    _RASTERS[town] = (raster, float(x0), float(y0))
    return _RASTERS[town]


def _camera_basis(transform: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Forward, right and up unit vectors of a camera (CARLA's left-handed frame: yaw clockwise seen from above)."""
    yaw, pitch = math.radians(transform.rotation.yaw), math.radians(transform.rotation.pitch)
    forward = np.array([math.cos(pitch) * math.cos(yaw), math.cos(pitch) * math.sin(yaw), math.sin(pitch)])
    right = np.array([-math.sin(yaw), math.cos(yaw), 0.0])
    up = np.array([-math.sin(pitch) * math.cos(yaw), -math.sin(pitch) * math.sin(yaw), math.cos(pitch)])
    return forward, right, up


def render_camera(server: StandinServer, camera: StandinActor, frame: int, w: int, h: int, fov_deg: float) -> bytes:
    """What a ``sensor.camera.rgb`` of the stand-in sees, as BGRA bytes: a pinhole view (``fov_deg`` horizontal)
    from the camera's world transform of the flat ground (grass, roads, dashed lane edges of the map) and of every
    vehicle as a box (the ego blue, NPCs in a colour per model; a box reaching behind the camera is left out). The sky
    is one gray value, :meth:`StandinServer.image_value` of ``frame``: tests read the frame an image belongs to there.
    """
    tf = camera.get_transform()
    forward, right, up = _camera_basis(tf)
    focal = w / (2.0 * math.tan(math.radians(fov_deg) / 2.0))
    u = (np.arange(w) + 0.5 - w / 2.0) / focal
    v = (np.arange(h) + 0.5 - h / 2.0) / focal
    rays = forward[None, None, :] + u[None, :, None] * right[None, None, :] - v[:, None, None] * up[None, None, :]
    cam = np.array([tf.location.x, tf.location.y, tf.location.z])
    down = rays[..., 2] < -1e-6
    t = np.where(down, -cam[2] / np.where(down, rays[..., 2], -1.0), np.inf)
    gx, gy = cam[0] + t * rays[..., 0], cam[1] + t * rays[..., 1]
    ground = down & (t * np.linalg.norm(rays, axis=-1) < _FAR_M)
    sky = server.image_value(frame, camera)
    rgb = np.full((h, w, 3), sky, dtype=np.uint8)
    raster, x0, y0 = _ground(server.town)
    gx, gy = np.where(ground, gx, 0.0), np.where(ground, gy, 0.0)
    ix, iy = np.floor((gx - x0) / _CELL_M).astype(int), np.floor((gy - y0) / _CELL_M).astype(int)
    inside = ground & (ix >= 0) & (ix < raster.shape[0]) & (iy >= 0) & (iy < raster.shape[1])
    kind = np.where(inside, raster[np.clip(ix, 0, raster.shape[0] - 1), np.clip(iy, 0, raster.shape[1] - 1)], 0)
    tile = (np.floor(gx / _TILE_M) + np.floor(gy / _TILE_M)).astype(int) % 2
    rgb[ground] = _GRASS_RGB[tile[ground]]
    rgb[ground & (kind == 1)] = _ROAD_RGB
    rgb[ground & (kind == 2)] = _MARK_RGB
    image = Image.fromarray(rgb)
    _draw_vehicles(ImageDraw.Draw(image), server, cam, (forward, right, up), focal, (w, h))
    bgra = np.empty((h, w, 4), dtype=np.uint8)
    bgra[..., :3] = np.asarray(image)[..., ::-1]
    bgra[..., 3] = 255
    return bgra.tobytes()


def _draw_vehicles(draw: Any, server: StandinServer, cam: np.ndarray, basis: tuple, focal: float, size: tuple) -> None:
    """Every vehicle as a box, the farthest first (its faces that look at the camera, shaded by their direction)."""
    forward, right, up = basis
    w, h = size
    length, width, height = _BOX_M
    unit = np.array([[sx, sy, sz] for sx in (-0.5, 0.5) for sy in (-0.5, 0.5) for sz in (0.0, 1.0)])
    faces = {  # corner indices (into ``unit``), outward normal in the box frame, shade
        (0, 2, 6, 4): ((0, 0, -1), 0.0),  # bottom: never seen from above the ground
        (1, 3, 7, 5): ((0, 0, 1), 1.0),
        (4, 5, 7, 6): ((1, 0, 0), 0.8),
        (0, 1, 3, 2): ((-1, 0, 0), 0.8),
        (2, 3, 7, 6): ((0, 1, 0), 0.65),
        (0, 1, 5, 4): ((0, -1, 0), 0.65),
    }
    boxes = []
    for vehicle in server.alive("vehicle."):
        loc, yaw = vehicle.get_transform().location, math.radians(vehicle.get_transform().rotation.yaw)
        centre = np.array([loc.x, loc.y, 0.0])
        distance = float(np.linalg.norm(centre - cam))
        if distance > _FAR_M:
            continue
        rot = np.array([[math.cos(yaw), -math.sin(yaw), 0.0], [math.sin(yaw), math.cos(yaw), 0.0], [0.0, 0.0, 1.0]])
        corners = centre + (unit * [length, width, height]) @ rot.T
        rel = corners - cam
        depth = rel @ forward
        if np.any(depth < 0.3):
            continue
        px = np.stack([w / 2.0 + focal * (rel @ right) / depth, h / 2.0 - focal * (rel @ up) / depth], axis=1)
        ego = str(vehicle.attributes.get("role_name", "")).endswith(":ego")
        npc_rgb = _NPC_RGB[sum(vehicle.type_id.encode()) % len(_NPC_RGB)]  # by model: a seed gives the same picture
        colour = np.array(_EGO_RGB if ego else npc_rgb, dtype=float)
        boxes.append((distance, corners, px, rot, colour))
    for _, corners, px, rot, colour in sorted(boxes, key=lambda b: -b[0]):
        for index, (normal, shade) in faces.items():
            centre = corners[list(index)].mean(axis=0)
            if np.dot(rot @ np.array(normal, dtype=float), centre - cam) >= 0:  # facing away from the camera
                continue
            draw.polygon([tuple(px[i]) for i in index], fill=tuple(int(c * shade) for c in colour))


def _lane_key(waypoint: Any) -> tuple[int, int]:
    return (waypoint.road_id, waypoint.lane_id) if waypoint is not None else (-1, 0)


def crossed_lane_edge(before: Any, after: Any) -> bool:
    """Whether a vehicle that moved from ``before`` to ``after`` (waypoints, or None off the road) crossed a lane's edge.

    Following a lane onto the lane it leads to (a new road, a junction lane) crosses nothing; any other change of
    (road, lane) does. Two lanes of one junction count as one (a junction's lanes overlap and carry no markings).
    """
    if _lane_key(before) == _lane_key(after):
        return False
    if before is None or after is None:
        return True
    if before.is_junction and after.is_junction and before.get_junction().id == after.get_junction().id:
        return False
    reach = before.transform.location.distance(after.transform.location) + 2.0
    return _lane_key(after) not in {_lane_key(w) for w in before.next(reach)}


def _spawn_command(blueprint: Any, transform: Any) -> Any:
    """``carla.command.SpawnActor(blueprint, transform)`` for a stand-in blueprint: a real SpawnActor command."""
    cmd = carla.command.SpawnActor()
    cmd.transform = transform
    cmd.standin_blueprint = blueprint.copy()
    return cmd


class _CommandModule(types.SimpleNamespace):
    def __getattr__(self, name: str) -> Any:
        return getattr(carla.command, name)


class _CarlaModule(types.SimpleNamespace):
    def __getattr__(self, name: str) -> Any:
        return getattr(carla, name)


#: The ``carla`` module as the backend sees it against the stand-in: everything real but SpawnActor.
standin_carla = _CarlaModule(command=_CommandModule(SpawnActor=_spawn_command))


def _copy_settings(settings: Any) -> Any:
    out = carla.WorldSettings()
    for name in (
        "synchronous_mode",
        "no_rendering_mode",
        "fixed_delta_seconds",
        "substepping",
        "max_substep_delta_time",
        "max_substeps",
        "max_culling_distance",
        "deterministic_ragdolls",
    ):
        setattr(out, name, getattr(settings, name))
    return out


# ---------------------------------------------------------------------------------------------- data types
class StandinAttribute:
    _REAL = carla.ActorAttribute

    def __init__(self, name: str, value: str) -> None:
        self._id = name
        self.value = str(value)

    @property
    def id(self) -> str:
        return self._id

    def as_int(self) -> int:
        return int(self.value)

    def as_str(self) -> str:
        return self.value

    def __str__(self) -> str:
        return self.value


class StandinBlueprint:
    _REAL = carla.ActorBlueprint

    def __init__(self, blueprint_id: str, **attributes: str) -> None:
        self._id = blueprint_id
        self._attrs = {k: StandinAttribute(k, v) for k, v in attributes.items()}

    @property
    def id(self) -> str:
        return self._id

    @property
    def tags(self) -> list[str]:
        return self._id.split(".")

    def has_attribute(self, name: str) -> bool:
        return name in self._attrs

    def get_attribute(self, name: str) -> StandinAttribute:
        if name not in self._attrs:
            raise IndexError(f"no attribute {name!r} in {self._id}")
        return self._attrs[name]

    def set_attribute(self, name: str, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("ActorBlueprint.set_attribute needs a str value")  # as the real Boost signature
        self.get_attribute(name).value = value

    def copy(self) -> StandinBlueprint:
        """Not a CARLA method: SpawnActor/spawn_actor copy the blueprint, as the server receives a description."""
        return StandinBlueprint(self._id, **{k: a.value for k, a in self._attrs.items()})


class StandinBlueprintLibrary:
    _REAL = carla.BlueprintLibrary

    def __init__(self, blueprints: list[StandinBlueprint]) -> None:
        self._bps = blueprints

    def find(self, blueprint_id: str) -> StandinBlueprint:
        for bp in self._bps:
            if bp.id == blueprint_id:
                return bp.copy()
        raise IndexError(f"blueprint {blueprint_id!r} not found")

    def filter(self, pattern: str) -> list[StandinBlueprint]:
        return [bp.copy() for bp in self._bps if fnmatch.fnmatch(bp.id, pattern)]


def _blueprints() -> list[StandinBlueprint]:
    vehicles = [  # CARLA 0.9.16's base_type attribute: car, truck, van, bus, motorcycle, bicycle
        ("vehicle.tesla.model3", "4", "car"),
        ("vehicle.carlamotors.firetruck", "4", "truck"),
        ("vehicle.audi.a2", "4", "car"),
        ("vehicle.mitsubishi.fusorosa", "4", "bus"),
        ("vehicle.mini.cooper_s", "4", "car"),
        ("vehicle.yamaha.yzf", "2", "motorcycle"),
        ("vehicle.nissan.patrol", "4", "car"),
    ]
    bps = [StandinBlueprint(i, role_name="autopilot", number_of_wheels=w, base_type=t) for i, w, t in vehicles]
    bps.append(
        StandinBlueprint(
            "sensor.camera.rgb", role_name="front", image_size_x="800", image_size_y="600", fov="90", sensor_tick="0.0"
        )
    )
    bps.append(StandinBlueprint("sensor.other.collision", role_name="front"))
    bps.append(StandinBlueprint("sensor.other.lane_invasion", role_name="front"))
    random.shuffle(bps)  # the library's order differs between servers and runs
    return bps


@dataclass
class StandinImage:
    """A camera image: BGRA bytes of the scene (:func:`render_camera`), the sky one gray value marking its frame."""

    _REAL = carla.Image
    frame: int
    timestamp: float
    width: int
    height: int
    fov: float
    raw_data: bytes
    transform: Any = None


@dataclass
class StandinCollisionEvent:
    _REAL = carla.CollisionEvent
    frame: int
    timestamp: float
    actor: Any
    other_actor: Any
    transform: Any = None


@dataclass
class StandinLaneInvasionEvent:
    _REAL = carla.LaneInvasionEvent
    frame: int
    timestamp: float
    actor: Any
    crossed_lane_markings: list = field(default_factory=list)
    transform: Any = None


@dataclass
class StandinResponse:
    _REAL = carla.command.Response
    actor_id: int = 0
    error: str = ""

    def has_error(self) -> bool:
        return bool(self.error)


# ---------------------------------------------------------------------------------------------- actors
class ActorDescription:
    """What a client knows of an actor without asking the server (``carla.Actor``'s id, type_id, attributes and
    parent); the in-process stand-in and the remote client's handles share it."""

    _REAL = carla.Actor
    _id: int
    _type_id: str
    _attributes: dict
    _parent: Any

    @property
    def id(self) -> int:
        return self._id

    @property
    def type_id(self) -> str:
        return self._type_id

    @property
    def attributes(self) -> dict:
        return dict(self._attributes)

    @property
    def parent(self) -> Any:
        return self._parent


class StandinActor(ActorDescription):
    def __init__(self, server: StandinServer, actor_id: int, blueprint: StandinBlueprint, transform: Any, parent: Any) -> None:
        self._server = server
        self._id = actor_id
        self._type_id = blueprint.id
        self._attributes = {k: a.value for k, a in blueprint._attrs.items()}
        self._parent = parent
        self._transform = carla.Transform(transform.location, transform.rotation)
        self._alive = True
        self._epoch = server.epoch
        self._spawn_frame = server.frame

    @property
    def is_alive(self) -> bool:
        return self._alive

    def get_transform(self) -> Any:
        """The world transform; an attached actor's is its parent's composed with the transform it was spawned with."""
        own = self._transform
        if self._parent is None:
            return carla.Transform(own.location, own.rotation)
        parent = self._parent.get_transform()
        location = carla.Location(own.location.x, own.location.y, own.location.z)
        parent.transform(location)  # in place: relative -> world (vehicles here only yaw)
        rot = parent.rotation
        return carla.Transform(
            location, carla.Rotation(pitch=rot.pitch + own.rotation.pitch, yaw=rot.yaw + own.rotation.yaw, roll=rot.roll)
        )

    def get_location(self) -> Any:
        return self.get_transform().location

    def destroy(self) -> bool:
        self._server._call("actor.destroy", self._id, epoch=self._epoch)
        return self._server._destroy(self._id)


#: a car's box as CARLA reports it (about a Lincoln MKZ): half sizes (m) and the box centre relative to the actor's
#: origin (a little ahead of it and above the ground)
CAR_BOX_EXTENT = (2.2, 0.95, 0.75)
CAR_BOX_OFFSET = (0.1, 0.0, 0.75)


def car_bounding_box() -> Any:
    """Every stand-in car's ``bounding_box`` (a real ``carla.BoundingBox``; part of the actor's description)."""
    return carla.BoundingBox(carla.Location(*CAR_BOX_OFFSET), carla.Vector3D(*CAR_BOX_EXTENT))


class StandinVehicle(StandinActor):
    _REAL = carla.Vehicle

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.speed = 0.0
        self.control: Any = None

    @property
    def bounding_box(self) -> Any:
        return car_bounding_box()

    def get_velocity(self) -> Any:
        f = self._transform.get_forward_vector()
        return carla.Vector3D(f.x * self.speed, f.y * self.speed, 0.0)

    def apply_control(self, control: Any) -> None:
        self._server._call("vehicle.apply_control", self._id, control, epoch=self._epoch)
        if not isinstance(control, carla.VehicleControl):
            self._server.violations.append(f"apply_control with {type(control).__name__}, not carla.VehicleControl")
        self.control = control

    def _advance(self, dt: float) -> None:
        """Kinematic bicycle in CARLA's left-handed frame: positive steer turns right (yaw grows clockwise)."""
        c = self.control
        if c is None:
            return
        self.speed = max(self.speed + (4.0 * c.throttle - 8.0 * c.brake) * dt, 0.0)
        yaw = self._transform.rotation.yaw + math.degrees(self.speed * math.tan(0.6 * c.steer) / 2.9 * dt)
        loc = self._transform.location
        rad = math.radians(yaw)
        self._transform = carla.Transform(
            carla.Location(loc.x + self.speed * math.cos(rad) * dt, loc.y + self.speed * math.sin(rad) * dt, loc.z),
            carla.Rotation(yaw=yaw),
        )


class StandinSensor(StandinActor):
    _REAL = carla.Sensor

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.callback: Callable[[Any], None] | None = None
        self._first_dropped = False
        self._lane: Any = None  # the parent's waypoint at the last tick
        self._started = False

    def listen(self, callback: Callable[[Any], None]) -> None:
        self._server._call("sensor.listen", self._id, epoch=self._epoch)
        self._first_dropped = False
        key = (id(self._server), self._id)
        if self._type_id == "sensor.other.lane_invasion":  # client-side: computed here on every tick
            self.callback = callback
            _CLIENT_SIDE_SENSORS[key] = self
            return

        def deliver(data: Any) -> None:  # the server's push, delivered on the stream thread
            delay = STREAM.image_delay() if isinstance(data, StandinImage) else 0.0
            STREAM.submit(key, callback, data, delay)

        self.callback = deliver

    def stop(self) -> None:
        self._server._call("sensor.stop", self._id)
        self.callback = None
        key = (id(self._server), self._id)
        _CLIENT_SIDE_SENSORS.pop(key, None)
        if not STREAM.cancel(key):
            self._server.violations.append(f"sensor {self._id}: stop() waited > 5 s for its callback (a deadlock)")

    def is_listening(self) -> bool:
        return self.callback is not None

    def _on_world_tick(self, frame: int) -> None:
        """Lane invasion, client side: an event when the parent's (road, lane) changed since the last tick."""
        parent = self._parent
        callback = self.callback
        if callback is None or parent is None or not parent.is_alive:
            return
        carla_map = self._server.map
        wp = carla_map.get_waypoint(parent.get_location(), project_to_road=True)
        if self._started and crossed_lane_edge(self._lane, wp):
            event = StandinLaneInvasionEvent(frame, frame * 0.05, parent, [])
            STREAM.submit((id(self._server), self._id), callback, event, 0.0)
        self._lane, self._started = wp, True


# ---------------------------------------------------------------------------------------------- server side
class StandinTrafficManager:
    _REAL = carla.TrafficManager

    def __init__(self, server: StandinServer, port: int) -> None:
        self._server = server
        self.port = port
        self._epoch = server.epoch
        self.synchronous: bool | None = None
        self.seeds: list[int] = []
        self.distance: float | None = None
        self.ticks = 0
        self.resets = 0
        self.shut = False

    def _server_gone(self) -> bool:
        return self._server.down or self._server.epoch != self._epoch

    def _synchronous_tick(self) -> None:
        """``TrafficManagerLocal::SynchronousTick``: its stages RPC the server; a dead one aborts the process."""
        if self._server_gone():
            os.abort()
        self.ticks += 1

    def shut_down(self) -> None:
        """``TrafficManager::ShutDown``: unregistered, then its RPC server and stages stop (RPCs: aborts if gone)."""
        with _TM_LOCK:
            if TM_MAP.get(self.port) is self:
                del TM_MAP[self.port]
        if self._server_gone():
            os.abort()
        self._server._call("tm.shut_down", self.port, epoch=self._epoch)
        self._server.traffic_managers.pop(self.port, None)
        self.shut = True

    def get_port(self) -> int:
        return self.port

    def set_synchronous_mode(self, mode_switch: bool = True) -> None:
        self._server._call("tm.set_synchronous_mode", self.port, mode_switch, epoch=self._epoch)
        self.synchronous = bool(mode_switch)

    def set_random_device_seed(self, value: int) -> None:
        self._server._call("tm.set_random_device_seed", self.port, value, epoch=self._epoch)
        self.seeds.append(value)

    def set_global_distance_to_leading_vehicle(self, distance: float) -> None:
        self._server._call("tm.set_global_distance_to_leading_vehicle", self.port, distance, epoch=self._epoch)
        self.distance = distance


class StandinMap:
    """The server's map: a real ``carla.Map``; spawn points (level data, not in the OpenDRIVE) from the stand-in."""

    _REAL = carla.Map

    def __init__(self, town: str) -> None:
        self._map = _real_map(town)
        if town not in _SPAWN_POINTS:
            waypoints = [w for w in self._map.generate_waypoints(SPAWN_SPACING_M) if not w.is_junction]
            waypoints.sort(key=lambda w: (w.road_id, w.lane_id, round(w.s, 3)))
            _SPAWN_POINTS[town] = [
                (w.transform.location.x, w.transform.location.y, w.transform.location.z + 0.3, w.transform.rotation.yaw)
                for w in waypoints
                if w.lane_type == carla.LaneType.Driving
            ]
        self._spawn_points = [
            carla.Transform(carla.Location(x, y, z), carla.Rotation(yaw=yaw)) for x, y, z, yaw in _SPAWN_POINTS[town]
        ]

    @property
    def name(self) -> str:
        return self._map.name

    def get_waypoint_xodr(self, road_id: int, lane_id: int, s: float) -> Any:
        return self._map.get_waypoint_xodr(road_id, lane_id, s)

    def get_spawn_points(self) -> list:
        return list(self._spawn_points)

    def get_waypoint(self, location: Any, project_to_road: bool = True, lane_type: Any = carla.LaneType.Driving) -> Any:
        return self._map.get_waypoint(location, project_to_road=project_to_road, lane_type=lane_type)


class StandinWorld:
    _REAL = carla.World

    def __init__(self, server: StandinServer) -> None:
        self._server = server
        self._episode = server.episode
        self._epoch = server.epoch

    @property
    def id(self) -> int:
        return self._episode

    def get_map(self) -> StandinMap:
        self._server._call("world.get_map", epoch=self._epoch)
        return self._server.map

    def get_settings(self) -> Any:
        self._server._call("world.get_settings", epoch=self._epoch)
        return _copy_settings(self._server.settings)

    def apply_settings(self, settings: Any) -> int:
        self._server._call("world.apply_settings", _copy_settings(settings), epoch=self._epoch)
        self._server.settings = _copy_settings(settings)
        tick_traffic_managers()  # Simulator::SetEpisodeSettings -> SynchronizeFrame
        return self._server.frame

    def tick(self, seconds: float = 10.0) -> int:
        self._server._call("world.tick", seconds, epoch=self._epoch)
        frame = self._server._tick()
        tick_traffic_managers()  # Simulator::Tick -> SynchronizeFrame -> TrafficManager::Tick()
        _tick_client_side_sensors(frame)
        return frame

    def get_blueprint_library(self) -> StandinBlueprintLibrary:
        self._server._call("world.get_blueprint_library", epoch=self._epoch)
        return StandinBlueprintLibrary(self._server.blueprints)

    def try_spawn_actor(self, blueprint: Any, transform: Any, attach_to: Any = None) -> Any:
        self._server._call("world.try_spawn_actor", blueprint.id, epoch=self._epoch)
        actor, _ = self._server._spawn(blueprint, transform, attach_to)
        return actor

    def spawn_actor(self, blueprint: Any, transform: Any, attach_to: Any = None) -> Any:
        self._server._call("world.spawn_actor", blueprint.id, epoch=self._epoch)
        actor, error = self._server._spawn(blueprint, transform, attach_to)
        if actor is None:
            raise RuntimeError(error)
        return actor

    def get_actors(self, actor_ids: list[int] | None = None) -> list:
        self._server._call("world.get_actors", epoch=self._epoch)
        actors = [a for a in self._server.actors.values() if a.is_alive]
        return actors if actor_ids is None else [a for a in actors if a.id in actor_ids]


class StandinClient:
    _REAL = carla.Client

    def __init__(self, network: StandinNetwork, host: str, port: int, worker_threads: int = 0) -> None:
        self._network = network
        self._addr = (host, port)
        self._timeout_s = 5.0
        server = network.servers.get(self._addr)
        self._epoch = server.epoch if server is not None else -1

    def _server(self, method: str) -> StandinServer:
        server = self._network.servers.get(self._addr)
        if server is None or server.epoch != self._epoch:  # nothing there, or the server restarted since
            raise RuntimeError(_TIMEOUT.format(ms=int(self._timeout_s * 1000), addr=f"{self._addr[0]}:{self._addr[1]}"))
        server._call(f"client.{method}", timeout_s=self._timeout_s)
        return server

    def set_timeout(self, second: float) -> None:
        self._timeout_s = float(second)

    def get_client_version(self) -> str:
        return CLIENT_VERSION

    def get_server_version(self) -> str:
        return self._server("get_server_version").version

    def get_world(self) -> StandinWorld:
        return StandinWorld(self._server("get_world"))

    def get_available_maps(self) -> list[str]:
        self._server("get_available_maps")
        return [f"/Game/Carla/Maps/{t}" for t in ("Town01", "Town02", "Town10HD_Opt")]

    def load_world(self, map_name: str, reset_settings: bool = True, map_layers: Any = None) -> StandinWorld:
        server = self._server("load_world")
        server._load(map_name, reset_settings)
        reset_traffic_managers()
        return StandinWorld(server)

    def get_trafficmanager(self, client_connection: int = 8000) -> StandinTrafficManager:
        """The process's TM on that port if there is one (whatever server it was made for), else a new one."""
        server = self._server("get_trafficmanager")
        with _TM_LOCK:
            tm = TM_MAP.get(client_connection)
            if tm is None:
                tm = self._network._traffic_manager(server, self._addr[0], client_connection)
                TM_MAP[client_connection] = tm
        return tm

    def apply_batch_sync(self, commands: list, do_tick: bool = False) -> list:
        return self._server("apply_batch_sync")._batch(commands, do_tick)


class StandinServer:
    """One simulated CARLA server.

    :param version: the version it reports (``get_server_version``).
    :param town: the map loaded at start.
    :param camera_size: not a CARLA setting: unused (images have the size the camera blueprint asks for).
    """

    def __init__(self, version: str = CLIENT_VERSION, town: str = "Town01") -> None:
        self.version = version
        self.calls: list[tuple[str, tuple]] = []
        self.violations: list[str] = []
        self.blueprints = _blueprints()
        self.actors: dict[int, StandinActor] = {}
        self.autopilot: dict[int, int] = {}  # actor id -> TM port
        self.traffic_managers: dict[int, StandinTrafficManager] = {}
        self.settings = carla.WorldSettings()  # CARLA's defaults: asynchronous, variable step
        self.frame = 1000
        self.epoch = 0
        self.episode = random.getrandbits(31)  # a server (re)start gets a new episode id
        self.tick_s = 0.0  # world.tick() takes this long (s)
        self.town = town
        self.map = StandinMap(town)
        self.down = False
        self._faults: list[dict] = []
        self.stale_images = 0  # deliver this many stale images (previous frame) before the next ticks' images
        self.drop_images = 0  # drop the images of this many next ticks
        self.collide_next_tick = False
        spectator = StandinBlueprint("spectator")
        self._next_id = 1
        self.spectator = self._add(StandinActor, spectator, carla.Transform(), None)

    # ---------------------------------------------------------------- test controls
    def fail(
        self,
        method: str,
        times: int = 1,
        skip: int = 0,
        after: bool = False,
        error: str | None = None,
        exception: type[BaseException] = RuntimeError,
    ) -> None:
        """Make the next call(s) of ``method`` (e.g. ``"world.tick"``, ``"client.apply_batch_sync"``) raise.

        :param times: how many calls fail.
        :param skip: calls to let through first.
        :param after: fail after doing the work (the reply is lost; e.g. actors spawned but their ids unknown).
        :param error: the message; default CARLA's time-out message.
        :param exception: the exception type (CARLA raises RuntimeError; others test unexpected failures).
        """
        self._faults.append(
            {"method": method, "times": times, "skip": skip, "after": after, "error": error, "exception": exception}
        )

    def restart(self) -> None:
        """The server process died and was started again: every actor is gone, settings are CARLA's defaults."""
        self.actors = {k: v for k, v in self.actors.items() if v is self.spectator}
        self.autopilot = {}
        self.traffic_managers = {}
        self.settings = carla.WorldSettings()
        self.epoch += 1
        self.episode = random.getrandbits(31)

    def count(self, method: str) -> int:
        """How many times ``method`` was called."""
        return sum(1 for m, _ in self.calls if m == method)

    def alive(self, prefix: str = "") -> list[StandinActor]:
        """Alive actors whose type id starts with ``prefix``."""
        return [a for a in self.actors.values() if a.is_alive and a.type_id.startswith(prefix)]

    # ---------------------------------------------------------------- internals
    def _call(self, method: str, *args: Any, timeout_s: float = 5.0, epoch: int | None = None) -> None:
        self.calls.append((method, args))
        if self.down or (epoch is not None and epoch != self.epoch):  # down, or a handle from before a restart
            raise RuntimeError(_TIMEOUT.format(ms=int(timeout_s * 1000), addr="standin"))
        for fault in self._faults:
            if fault["method"] != method or fault["times"] <= 0:
                continue
            if fault["skip"] > 0:
                fault["skip"] -= 1
                continue
            if fault["after"]:
                self._pending_after: dict | None = fault
                return
            fault["times"] -= 1
            raise fault["exception"](fault["error"] or _TIMEOUT.format(ms=int(timeout_s * 1000), addr="standin"))

    def _maybe_fail_after(self, method: str) -> None:
        fault: dict | None = getattr(self, "_pending_after", None)
        if fault is not None and fault["method"] == method:
            self._pending_after = None
            fault["times"] -= 1
            raise RuntimeError(fault["error"] or _TIMEOUT.format(ms=5000, addr="standin"))

    def _add(self, cls: type, blueprint: StandinBlueprint, transform: Any, parent: Any) -> Any:
        actor = cls(self, self._next_id, blueprint, transform, parent)
        self.actors[actor.id] = actor
        self._next_id += 1
        return actor

    def _spawn(self, blueprint: StandinBlueprint, transform: Any, parent: Any) -> tuple[Any, str]:
        if not isinstance(transform, carla.Transform):
            self.violations.append(f"spawn with a {type(transform).__name__}, not a carla.Transform")
        if blueprint.id.startswith("sensor."):
            if parent is None or not parent.is_alive:
                return None, "sensor spawned without a live parent"
            return self._add(StandinSensor, blueprint, transform, parent), ""
        for other in self.alive("vehicle."):
            if other.get_transform().location.distance(transform.location) < 2.0:
                return None, "Spawn failed because of collision at spawn position"
        return self._add(StandinVehicle, blueprint, transform, None), ""

    def _destroy(self, actor_id: int) -> bool:
        actor = self.actors.get(actor_id)
        if actor is None or not actor.is_alive:
            return False
        if isinstance(actor, StandinSensor) and actor.is_listening():
            self.violations.append(f"sensor {actor_id} destroyed while still listening (stop it first)")
        children = [a for a in self.alive("sensor.") if a.parent is actor]
        if children:
            self.violations.append(f"vehicle {actor_id} destroyed before its sensors {[c.id for c in children]}")
        actor._alive = False
        self.autopilot.pop(actor_id, None)
        del self.actors[actor_id]
        return True

    def _batch(self, commands: list, do_tick: bool) -> list[StandinResponse]:
        out = []
        for cmd in commands:
            if isinstance(cmd, carla.command.SpawnActor):
                bp = getattr(cmd, "standin_blueprint", None)
                if bp is None:
                    self.violations.append("SpawnActor without a blueprint")
                    out.append(StandinResponse(error="no blueprint"))
                    continue
                actor, error = self._spawn(bp, cmd.transform, None)
                out.append(StandinResponse(actor_id=actor.id) if actor is not None else StandinResponse(error=error))
            elif isinstance(cmd, carla.command.DestroyActor):
                ok = self._destroy(cmd.actor_id)
                out.append(StandinResponse(actor_id=cmd.actor_id) if ok else StandinResponse(error="actor not found"))
            elif isinstance(cmd, carla.command.SetAutopilot):
                if cmd.tm_port not in self.traffic_managers:
                    self.violations.append(f"SetAutopilot on TM port {cmd.tm_port}, where no Traffic Manager runs")
                if cmd.actor_id not in self.actors:
                    out.append(StandinResponse(error="actor not found"))
                    continue
                self.autopilot[cmd.actor_id] = cmd.tm_port
                out.append(StandinResponse(actor_id=cmd.actor_id))
            else:
                self.violations.append(f"unsupported batch command {type(cmd).__name__}")
                out.append(StandinResponse(error="unsupported"))
        if do_tick:
            self._tick()
        self._maybe_fail_after("client.apply_batch_sync")
        return out

    def _load(self, map_name: str, reset_settings: bool) -> None:
        town = map_name.rstrip("/").rsplit("/", 1)[-1]
        self.actors = {k: v for k, v in self.actors.items() if v is self.spectator}
        self.town = town
        self.map = StandinMap(town)
        self.episode = random.getrandbits(31)
        if reset_settings:
            self.settings = carla.WorldSettings()

    def _tick(self) -> int:
        if not self.settings.synchronous_mode:
            self.violations.append("world.tick() in asynchronous mode")
        dt = self.settings.fixed_delta_seconds or 0.05
        if self.tick_s > 0:
            time.sleep(self.tick_s)
        self.frame += 1
        for actor in self.alive("vehicle."):
            if isinstance(actor, StandinVehicle):
                actor._advance(dt)
        drop = self.drop_images > 0
        self.drop_images = max(self.drop_images - 1, 0)
        stale, self.stale_images = self.stale_images, 0
        for sensor in [a for a in self.alive("sensor.") if isinstance(a, StandinSensor)]:
            deliver = sensor.callback
            if deliver is None:
                continue
            if sensor.type_id == "sensor.camera.rgb":
                if self.settings.no_rendering_mode:  # no rendering, no camera images
                    continue
                if not sensor._first_dropped:  # the frame in flight while the stream was being subscribed
                    sensor._first_dropped = True
                    continue
                w, h = int(sensor._attributes["image_size_x"]), int(sensor._attributes["image_size_y"])
                for _ in range(stale):  # every camera gets them (a second camera follows the same rules)
                    deliver(self._image(self.frame - 1, w, h, sensor))
                if not drop:
                    deliver(self._image(self.frame, w, h, sensor))
            elif sensor.type_id == "sensor.other.collision" and self.collide_next_tick:
                other = self.alive("vehicle.")[-1]
                deliver(StandinCollisionEvent(self.frame, self.frame * dt, sensor.parent, other))
        self.collide_next_tick = False
        return self.frame

    @staticmethod
    def image_value(frame: int, camera: StandinActor) -> int:
        """The gray value of the sky in ``camera``'s image of ``frame`` (frames since it was spawned, mod 256)."""
        return (frame - camera._spawn_frame) % 256

    def _image(self, frame: int, w: int, h: int, sensor: StandinSensor) -> StandinImage:
        """The camera's image of ``frame``: the scene as it is now (:func:`render_camera`), its sky marking ``frame``."""
        fov = float(sensor._attributes["fov"])
        raw = render_camera(self, sensor, frame, w, h, fov)
        return StandinImage(frame, frame * 0.05, w, h, fov, raw, sensor.get_transform())


class StandinNetwork:
    """Servers by address, and the client factory the backend gets (``client_factory(host, port)``).

    The Traffic Manager runs in the client process and listens on ``tm_port`` of the client machine, so
    asking for a TM port that a TM of *another* server already uses fails like CARLA's bind error.
    """

    def __init__(self) -> None:
        self.servers: dict[tuple[str, int], StandinServer] = {}
        self._tm_owner: dict[tuple[str, int], StandinServer] = {}
        self.clients: list[StandinClient] = []

    def add(self, host: str = "127.0.0.1", port: int = 2000, **kwargs: Any) -> StandinServer:
        server = StandinServer(**kwargs)
        self.servers[(host, port)] = server
        return server

    def client_factory(self, host: str, port: int, worker_threads: int = 0) -> StandinClient:
        client = StandinClient(self, host, port, worker_threads)
        self.clients.append(client)
        return client

    def _traffic_manager(self, server: StandinServer, host: str, port: int) -> StandinTrafficManager:
        owner = self._tm_owner.get(("local", port))
        if owner is not None and owner is not server and port in owner.traffic_managers:
            raise RuntimeError(
                "trying to create rpc server for traffic manager; but the system failed to create because of bind error."
            )
        self._tm_owner[("local", port)] = server
        if port not in server.traffic_managers:
            server.traffic_managers[port] = StandinTrafficManager(server, port)
        return server.traffic_managers[port]


_STANDINS = (
    StandinAttribute,
    StandinBlueprint,
    StandinBlueprintLibrary,
    StandinImage,
    StandinCollisionEvent,
    StandinLaneInvasionEvent,
    StandinResponse,
    ActorDescription,
    StandinActor,
    StandinVehicle,
    StandinSensor,
    StandinTrafficManager,
    StandinMap,
    StandinWorld,
    StandinClient,
)
_NOT_CARLA = {
    "copy",
    "speed",
    "control",
    "callback",
    "seeds",
    "distance",
    "synchronous",
    "port",
    "value",
    "ticks",
    "resets",
    "shut",
}


def api_mismatches() -> list[str]:
    """Members of the stand-in classes that the real CARLA class lacks, or has as another kind (property/method)."""
    problems = []
    for cls in _STANDINS:
        real = cls._REAL
        names = {n for n in vars(cls) if not n.startswith("_")}
        names |= {n for n in getattr(cls, "__dataclass_fields__", {}) if not n.startswith("_")}
        for name in sorted(names - _NOT_CARLA):
            if not hasattr(real, name):
                problems.append(f"{cls.__name__}.{name}: carla.{real.__name__} has no {name}")
                continue
            real_is_property = isinstance(getattr(real, name), property)
            ours = vars(cls).get(name)
            ours_is_method = callable(ours) and not isinstance(ours, property)
            if real_is_property == ours_is_method:
                kind = "a property" if real_is_property else "a method"
                problems.append(f"{cls.__name__}.{name}: in carla.{real.__name__} it is {kind}")
    return problems


def free_port(step: int = 1) -> int:
    """A closed loopback port in 20000..40000 for a stand-in server, so that its Traffic Manager port (+6000) is valid
    too (the OS's ephemeral ports can be above 59535).

    :param step: ports are drawn from ``range(20000, 40000, step)``: 10 leaves the nine above each one free for
        tests that need a few neighbouring servers.
    """
    for port in random.Random().sample(range(20000, 40000, step), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000..40000")
