"""LiteBackend: the embedded simulator (highway-env road and vehicle kinematics, IDM traffic, pygame camera).

The ego is a highway-env kinematic bicycle driven by ``[steer, throttle, brake]`` with bounded steering,
acceleration and braking and no reverse. NPCs are IDM vehicles (highway-env's parameters); with
``npc_lane_changes`` they change lanes by highway-env's MOBIL rule (:func:`mobil_gain`), else they keep their lane.
Each step their leader is found per lane chain by sorting arc lengths (O(n log n), not highway-env's O(n^2)
neighbour search), and collisions are checked between the ego and the NPCs near it. ``slow_npcs_ahead`` places
that many slow NPCs (``slow_npc_speed_range_ms``, below the ego's target speed) that keep the route lane ahead
of the ego, so that the ego has to follow them.
"""

from __future__ import annotations

import bisect
import itertools
import math
from typing import Any

import numpy as np
from highway_env import utils as hw_utils
from highway_env.road.road import Road
from highway_env.vehicle.behavior import IDMVehicle
from highway_env.vehicle.kinematics import Vehicle

from sb3_av.envs.backend import DrivingBackend, Frame, RouteSpec
from sb3_av.envs.geometry import box_corners, box_distances
from sb3_av.envs.lite.render import TopDownCamera
from sb3_av.envs.lite.road import ROUTE_START_M, LiteRoad, build_road
from sb3_av.envs.route import wrap_angle

__all__ = [
    "LiteBackend",
    "bicycle_step",
    "box_corners",
    "box_distances",
    "idm_acceleration",
    "lane_keeping_steering",
    "mobil_gain",
]

_MIN_SPAWN_GAP_M = 12.0  # centre-to-centre, same lane
_EGO_CLEAR_BEHIND_M = 25.0
_EGO_CLEAR_AHEAD_M = 30.0
_LEAD_RANGE_M = 100.0
_CLEARANCE_RANGE_M = 20.0  # clearance_m: NPCs farther than this (centre to centre) are not near
_DRAG_PER_S = 0.05  # linear drag (1/s): a coasting car slows down
_MAX_SPEED_MS = 30.0
_SLOW_FIRST_AHEAD_M = (35.0, 60.0)  # where the first slow NPC starts, ahead of the ego's start (m)
_SLOW_SPACING_M = (25.0, 45.0)  # centre-to-centre spacing of the following slow NPCs (m)


def _clamp(value: float, bound: float) -> float:
    return -bound if value < -bound else (bound if value > bound else value)


# The vehicle models below follow highway-env 1.12.1 in scalar maths (a step costs microseconds, not numpy calls);
# tests/test_lite.py checks each against the upstream function it names.
def bicycle_step(vehicle: Vehicle, dt: float, max_speed: float, wrap_heading: bool) -> None:
    """One step of the kinematic bicycle of highway-env's ``Vehicle.step`` (1.12.1), in scalar maths, for the ego
    and the NPCs: the rear-axle slip ``beta = atan(tan(steering) / 2)``, no reverse, speed capped at ``max_speed``.
    Unlike upstream: no action clipping, no crash handling, no lane update (the backend tracks lanes).

    :param vehicle: the vehicle, with ``action = {"steering": rad, "acceleration": m/s^2}``; moved in place.
    :param dt: time step (s).
    :param max_speed: speed cap (m/s).
    :param wrap_heading: wrap the heading to [-pi, pi) (the ego's, which the env reports as its yaw).
    """
    beta = math.atan(0.5 * math.tan(vehicle.action["steering"]))
    angle = vehicle.heading + beta
    vehicle.position[0] += vehicle.speed * math.cos(angle) * dt
    vehicle.position[1] += vehicle.speed * math.sin(angle) * dt
    heading = vehicle.heading + vehicle.speed * math.sin(beta) / (vehicle.LENGTH / 2) * dt
    vehicle.heading = wrap_angle(heading) if wrap_heading else heading
    vehicle.speed = min(max(vehicle.speed + vehicle.action["acceleration"] * dt, 0.0), max_speed)


def idm_acceleration(vehicle: IDMVehicle, gap_m: float | None, front_speed: float) -> float:
    """highway-env's ``IDMVehicle.acceleration`` and ``desired_gap(projected=False)`` (1.12.1), given the gap.

    :param vehicle: the IDM vehicle (its speed, ``target_speed`` and IDM parameters are used).
    :param gap_m: centre-to-centre distance (m) to the leader along the lane, None when there is none.
    :param front_speed: the leader's speed (m/s).
    :return: the acceleration command (m/s^2), not yet clipped.
    """
    return _idm(vehicle.speed, vehicle.target_speed, gap_m, front_speed)


def _idm(speed: float, target_speed: float, gap_m: float | None, front_speed: float) -> float:
    """The IDM of :func:`idm_acceleration` for any vehicle, with the NPCs' (highway-env's) IDM parameters."""
    v = max(speed, 0.0)
    acc = _Npc.COMFORT_ACC_MAX * (1.0 - (v / max(target_speed, 1e-3)) ** _Npc.DELTA)
    if gap_m is not None:
        ab = -_Npc.COMFORT_ACC_MAX * _Npc.COMFORT_ACC_MIN
        d_star = _Npc.DISTANCE_WANTED + v * _Npc.TIME_WANTED + v * (v - front_speed) / (2.0 * math.sqrt(ab))
        acc -= _Npc.COMFORT_ACC_MAX * (d_star / max(gap_m, 1e-3)) ** 2
    return acc


def _follow(entry: _Entry, target_speed: float, front: _Entry | None) -> float:
    """The IDM acceleration (m/s^2) of a chain entry behind ``front`` (None: a free road)."""
    if front is None:
        return _idm(entry[2], target_speed, None, 0.0)
    return _idm(entry[2], target_speed, front[0] - entry[0], front[2])


#: One vehicle on a lane chain: (arc length on the chain (m), index (0 = ego, k = NPC k-1), speed (m/s)).
_Entry = tuple[float, int, float]


def mobil_gain(
    me: _Entry,
    my_target_speed: float,
    old_lane: list[_Entry],
    new_lane: list[_Entry],
    target_speeds: dict[int, float],
) -> float | None:
    """highway-env's ``IDMVehicle.mobil`` (1.12.1, no route) on sorted lane chains: the acceleration gain of a
    lane change, or None when it would make the new follower brake harder than ``LANE_CHANGE_MAX_BRAKING_IMPOSED``.

    highway-env changes lane when the gain is at least ``LANE_CHANGE_MIN_ACC_GAIN``.

    :param me: the deciding NPC with its arc length on the candidate chain (its index finds it on the old one).
    :param my_target_speed: its desired speed (m/s).
    :param old_lane: the entries of its lane chain, sorted by arc length (the NPC among them).
    :param new_lane: the entries of the candidate chain, sorted, the NPC not among them.
    :param target_speeds: desired speed (m/s) per entry index; an index not in it (the ego) is assumed content with
        its current speed (its IDM free-road term is 0), since its intentions are unknown to the NPCs.
    """
    s_new = me[0]
    i = bisect.bisect_left(new_lane, (s_new, -1, -math.inf))
    new_front = new_lane[i] if i < len(new_lane) else None
    new_rear = new_lane[i - 1] if i > 0 else None

    def idm(entry: _Entry, front: _Entry | None) -> float:
        return _follow(entry, target_speeds.get(entry[1], entry[2]), front)

    gain = 0.0
    if new_rear is not None:
        new_rear_pred = idm(new_rear, me)
        if new_rear_pred < -_Npc.LANE_CHANGE_MAX_BRAKING_IMPOSED:
            return None
        gain += _Npc.POLITENESS * (new_rear_pred - idm(new_rear, new_front))
    j = next(i for i, entry in enumerate(old_lane) if entry[1] == me[1])
    old_me = old_lane[j]
    old_front = old_lane[j + 1] if j + 1 < len(old_lane) else None
    old_rear = old_lane[j - 1] if j > 0 else None
    gain += _follow(me, my_target_speed, new_front) - _follow(old_me, my_target_speed, old_front)
    if old_rear is not None:
        gain += _Npc.POLITENESS * (idm(old_rear, old_front) - idm(old_rear, old_lane[j]))
    return gain


def lane_keeping_steering(vehicle: IDMVehicle, lane: Any, long_m: float, lat_m: float) -> float:
    """highway-env's ``ControlledVehicle.steering_control`` (1.12.1) on ``lane``, given the vehicle's lane coordinates;
    speeds below 1e-3 m/s count as 1e-3 (upstream: 1e-2).

    :return: the front wheel angle (rad), within ``MAX_STEERING_ANGLE``.
    """
    v = max(vehicle.speed, 0.0)
    v_safe = max(v, 1e-3)
    future_heading = float(lane.heading_at(long_m + v * vehicle.TAU_PURSUIT))
    heading_cmd = math.asin(_clamp(-vehicle.KP_LATERAL * lat_m / v_safe, 1.0))
    heading_ref = future_heading + _clamp(heading_cmd, math.pi / 4)
    rate = vehicle.KP_HEADING * wrap_angle(heading_ref - vehicle.heading)
    slip = math.asin(_clamp(vehicle.LENGTH / 2 / v_safe * rate, 1.0))
    return _clamp(math.atan(2 * math.tan(slip)), vehicle.MAX_STEERING_ANGLE)


class _Ego(Vehicle):
    """The ego: highway-env's kinematic bicycle, no reverse, speed capped."""

    speed: float
    heading: float

    def step(self, dt: float) -> None:
        bicycle_step(self, dt, _MAX_SPEED_MS, wrap_heading=True)

    def on_state_update(self) -> None:  # lane tracking is done by the backend along the route chain
        pass


class _Npc(IDMVehicle):
    """An IDM vehicle on a lane chain; with lane changes on it moves to a neighbouring chain by MOBIL.

    During a lane change (``target_chain != chain``) it steers to the target lane and counts on both chains
    (for its own leader and as a leader of the vehicles behind it); ``chain`` becomes the target once it is
    closer to the target lane's centre than to its own (highway-env: the closest lane).
    """

    speed: float
    heading: float

    def setup(self, road: LiteRoad, chain: int, segment: int, lane_changes: bool = False) -> None:
        self.chain = chain
        self.target_chain = chain
        self.segment = segment
        self.lite_road = road
        self.lane_changes = lane_changes
        self.lane_index = road.lane_index(chain, segment)
        self.lane = road.lane(chain, segment)
        self.target_lane_index = self.lane_index
        self.chain_s = 0.0
        self.target_s = 0.0
        self.lateral = 0.0
        self.update_chain_position()

    def update_chain_position(self) -> None:
        """Arc length along the chain(s) and lateral offset; next segment past a lane's end; lane change progress."""
        long, lat = self.lane.local_coordinates(self.position)
        if long > self.lane.length and self.segment < 2:
            self.segment += 1
            self.lane = self.lite_road.lane(self.chain, self.segment)
            long, lat = self.lane.local_coordinates(self.position)
        if self.target_chain != self.chain:
            target_lane = self.lite_road.lane(self.target_chain, self.segment)
            t_long, t_lat = target_lane.local_coordinates(self.position)
            if abs(t_lat) < abs(lat):  # closer to the target lane: it is now the vehicle's lane
                self.chain, self.lane, long, lat = self.target_chain, target_lane, t_long, t_lat
            else:
                self.target_s = float(self.lite_road.chain_offsets[self.target_chain, self.segment] + t_long)
                self._target_long, self._target_lat = float(t_long), float(t_lat)
        self.lane_index = self.lite_road.lane_index(self.chain, self.segment)
        self.target_lane_index = self.lite_road.lane_index(self.target_chain, self.segment)
        self.chain_s = float(self.lite_road.chain_offsets[self.chain, self.segment] + long)
        self.lateral = float(lat)
        self._long = float(long)

    @property
    def changing_lane(self) -> bool:
        """Whether a lane change is under way."""
        return self.target_chain != self.chain

    def act_idm(
        self, gap_m: float | None, front_speed: float, target_gap_m: float | None = None, target_front_speed: float = 0.0
    ) -> None:
        """Set the IDM acceleration and the lane-keeping steering (to the target lane during a lane change).

        :param gap_m: centre-to-centre distance (m) to the leader on the chain, None when there is none.
        :param front_speed: the leader's speed (m/s).
        :param target_gap_m: during a lane change, the gap to the leader on the target chain (highway-env takes
            the smaller of the two IDM accelerations).
        :param target_front_speed: that leader's speed (m/s).
        """
        acceleration = idm_acceleration(self, gap_m, front_speed)
        if self.changing_lane:
            acceleration = min(acceleration, idm_acceleration(self, target_gap_m, target_front_speed))
            lane = self.lite_road.lane(self.target_chain, self.segment)
            steering = lane_keeping_steering(self, lane, self._target_long, self._target_lat)
        else:
            steering = lane_keeping_steering(self, self.lane, self._long, self.lateral)
        self.action = {"steering": steering, "acceleration": _clamp(acceleration, self.ACC_MAX)}

    def step(self, dt: float) -> None:
        """The kinematic bicycle (:func:`bicycle_step`), heading not wrapped, no speed cap."""
        self.timer += dt
        bicycle_step(self, dt, math.inf, wrap_heading=False)

    def on_state_update(self) -> None:  # lane tracking by update_chain_position (no global closest-lane search)
        pass


class LiteBackend(DrivingBackend):
    """The embedded simulator behind ``LiteScenario*-v0``.

    :param camera_size: image height = width (pixels).
    :param npc_vehicles: number of IDM vehicles spread over all lanes.
    :param seed: default episode seed when ``reset`` gets none.
    :param dt: simulation step (s).
    :param n_lanes: number of parallel lanes (>= 1).
    :param lane_width_m: lane width (m).
    :param route_lane: the lane (0 = leftmost) the route follows.
    :param route_length_m: route length (m).
    :param turn_radius_m: radius (m) of the innermost lane of the 90 degree left turn.
    :param pixels_per_m: camera scale (pixels per metre).
    :param npc_speed_range_ms: ``(low, high)`` range (m/s) of the NPCs' desired speeds.
    :param npc_lane_changes: NPCs change lanes by MOBIL (highway-env's parameters), else they keep their lane.
    :param slow_npcs_ahead: how many of the ``npc_vehicles`` (at most all of them) start ahead of the ego on the
        route lane (the first 35-60 m ahead, the next 25-45 m apart) with a desired speed from
        ``slow_npc_speed_range_ms``; they keep their lane.
    :param slow_npc_speed_range_ms: ``(low, high)`` desired speeds (m/s) of those slow NPCs.
    :param max_steer_rad: front wheel angle (rad) at steer = 1.
    :param max_accel_ms2: acceleration (m/s^2) at throttle = 1.
    :param max_brake_ms2: deceleration (m/s^2) at brake = 1.
    """

    def __init__(
        self,
        camera_size: int = 84,
        npc_vehicles: int = 20,
        seed: int | None = None,
        dt: float = 0.05,
        n_lanes: int = 4,
        lane_width_m: float = 4.0,
        route_lane: int = 1,
        route_length_m: float = 250.0,
        turn_radius_m: float = 20.0,
        pixels_per_m: float = 2.0,
        npc_speed_range_ms: tuple[float, float] | list[float] = (7.0, 11.0),
        npc_lane_changes: bool = False,
        slow_npcs_ahead: int = 0,
        slow_npc_speed_range_ms: tuple[float, float] | list[float] = (6.0, 7.0),
        max_steer_rad: float = 0.5,
        max_accel_ms2: float = 3.5,
        max_brake_ms2: float = 8.0,
    ) -> None:
        _check_settings(n_lanes, lane_width_m, route_lane, route_length_m, turn_radius_m, pixels_per_m, npc_speed_range_ms)
        _check_traffic(npc_lane_changes, slow_npcs_ahead, slow_npc_speed_range_ms)
        for name, value in (
            ("max_steer_rad", max_steer_rad),
            ("max_accel_ms2", max_accel_ms2),
            ("max_brake_ms2", max_brake_ms2),
        ):
            if not value > 0:
                raise ValueError(f"Lite backend setting {name} must be > 0, got {value!r}")
        self.dt = float(dt)
        self.npc_vehicles = int(npc_vehicles)
        self.default_seed = seed
        self.route_lane = int(route_lane)
        self.npc_speed_range_ms = (float(npc_speed_range_ms[0]), float(npc_speed_range_ms[1]))
        self.npc_lane_changes = bool(npc_lane_changes)
        self.slow_npcs_ahead = min(int(slow_npcs_ahead), self.npc_vehicles)  # part of npc_vehicles
        self.slow_npc_speed_range_ms = (float(slow_npc_speed_range_ms[0]), float(slow_npc_speed_range_ms[1]))
        self.max_steer_rad = float(max_steer_rad)
        self.max_accel_ms2 = float(max_accel_ms2)
        self.max_brake_ms2 = float(max_brake_ms2)
        self.road = build_road(int(n_lanes), float(lane_width_m), float(turn_radius_m), self.route_lane, float(route_length_m))
        self._route_end_s = ROUTE_START_M + float(route_length_m)
        self._route = RouteSpec(
            points=self.road.sample_chain(self.route_lane, ROUTE_START_M, self._route_end_s, 1.0),
            half_lane_width_m=float(lane_width_m) / 2,
        )
        self.camera = TopDownCamera(self.road, int(camera_size), float(pixels_per_m))
        self._hw_road: Road | None = None
        self._ego: _Ego | None = None
        self._npcs: list[_Npc] = []
        self._steps = 0
        self._ego_segment = 0
        self._ego_s = ROUTE_START_M
        self._ego_lat = 0.0
        self._closed = False

    @property
    def route(self) -> RouteSpec:
        """The route: ``route_length_m`` of the route lane, starting 100 m into the road."""
        return self._route

    @property
    def npcs(self) -> list[_Npc]:
        """The NPC vehicles of the current episode (highway-env IDM vehicles; tests script them)."""
        return self._npcs

    @property
    def ego(self) -> Vehicle | None:
        """The ego vehicle of the current episode (a highway-env kinematic vehicle)."""
        return self._ego

    # ------------------------------------------------------------------ episode
    def reset(self, seed: int | None = None) -> Frame:
        """New traffic (seeded), the ego at rest at the route start."""
        if self._closed:
            raise RuntimeError("LiteBackend.reset() after close(); make a new env")
        seed = self.default_seed if seed is None else seed
        rng = np.random.default_rng(seed)
        self._hw_road = Road(network=self.road.network, np_random=np.random.RandomState(rng.integers(2**31 - 1)))
        position, heading = self.road.position(self.route_lane, ROUTE_START_M)
        self._ego = _Ego(self._hw_road, position, heading, 0.0)
        self._ego_segment, self._ego_s, self._ego_lat = 0, ROUTE_START_M, 0.0
        self._npcs = self._spawn_npcs(rng)
        self._hw_road.vehicles = [self._ego, *self._npcs]
        self._steps = 0
        return self._frame(self._npc_boxes(), collision=False)

    def _spawn_npcs(self, rng: np.random.Generator) -> list[_Npc]:
        occupied: list[list[float]] = [[] for _ in range(self.road.n_lanes)]
        targets: list[tuple[int, float, float, bool]] = []  # chain, arc length, desired speed, slow NPC
        s = ROUTE_START_M + float(rng.uniform(*_SLOW_FIRST_AHEAD_M)) if self.slow_npcs_ahead else 0.0
        for _ in range(self.slow_npcs_ahead):
            occupied[self.route_lane].append(s)
            targets.append((self.route_lane, s, float(rng.uniform(*self.slow_npc_speed_range_ms)), True))
            s += float(rng.uniform(*_SLOW_SPACING_M))
        for _ in range(self.npc_vehicles - self.slow_npcs_ahead):
            for _attempt in range(200):
                chain = int(rng.integers(self.road.n_lanes))
                s = float(rng.uniform(5.0, self.road.chain_lengths[chain] - 10.0))
                if chain == self.route_lane and -_EGO_CLEAR_BEHIND_M < s - ROUTE_START_M < _EGO_CLEAR_AHEAD_M:
                    continue
                if all(abs(s - other) >= _MIN_SPAWN_GAP_M for other in occupied[chain]):
                    break
            else:
                raise ValueError(
                    f"npc_vehicles={self.npc_vehicles} do not fit on the {self.road.n_lanes}-lane road "
                    f"(at least {_MIN_SPAWN_GAP_M} m apart); use fewer vehicles or more lanes (n_lanes)"
                )
            occupied[chain].append(s)
            targets.append((chain, s, float(rng.uniform(*self.npc_speed_range_ms)), False))
        npcs: list[_Npc] = []
        for chain, s, target, slow in targets:
            # Start at a speed whose IDM gap fits the actual gap to the vehicle ahead (no start-up shock wave).
            ahead = [o - s for o in occupied[chain] if o > s]
            if chain == self.route_lane and s < ROUTE_START_M:
                ahead.append(ROUTE_START_M - s)
            gap = min(ahead, default=math.inf)
            speed = min(0.8 * target, max((gap - _Npc.DISTANCE_WANTED) / _Npc.TIME_WANTED, 0.0))
            position, heading = self.road.position(chain, s)
            npc = _Npc(self._hw_road, position, heading, speed, target_speed=target, enable_lane_change=False)
            npc.setup(self.road, chain, self.road.locate(chain, s)[0], lane_changes=self.npc_lane_changes and not slow)
            npcs.append(npc)
        return npcs

    def step(self, steer: float, throttle: float, brake: float) -> Frame:
        """Advance the world by one step of :attr:`dt` with the ego's control."""
        if self._ego is None:
            raise RuntimeError("LiteBackend.step() called before reset()")
        chains = self._chain_entries()
        leaders = self._leaders(chains)
        for npc, (gap, front_speed, target_gap, target_front_speed) in zip(self._npcs, leaders[1:], strict=True):
            npc.act_idm(gap, front_speed, target_gap, target_front_speed)
        if self.npc_lane_changes:
            self._change_lanes(chains)
        ego = self._ego
        accel = throttle * self.max_accel_ms2 - brake * self.max_brake_ms2 - _DRAG_PER_S * ego.speed
        ego.action = {"steering": float(steer) * self.max_steer_rad, "acceleration": accel}
        ego.step(self.dt)
        for npc in self._npcs:
            npc.step(self.dt)
            npc.update_chain_position()
        self._update_ego_chain_position()
        self._steps += 1
        boxes = self._npc_boxes()
        return self._frame(boxes, collision=self._ego_collides(boxes))

    def close(self) -> None:
        """Drop the world (idempotent)."""
        self._closed = True
        self._npcs = []
        self._ego = None
        self._hw_road = None

    # ------------------------------------------------------------------ helpers
    def _update_ego_chain_position(self) -> None:
        assert self._ego is not None
        lane = self.road.lane(self.route_lane, self._ego_segment)
        long, lat = lane.local_coordinates(self._ego.position)
        if long > lane.length and self._ego_segment < 2:
            self._ego_segment += 1
            lane = self.road.lane(self.route_lane, self._ego_segment)
            long, lat = lane.local_coordinates(self._ego.position)
        elif long < 0 and self._ego_segment > 0:
            self._ego_segment -= 1
            lane = self.road.lane(self.route_lane, self._ego_segment)
            long, lat = lane.local_coordinates(self._ego.position)
        self._ego_s = float(self.road.chain_offsets[self.route_lane, self._ego_segment] + long)
        self._ego_lat = float(lat)

    def _ego_chains(self) -> list[int]:
        """The lane chains the ego occupies: its route lane, plus a neighbour it overlaps."""
        half = self.road.lane_width_m / 2 - _Ego.WIDTH / 2
        chains = [self.route_lane]
        if self._ego_lat > half and self.route_lane > 0:
            chains.append(self.route_lane - 1)
        elif self._ego_lat < -half and self.route_lane < self.road.n_lanes - 1:
            chains.append(self.route_lane + 1)
        return chains

    def _chain_entries(self) -> list[list[_Entry]]:
        """Per lane chain, the vehicles on it sorted by arc length: ``(s, index, speed)``, index 0 = the ego.

        An NPC changing lanes is on both its chain and its target chain; the ego is on its route chain and on a
        neighbouring chain it overlaps.
        """
        assert self._ego is not None
        per_chain: list[list[_Entry]] = [[] for _ in range(self.road.n_lanes)]
        for k, npc in enumerate(self._npcs, start=1):
            per_chain[npc.chain].append((npc.chain_s, k, npc.speed))
            if npc.target_chain != npc.chain:
                per_chain[npc.target_chain].append((npc.target_s, k, npc.speed))
        ego_s = self._ego_s
        for chain in self._ego_chains():
            # The ego's arc length on a neighbouring chain differs by the turn; use the same fraction of the chain.
            s = (
                ego_s
                if chain == self.route_lane
                else ego_s * self.road.chain_lengths[chain] / self.road.chain_lengths[self.route_lane]
            )
            per_chain[chain].append((s, 0, self._ego.speed))
        for entries in per_chain:
            entries.sort()
        return per_chain

    def _leaders(self, per_chain: list[list[_Entry]]) -> list[tuple[float | None, float, float | None, float]]:
        """``(gap, leader speed, gap on the target chain, its leader's speed)`` of the ego (index 0, unused) and
        each NPC, gaps centre-to-centre along the chain; the target-chain pair is ``(None, 0)`` when not changing."""
        result: list[list[Any]] = [[None, 0.0, None, 0.0] for _ in range(len(self._npcs) + 1)]
        for chain, entries in enumerate(per_chain):
            for (s, k, _), (s_front, _, v_front) in itertools.pairwise(entries):
                if k == 0:  # the ego's leader is reported by _route_leader, not used for control
                    continue
                slot = 0 if self._npcs[k - 1].chain == chain else 2
                result[k][slot : slot + 2] = [s_front - s, v_front]
        return [tuple(r) for r in result]  # type: ignore[misc]

    def _change_lanes(self, per_chain: list[list[_Entry]]) -> None:
        """highway-env's ``change_lane_policy``: every ``LANE_CHANGE_DELAY`` s of its own timer, an NPC not already
        changing lanes and moving (>= 1 m/s) moves to a neighbouring chain whose MOBIL gain is at least
        ``LANE_CHANGE_MIN_ACC_GAIN`` (the last such side wins, as upstream)."""
        targets = {k: npc.target_speed for k, npc in enumerate(self._npcs, start=1)}
        for k, npc in enumerate(self._npcs, start=1):
            if not npc.lane_changes or npc.changing_lane or not hw_utils.do_every(npc.LANE_CHANGE_DELAY, npc.timer):
                continue
            npc.timer = 0.0
            if abs(npc.speed) < 1.0:
                continue
            for side in (npc.chain - 1, npc.chain + 1):
                if not 0 <= side < self.road.n_lanes:
                    continue
                side_lane = self.road.lane(side, npc.segment)
                side_s = float(self.road.chain_offsets[side, npc.segment] + side_lane.local_coordinates(npc.position)[0])
                gain = mobil_gain((side_s, k, npc.speed), npc.target_speed, per_chain[npc.chain], per_chain[side], targets)
                if gain is not None and gain >= npc.LANE_CHANGE_MIN_ACC_GAIN:
                    npc.target_chain = side
            if npc.changing_lane:
                npc.update_chain_position()

    def _npc_boxes(self) -> np.ndarray:
        """The NPCs' boxes ``(N, 5)``: ``[x, y, heading, length, width]``, built once a step for the collision
        check, the camera and ``clearance_m``."""
        return np.array([[n.position[0], n.position[1], n.heading, n.LENGTH, n.WIDTH] for n in self._npcs]).reshape(-1, 5)

    def _ego_collides(self, boxes: np.ndarray) -> bool:
        """highway-env's polygon test against the NPCs whose centre is within reach of the ego (``boxes`` from
        :meth:`_npc_boxes`)."""
        assert self._ego is not None
        ego = self._ego
        dist = np.hypot(boxes[:, 0] - ego.position[0], boxes[:, 1] - ego.position[1])
        for j in np.flatnonzero(dist < ego.diagonal + 1.0):
            npc = self._npcs[j]
            if hw_utils.are_polygons_intersecting(ego.polygon(), npc.polygon(), np.zeros(2), np.zeros(2))[0]:
                return True
        return False

    def _frame(self, boxes: np.ndarray, collision: bool) -> Frame:
        """The observation of this step; ``boxes`` the NPCs' from :meth:`_npc_boxes`."""
        assert self._ego is not None
        ego = self._ego
        image = self.camera.render(
            float(ego.position[0]), float(ego.position[1]), float(ego.heading), boxes, (ego.LENGTH, ego.WIDTH)
        )
        hw = self.road.lane_width_m / 2
        left_edge = self.route_lane * self.road.lane_width_m + hw
        right_edge = (self.road.n_lanes - 1 - self.route_lane) * self.road.lane_width_m + hw
        on_road = -right_edge <= self._ego_lat <= left_edge
        lead = self._route_leader()
        extra: dict[str, Any] = {
            "lead_distance_m": lead[0],
            "lead_speed_ms": lead[1],
            "clearance_m": self._clearance(boxes),
            "npc_vehicles": len(self._npcs),
            "route_lane_lateral_m": self._ego_lat,
        }
        return Frame(
            image=image,
            x=float(ego.position[0]),
            y=float(ego.position[1]),
            yaw=float(ego.heading),
            speed_ms=float(ego.speed),
            sim_time_s=self._steps * self.dt,
            collision=collision,
            on_driving_lane=bool(on_road),
            extra=extra,
        )

    def _clearance(self, boxes: np.ndarray) -> float | None:
        """Distance (m) between the ego's box and the nearest NPC's box (0 when they overlap); None when no NPC is
        within :data:`_CLEARANCE_RANGE_M` centre to centre. ``boxes``: the NPCs', from :meth:`_npc_boxes`. See
        :func:`box_distances`."""
        assert self._ego is not None
        ego = self._ego
        if not len(boxes):
            return None
        centres = np.hypot(boxes[:, 0] - ego.position[0], boxes[:, 1] - ego.position[1])
        # A box distance lies in [centre distance - half the two diagonals, centre distance]: only the NPCs whose
        # lower bound is within the smallest centre distance can be the nearest (usually one to three).
        radii = np.hypot(boxes[:, 3], boxes[:, 4]) / 2 + ego.diagonal / 2
        nearest = float(centres.min())
        if nearest >= _CLEARANCE_RANGE_M:
            return None
        near = np.flatnonzero(centres - radii <= nearest)
        ego_box = np.array([*ego.position, ego.heading, ego.LENGTH, ego.WIDTH])
        return float(np.min(box_distances(ego_box, boxes[near])))

    def _route_leader(self) -> tuple[float | None, float | None]:
        """Bumper-to-bumper distance (m) and speed (m/s) of the nearest NPC ahead on the route lane."""
        assert self._ego is not None
        best: tuple[float | None, float | None] = (None, None)
        for npc in self._npcs:
            if npc.chain != self.route_lane:
                continue
            gap = npc.chain_s - self._ego_s - (npc.LENGTH + self._ego.LENGTH) / 2
            if -(npc.LENGTH + self._ego.LENGTH) / 2 < gap < _LEAD_RANGE_M and (best[0] is None or gap < best[0]):
                best = (max(gap, 0.0), float(npc.speed))
        return best


def _check_traffic(
    npc_lane_changes: bool, slow_npcs_ahead: int, slow_npc_speed_range_ms: tuple[float, float] | list[float]
) -> None:
    if not isinstance(npc_lane_changes, bool):
        raise ValueError(f"Lite backend setting npc_lane_changes must be true or false, got {npc_lane_changes!r}")
    if not isinstance(slow_npcs_ahead, int) or isinstance(slow_npcs_ahead, bool) or slow_npcs_ahead < 0:
        raise ValueError(f"Lite backend setting slow_npcs_ahead must be an integer >= 0, got {slow_npcs_ahead!r}")
    _check_speed_range("slow_npc_speed_range_ms", slow_npc_speed_range_ms)


def _check_settings(
    n_lanes: int,
    lane_width_m: float,
    route_lane: int,
    route_length_m: float,
    turn_radius_m: float,
    pixels_per_m: float,
    npc_speed_range_ms: tuple[float, float] | list[float],
) -> None:
    if not isinstance(n_lanes, int) or n_lanes < 1:
        raise ValueError(f"Lite backend setting n_lanes must be an integer >= 1, got {n_lanes!r}")
    if not isinstance(route_lane, int) or not 0 <= route_lane < n_lanes:
        raise ValueError(
            f"Lite backend setting route_lane must be an integer in [0, n_lanes - 1] = [0, {n_lanes - 1}], got {route_lane!r}"
        )
    for name, value in (
        ("lane_width_m", lane_width_m),
        ("route_length_m", route_length_m),
        ("turn_radius_m", turn_radius_m),
        ("pixels_per_m", pixels_per_m),
    ):
        if not isinstance(value, int | float) or not value > 0:
            raise ValueError(f"Lite backend setting {name} must be a number > 0, got {value!r}")
    if route_length_m < 20:
        raise ValueError(f"Lite backend setting route_length_m must be >= 20 m, got {route_length_m}")
    _check_speed_range("npc_speed_range_ms", npc_speed_range_ms)


def _check_speed_range(name: str, value: tuple[float, float] | list[float]) -> None:
    low_high = list(value) if isinstance(value, list | tuple) else []
    if len(low_high) != 2 or not 0 < low_high[0] <= low_high[1]:
        raise ValueError(f"Lite backend setting {name} must be [low, high] with 0 < low <= high (m/s), got {value!r}")
