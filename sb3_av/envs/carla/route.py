"""Coordinate conversion (CARLA/Unreal -> the env's right-handed frame) and route building from map waypoints.

CARLA is left-handed: x forward, y to the right, yaw in degrees clockwise seen from above, steer positive
to the right. :mod:`sb3_av.envs.backend` uses a right-handed frame (y to the left, yaw in radians
counter-clockwise, steer positive to the left), so ``y -> -y``, ``yaw -> -yaw`` and ``steer -> -steer``.

The PyPI client has no ``agents`` package (no ``GlobalRoutePlanner``), so the route follows
``Waypoint.next`` from the start, choosing a branch at each junction from a fixed list of choices.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from sb3_av.envs.backend import RouteSpec
from sb3_av.envs.carla.errors import CarlaBackendError
from sb3_av.envs.route import wrap_angle

__all__ = [
    "build_route",
    "carla_to_world_xy",
    "carla_to_world_yaw",
    "route_spec",
    "world_to_carla_steer",
]

_BRANCH_PROBE_M = 15.0  # a branch's turn is judged by its heading this far after the junction entry
_TURN_THRESHOLD_RAD = math.radians(30.0)  # |heading change| above this is a turn, below it straight


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


def _turn_of(start: Any, branch: Any) -> float:
    """Heading change (rad, counter-clockwise positive) from ``start`` to ``_BRANCH_PROBE_M`` along ``branch``."""
    probe = branch
    ahead = branch.next(_BRANCH_PROBE_M)
    if ahead:
        probe = ahead[0]
    return wrap_angle(_heading(probe) - _heading(start))


def _choose(current: Any, branches: Sequence[Any], choice: str) -> Any:
    """The branch matching ``choice``; ``straight`` (or the smallest turn) when no branch matches."""
    turns = [_turn_of(current, b) for b in branches]
    if choice == "left":
        candidates = [i for i, t in enumerate(turns) if t > _TURN_THRESHOLD_RAD]
        key = max
    elif choice == "right":
        candidates = [i for i, t in enumerate(turns) if t < -_TURN_THRESHOLD_RAD]
        key = min
    else:
        candidates = []
        key = min
    if candidates:
        return branches[key(candidates, key=lambda i: turns[i])]
    return branches[min(range(len(branches)), key=lambda i: abs(turns[i]))]


def build_route(start_waypoint: Any, length_m: float, step_m: float, junction_choices: Sequence[str]) -> list[Any]:
    """Follow the map's waypoints from ``start_waypoint`` for ``length_m`` metres.

    Where ``Waypoint.next`` offers several branches (a junction), the next entry of ``junction_choices``
    picks one (``"left"``/``"right"``: the sharpest turn that way; ``"straight"``, or no branch that way:
    the smallest turn); after the list is used up, ``"straight"``.

    :param start_waypoint: a ``carla.Waypoint`` on a driving lane.
    :param length_m: route length (m).
    :param step_m: spacing (m) of the waypoints.
    :param junction_choices: branch choices, one per junction.
    :return: the waypoints in driving order (at least 2).
    :raises CarlaBackendError: the lane ends before the route has 2 points.
    """
    route = [start_waypoint]
    choices = list(junction_choices)
    travelled = 0.0
    while travelled < length_m:
        branches = route[-1].next(step_m)
        if not branches:
            break
        if len(branches) == 1:
            nxt = branches[0]
        else:
            nxt = _choose(route[-1], branches, choices.pop(0) if choices else "straight")
        a, b = route[-1].transform.location, nxt.transform.location
        travelled += math.hypot(b.x - a.x, b.y - a.y)
        route.append(nxt)
    if len(route) < 2:
        loc = start_waypoint.transform.location
        raise CarlaBackendError(
            f"The route from ({loc.x:.1f}, {loc.y:.1f}) ends at once (dead-end lane); choose another route_start_index"
        )
    return route


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
        raise CarlaBackendError("The route's waypoints all coincide; choose another route_start_index or route_length_m")
    return RouteSpec(points=np.asarray(kept, dtype=np.float64), half_lane_width_m=float(waypoints[0].lane_width) / 2.0)
