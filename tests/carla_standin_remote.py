"""The stand-in CARLA server as a process of its own on loopback, and the client module that talks to it.

A real CARLA server is another process: it can crash, hang or be restarted while the training runs. This
module makes the stand-in (:mod:`tests.carla_standin`) one too, so that tests can kill it (SIGKILL: a crash),
stop it (SIGSTOP: a hang) and start it again on the same port (a restart: a new episode id, no actors,
CARLA's default settings), and so that the env's worker process (:mod:`sb3_av.envs.carla.worker`) talks
to it over a socket, as it talks to CARLA.

- Server: ``python -m tests.carla_standin_remote --port 2000`` prints ``ready <port>`` once it listens on
  ``127.0.0.1:<port>``; the requests of each client connection run the in-process model
  (:class:`tests.carla_standin.StandinServer`) under one lock. Sensor data go over a second connection of
  the client (CARLA's streaming port) and are delivered there by the client's stream thread with delays.
- Client: ``SB3_AV_CARLA_CLIENT_MODULE=tests.carla_standin_remote`` makes a worker use :data:`CARLA_API`
  (the real ``carla`` types; :class:`RemoteClient` instead of ``carla.Client``). The client-side state
  LibCarla keeps per process is modelled as in :mod:`tests.carla_standin`: the process-global Traffic
  Manager map (stepped by every tick and ``apply_settings``, aborting the process via :func:`os.abort` when
  its server is gone), and the lane-invasion sensor computed on the client.
- Tests: :class:`StandinProcess` starts, kills, stops and restarts a server and queries it (``control``).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Client as _connect
from multiprocessing.connection import Connection, Listener
from pathlib import Path
from typing import Any

import carla

from tests import carla_standin as cs

__all__ = ["CARLA_API", "RemoteClient", "StandinProcess", "serve"]

_AUTHKEY = b"sb3-av-carla-standin"
_SETTINGS = (
    "synchronous_mode",
    "no_rendering_mode",
    "fixed_delta_seconds",
    "substepping",
    "max_substep_delta_time",
    "max_substeps",
    "max_culling_distance",
    "deterministic_ragdolls",
)
_ERRORS: dict[str, type[BaseException]] = {
    "RuntimeError": RuntimeError,
    "KeyError": KeyError,
    "IndexError": IndexError,
    "TypeError": TypeError,
    "ValueError": ValueError,
}


# ---------------------------------------------------------------------------------------------- wire format
_ENCODERS: list[tuple[type, Any]] = [  # carla types, which do not pickle, as tagged tuples
    (carla.Transform, lambda x: ("$T", _enc(x.location), _enc(x.rotation))),
    (carla.Location, lambda x: ("$L", x.x, x.y, x.z)),
    (carla.Rotation, lambda x: ("$R", x.pitch, x.yaw, x.roll)),
    (carla.Vector3D, lambda x: ("$V", x.x, x.y, x.z)),
    (carla.VehicleControl, lambda x: ("$VC", x.throttle, x.steer, x.brake, x.hand_brake, x.reverse)),
    (carla.WorldSettings, lambda x: ("$WS", {name: getattr(x, name) for name in _SETTINGS})),
    (carla.command.SpawnActor, lambda x: ("$SA", getattr(x, "standin_blueprint", None), _enc(x.transform))),
    (carla.command.DestroyActor, lambda x: ("$DA", x.actor_id)),
    (carla.command.SetAutopilot, lambda x: ("$AP", x.actor_id, x.enabled, x.tm_port)),
]


def _enc(x: Any) -> Any:
    """Encode a value for the socket: carla types as tagged tuples, server-side actors as descriptions."""
    if x is None or isinstance(x, str | int | float | bool | bytes | cs.StandinBlueprint | cs.StandinResponse):
        return x
    for cls, encode in _ENCODERS:
        if isinstance(x, cls):
            return encode(x)
    if isinstance(x, cs.StandinActor):  # server side: a description the client turns into a handle
        kind = "sensor" if isinstance(x, cs.StandinSensor) else "vehicle" if isinstance(x, cs.StandinVehicle) else "actor"
        return ("$A", x.id, x.type_id, x.attributes, _enc(x.parent), kind)
    if isinstance(x, RemoteActor):
        return ("$a", x.id)
    if dataclasses.is_dataclass(x):
        return ("$D", type(x).__name__, {f.name: _enc(getattr(x, f.name)) for f in dataclasses.fields(x)})
    if isinstance(x, list | tuple):
        return ("$seq", [_enc(i) for i in x])
    if isinstance(x, dict):
        return ("$map", {k: _enc(v) for k, v in x.items()})
    raise TypeError(f"the stand-in cannot send a {type(x).__name__}")


def _settings(values: dict) -> Any:
    settings = carla.WorldSettings()
    for name, value in values.items():
        setattr(settings, name, value)
    return settings


def _spawn_cmd(blueprint: Any, transform: Any) -> Any:
    cmd = carla.command.SpawnActor()
    cmd.transform = _dec(transform)
    if blueprint is not None:
        cmd.standin_blueprint = blueprint
    return cmd


def _server_actor(server: cs.StandinServer | None, actor_id: int) -> Any:
    actor = server.actors.get(actor_id) if server is not None else None
    if actor is None:
        raise RuntimeError(
            "trying to operate on a destroyed actor; an actor's function was called, but the actor is already destroyed."
        )
    return actor


_DECODERS: dict[str, Any] = {
    "$T": lambda x, se, sv: carla.Transform(_dec(x[1]), _dec(x[2])),
    "$L": lambda x, se, sv: carla.Location(*x[1:]),
    "$R": lambda x, se, sv: carla.Rotation(*x[1:]),
    "$V": lambda x, se, sv: carla.Vector3D(*x[1:]),
    "$VC": lambda x, se, sv: carla.VehicleControl(throttle=x[1], steer=x[2], brake=x[3], hand_brake=x[4], reverse=x[5]),
    "$WS": lambda x, se, sv: _settings(x[1]),
    "$SA": lambda x, se, sv: _spawn_cmd(x[1], x[2]),
    "$DA": lambda x, se, sv: carla.command.DestroyActor(x[1]),
    "$AP": lambda x, se, sv: carla.command.SetAutopilot(x[1], x[2], x[3]),
    "$A": lambda x, se, sv: RemoteActor.make(se, x[1], x[2], x[3], _dec(x[4], se), x[5]),
    "$a": lambda x, se, sv: _server_actor(sv, x[1]),
    "$D": lambda x, se, sv: getattr(cs, x[1])(**{k: _dec(v, se, sv) for k, v in x[2].items()}),
    "$seq": lambda x, se, sv: [_dec(i, se, sv) for i in x[1]],
    "$map": lambda x, se, sv: {k: _dec(v, se, sv) for k, v in x[1].items()},
}


def _dec(x: Any, session: _Session | None = None, server: cs.StandinServer | None = None) -> Any:
    """Decode what :func:`_enc` made; actors become handles of ``session`` (client) or objects of ``server``."""
    if not isinstance(x, tuple) or not x or not isinstance(x[0], str) or not x[0].startswith("$"):
        return x
    return _DECODERS[x[0]](x, session, server)


def _timeout_error(timeout_s: float, addr: tuple[str, int]) -> RuntimeError:
    return RuntimeError(cs._TIMEOUT.format(ms=int(timeout_s * 1000), addr=f"{addr[0]}:{addr[1]}"))


# ---------------------------------------------------------------------------------------------- client side
class _Session:
    """One client's connection (requests) and its stream connection (sensor data), as LibCarla's rpc + streaming."""

    def __init__(self, host: str, port: int) -> None:
        self.addr = (host, port)
        self.timeout_s = 5.0
        self._lock = threading.Lock()
        self._seq = itertools.count()
        self._conn: Connection | None = None
        self._stream_id: int | None = None
        self.listeners: dict[int, Any] = {}
        try:
            self._conn = _connect(self.addr, authkey=_AUTHKEY)
        except OSError:
            self._conn = None  # like the real client: the error comes with the first request

    def call(self, target: Any, method: str, *args: Any, timeout_s: float | None = None) -> Any:
        timeout = self.timeout_s if timeout_s is None else timeout_s
        with self._lock:
            if self._conn is None:
                raise _timeout_error(timeout, self.addr)
            seq = next(self._seq)
            try:
                self._conn.send((seq, target, method, _enc(list(args))))
                deadline = time.monotonic() + timeout
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not self._conn.poll(remaining):
                        raise _timeout_error(timeout, self.addr)  # a late answer is skipped by its sequence number
                    reply = self._conn.recv()
                    if reply[0] == seq:
                        break
            except (OSError, EOFError):
                self._conn = None
                raise _timeout_error(timeout, self.addr) from None
        if reply[1] == "err":
            raise _ERRORS.get(reply[2], RuntimeError)(reply[3])
        return _dec(reply[2], self)

    def subscribe(self, sensor_id: int, callback: Any) -> None:
        if self._stream_id is None:
            try:
                stream = _connect(self.addr, authkey=_AUTHKEY)
                stream.send(("stream",))
                self._stream_id = stream.recv()[1]
            except (OSError, EOFError):
                raise _timeout_error(self.timeout_s, self.addr) from None
            threading.Thread(target=self._read_stream, args=(stream,), name="standin-stream-reader", daemon=True).start()
        self.listeners[sensor_id] = callback
        self.call(("actor", sensor_id), "listen", self._stream_id)

    def _read_stream(self, stream: Connection) -> None:
        while True:
            try:
                _, sensor_id, payload = stream.recv()
            except (OSError, EOFError):
                return
            callback = self.listeners.get(sensor_id)
            if callback is not None:
                data = _dec(payload, self)
                delay = cs.STREAM.image_delay() if isinstance(data, cs.StandinImage) else 0.0
                cs.STREAM.submit((id(self), sensor_id), callback, data, delay)


class RemoteActor(cs.ActorDescription):
    """A client-side actor handle (``carla.Actor``): its description is cached, its state asked of the server."""

    def __init__(self, session: _Session, actor_id: int, type_id: str, attributes: dict, parent: Any) -> None:
        self._session = session
        self._id = actor_id
        self._type_id = type_id
        self._attributes = dict(attributes)
        self._parent = parent

    @staticmethod
    def make(session: _Session, actor_id: int, type_id: str, attributes: dict, parent: Any, kind: str) -> RemoteActor:
        cls = {"sensor": RemoteSensor, "vehicle": RemoteVehicle}.get(kind, RemoteActor)
        return cls(session, actor_id, type_id, attributes, parent)

    @property
    def is_alive(self) -> bool:
        return bool(self._session.call("server", "is_alive", self._id))

    def get_transform(self) -> Any:
        return self._session.call(("actor", self._id), "get_transform")

    def get_location(self) -> Any:
        return self.get_transform().location

    def destroy(self) -> bool:
        return bool(self._session.call(("actor", self._id), "destroy"))


class RemoteVehicle(RemoteActor):
    _REAL = carla.Vehicle

    @property
    def bounding_box(self) -> Any:
        """From the actor's description, which the client keeps (no request, as in LibCarla)."""
        return cs.car_bounding_box()

    def get_velocity(self) -> Any:
        return self._session.call(("actor", self._id), "get_velocity")

    def apply_control(self, control: Any) -> None:
        self._session.call(("actor", self._id), "apply_control", control)


class RemoteSensor(RemoteActor):
    _REAL = carla.Sensor

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._listening = False
        self._lane: Any = None  # the parent's waypoint at the last tick
        self._started = False
        self._callback: Any = None

    def listen(self, callback: Any) -> None:
        if self._type_id == "sensor.other.lane_invasion":  # client-side sensor (LaneInvasionSensor.cpp)
            self._session.call(("actor", self._id), "listen_client_side")
            self._callback = callback
            cs._CLIENT_SIDE_SENSORS[(id(self._session), self._id)] = self
        else:
            self._session.subscribe(self._id, callback)
        self._listening = True

    def stop(self) -> None:
        self._listening = False
        self._session.listeners.pop(self._id, None)
        cs._CLIENT_SIDE_SENSORS.pop((id(self._session), self._id), None)
        cs.STREAM.cancel((id(self._session), self._id))
        self._session.call(("actor", self._id), "stop")

    def is_listening(self) -> bool:
        return self._listening

    def _on_world_tick(self, frame: int) -> None:
        parent = self._parent
        if self._callback is None or parent is None:
            return
        try:
            location = parent.get_location()
        except RuntimeError:
            return
        carla_map = _client_map(self._session)
        wp = carla_map.get_waypoint(location, project_to_road=True)
        if self._started and cs.crossed_lane_edge(self._lane, wp):
            event = cs.StandinLaneInvasionEvent(frame, frame * 0.05, parent, [])
            cs.STREAM.submit((id(self._session), self._id), self._callback, event, 0.0)
        self._lane, self._started = wp, True


_CLIENT_MAPS: dict[str, cs.StandinMap] = {}


def _client_map(session: _Session) -> cs.StandinMap:
    """The map as the client holds it: parsed here from the OpenDRIVE the server sends (here: the town's name)."""
    town = session.call("server", "town")
    if town not in _CLIENT_MAPS:
        _CLIENT_MAPS[town] = cs.StandinMap(town)
    return _CLIENT_MAPS[town]


class RemoteTrafficManager:
    """The Traffic Manager of this process on a port (``TrafficManagerLocal``), bound to the client that made it."""

    _REAL = carla.TrafficManager

    def __init__(self, session: _Session, port: int) -> None:
        self._session = session
        self._port = port
        self.resets = 0

    def get_port(self) -> int:
        return self._port

    def set_synchronous_mode(self, mode_switch: bool = True) -> None:
        self._session.call(("tm", self._port), "set_synchronous_mode", bool(mode_switch))

    def set_random_device_seed(self, value: int) -> None:
        self._session.call(("tm", self._port), "set_random_device_seed", int(value))

    def set_global_distance_to_leading_vehicle(self, distance: float) -> None:
        self._session.call(("tm", self._port), "set_global_distance_to_leading_vehicle", float(distance))

    def _synchronous_tick(self) -> None:
        try:
            self._session.call(("tm", self._port), "tick", timeout_s=10.0)
        except RuntimeError:  # the TM's stages RPC a dead server inside a std::thread: std::terminate
            os.abort()

    def shut_down(self) -> None:
        with cs._TM_LOCK:
            if cs.TM_MAP.get(self._port) is self:
                del cs.TM_MAP[self._port]
        try:
            self._session.call(("tm", self._port), "shut_down", timeout_s=10.0)
        except RuntimeError:
            os.abort()


class RemoteWorld:
    _REAL = carla.World

    def __init__(self, session: _Session, episode_id: int) -> None:
        self._session = session
        self._id = episode_id

    @property
    def id(self) -> int:
        return self._id

    def _call(self, method: str, *args: Any) -> Any:
        return self._session.call(("world", self._id), method, *args)

    def get_map(self) -> cs.StandinMap:
        return _client_map(self._session)

    def get_settings(self) -> Any:
        return self._call("get_settings")

    def apply_settings(self, settings: Any) -> int:
        frame = self._call("apply_settings", settings)
        cs.tick_traffic_managers()
        return frame

    def tick(self, seconds: float = 10.0) -> int:
        frame = self._session.call(("world", self._id), "tick", seconds, timeout_s=seconds)
        cs.tick_traffic_managers()
        cs._tick_client_side_sensors(frame)
        return frame

    def get_blueprint_library(self) -> cs.StandinBlueprintLibrary:
        return cs.StandinBlueprintLibrary(self._call("get_blueprints"))

    def try_spawn_actor(self, blueprint: Any, transform: Any, attach_to: Any = None) -> Any:
        return self._call("try_spawn_actor", blueprint, transform, attach_to)

    def spawn_actor(self, blueprint: Any, transform: Any, attach_to: Any = None) -> Any:
        return self._call("spawn_actor", blueprint, transform, attach_to)

    def get_actors(self, actor_ids: list[int] | None = None) -> list:
        return self._call("get_actors", actor_ids)


class RemoteClient:
    """``carla.Client`` for a stand-in server process at ``host:port``."""

    _REAL = carla.Client

    def __init__(self, host: str, port: int, worker_threads: int = 0) -> None:
        self._session = _Session(host, port)

    def set_timeout(self, second: float) -> None:
        self._session.timeout_s = float(second)

    def get_client_version(self) -> str:
        return cs.CLIENT_VERSION

    def get_server_version(self) -> str:
        return self._session.call("client", "get_server_version")

    def get_world(self) -> RemoteWorld:
        return RemoteWorld(self._session, self._session.call("client", "get_world"))

    def get_available_maps(self) -> list[str]:
        return self._session.call("client", "get_available_maps")

    def load_world(self, map_name: str, reset_settings: bool = True, map_layers: Any = None) -> RemoteWorld:
        episode = self._session.call("client", "load_world", map_name, reset_settings)
        cs.reset_traffic_managers()  # Episode::OnEpisodeChanged
        return RemoteWorld(self._session, episode)

    def get_trafficmanager(self, client_connection: int = 8000) -> Any:
        with cs._TM_LOCK:
            tm = cs.TM_MAP.get(client_connection)
            if tm is None:
                self._session.call("client", "get_trafficmanager", client_connection)
                tm = RemoteTrafficManager(self._session, client_connection)
                cs.TM_MAP[client_connection] = tm
        return tm

    def apply_batch_sync(self, commands: list, do_tick: bool = False) -> list:
        return self._session.call("client", "apply_batch_sync", list(commands), do_tick)


#: The ``carla`` module as a worker sees it with ``SB3_AV_CARLA_CLIENT_MODULE=tests.carla_standin_remote``.
CARLA_API = cs._CarlaModule(command=cs.standin_carla.command, Client=RemoteClient)

_REMOTE_CLASSES = (RemoteActor, RemoteVehicle, RemoteSensor, RemoteTrafficManager, RemoteWorld, RemoteClient)


def remote_api_mismatches() -> list[str]:
    """Public members of the client classes that the real carla class lacks (as :func:`cs.api_mismatches`)."""
    problems = []
    for cls in _REMOTE_CLASSES:
        for name in sorted(n for n in vars(cls) if not n.startswith("_") and n not in ("make", "resets")):
            if not hasattr(cls._REAL, name):
                problems.append(f"{cls.__name__}.{name}: carla.{cls._REAL.__name__} has no {name}")
    return problems


# ---------------------------------------------------------------------------------------------- server side
class _Host:
    """The server process: the in-process model behind a socket."""

    def __init__(self, port: int, town: str, tick_s: float) -> None:
        self.port = port
        self.net = cs.StandinNetwork()
        self.server = self.net.add("127.0.0.1", port, town=town)
        self.server.tick_s = tick_s
        self.lock = threading.RLock()
        self.streams: dict[int, tuple[Connection, threading.Lock]] = {}
        self._stream_ids = itertools.count(1)

    def session(self, conn: Connection) -> None:
        try:
            first = conn.recv()
        except (OSError, EOFError):
            return
        if first[0] == "stream":
            self._stream(conn)
            return
        client = self.net.client_factory("127.0.0.1", self.port)
        worlds: dict[int, Any] = {}
        request = first
        while True:
            seq, target, method, args = request
            try:
                with self.lock:
                    result = self._dispatch(client, worlds, target, method, _dec(args, server=self.server))
                reply = (seq, "ok", _enc(result))
            except Exception as exc:
                reply = (seq, "err", type(exc).__name__, str(exc).strip("'\""))
            try:
                conn.send(reply)
                request = conn.recv()
            except (OSError, EOFError):
                return

    def _stream(self, conn: Connection) -> None:
        stream_id = next(self._stream_ids)
        self.streams[stream_id] = (conn, threading.Lock())
        conn.send(("stream-ok", stream_id))
        try:
            conn.recv()  # blocks until the client goes away
        except (OSError, EOFError):
            pass
        with self.lock:
            self.streams.pop(stream_id, None)
            for sensor in self.server.alive("sensor."):
                if getattr(sensor, "_stream_id", None) == stream_id:
                    sensor.callback = None  # the server stops streaming to a client that is gone

    def _push(self, stream_id: int, sensor_id: int) -> Any:
        def push(data: Any) -> None:
            entry = self.streams.get(stream_id)
            if entry is None:
                return
            conn, lock = entry
            try:
                with lock:
                    conn.send(("data", sensor_id, _enc(data)))
            except OSError:
                self.streams.pop(stream_id, None)

        return push

    def _dispatch(self, client: Any, worlds: dict[int, Any], target: Any, method: str, args: list) -> Any:
        if target == "client":
            return self._client_call(client, worlds, method, args)
        if target == "server":
            return _control(self.server, method, args)
        kind, key = target
        if kind == "world":
            return self._world_call(worlds.get(key) or cs.StandinWorld(self.server), method, args)
        if kind == "tm":
            return self._tm_call(key, method, args)
        return self._actor_call(key, method, args)

    def _client_call(self, client: Any, worlds: dict[int, Any], method: str, args: list) -> Any:
        if method in ("get_world", "load_world"):
            world = getattr(client, method)(*args)
            worlds[world.id] = world
            return world.id
        if method == "get_trafficmanager":  # registered server side (SetAutopilot checks); the TM lives in the client
            client._server("get_trafficmanager")
            self.net._traffic_manager(self.server, "127.0.0.1", args[0])
            return None
        return getattr(client, method)(*args)

    def _world_call(self, world: Any, method: str, args: list) -> Any:
        server = self.server
        if method == "get_blueprints":
            world.get_blueprint_library()
            return [bp.copy() for bp in server.blueprints]
        if method == "tick":  # the client steps its own TMs and client-side sensors
            server._call("world.tick", args[0], epoch=world._epoch)
            return server._tick()
        if method == "apply_settings":
            server._call("world.apply_settings", cs._copy_settings(args[0]), epoch=world._epoch)
            server.settings = cs._copy_settings(args[0])
            return server.frame
        return getattr(world, method)(*args)

    def _tm_call(self, port: int, method: str, args: list) -> Any:
        server = self.server
        tm = server.traffic_managers.get(port)
        if tm is None:
            raise RuntimeError(f"no Traffic Manager on port {port}")
        if method == "tick":
            tm.ticks += 1
            return tm.ticks
        if method == "shut_down":
            server._call("tm.shut_down", port)
            tm.shut = True
            server.traffic_managers.pop(port, None)
            return None
        return getattr(tm, method)(*args)

    def _actor_call(self, actor_id: int, method: str, args: list) -> Any:
        server = self.server
        actor = _server_actor(server, actor_id)
        if not actor.is_alive:
            _server_actor(None, actor_id)
        if method in ("listen", "listen_client_side"):
            server._call("sensor.listen", actor_id)
            if method == "listen":
                actor._first_dropped = False
                actor._stream_id = args[0]
                actor.callback = self._push(args[0], actor_id)
            return None
        if method == "stop":
            server._call("sensor.stop", actor_id)
            actor.callback = None
            return None
        return getattr(actor, method)(*args)


def _control(server: cs.StandinServer, method: str, args: list) -> Any:
    """Test controls and queries (not CARLA API), and the two queries the client makes (``town``, ``is_alive``)."""
    if method == "town":
        return server.town
    if method == "is_alive":
        actor = server.actors.get(args[0])
        return actor is not None and actor.is_alive
    if method == "alive":
        return [
            (a.id, a.type_id, a.attributes.get("role_name", ""), a.parent.id if a.parent is not None else None)
            for a in server.alive()
        ]
    if method == "settings":
        names = ("synchronous_mode", "fixed_delta_seconds", "no_rendering_mode")
        return {name: getattr(server.settings, name) for name in names}
    if method == "violations":
        return list(server.violations)
    if method == "count":
        return server.count(args[0])
    if method == "fail":
        server.fail(*args)
        return None
    if method == "set":
        setattr(server, args[0], args[1])
        return None
    if method == "tms":
        return {port: {"synchronous": tm.synchronous, "shut": tm.shut} for port, tm in server.traffic_managers.items()}
    if method == "episode":
        return server.episode
    if method == "frame":
        return server.frame
    if method == "image_value":  # the sky value of camera ``args[0]``'s image of the current frame
        return server.image_value(server.frame, server.actors[args[0]])
    raise ValueError(f"unknown control {method!r}")


def serve(port: int, town: str = "Town01", tick_s: float = 0.0) -> None:
    """Run a stand-in server on ``127.0.0.1:port`` until killed.

    :param port: the RPC port.
    :param town: the map loaded at start.
    :param tick_s: how long each ``world.tick`` takes (s).
    """
    host = _Host(port, town, tick_s)
    listener = Listener(("127.0.0.1", port), authkey=_AUTHKEY)
    print(f"ready {port}", flush=True)
    while True:
        try:
            conn = listener.accept()
        except (OSError, EOFError):  # a client that failed the handshake
            continue
        threading.Thread(target=host.session, args=(conn,), daemon=True).start()


# ---------------------------------------------------------------------------------------------- test helper
class StandinProcess:
    """A stand-in server process that a test starts, kills, stops and restarts.

    :param port: its RPC port on 127.0.0.1.
    :param tick_s: how long each ``world.tick`` takes (s).
    """

    def __init__(self, port: int, tick_s: float = 0.0) -> None:
        self.port = port
        self.tick_s = tick_s
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> StandinProcess:
        root = Path(__file__).resolve().parent.parent
        cmd = [sys.executable, "-m", "tests.carla_standin_remote", "--port", str(self.port), "--tick-s", str(self.tick_s)]
        self.proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("ready"):
            self.proc.kill()
            raise RuntimeError(f"the stand-in server on port {self.port} did not start: {line!r}")
        self.starts += 1
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Crash it (SIGKILL) and wait until it is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
        self.proc = None

    def pause(self) -> None:
        """Hang it (SIGSTOP): it accepts nothing and answers nothing until :meth:`resume`."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def restart_after(self, delay_s: float) -> threading.Thread:
        """Kill it now and start it again after ``delay_s`` seconds, in the background."""
        self.kill()

        def later() -> None:
            time.sleep(delay_s)
            self.start()

        thread = threading.Thread(target=later, daemon=True)
        thread.start()
        return thread

    def control(self, method: str, *args: Any) -> Any:
        """A test query or control (``alive``, ``settings``, ``violations``, ``count``, ``fail``, ``set``, ``tms``)."""
        session = _Session("127.0.0.1", self.port)
        try:
            return session.call("server", method, *args, timeout_s=10.0)
        finally:
            if session._conn is not None:
                session._conn.close()

    def own_actors(self, prefix: str = "sb3av:") -> list[tuple]:
        """Alive actors whose role_name starts with ``prefix``, and sensors attached to them."""
        alive = self.control("alive")
        ours = {a[0] for a in alive if a[2].startswith(prefix)}
        return [a for a in alive if a[0] in ours or a[3] in ours]

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
        self.kill()


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--town", default="Town01")
    parser.add_argument("--tick-s", type=float, default=0.0)
    args = parser.parse_args()
    serve(args.port, args.town, args.tick_s)


if __name__ == "__main__":
    _main()
