"""Coordinate conversion (CARLA/Unreal -> the env's right-handed frame) and route planning on a map's waypoints.

CARLA is left-handed: x forward, y to the right, yaw in degrees clockwise seen from above, steer positive
to the right. :mod:`sb3_av.envs.backend` uses a right-handed frame (y to the left, yaw in radians
counter-clockwise, steer positive to the left), so ``y -> -y``, ``yaw -> -yaw`` and ``steer -> -steer``.

A route is planned from a start waypoint and a list of junction choices (``"left"``, ``"right"``,
``"straight"``): it follows ``Waypoint.next`` and, where the road enters a junction (or ``next`` offers
several lanes), it classifies each exit by the heading change from the approach to where that exit leaves
the junction, and takes the exit the next choice names. A choice the junction does not offer is a
:class:`CarlaRouteError` naming the junction; it never falls back to another exit. The planner needs only a
map object, a server's ``world.get_map()`` or an offline ``carla.Map(name, xodr_text)`` (the PyPI client has
no ``agents`` package, so no ``GlobalRoutePlanner``).

:data:`TOWN01_ROUTE` is the scenario route on Town01, defined by its OpenDRIVE start (road, lane, s);
:data:`SCENARIO_ROUTES` holds it by town, and is where the env takes its default start from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sb3_av.envs.backend import RouteSpec
from sb3_av.envs.carla.errors import CarlaBackendError, CarlaRouteError
from sb3_av.envs.route import wrap_angle

__all__ = [
    "JUNCTION_CHOICES",
    "SCENARIO_ROUTES",
    "TOWN01_ROUTE",
    "CarlaRouteError",
    "JunctionExit",
    "JunctionPassage",
    "PlannedRoute",
    "RouteDefinition",
    "RouteStart",
    "build_route",
    "carla_to_world_xy",
    "carla_to_world_yaw",
    "junction_exits",
    "plan_route",
    "route_spec",
    "spawn_transform",
    "start_waypoint",
    "world_to_carla_steer",
]

#: The choices a junction can be asked for.
JUNCTION_CHOICES = ("left", "right", "straight")

_STRAIGHT_MAX_RAD = math.radians(45.0)  # |heading change| through a junction up to this: straight; above: a turn
_U_TURN_MIN_RAD = math.radians(135.0)  # |heading change| above this: a U-turn (never chosen)
_IDEAL_TURN_RAD = {"left": math.pi / 2, "right": -math.pi / 2, "straight": 0.0}
_MAX_JUNCTION_M = 300.0  # a lane still inside a junction after this far is a map error, not a junction


@dataclass(frozen=True)
class RouteStart:
    """A route's start as an OpenDRIVE lane position (what ``Map.get_waypoint_xodr`` takes).

    :param road_id: OpenDRIVE road id.
    :param lane_id: OpenDRIVE lane id (negative: the right-hand lanes, driven along increasing s).
    :param s_m: distance (m) along the road's reference line.
    """

    road_id: int
    lane_id: int
    s_m: float


@dataclass(frozen=True)
class RouteDefinition:
    """A scenario route: where it starts, which way it goes at each junction, how long it is.

    :param town: the map it is defined on (e.g. ``"Town01"``).
    :param start: the start on that map's OpenDRIVE.
    :param junction_choices: the exit taken at each junction in turn.
    :param length_m: route length (m).
    """

    town: str
    start: RouteStart
    junction_choices: tuple[str, ...]
    length_m: float


#: The scenario route on Town01 (251 m with 2 m steps): 98 m straight along CARLA +y on road 24's
#: right-hand lane (x = 88.4, y = 218.3 -> 316), left (+90 deg) through T-junction 87 (17 m), then 136 m
#: straight along +x on road 6 (y = 330.6), ending 93 m before junction 143. Checked by tests/test_carla_route.py.
TOWN01_ROUTE = RouteDefinition(
    town="Town01", start=RouteStart(road_id=24, lane_id=-1, s_m=10.0), junction_choices=("left",), length_m=250.0
)

#: The scenario route of each town that has one, by town name. A ``CarlaScenario*-v0`` env on such a town starts
#: there unless ``route_start`` or ``route_start_index`` says otherwise (see :class:`~sb3_av.envs.carla.CarlaConfig`).
SCENARIO_ROUTES: dict[str, RouteDefinition] = {TOWN01_ROUTE.town: TOWN01_ROUTE}


@dataclass(frozen=True)
class JunctionExit:
    """One way out of a junction, seen from the lane that enters it.

    :param waypoint: the exit's first waypoint (one of what ``Waypoint.next`` returned at the junction).
    :param turn_rad: heading change (rad, counter-clockwise = left positive) from the approach to where
        this exit leaves the junction.
    :param direction: ``"left"``, ``"right"``, ``"straight"`` or ``"u-turn"``.
    """

    waypoint: Any
    turn_rad: float
    direction: str


@dataclass(frozen=True)
class JunctionPassage:
    """A junction the route passes and the exit it takes.

    :param junction_id: the OpenDRIVE junction id (None: a lane split outside any junction).
    :param choice: the choice used (``"left"``, ``"right"``, ``"straight"``).
    :param turn_rad: the heading change (rad, counter-clockwise positive) of the exit taken.
    :param offered: the directions the junction offered from the route's lane.
    """

    junction_id: int | None
    choice: str
    turn_rad: float
    offered: tuple[str, ...]


@dataclass(frozen=True)
class PlannedRoute:
    """A planned route.

    :param waypoints: ``carla.Waypoint`` objects in driving order, ``step_m`` apart.
    :param junctions: the junctions passed, in order.
    :param length_m: the polyline's length (m).
    """

    waypoints: list[Any]
    junctions: list[JunctionPassage]
    length_m: float


def carla_to_world_xy(x: float, y: float) -> tuple[float, float]:
    """A CARLA location's x, y (m) in the env's right-handed world frame.

    :param x: CARLA x (m).
    :param y: CARLA y (m), positive to the right.
    """
    return float(x), -float(y)


def carla_to_world_yaw(yaw_deg: float) -> float:
    """A CARLA yaw (degrees, clockwise) as the env's yaw (radians, counter-clockwise, in [-pi, pi)).

    :param yaw_deg: CARLA ``Rotation.yaw`` (degrees).
    """
    return wrap_angle(-math.radians(float(yaw_deg)))


def world_to_carla_steer(steer: float) -> float:
    """The env's steer (positive = left) as CARLA's ``VehicleControl.steer`` (positive = right).

    :param steer: steer in [-1, 1], positive to the left.
    """
    return -float(steer)


def _heading(waypoint: Any) -> float:
    return carla_to_world_yaw(waypoint.transform.rotation.yaw)


def _where(waypoint: Any) -> str:
    loc = waypoint.transform.location
    return f"road {waypoint.road_id} lane {waypoint.lane_id} s {waypoint.s:.1f} m, CARLA ({loc.x:.1f}, {loc.y:.1f})"


def _leave_junction(branch: Any, step_m: float) -> Any:
    """The first waypoint after ``branch`` that is outside the junction (or the lane's last one inside it)."""
    wp = branch
    travelled = 0.0
    while wp.is_junction and travelled < _MAX_JUNCTION_M:
        ahead = wp.next(step_m)
        if not ahead:
            break
        wp = ahead[0]
        travelled += step_m
    return wp


def _direction(turn_rad: float) -> str:
    if abs(turn_rad) <= _STRAIGHT_MAX_RAD:
        return "straight"
    if abs(turn_rad) > _U_TURN_MIN_RAD:
        return "u-turn"
    return "left" if turn_rad > 0 else "right"


def junction_exits(approach: Any, branches: Sequence[Any], step_m: float = 1.0) -> list[JunctionExit]:
    """Classify the exits of a junction by the heading change each makes through it.

    The heading change of an exit is measured from ``approach`` to the exit's first waypoint outside the
    junction, so a turn is judged by where it leads, not by the lane's first metres (a turning lane may
    start almost straight).

    :param approach: the last waypoint before the junction.
    :param branches: what ``approach.next(d)`` returned (one waypoint per exit).
    :param step_m: step (m) used to walk through the junction.
    :return: one :class:`JunctionExit` per branch, in the order given.
    """
    exits = []
    for branch in branches:
        turn = wrap_angle(_heading(_leave_junction(branch, step_m)) - _heading(approach))
        exits.append(JunctionExit(waypoint=branch, turn_rad=turn, direction=_direction(turn)))
    return exits


def _junction_id(branches: Sequence[Any]) -> int | None:
    for b in branches:
        if b.is_junction:
            return int(b.get_junction().id)
    return None


def _take(
    approach: Any, branches: Sequence[Any], choice: str, index: int | None, n_choices: int, step_m: float
) -> tuple[Any, JunctionPassage]:
    """The branch that ``choice`` names, or :class:`CarlaRouteError` naming the junction."""
    exits = junction_exits(approach, branches, step_m)
    offered = tuple(sorted({e.direction for e in exits}))
    junction = _junction_id(branches)
    matching = [e for e in exits if e.direction == choice]
    if not matching:
        place = f"Junction {junction}" if junction is not None else "The lane split"
        listing = ", ".join(f"{e.direction} ({math.degrees(e.turn_rad):+.0f} deg)" for e in exits)
        which = (
            f"that is junction choice #{index + 1} of {n_choices}. Change it"
            if index is not None
            else f"junction_choices ({n_choices} given) is used up there, and past its end the route goes straight. "
            "Add a choice"
        )
        raise CarlaRouteError(
            f"{place} reached from {_where(approach)} offers no {choice!r} exit (it offers: {listing}); "
            f"{which} or change the route's start."
        )
    best = min(matching, key=lambda e: abs(e.turn_rad - _IDEAL_TURN_RAD[choice]))
    return best.waypoint, JunctionPassage(junction_id=junction, choice=choice, turn_rad=best.turn_rad, offered=offered)


def plan_route(start: Any, length_m: float, step_m: float, junction_choices: Sequence[str]) -> PlannedRoute:
    """Follow the map's lanes from ``start`` for ``length_m`` metres, taking the given exit at each junction.

    A junction is met where the next step enters a junction lane, or where ``Waypoint.next`` offers
    several lanes; each such point uses the next entry of ``junction_choices`` (after the list is used up,
    ``"straight"``). The route stops early where its lane ends (a dead end).

    :param start: a ``carla.Waypoint`` on a driving lane.
    :param length_m: route length (m).
    :param step_m: spacing (m) of the waypoints.
    :param junction_choices: ``"left"``, ``"right"`` or ``"straight"``, one per junction.
    :return: the route.
    :raises ValueError: an unknown choice or a non-positive length or step.
    :raises CarlaRouteError: a junction does not offer the choice for it; the route has fewer than 2 points.
    """
    bad = [c for c in junction_choices if c not in JUNCTION_CHOICES]
    if bad:
        raise ValueError(f"junction_choices must contain only {', '.join(map(repr, JUNCTION_CHOICES))}, got {bad}")
    if not (length_m > 0 and step_m > 0):
        raise ValueError(f"length_m and step_m must be > 0 m, got {length_m} and {step_m}")
    route = [start]
    passages: list[JunctionPassage] = []
    travelled = 0.0
    while travelled < length_m:
        here = route[-1]
        branches = here.next(step_m)
        if not branches:
            break
        if len(branches) > 1 or (branches[0].is_junction and not here.is_junction):
            index = len(passages) if len(passages) < len(junction_choices) else None
            choice = junction_choices[index] if index is not None else "straight"
            nxt, passage = _take(here, branches, choice, index, len(junction_choices), step_m)
            passages.append(passage)
        else:
            nxt = branches[0]
        a, b = here.transform.location, nxt.transform.location
        travelled += math.hypot(b.x - a.x, b.y - a.y)
        route.append(nxt)
    if len(route) < 2:
        raise CarlaRouteError(f"The route from {_where(start)} ends at once (dead-end lane); choose another start")
    return PlannedRoute(waypoints=route, junctions=passages, length_m=travelled)


def build_route(start_waypoint: Any, length_m: float, step_m: float, junction_choices: Sequence[str]) -> list[Any]:
    """The waypoints of :func:`plan_route` (what the backend turns into a :class:`RouteSpec`).

    :param start_waypoint: a ``carla.Waypoint`` on a driving lane.
    :param length_m: route length (m).
    :param step_m: spacing (m) of the waypoints.
    :param junction_choices: branch choices, one per junction.
    :return: the waypoints in driving order (at least 2).
    :raises CarlaRouteError: see :func:`plan_route`.
    """
    return plan_route(start_waypoint, length_m, step_m, junction_choices).waypoints


def start_waypoint(carla_map: Any, start: RouteStart) -> Any:
    """The waypoint of an OpenDRIVE start on a map (a server's ``world.get_map()`` or an offline ``carla.Map``).

    :param carla_map: the map.
    :param start: road, lane and s of the start.
    :raises CarlaRouteError: the map has no driving lane there.
    """
    wp = carla_map.get_waypoint_xodr(int(start.road_id), int(start.lane_id), float(start.s_m))
    if wp is None:
        raise CarlaRouteError(
            f"The map {carla_map.name} has no lane at road {start.road_id} lane {start.lane_id} s {start.s_m} m "
            "(the route start): is it the town the route is defined on?"
        )
    if wp.lane_type.name != "Driving":
        raise CarlaRouteError(
            f"The route start road {start.road_id} lane {start.lane_id} is a {wp.lane_type} lane, not a driving lane"
        )
    return wp


def spawn_transform(waypoint: Any, lift_m: float = 0.5) -> Any:
    """Where to spawn a vehicle on ``waypoint``: its transform, ``lift_m`` higher (at road level it collides).

    :param waypoint: a ``carla.Waypoint``.
    :param lift_m: height (m) above the road surface.
    :return: a new ``carla.Transform``.
    """
    transform = waypoint.transform  # the client returns a copy
    transform.location.z += lift_m
    return transform


def route_spec(waypoints: Sequence[Any]) -> RouteSpec:
    """Convert route waypoints into the env's :class:`RouteSpec` (right-handed frame, distinct points).

    :param waypoints: ``carla.Waypoint`` objects in driving order.
    :return: the polyline and half the start lane's width.
    """
    points = [carla_to_world_xy(w.transform.location.x, w.transform.location.y) for w in waypoints]
    kept = [points[0]]
    for p in points[1:]:
        if math.hypot(p[0] - kept[-1][0], p[1] - kept[-1][1]) > 1e-3:
            kept.append(p)
    if len(kept) < 2:
        raise CarlaBackendError(
            "The route's waypoints all coincide; choose another start (route_start, route_start_index) or route_length_m"
        )
    return RouteSpec(points=np.asarray(kept, dtype=np.float64), half_lane_width_m=float(waypoints[0].lane_width) / 2.0)
