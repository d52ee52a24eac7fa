"""LiteBackend: the embedded simulator (highway-env road and vehicle kinematics, IDM traffic, pygame camera).

The ego is a highway-env kinematic bicycle driven by ``[steer, throttle, brake]`` with bounded steering,
acceleration and braking and no reverse. NPCs are IDM vehicles (highway-env's parameters) that keep their
lane; each step their leader is found per lane chain by sorting arc lengths (O(n log n), not highway-env's
O(n^2) neighbour search), and collisions are checked between the ego and the NPCs near it.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
from highway_env import utils as hw_utils
from highway_env.road.road import Road
from highway_env.vehicle.behavior import IDMVehicle
from highway_env.vehicle.kinematics import Vehicle

from sb3_av.envs.backend import DrivingBackend, Frame, RouteSpec
from sb3_av.envs.lite.render import TopDownCamera
from sb3_av.envs.lite.road import ROUTE_START_M, LiteRoad, build_road
from sb3_av.envs.route import wrap_angle

__all__ = ["LiteBackend", "bicycle_step", "idm_acceleration", "lane_keeping_steering"]

_MIN_SPAWN_GAP_M = 12.0  # centre-to-centre, same lane
_EGO_CLEAR_BEHIND_M = 25.0
_EGO_CLEAR_AHEAD_M = 30.0
_LEAD_RANGE_M = 100.0
_DRAG_PER_S = 0.05  # linear drag (1/s): a coasting car slows down
_MAX_SPEED_MS = 30.0


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
    v = max(vehicle.speed, 0.0)
    acc = vehicle.COMFORT_ACC_MAX * (1.0 - (v / max(vehicle.target_speed, 1e-3)) ** vehicle.DELTA)
    if gap_m is not None:
        ab = -vehicle.COMFORT_ACC_MAX * vehicle.COMFORT_ACC_MIN
        d_star = vehicle.DISTANCE_WANTED + v * vehicle.TIME_WANTED + v * (v - front_speed) / (2.0 * math.sqrt(ab))
        acc -= vehicle.COMFORT_ACC_MAX * (d_star / max(gap_m, 1e-3)) ** 2
    return acc


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
    """An IDM vehicle that keeps its lane chain; its leader is set by the backend each step."""

    speed: float
    heading: float

    def setup(self, road: LiteRoad, chain: int, segment: int) -> None:
        self.chain = chain
        self.segment = segment
        self.lite_road = road
        self.lane_index = road.lane_index(chain, segment)
        self.lane = road.lane(chain, segment)
        self.target_lane_index = self.lane_index
        self.chain_s = 0.0
        self.lateral = 0.0
        self.update_chain_position()

    def update_chain_position(self) -> None:
        """Arc length along the chain and lateral offset; moves to the next segment past a lane's end."""
        long, lat = self.lane.local_coordinates(self.position)
        if long > self.lane.length and self.segment < 2:
            self.segment += 1
            self.lane_index = self.lite_road.lane_index(self.chain, self.segment)
            self.lane = self.lite_road.lane(self.chain, self.segment)
            self.target_lane_index = self.lane_index
            long, lat = self.lane.local_coordinates(self.position)
        self.chain_s = float(self.lite_road.chain_offsets[self.chain, self.segment] + long)
        self.lateral = float(lat)
        self._long = float(long)

    def act_idm(self, gap_m: float | None, front_speed: float) -> None:
        """Set the IDM acceleration and the lane-keeping steering.

        :param gap_m: centre-to-centre distance (m) to the leader on the chain, None when there is none.
        :param front_speed: the leader's speed (m/s).
        """
        self.action = {
            "steering": lane_keeping_steering(self, self.lane, self._long, self.lateral),
            "acceleration": _clamp(idm_acceleration(self, gap_m, front_speed), self.ACC_MAX),
        }

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
        max_steer_rad: float = 0.5,
        max_accel_ms2: float = 3.5,
        max_brake_ms2: float = 8.0,
    ) -> None:
        _check_settings(n_lanes, lane_width_m, route_lane, route_length_m, turn_radius_m, pixels_per_m, npc_speed_range_ms)
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
        return self._frame(collision=False)

    def _spawn_npcs(self, rng: np.random.Generator) -> list[_Npc]:
        occupied: list[list[float]] = [[] for _ in range(self.road.n_lanes)]
        targets: list[tuple[int, float, float]] = []
        npcs: list[_Npc] = []
        for _ in range(self.npc_vehicles):
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
            targets.append((chain, s, float(rng.uniform(*self.npc_speed_range_ms))))
        for chain, s, target in targets:
            # Start at a speed whose IDM gap fits the actual gap to the vehicle ahead (no start-up shock wave).
            ahead = [o - s for o in occupied[chain] if o > s]
            if chain == self.route_lane and s < ROUTE_START_M:
                ahead.append(ROUTE_START_M - s)
            gap = min(ahead, default=math.inf)
            speed = min(0.8 * target, max((gap - _Npc.DISTANCE_WANTED) / _Npc.TIME_WANTED, 0.0))
            position, heading = self.road.position(chain, s)
            npc = _Npc(self._hw_road, position, heading, speed, target_speed=target, enable_lane_change=False)
            npc.setup(self.road, chain, self.road.locate(chain, s)[0])
            npcs.append(npc)
        return npcs

    def step(self, steer: float, throttle: float, brake: float) -> Frame:
        """Advance the world by one step of :attr:`dt` with the ego's control."""
        if self._ego is None:
            raise RuntimeError("LiteBackend.step() called before reset()")
        leaders = self._leaders()
        for npc, (gap, front_speed) in zip(self._npcs, leaders[1:], strict=True):
            npc.act_idm(gap, front_speed)
        ego = self._ego
        accel = throttle * self.max_accel_ms2 - brake * self.max_brake_ms2 - _DRAG_PER_S * ego.speed
        ego.action = {"steering": float(steer) * self.max_steer_rad, "acceleration": accel}
        ego.step(self.dt)
        for npc in self._npcs:
            npc.step(self.dt)
            npc.update_chain_position()
        self._update_ego_chain_position()
        self._steps += 1
        return self._frame(collision=self._ego_collides())

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

    def _leaders(self) -> list[tuple[float | None, float]]:
        """``(gap, leader speed)`` of the ego (index 0) and each NPC, gap centre-to-centre along the lane chain."""
        assert self._ego is not None
        result: list[tuple[float | None, float]] = [(None, 0.0)] * (len(self._npcs) + 1)
        per_chain: list[list[tuple[float, int, float]]] = [[] for _ in range(self.road.n_lanes)]
        for k, npc in enumerate(self._npcs, start=1):
            per_chain[npc.chain].append((npc.chain_s, k, npc.speed))
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
            for (s, k, _), (s_front, _, v_front) in itertools.pairwise(entries):
                if k != 0:  # the ego's leader is reported by _route_leader, not used for control
                    result[k] = (s_front - s, v_front)
        return result

    def _ego_collides(self) -> bool:
        assert self._ego is not None
        ego = self._ego
        if not self._npcs:
            return False
        positions = np.array([npc.position for npc in self._npcs])
        dist = np.hypot(positions[:, 0] - ego.position[0], positions[:, 1] - ego.position[1])
        for j in np.flatnonzero(dist < ego.diagonal + 1.0):
            npc = self._npcs[j]
            if hw_utils.are_polygons_intersecting(ego.polygon(), npc.polygon(), np.zeros(2), np.zeros(2))[0]:
                return True
        return False

    def _frame(self, collision: bool) -> Frame:
        assert self._ego is not None
        ego = self._ego
        boxes = np.array([[n.position[0], n.position[1], n.heading, n.LENGTH, n.WIDTH] for n in self._npcs]).reshape(-1, 5)
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
    low_high = list(npc_speed_range_ms) if isinstance(npc_speed_range_ms, list | tuple) else []
    if len(low_high) != 2 or not 0 < low_high[0] <= low_high[1]:
        raise ValueError(
            "Lite backend setting npc_speed_range_ms must be [low, high] with 0 < low <= high (m/s), "
            f"got {npc_speed_range_ms!r}"
        )
