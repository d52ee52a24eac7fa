"""What the ego meets on a CARLA route: the leader on the route lane and the nearest NPC's clearance.

The same ``info["backend"]`` keys as the Lite backend, from the same rules, so the PID baseline's ACC
(:class:`~sb3_av.baselines.PIDPurePursuit`), :class:`~sb3_av.envs.wrappers.HeadwayPenalty`,
:class:`~sb3_av.envs.wrappers.ClearancePenalty` and ``benchmarks/traffic_difficulty.py`` work on both:

- ``lead_distance_m`` / ``lead_speed_ms``: the nearest NPC whose centre lies on the route lane (within half the lane
  width of the route's centre line) and ahead of the ego along the route, bumper to bumper (the route's arc length
  between the centres less the two half lengths); None without one within :data:`LEAD_RANGE_M`.
- ``clearance_m``: the distance between the ego's and the nearest NPC's footprints (0 when they overlap); None
  without an NPC within :data:`CLEARANCE_RANGE_M` centre to centre.

Footprints come from each actor's ``bounding_box`` (its extent and its offset from the actor's origin) and the
transform of the last tick. On the real client both are read from the episode state that every tick brings
(LibCarla's ``ActorSnapshot``; the bounding box from the actor's description), so this costs no request to the
server.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sb3_av.envs.carla.route import carla_to_world_xy, carla_to_world_yaw
from sb3_av.envs.geometry import box_distances
from sb3_av.envs.route import Route

__all__ = ["CLEARANCE_RANGE_M", "LEAD_RANGE_M", "footprint", "forward_speed", "route_traffic"]

#: the leader is looked for this far ahead (m, bumper to bumper), as on Lite
LEAD_RANGE_M = 100.0
#: NPCs farther than this (m, centre to centre) are not near: ``clearance_m`` is None
CLEARANCE_RANGE_M = 20.0


def footprint(actor: Any, tf: Any = None) -> np.ndarray:
    """An actor's footprint ``[x, y, heading, length, width]`` in the env's world frame (m, rad).

    :param actor: a ``carla.Actor`` with a ``bounding_box`` (its location relative to the actor's origin).
    :param tf: its ``carla.Transform`` if already read this tick (else read here).
    """
    tf = actor.get_transform() if tf is None else tf
    box = actor.bounding_box
    yaw = math.radians(tf.rotation.yaw)  # CARLA's frame: rotate the box's offset as CARLA does, then convert
    dx, dy = box.location.x, box.location.y
    cx = tf.location.x + dx * math.cos(yaw) - dy * math.sin(yaw)
    cy = tf.location.y + dx * math.sin(yaw) + dy * math.cos(yaw)
    x, y = carla_to_world_xy(cx, cy)
    return np.array([x, y, carla_to_world_yaw(tf.rotation.yaw), 2.0 * box.extent.x, 2.0 * box.extent.y])


def forward_speed(actor: Any, tf: Any = None) -> float:
    """The actor's speed along its heading (m/s, >= 0), from the last tick's velocity.

    :param tf: its ``carla.Transform`` if already read this tick (else read here).
    """
    v = actor.get_velocity()
    f = (actor.get_transform() if tf is None else tf).get_forward_vector()
    return max(v.x * f.x + v.y * f.y + v.z * f.z, 0.0)


def route_traffic(route: Route, ego_s: float, ego: np.ndarray, npcs: np.ndarray, npc_speeds: np.ndarray) -> dict[str, Any]:
    """``lead_distance_m``, ``lead_speed_ms`` and ``clearance_m`` (see the module) for one tick.

    :param route: the episode's route.
    :param ego_s: the ego's arc length on the route (m).
    :param ego: the ego's footprint (:func:`footprint`).
    :param npcs: ``(N, 5)`` the NPCs' footprints.
    :param npc_speeds: ``(N,)`` their forward speeds (m/s).
    """
    out: dict[str, Any] = {"lead_distance_m": None, "lead_speed_ms": None, "clearance_m": None}
    npcs = np.asarray(npcs, dtype=float).reshape(-1, 5)
    if not len(npcs):
        return out
    centres = np.hypot(npcs[:, 0] - ego[0], npcs[:, 1] - ego[1])
    near = centres < CLEARANCE_RANGE_M
    if near.any():
        out["clearance_m"] = float(np.min(box_distances(ego, npcs[near])))
    best: float | None = None
    for j in np.flatnonzero(centres < LEAD_RANGE_M + (ego[3] + npcs[:, 3]) / 2):
        half_lengths = (ego[3] + npcs[j, 3]) / 2
        # searched only from just behind the ego to the range ahead, so a route that comes back near itself (or a
        # road crossing it further on) cannot take an NPC there for the leader
        proj = route.project(npcs[j, 0], npcs[j, 1], s_hint=ego_s, window_m=(-half_lengths, LEAD_RANGE_M + half_lengths))
        # the distance to the route point itself, not the perpendicular one: past the ends of the searched window the
        # nearest point is a window end, and a point far along the line there has a perpendicular offset of 0
        on_route = route.position_at(np.array([proj.s]))[0]
        if math.hypot(npcs[j, 0] - on_route[0], npcs[j, 1] - on_route[1]) > route.half_lane_width_m:
            continue
        gap = proj.s - ego_s - half_lengths
        if -half_lengths < gap < LEAD_RANGE_M and (best is None or gap < best):
            best = gap
            out["lead_distance_m"], out["lead_speed_ms"] = max(float(gap), 0.0), float(npc_speeds[j])
    return out
