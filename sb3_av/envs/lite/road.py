"""The embedded road: parallel lanes, straight - 90 degree left turn - straight, built with highway-env lanes.

Lane ``i`` (0 = leftmost) of the three segments forms a *chain*: a continuous lane that the NPCs of that
lane follow from start to end. The ego's route is a stretch of one chain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from highway_env.road.lane import AbstractLane, CircularLane, LineType, StraightLane
from highway_env.road.road import RoadNetwork

__all__ = ["ROUTE_START_M", "LiteRoad", "build_road"]

#: Where the route starts on its chain (m); the stretch behind it holds following traffic.
ROUTE_START_M = 100.0
_FIRST_STRAIGHT_M = 250.0
_AFTER_ROUTE_M = 300.0
_NODES = ("a", "b", "c", "d")


@dataclass
class LiteRoad:
    """The road network and its per-lane chains.

    :param network: the highway-env road network (segments a->b straight, b->c arc, c->d straight).
    :param n_lanes: number of parallel lanes.
    :param lane_width_m: lane width (m).
    :param chain_offsets: ``(n_lanes, 3)`` arc length (m) at which each segment starts on each chain.
    :param chain_lengths: ``(n_lanes,)`` total chain length (m).
    """

    network: RoadNetwork
    n_lanes: int
    lane_width_m: float
    chain_offsets: np.ndarray
    chain_lengths: np.ndarray

    def lane(self, chain: int, segment: int) -> AbstractLane:
        """The highway-env lane of a chain on a segment (0, 1, 2)."""
        return self.network.graph[_NODES[segment]][_NODES[segment + 1]][chain]

    def lane_index(self, chain: int, segment: int) -> tuple[str, str, int]:
        """The highway-env lane index of a chain on a segment."""
        return (_NODES[segment], _NODES[segment + 1], chain)

    def locate(self, chain: int, s: float) -> tuple[int, float]:
        """The segment and the local longitudinal coordinate of arc length ``s`` on a chain."""
        offsets = self.chain_offsets[chain]
        segment = 2 if s >= offsets[2] else (1 if s >= offsets[1] else 0)
        return segment, s - offsets[segment]

    def position(self, chain: int, s: float, lateral: float = 0.0) -> tuple[np.ndarray, float]:
        """World position (m) and heading (rad) at arc length ``s`` of a chain."""
        segment, local = self.locate(chain, s)
        lane = self.lane(chain, segment)
        return lane.position(local, lateral), float(lane.heading_at(local))

    def sample_chain(self, chain: int, s_from: float, s_to: float, step_m: float = 1.0) -> np.ndarray:
        """``(N, 2)`` points of a chain's centre line from ``s_from`` to ``s_to`` (both included)."""
        n = max(math.ceil((s_to - s_from) / step_m), 1)
        return np.array([self.position(chain, s)[0] for s in np.linspace(s_from, s_to, n + 1)])


def build_road(n_lanes: int, lane_width_m: float, turn_radius_m: float, route_lane: int, route_length_m: float) -> LiteRoad:
    """Build the road: a straight, a 90 degree left turn, a straight, ``n_lanes`` lanes wide.

    :param n_lanes: number of parallel lanes (lane 0 is the leftmost, innermost in the turn).
    :param lane_width_m: lane width (m).
    :param turn_radius_m: radius (m) of the turn's innermost lane centre.
    :param route_lane: the chain the route follows (sizes the last straight so the route fits).
    :param route_length_m: route length (m), starting at :data:`ROUTE_START_M` on ``route_lane``.
    """
    net = RoadNetwork()
    route_arc = (turn_radius_m + route_lane * lane_width_m) * math.pi / 2
    last_straight = max(route_length_m - (_FIRST_STRAIGHT_M - ROUTE_START_M) - route_arc, 10.0) + _AFTER_ROUTE_M
    offsets = np.zeros((n_lanes, 3))
    lengths = np.zeros(n_lanes)
    centre = np.array([_FIRST_STRAIGHT_M, turn_radius_m])
    for i in range(n_lanes):
        left = LineType.CONTINUOUS if i == 0 else LineType.STRIPED
        right = LineType.CONTINUOUS if i == n_lanes - 1 else LineType.NONE
        kinds = [left, right]
        y = -i * lane_width_m
        radius = turn_radius_m + i * lane_width_m
        a = StraightLane([0.0, y], [_FIRST_STRAIGHT_M, y], width=lane_width_m, line_types=kinds)
        b = CircularLane(centre, radius, -math.pi / 2, 0.0, clockwise=True, width=lane_width_m, line_types=kinds)
        x = _FIRST_STRAIGHT_M + radius
        c = StraightLane([x, turn_radius_m], [x, turn_radius_m + last_straight], width=lane_width_m, line_types=kinds)
        net.add_lane("a", "b", a)
        net.add_lane("b", "c", b)
        net.add_lane("c", "d", c)
        offsets[i] = (0.0, a.length, a.length + b.length)
        lengths[i] = a.length + b.length + c.length
    return LiteRoad(net, n_lanes, lane_width_m, offsets, lengths)
