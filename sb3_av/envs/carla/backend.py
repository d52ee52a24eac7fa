"""CarlaBackend: one ego vehicle with a camera, collision and lane-invasion sensors (and, with ``chase_camera_size``,
a chase camera for ``sb3-av record``), NPC traffic, a route.

Robustness rules (ENV_CONTRACT.md, "CARLA specifics"):

- Only the env's own actors are destroyed. Each is tagged (``role_name = sb3av:tm<tm_port>:<id>:<kind>``) and
  its id recorded the moment it is spawned; sensors are stopped, then destroyed before their vehicle; NPCs
  go by batch command. When a reset fails halfway, what was spawned is destroyed before the error leaves.
  Actors tagged with this env's TM port but left by a dead run (or a killed worker) are swept at the first
  reset after connecting: no live env on this machine holds that TM port but this one.
- ``world.tick(timeout_s)`` and a bounded wait for the camera image of the ticked frame; a timeout or a
  lost connection leads to at most ``max_reconnects`` reconnects, after which a
  :class:`~sb3_av.envs.carla.errors.CarlaConnectionError` names host:port and how to start CARLA.
- Any other error the server answers with (a refused spawn, a bad blueprint attribute) would repeat after a
  reconnect: it becomes a :class:`~sb3_av.envs.carla.errors.CarlaBackendError` at once (after the cleanup),
  saying what failed and what to change.
- After a reconnect during :meth:`CarlaBackend.step`, a new episode is started and its first frame is
  returned with ``extra["episode_restarted"] = True`` (the env should truncate there). The reconnect is made in
  this process only to the same server episode (a hang that passed); a restarted server raises
  :class:`~sb3_av.envs.carla.errors.CarlaServerRestarted`, and the worker process that holds this backend
  (:mod:`sb3_av.envs.carla.worker`) is replaced.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from sb3_av.envs.backend import DrivingBackend, Frame, RouteSpec
from sb3_av.envs.carla.config import CarlaConfig
from sb3_av.envs.carla.connection import CarlaConnection
from sb3_av.envs.carla.errors import CARLA_VERSION, CarlaBackendError, CarlaConnectionError, CarlaSensorTimeout
from sb3_av.envs.carla.route import build_route, carla_to_world_xy, carla_to_world_yaw, route_spec, world_to_carla_steer
from sb3_av.envs.carla.route import CarlaRouteError, RouteStart, spawn_transform, start_waypoint
from sb3_av.envs.carla.sensors import EventQueue, FrameQueue, bgra_to_gray, bgra_to_rgb
from sb3_av.envs.carla.traffic import footprint, forward_speed, route_traffic
from sb3_av.envs.route import Route

__all__ = ["CarlaBackend", "import_carla"]

logger = logging.getLogger(__name__)

#: Lower-case fragments of the ``RuntimeError`` texts with which the carla client reports a lost or hung server:
#: its time-out ("time-out of 10000ms while waiting for the simulator, make sure the simulator is ready and
#: connected to host:port") and the socket errors of its RPC layer (refused, reset, closed connections).
_LOST_SERVER_MARKERS = (
    "time-out",
    "timeout",
    "timed out",
    "connect",  # connection refused/reset/aborted, disconnected, not connected
    "end of file",
    "broken pipe",
    "reset by peer",
    "socket",
)
#: How often the ego is tried at its start point, with a world tick in between, before the spot counts as blocked.
_EGO_SPAWN_TRIES = 3
#: Ticks over which the first camera image of an episode is waited for (a new camera's first image may be lost).
_FIRST_IMAGE_TICKS = 3

_CAMERA_LOCATION = (1.5, 0.0, 2.4)  # x forward, y right, z up (m) relative to the ego, CARLA frame
_CAMERA_PITCH_DEG = -10.0
#: The chase camera (``chase_camera_size``): behind and above the ego, looking down at it and the road ahead.
_CHASE_LOCATION = (-6.0, 0.0, 3.0)
_CHASE_PITCH_DEG = -15.0
_CHASE_FOV_DEG = 90.0


def _server_lost(exc: BaseException) -> bool:
    """Whether ``exc`` means "the server is lost, hung or out of step" (so a reconnect may help).

    :param exc: an error raised while talking to the server.
    :return: True for :class:`CarlaSensorTimeout` and for a ``RuntimeError`` whose text names a time-out or a
        lost connection; False for every other error (the server answered: retrying would fail the same way).
    """
    if isinstance(exc, CarlaSensorTimeout):
        return True
    if type(exc) is not RuntimeError:  # the client raises plain RuntimeErrors; subclasses are someone else's
        return False
    text = str(exc).lower()
    return any(marker in text for marker in _LOST_SERVER_MARKERS)


def import_carla() -> Any:
    """Import the ``carla`` client module, or explain how to install it.

    :raises ImportError: the client is not installed.
    """
    try:
        import carla
    except ImportError as exc:
        raise ImportError(
            f"The CARLA backend needs the CARLA Python client: pip install carla=={CARLA_VERSION} "
            f"(it must match the server, CARLA {CARLA_VERSION}); import failed with: {exc}"
        ) from exc
    return carla


class CarlaBackend(DrivingBackend):
    """The CARLA 0.9.16 simulator behind :class:`~sb3_av.envs.core.DrivingEnv`.

    :param config: a :class:`CarlaConfig` or a dict of its keys (unknown keys are an error).
    :param client_factory: ``(host, port) -> carla.Client``; default ``carla.Client`` (tests pass a stand-in server).
    :param carla_module: the ``carla`` module whose types (Transform, VehicleControl, commands, ...) are used;
        default the installed client.
    :param connect: connect in the constructor (an absent server then fails at once, not at the first reset).
    :param uid: this env's id in the actors' ``role_name`` (default: a new random one; a replaced worker keeps it).
    :raises CarlaConnectionError: no server answered within ``connect_timeout_s``.
    """

    def __init__(
        self,
        config: CarlaConfig | dict[str, Any] | None = None,
        *,
        client_factory: Callable[..., Any] | None = None,
        carla_module: Any = None,
        connect: bool = True,
        uid: str | None = None,
    ) -> None:
        if config is None:
            config = CarlaConfig()
        self.config = config if isinstance(config, CarlaConfig) else CarlaConfig.from_dict(config)
        self._carla = carla_module if carla_module is not None else import_carla()
        self.dt = self.config.dt
        self.uid = uid or uuid.uuid4().hex[:12]
        self.conn = CarlaConnection(self.config, self._carla, client_factory or self._carla.Client)
        self._swept_generation = -1
        self._route_generation = -1
        self._route_waypoints: list[Any] = []
        self._route: RouteSpec | None = None
        self._route_line: Route | None = None  # the route as a polyline, for the leader on it
        self._ego_s: float | None = None  # the ego's arc length on the route at the last frame (None: search it all)
        self._start_transform: Any = None
        # this episode's actors (ids recorded as soon as spawned)
        self._sensors: list[Any] = []
        self._ego: Any = None
        self._npc_ids: list[int] = []
        self._npcs: list[Any] = []  # their actor handles, for the leader and clearance of each frame
        self._dirty = False  # a cleanup failed: sweep by tag when the server is back
        self._camera = FrameQueue("camera")
        self._chase = FrameQueue("chase camera")
        self._chase_image: np.ndarray | None = None
        self._collisions = EventQueue("collision")
        self._lane_invasions = EventQueue("lane_invasion")
        self._start_frame = 0
        self.last_frame_id = -1  # the server frame id of the latest Frame
        self._episode_ready = False
        self._closed = False
        self.restarts = 0  # episodes restarted after a reconnect, over the backend's life (Frame.extra["restarts"])
        self._stage = ""  # what _reset_once is doing, for the error message of a refused request
        if connect:
            self.conn.open()

    @property
    def tag(self) -> str:
        """The ``role_name`` prefix of this env's actors: ``sb3av:tm<tm_port>:<uid>``."""
        return f"{self.tm_prefix}{self.uid}"

    @property
    def tm_prefix(self) -> str:
        """The ``role_name`` prefix of the actors of every env that uses this TM port (``sb3av:tm<tm_port>:``)."""
        return f"sb3av:tm{self.conn.tm_port}:"

    # ------------------------------------------------------------------ DrivingBackend API
    @property
    def route(self) -> RouteSpec:
        """The route of the current episode (fixed per scenario; valid after :meth:`reset`)."""
        if self._route is None:
            raise RuntimeError("CarlaBackend.route is only valid after reset()")
        return self._route

    def reset(self, seed: int | None = None) -> Frame:
        """Destroy the previous episode's actors, spawn the ego, its sensors and the NPCs, tick once.

        A lost or hung server leads to bounded reconnects; any other failure destroys what this reset
        spawned before it propagates.

        :param seed: seeds NPC placement and the Traffic Manager.
        :raises CarlaConnectionError: the server is gone and did not come back.
        :raises CarlaBackendError: the server refused a request (e.g. a spawn at a blocked point, a bad blueprint
            attribute); retrying would fail the same way, so it is not retried.
        """
        self._check_open()
        if not self.conn.connected and not self.conn.generation:
            self.conn.open()
        attempts = self.config.max_reconnects + 1
        for attempt in range(1, attempts + 1):
            try:
                if not self.conn.connected:
                    self.conn.reconnect(RuntimeError("not connected"))
                return self._reset_once(seed)
            except (RuntimeError, CarlaSensorTimeout) as exc:
                self._abandon_episode()
                if not _server_lost(exc):
                    if type(exc) is RuntimeError:  # the server answered with an error: it would answer the same again
                        raise self._refused("reset()", exc) from exc
                    raise
                if attempt == attempts:
                    raise CarlaConnectionError(
                        f"reset() failed {attempts} times on the CARLA server {self.conn.address} although it answered "
                        f"again each time (last error: {type(exc).__name__}: {exc}); the server is unstable, restart it.",
                        self.conn.host,
                        self.conn.port,
                    ) from exc
                self.conn.reconnect(exc)
            except BaseException:
                self._abandon_episode()
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def step(self, steer: float, throttle: float, brake: float) -> Frame:
        """Apply one control, tick the world once and return the frame-matched observation.

        :param steer: [-1, 1], positive = left (sent to CARLA as ``-steer``).
        :param throttle: [0, 1].
        :param brake: [0, 1].
        :raises CarlaConnectionError: the server was lost and did not come back.
        :raises CarlaBackendError: the server refused a request of this step (not a lost connection).
        """
        self._check_open()
        if not self._episode_ready:
            raise RuntimeError("CarlaBackend.step() called before reset()")
        try:
            self._stage = "applying the control and ticking the world"
            return self._step_once(steer, throttle, brake)
        except (RuntimeError, CarlaSensorTimeout) as exc:
            if not _server_lost(exc):
                if type(exc) is RuntimeError:
                    self._abandon_episode()
                    raise self._refused("step()", exc) from exc
                raise
            logger.warning("CARLA step failed on %s: %s; restarting the episode", self.conn.address, exc)
            self._abandon_episode()
            self.conn.reconnect(exc)
            self.restarts += 1
            frame = self.reset()
            return replace(frame, extra={**frame.extra, "episode_restarted": True, "restart_cause": str(exc)[:200]})

    @property
    def chase_image(self) -> np.ndarray | None:
        """The chase camera's RGB image of the latest frame, ``(height, width, 3)`` uint8 (``chase_camera_size``);
        None when the chase camera is off or before the first :meth:`reset`."""
        return self._chase_image

    def close(self) -> None:
        """Destroy this env's actors (sensors first) and restore the world settings; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._abandon_episode()  # own actors by id and by tag, sensors first; short RPC timeout, never raises
        finally:
            self.conn.close()

    # ------------------------------------------------------------------ episode
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("This CarlaBackend is closed; make a new env")

    def _reset_once(self, seed: int | None) -> Frame:
        conn = self.conn
        self._episode_ready = False
        self._stage = "destroying the previous episode's actors"
        self._destroy_episode()
        self._ego_s = None
        if self._swept_generation != conn.generation:
            self._stage = "removing actors that a dead run left with this env's TM port"
            self._sweep_tagged(self.tm_prefix)
            self._swept_generation = conn.generation
        elif self._dirty:
            self._sweep_tagged()
        self._stage = "building the route"
        self._ensure_route()
        rng = np.random.default_rng(seed)
        if seed is not None:
            conn.traffic_manager.set_random_device_seed(int(seed))
        world = conn.world
        library = world.get_blueprint_library()

        self._ego = self._spawn_ego(world, library)
        self._attach_sensors(world, library, self._ego)
        self._stage = f"spawning {self.config.npc_vehicles} NPC vehicles"
        self._spawn_npcs(library, rng)
        frame_id, image, chase = self._first_image(world)
        self._start_frame = frame_id
        self._collisions.take(frame_id)  # contacts while settling on the ground are not the agent's
        self._lane_invasions.take(frame_id)
        self._episode_ready = True
        return self._frame(frame_id, image, collisions=[], lane_invasions=[], chase=chase)

    def _spawn_ego(self, world: Any, library: Any) -> Any:
        """Spawn the ego at the route's start, ticking between tries while another actor blocks the spot."""
        conn = self.conn
        self._stage = f"spawning the ego ({self.config.ego_blueprint})"
        ego_bp = self._find_blueprint(library, self.config.ego_blueprint)
        self._tag_blueprint(ego_bp, "ego")
        for attempt in range(_EGO_SPAWN_TRIES):
            if attempt:  # a vehicle passing over the start point may have moved on after a tick
                world.tick(self.config.timeout_s)
            ego = world.try_spawn_actor(ego_bp, self._start_transform)
            if ego is not None:
                return ego
        loc = self._start_transform.location
        raise CarlaBackendError(
            f"Could not spawn the ego at {self._start_name()}, CARLA ({loc.x:.1f}, {loc.y:.1f}), "
            f"on {conn.address}: the spot stayed blocked by an actor this env does not own over "
            f"{_EGO_SPAWN_TRIES} tries, one world tick apart. Choose another start (route_start or "
            "route_start_index), use fewer npc_vehicles (of another env on this server), or clear the world of "
            "other clients' actors."
        )

    def _attach_sensors(self, world: Any, library: Any, ego: Any) -> None:
        """The camera, collision and lane-invasion sensors (and the chase camera, if on) on the ego, each feeding its
        frame-matched queue."""
        carla = self._carla
        self._camera = FrameQueue("camera")
        self._chase = FrameQueue("chase camera")
        self._collisions = EventQueue("collision")
        self._lane_invasions = EventQueue("lane_invasion")
        self._stage = "setting up the camera blueprint (camera_size, camera_fov_deg)"
        size = str(self.config.camera_size)
        cam_bp = self._find_blueprint(library, "sensor.camera.rgb")
        for key, value in (("image_size_x", size), ("image_size_y", size), ("fov", str(self.config.camera_fov_deg))):
            cam_bp.set_attribute(key, value)
        if cam_bp.has_attribute("sensor_tick"):
            cam_bp.set_attribute("sensor_tick", "0.0")
        cam_tf = carla.Transform(carla.Location(*_CAMERA_LOCATION), carla.Rotation(pitch=_CAMERA_PITCH_DEG))
        for blueprint_id, transform, sink in (
            ("sensor.camera.rgb", cam_tf, self._camera.put),
            ("sensor.other.collision", carla.Transform(), self._collisions.put),
            ("sensor.other.lane_invasion", carla.Transform(), self._lane_invasions.put),
        ):
            self._stage = f"spawning the {blueprint_id} sensor on the ego"
            bp = cam_bp if blueprint_id == "sensor.camera.rgb" else self._find_blueprint(library, blueprint_id)
            self._tag_blueprint(bp, blueprint_id.rsplit(".", 1)[-1])
            sensor = world.spawn_actor(bp, transform, attach_to=ego)
            self._sensors.append(sensor)
            sensor.listen(sink)
        if self.config.chase_camera_size is not None:
            self._attach_chase_camera(world, library, ego, self.config.chase_camera_size)

    def _attach_chase_camera(self, world: Any, library: Any, ego: Any, size: tuple[int, int]) -> None:
        """The chase camera: a second ``sensor.camera.rgb``, rigidly attached behind and above the ego.

        Rigid (not a spring arm): the image of frame N shows the ego where frame N put it, with no lag to match.
        """
        carla = self._carla
        self._stage = "setting up the chase camera blueprint (chase_camera_size)"
        bp = self._find_blueprint(library, "sensor.camera.rgb")
        for key, value in (("image_size_x", size[0]), ("image_size_y", size[1]), ("fov", _CHASE_FOV_DEG)):
            bp.set_attribute(key, str(value))
        if bp.has_attribute("sensor_tick"):
            bp.set_attribute("sensor_tick", "0.0")
        self._tag_blueprint(bp, "chase")
        self._stage = "spawning the chase camera on the ego"
        transform = carla.Transform(carla.Location(*_CHASE_LOCATION), carla.Rotation(pitch=_CHASE_PITCH_DEG))
        sensor = world.spawn_actor(bp, transform, attach_to=ego)
        self._sensors.append(sensor)
        sensor.listen(self._chase.put)

    def _first_image(self, world: Any) -> tuple[int, Any, Any]:
        """Tick until the camera (and the chase camera, if on) delivers the image of the ticked frame (at most
        ``_FIRST_IMAGE_TICKS`` ticks).

        :return: (frame id, image, chase image or None).
        """
        self._stage = "ticking the world after the spawns"
        world.tick(self.config.timeout_s)  # the sensors' streams settle; the image of this frame may be lost
        for k in range(_FIRST_IMAGE_TICKS):
            frame_id = world.tick(self.config.timeout_s)
            try:
                return frame_id, self._camera.get(frame_id, self.config.sensor_timeout_s), self._chase_of(frame_id)
            except CarlaSensorTimeout:
                if k == _FIRST_IMAGE_TICKS - 1:
                    raise
                logger.info("No first camera image for frame %d on %s yet; ticking again", frame_id, self.conn.address)
        raise AssertionError("unreachable: the last tick either returns or raises")

    def _step_once(self, steer: float, throttle: float, brake: float) -> Frame:
        control = self._carla.VehicleControl(
            throttle=float(throttle), steer=world_to_carla_steer(steer), brake=float(brake), hand_brake=False, reverse=False
        )
        self._ego.apply_control(control)
        frame_id = self.conn.world.tick(self.config.timeout_s)
        image = self._camera.get(frame_id, self.config.sensor_timeout_s)
        chase = self._chase_of(frame_id)
        return self._frame(
            frame_id,
            image,
            collisions=self._collisions.take(frame_id),
            lane_invasions=self._lane_invasions.take(frame_id),
            chase=chase,
        )

    def _chase_of(self, frame_id: int) -> Any:
        """The chase camera's image of ``frame_id`` (a bounded wait, as the camera's); None when it is off."""
        if self.config.chase_camera_size is None:
            return None
        return self._chase.get(frame_id, self.config.sensor_timeout_s)

    def _frame(self, frame_id: int, image: Any, collisions: list[Any], lane_invasions: list[Any], chase: Any = None) -> Frame:
        ego = self._ego
        tf = ego.get_transform()
        vel = ego.get_velocity()
        fwd = tf.get_forward_vector()
        speed = max(vel.x * fwd.x + vel.y * fwd.y + vel.z * fwd.z, 0.0)
        x, y = carla_to_world_xy(tf.location.x, tf.location.y)
        on_lane = (
            self.conn.map.get_waypoint(tf.location, project_to_road=False, lane_type=self._carla.LaneType.Driving) is not None
        )
        self.last_frame_id = int(frame_id)
        gray = bgra_to_gray(image.raw_data, int(image.width), int(image.height), self.config.camera_size)
        if chase is not None:
            self._chase_image = bgra_to_rgb(chase.raw_data, int(chase.width), int(chase.height))
        return Frame(
            image=gray,
            x=x,
            y=y,
            yaw=carla_to_world_yaw(tf.rotation.yaw),
            speed_ms=float(speed),
            sim_time_s=(frame_id - self._start_frame) * self.dt,
            collision=bool(collisions),
            on_driving_lane=on_lane,
            extra={
                "server": self.conn.address,
                "lane_invasions": len(lane_invasions),
                "collision_with": sorted({str(getattr(e.other_actor, "type_id", "?")) for e in collisions}),
                "npc_vehicles": len(self._npc_ids),
                "stale_images_dropped": self._camera.stale_dropped,
                "restarts": self.restarts,
                **self._traffic(),
            },
        )

    def _traffic(self) -> dict[str, Any]:
        """The leader on the route lane and the nearest NPC's clearance (:func:`~sb3_av.envs.carla.traffic.route_traffic`)."""
        assert self._route_line is not None
        ego = footprint(self._ego)
        # the box centre's arc length, as the NPCs' (an actor's origin need not be its box centre)
        self._ego_s = self._route_line.project(ego[0], ego[1], s_hint=self._ego_s).s
        npcs = [npc for npc in self._npcs if npc.is_alive]
        transforms = [npc.get_transform() for npc in npcs]  # read once, for the box and the speed
        boxes = np.array([footprint(npc, tf) for npc, tf in zip(npcs, transforms, strict=True)]).reshape(-1, 5)
        speeds = np.array([forward_speed(npc, tf) for npc, tf in zip(npcs, transforms, strict=True)])
        return route_traffic(self._route_line, self._ego_s, ego, boxes, speeds)

    def _ensure_route(self) -> None:
        """Build the route once per connection (the map is fixed while connected)."""
        conn = self.conn
        if self._route_generation == conn.generation and self._route is not None:
            return
        origin = self.config.start
        if isinstance(origin, RouteStart):  # OpenDRIVE (road, lane, s): the same start on a server and offline
            start_wp = start_waypoint(conn.map, origin)
            start = spawn_transform(start_wp)
        else:
            spawn_points = conn.map.get_spawn_points()
            if not 0 <= origin < len(spawn_points):
                raise CarlaBackendError(
                    f"route_start_index {origin} is out of range: {self.config.town} on {conn.address} "
                    f"has {len(spawn_points)} spawn points"
                )
            start = spawn_points[origin]
            start_wp = conn.map.get_waypoint(start.location, project_to_road=True, lane_type=self._carla.LaneType.Driving)
        try:
            self._route_waypoints = build_route(
                start_wp, self.config.route_length_m, self.config.route_step_m, self.config.junction_choices
            )
        except CarlaRouteError as exc:
            raise CarlaRouteError(
                f"The route on {self.config.town} from {self._start_name()} cannot be planned: {exc} "
                "(env kwargs route_start=(road, lane, s) or route_start_index, and junction_choices)"
            ) from exc
        self._route = route_spec(self._route_waypoints)
        self._route_line = Route(self._route.points, self._route.half_lane_width_m)
        self._start_transform = start
        self._route_generation = conn.generation

    def _start_name(self) -> str:
        """The route's start as the user set it (for messages): the OpenDRIVE start or the spawn point."""
        origin = self.config.start
        if isinstance(origin, RouteStart):
            how = "route_start" if self.config.route_start is not None else f"the {self.config.town} scenario route's start"
            return f"{how} (road {origin.road_id}, lane {origin.lane_id}, s {origin.s_m:g} m)"
        return f"spawn point {origin} (route_start_index)"

    def _spawn_npcs(self, library: Any, rng: np.random.Generator) -> None:
        n = self.config.npc_vehicles
        if n == 0:
            return
        cmd = self._carla.command
        start = self._start_transform.location
        points = [
            p
            for p in self.conn.map.get_spawn_points()
            if math.hypot(p.location.x - start.x, p.location.y - start.y) >= self.config.npc_min_distance_m
        ]
        if len(points) < n:
            logger.warning("Only %d free spawn points for %d NPC vehicles on %s", len(points), n, self.config.town)
        chosen = [points[i] for i in rng.permutation(len(points))[:n]]
        # cars only (buses and trucks jam Town01's junctions), sorted so that a seed gives the same traffic on any server
        blueprints = sorted(
            (
                bp
                for bp in library.filter("vehicle.*")
                if bp.has_attribute("base_type") and bp.get_attribute("base_type").as_str().lower() == "car"
            ),
            key=lambda bp: bp.id,
        )
        if not blueprints:
            raise CarlaBackendError(f"The CARLA server {self.conn.address} offers no vehicle blueprints with base_type 'car'")
        batch = []
        for transform in chosen:
            bp = blueprints[int(rng.integers(len(blueprints)))]
            self._tag_blueprint(bp, "npc")
            batch.append(cmd.SpawnActor(bp, transform))
        self._dirty = True  # until the responses are recorded, a failure may leave NPCs only the tag knows
        responses = self.conn.client.apply_batch_sync(batch, False)
        self._npc_ids = [r.actor_id for r in responses if not r.error]
        self._dirty = False
        tm_port = self.conn.tm_port
        autopilot = [cmd.SetAutopilot(actor_id, True, tm_port) for actor_id in self._npc_ids]
        if autopilot:
            self.conn.client.apply_batch_sync(autopilot, False)
            # one request for the handles; their transforms and velocities then come with every tick
            self._npcs = list(self.conn.world.get_actors(self._npc_ids))

    # ------------------------------------------------------------------ cleanup (own actors only)
    def _destroy_episode(self) -> None:
        """Stop the sensors, then destroy sensors, ego and NPCs in that order, by one batch command."""
        self._episode_ready = False
        sensors, ego, npcs = self._sensors, self._ego, self._npc_ids
        if not sensors and ego is None and not npcs:
            return
        for sensor in sensors:
            if sensor.is_listening():
                sensor.stop()
        ids = [s.id for s in sensors] + ([ego.id] if ego is not None else []) + list(npcs)
        self._sensors, self._ego, self._npc_ids, self._npcs = [], None, [], []
        was_dirty, self._dirty = self._dirty, True  # if the batch fails, only the tag still knows these actors
        self.conn.client.apply_batch_sync([self._carla.command.DestroyActor(i) for i in ids], False)
        self._dirty = was_dirty
        self._camera.clear()
        self._chase.clear()
        self._collisions.clear()
        self._lane_invasions.clear()

    def _abandon_episode(self) -> None:
        """Cleanup after a failure: destroy this env's actors, known by id or only by tag; never raises.

        When the server does not answer, the backend stays dirty and sweeps by tag once it is back.
        """
        self._episode_ready = False
        for sensor in self._sensors:
            try:
                if sensor.is_listening():
                    sensor.stop()
            except Exception:  # a dead stream; the sensor is destroyed below or swept later
                logger.debug("sensor.stop() failed during cleanup", exc_info=True)
        self._dirty = True  # the failure may have hidden a spawn whose reply was lost
        if self.conn.connected:
            client = self.conn.client
            try:
                client.set_timeout(min(self.config.timeout_s, 2.0))
                self._destroy_episode()
                self._sweep_tagged()
                return
            except Exception as exc:
                logger.warning(
                    "Could not destroy this env's actors on %s (%s); they are swept on reconnect", self.conn.address, exc
                )
            finally:
                client.set_timeout(self.config.timeout_s)
        self._sensors, self._ego, self._npc_ids, self._npcs = [], None, [], []

    def _sweep_tagged(self, prefix: str | None = None) -> None:
        """Destroy every actor whose ``role_name`` starts with ``prefix`` (default: this env's tag), sensors first.

        :param prefix: ``self.tm_prefix`` sweeps what dead runs with this TM port left too.
        """
        prefix = prefix if prefix is not None else self.tag + ":"
        actors = list(self.conn.world.get_actors())
        ours = [a for a in actors if str(a.attributes.get("role_name", "")).startswith(prefix)]
        our_ids = {a.id for a in ours}
        attached = [a for a in actors if a.id not in our_ids and a.parent is not None and a.parent.id in our_ids]
        sensors = [a for a in ours + attached if a.type_id.startswith("sensor.")]
        others = [a for a in ours if not a.type_id.startswith("sensor.")]
        for sensor in sensors:
            if sensor.is_listening():
                sensor.stop()
        if sensors or others:
            logger.warning("Destroying %d actor(s) left by this env on %s", len(sensors) + len(others), self.conn.address)
            self.conn.client.apply_batch_sync([self._carla.command.DestroyActor(a.id) for a in sensors + others], False)
        self._dirty = False

    # ------------------------------------------------------------------ helpers
    def _refused(self, call: str, exc: BaseException) -> CarlaBackendError:
        """The error for a request the server answered with an error (not a lost connection): no retry helps.

        :param call: ``"reset()"`` or ``"step()"``.
        :param exc: the client's ``RuntimeError``.
        """
        if call == "step()":
            hint = (
                "If the ego or its sensors were destroyed by another client (e.g. a cleanup script), let it spare "
                "actors whose role_name starts with 'sb3av:'; then call reset() to start a new episode."
            )
        else:
            hint = (
                "If a spawn was refused (e.g. 'collision at spawn position'), the spot is blocked: choose another "
                "start (route_start or route_start_index), use fewer npc_vehicles, or clear the world of other "
                "clients' actors. If a blueprint or one of its attributes was refused, check ego_blueprint, "
                f"camera_size and camera_fov_deg against what this CARLA {CARLA_VERSION} server offers."
            )
        return CarlaBackendError(
            f"{call} failed on the CARLA server {self.conn.address} while {self._stage or 'talking to the server'}: "
            f"the server refused the request ({type(exc).__name__}: {str(exc).strip()[:300]}). This is not a lost "
            f"connection, so it was not retried; this env's actors were destroyed. {hint}"
        )

    def _find_blueprint(self, library: Any, blueprint_id: str) -> Any:
        try:
            return library.find(blueprint_id)
        except (IndexError, KeyError, RuntimeError):
            raise CarlaBackendError(f"The CARLA server {self.conn.address} has no blueprint {blueprint_id!r}") from None

    def _tag_blueprint(self, blueprint: Any, kind: str) -> None:
        if blueprint.has_attribute("role_name"):
            blueprint.set_attribute("role_name", f"{self.tag}:{kind}")
