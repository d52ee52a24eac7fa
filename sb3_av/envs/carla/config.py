"""The validated settings of one CARLA backend (every field is an env kwarg of ``CarlaScenario*-v0``)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from sb3_av._checks import is_finite_number, is_int, non_negative_number, positive_number
from sb3_av.envs.carla.route import SCENARIO_ROUTES, RouteStart

__all__ = ["TM_PORT_OFFSET", "CarlaConfig", "parse_server", "server_for_rank"]

#: The Traffic Manager's default port is the CARLA RPC port plus this offset (2000 -> 8000).
TM_PORT_OFFSET = 6000


def parse_server(text: str) -> tuple[str, int, int | None]:
    """Parse ``"host:port"`` or ``"host:port:tm_port"``.

    :param text: the server address.
    :return: ``(host, port, tm_port or None)``.
    :raises ValueError: not of that form, or a port outside 1..65535.
    """
    parts = text.strip().split(":") if isinstance(text, str) else []
    try:
        if len(parts) not in (2, 3) or not parts[0]:
            raise ValueError
        ports = [int(p) for p in parts[1:]]
    except ValueError:
        raise ValueError(
            f"A CARLA server must be given as 'host:port' or 'host:port:tm_port' (e.g. '127.0.0.1:2000'), got {text!r}"
        ) from None
    if not all(0 < p < 65536 for p in ports):
        raise ValueError(f"Ports must be in 1..65535, got {text!r}")
    return parts[0], ports[0], ports[1] if len(ports) == 2 else None


def server_for_rank(servers: list[str], rank: int) -> tuple[str, int, int | None]:
    """The server an env built with ``rank=rank`` uses: ``servers[rank % len(servers)]``.

    :param servers: ``"host:port"`` or ``"host:port:tm_port"`` strings.
    :param rank: the env's ``rank`` kwarg (>= 0).
    :return: ``(host, port, tm_port or None)``.
    """
    if not servers:
        raise ValueError("servers must list at least one 'host:port'")
    return parse_server(servers[rank % len(servers)])


@dataclass(frozen=True)
class CarlaConfig:
    """Settings of :class:`~sb3_av.envs.carla.backend.CarlaBackend`.

    :param host: CARLA server host.
    :param port: CARLA RPC port (the server also uses ``port + 1`` for sensor streaming).
    :param tm_port: Traffic Manager port; None = ``port + 6000``. Two envs on one server need two TM ports.
    :param servers: ``"host:port"`` (or ``"host:port:tm_port"``) strings (override host/port; a server's TM port
        is the entry's tm_port, else ``tm_port``, else its port + 6000). Which one this env uses: see ``rank``.
    :param rank: None (default): the env takes the first server of ``servers`` that no other env on this
        machine holds (claimed by a lock file), so the envs of a VecEnv and an eval env spread over the list
        by themselves. An integer pins this env to ``servers[rank % len(servers)]`` alone; nothing sets it
        per env (one ``rank`` in the env kwargs applies to every env built from them, and a second env pinned
        to a held server fails with "Traffic Manager port ... is already used"), so set it only when each env
        is built with its own kwargs (e.g. one env per process or machine). Ignored without ``servers``.
    :param town: the map; loaded only when another one is loaded.
    :param timeout_s: limit (s) of every RPC and of ``world.tick``; past it the server counts as hung.
    :param connect_timeout_s: limit (s) of the first contact with a server (an absent server fails within it).
    :param load_timeout_s: limit (s) of loading the town.
    :param max_reconnects: reconnect attempts after a lost or hung server before giving up.
    :param reconnect_backoff_s: wait (s) before reconnect attempt k is ``k * reconnect_backoff_s``.
    :param sensor_timeout_s: bounded wait (s) for the camera image of the ticked frame.
    :param dt: fixed simulation step (s), ``fixed_delta_seconds``.
    :param npc_vehicles: NPC vehicles spawned each episode (fewer when the map has too few free spawn points).
    :param seed: seed of the Traffic Manager before the first episode (episodes reseed it with their seed).
    :param camera_size: height = width (pixels) of the grayscale image; the camera renders at this size.
    :param camera_fov_deg: horizontal field of view of the camera (degrees).
    :param chase_camera_size: None (default): no chase camera. ``(width, height)`` in pixels (an int: a square):
        a second RGB camera, 6 m behind and 3 m above the ego looking 15 degrees down (90 degree horizontal field of
        view), rigidly attached, whose image of each ticked frame the backend keeps (``chase_image``) for
        ``sb3-av record``. It costs a rendered camera per tick, so training leaves it off.
    :param ego_blueprint: blueprint id of the ego vehicle.
    :param route_start_index: index into ``Map.get_spawn_points()`` of the ego's start (the route's start);
        used only when ``route_start`` is None. None (default): the town's scenario route start (see
        ``route_start``), or spawn point 0 on a town without one.
    :param route_start: OpenDRIVE ``(road_id, lane_id, s)`` (s in m) of the route's start: the ego spawns on
        that waypoint, 0.5 m above it. None (default): on a town with a scenario route
        (:data:`sb3_av.envs.carla.route.SCENARIO_ROUTES`; Town01: :data:`~sb3_av.envs.carla.route.TOWN01_ROUTE`,
        ``(24, -1, 10.0)`` with ``("left",)``, 251 m) that route's start, unless ``route_start_index`` is given;
        on another town the spawn point ``route_start_index`` (default 0). See :attr:`start`.
    :param route_length_m: route length (m) along the map's waypoints.
    :param route_step_m: waypoint spacing (m) of the route polyline.
    :param junction_choices: the branch taken at each junction in turn (``"left"``, ``"right"``,
        ``"straight"``); after the last one, ``"straight"``. The default gives the scenario's turn.
    :param npc_min_distance_m: NPCs are not spawned closer than this to the ego's start (m).
    :param tm_distance_to_leading_m: Traffic Manager global distance to the leading vehicle (m).
    :param worker: keep the CARLA client (client, world, Traffic Manager, sensors) in a worker process of this env's
        own (default). LibCarla's Traffic Manager is process-global and aborts the process when its server dies,
        so False (the client in the training process) is only for one env per process that may die with it.
    :param server_wait_s: after a lost server or a dead worker, how long (s) a new worker waits for the server to
        come back (a container restart plus a town load) before the env gives up with ``CarlaConnectionError``.
    :param worker_timeout_s: the longest silence (s) of a worker during one request before it counts as hung and
        is replaced; None = ``3 * timeout_s + sensor_timeout_s + 5``. Phases that may take longer (a town load,
        reconnect attempts) announce their own bound.
    :param share_server: let this env use a server that another env on this machine uses (with its own TM
        port). Each env's tick advances the shared world, so every env sees more than ``dt`` pass per step:
        this changes the dynamics. Default False: one env per server.
    """

    host: str = "127.0.0.1"
    port: int = 2000
    tm_port: int | None = None
    servers: list[str] | None = None
    rank: int | None = None
    town: str = "Town01"
    timeout_s: float = 10.0
    connect_timeout_s: float = 5.0
    load_timeout_s: float = 60.0
    max_reconnects: int = 3
    reconnect_backoff_s: float = 2.0
    sensor_timeout_s: float = 2.0
    dt: float = 0.05
    npc_vehicles: int = 20
    seed: int | None = None
    camera_size: int = 84
    camera_fov_deg: float = 90.0
    chase_camera_size: tuple[int, int] | None = None
    ego_blueprint: str = "vehicle.tesla.model3"
    route_start_index: int | None = None
    route_start: tuple[int, int, float] | None = None
    route_length_m: float = 250.0
    route_step_m: float = 2.0
    junction_choices: tuple[str, ...] = field(default=("left",))
    npc_min_distance_m: float = 15.0
    tm_distance_to_leading_m: float = 2.5
    worker: bool = True
    server_wait_s: float = 180.0
    worker_timeout_s: float | None = None
    share_server: bool = False

    def __post_init__(self) -> None:
        _check_servers(self)
        _check_numbers(self)
        choices = (self.junction_choices,) if isinstance(self.junction_choices, str) else tuple(self.junction_choices)
        bad = [c for c in choices if c not in ("left", "right", "straight")]
        if bad:
            raise ValueError(f"junction_choices must contain only 'left', 'right', 'straight', got {bad}")
        object.__setattr__(self, "junction_choices", choices)
        if self.route_start is not None:
            object.__setattr__(self, "route_start", _route_start(self.route_start))
        if self.chase_camera_size is not None:
            object.__setattr__(self, "chase_camera_size", _chase_size(self.chase_camera_size))

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every key with its default (the ``backend_defaults`` of :func:`~sb3_av.envs.core.make_driving_env`)."""
        return {f.name: getattr(cls(), f.name) for f in fields(cls)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CarlaConfig:
        """Build from a dict, rejecting unknown keys.

        :param values: keys of :meth:`defaults`.
        :raises ValueError: an unknown key (the message lists the valid ones) or a bad value.
        """
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - valid)
        if unknown:
            raise ValueError(f"Unknown CARLA backend key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(valid))}")
        return cls(**values)

    def candidates(self) -> list[tuple[str, int, int]]:
        """The ``(host, port, tm_port)`` this env may use, in order of preference (one unless ``rank`` is None)."""
        if not self.servers:
            tm = self.tm_port if self.tm_port is not None else self.port + TM_PORT_OFFSET
            return [_checked(self.host, self.port, tm)]
        indices = range(len(self.servers)) if self.rank is None else [self.rank % len(self.servers)]
        out = []
        for i in indices:
            host, port, entry_tm = parse_server(self.servers[i])
            if entry_tm is None:
                entry_tm = self.tm_port if self.tm_port is not None else port + TM_PORT_OFFSET
            out.append(_checked(host, port, entry_tm))
        return out

    @property
    def answer_timeout_s(self) -> float:
        """``worker_timeout_s``, or its default ``3 * timeout_s + sensor_timeout_s + 5`` (s)."""
        if self.worker_timeout_s is not None:
            return float(self.worker_timeout_s)
        return 3.0 * self.timeout_s + self.sensor_timeout_s + 5.0

    @property
    def start(self) -> RouteStart | int:
        """Where the route (and the ego) starts: an OpenDRIVE :class:`RouteStart`, or a spawn point index.

        ``route_start`` if given; else ``route_start_index`` if given; else the scenario route of ``town``
        (:data:`~sb3_av.envs.carla.route.SCENARIO_ROUTES`, e.g. Town01's road 24, lane -1, s 10 m); else spawn point 0.
        """
        if self.route_start is not None:
            return RouteStart(*self.route_start)
        if self.route_start_index is not None:
            return self.route_start_index
        scenario = SCENARIO_ROUTES.get(self.town)
        return scenario.start if scenario is not None else 0

    @property
    def server(self) -> tuple[str, int]:
        """``(host, port)`` of the (first candidate) server."""
        return self.candidates()[0][:2]

    @property
    def traffic_manager_port(self) -> int:
        """The Traffic Manager port of the (first candidate) server: the entry's, else ``tm_port``, else port + 6000."""
        return self.candidates()[0][2]


def _check_servers(cfg: CarlaConfig) -> None:
    if not isinstance(cfg.host, str) or not cfg.host:
        raise ValueError(f"host must be a non-empty string, got {cfg.host!r}")
    for name in ("port", "tm_port"):
        value = getattr(cfg, name)
        if value is None and name == "tm_port":
            continue
        if not is_int(value) or not 0 < value < 65536:
            raise ValueError(f"{name} must be an integer port in 1..65535, got {value!r}")
    if cfg.servers is not None:
        if isinstance(cfg.servers, str) or not isinstance(cfg.servers, list | tuple) or not cfg.servers:
            raise ValueError(f"servers must be a non-empty list of 'host:port' strings, got {cfg.servers!r}")
        for server in cfg.servers:
            parse_server(server)
        object.__setattr__(cfg, "servers", list(cfg.servers))
    if not isinstance(cfg.town, str) or not cfg.town:
        raise ValueError(f"town must be a map name such as 'Town01', got {cfg.town!r}")


def _check_numbers(cfg: CarlaConfig) -> None:
    for name in _POSITIVE:
        positive_number(name, getattr(cfg, name))
    for name in ("worker", "share_server"):
        if not isinstance(getattr(cfg, name), bool):
            raise ValueError(f"{name} must be True or False, got {getattr(cfg, name)!r}")
    if cfg.worker_timeout_s is not None and (not is_finite_number(cfg.worker_timeout_s) or cfg.worker_timeout_s <= 0):
        raise ValueError(f"worker_timeout_s must be None or a finite number > 0, got {cfg.worker_timeout_s!r}")
    for name in ("reconnect_backoff_s", "npc_min_distance_m", "tm_distance_to_leading_m", "server_wait_s"):
        non_negative_number(name, getattr(cfg, name))
    if cfg.rank is not None and (not is_int(cfg.rank) or cfg.rank < 0):
        raise ValueError(f"rank must be None or an integer >= 0, got {cfg.rank!r}")
    for name in ("max_reconnects", "npc_vehicles"):
        value = getattr(cfg, name)
        if not is_int(value) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    if cfg.route_start_index is not None and (not is_int(cfg.route_start_index) or cfg.route_start_index < 0):
        raise ValueError(f"route_start_index must be None or an integer >= 0, got {cfg.route_start_index!r}")
    if not is_int(cfg.camera_size) or cfg.camera_size < 16:
        raise ValueError(f"camera_size must be an integer >= 16 pixels, got {cfg.camera_size!r}")
    if cfg.seed is not None and (not is_int(cfg.seed) or cfg.seed < 0):
        raise ValueError(f"seed must be None or an integer >= 0, got {cfg.seed!r}")
    if cfg.dt > 0.1:
        raise ValueError(f"dt must be <= 0.1 s (CARLA's physics is unreliable below 10 Hz), got {cfg.dt}")


_POSITIVE = (
    "timeout_s",
    "connect_timeout_s",
    "load_timeout_s",
    "sensor_timeout_s",
    "dt",
    "camera_fov_deg",
    "route_length_m",
    "route_step_m",
)


def _route_start(value: Any) -> tuple[int, int, float]:
    ok = isinstance(value, list | tuple) and len(value) == 3
    if not (ok and is_int(value[0]) and is_int(value[1]) and value[1] != 0 and is_finite_number(value[2]) and value[2] >= 0):
        raise ValueError(
            f"route_start must be None or OpenDRIVE (road_id, lane_id, s) with lane_id != 0 and s >= 0 m, got {value!r}"
        )
    return int(value[0]), int(value[1]), float(value[2])


def _chase_size(value: Any) -> tuple[int, int]:
    """``chase_camera_size`` as ``(width, height)``: an int is a square; each side 16..4096 pixels."""
    size = (value, value) if is_int(value) else value
    ok = isinstance(size, list | tuple) and len(size) == 2 and all(is_int(v) and 16 <= v <= 4096 for v in size)
    if not ok:
        raise ValueError(f"chase_camera_size must be None, an int or (width, height), each 16..4096 pixels, got {value!r}")
    return int(size[0]), int(size[1])


def _checked(host: str, port: int, tm_port: int) -> tuple[str, int, int]:
    if not 0 < tm_port < 65536:
        raise ValueError(f"The TM port {tm_port} of {host}:{port} (port + {TM_PORT_OFFSET}) is not a valid port; pass tm_port")
    return host, port, tm_port
