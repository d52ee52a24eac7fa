"""A classical baseline: a PID speed controller and a pure-pursuit steering controller.

It drives any env of the driving contract from what the env exposes: the vector observation (speed /
target speed and the next route points in the ego frame) and, when the backend reports one in
``info["backend"]``, the gap to the vehicle ahead (``lead_distance_m``, ``lead_speed_ms``), which turns
the speed controller into a simple adaptive cruise control. Without it, it follows the route at the
target speed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from sb3_av.envs.core import ROUTE_POINT_SCALE_M, VECTOR_FEATURES

__all__ = ["PID", "PIDPurePursuit"]

_N_HEAD = len(VECTOR_FEATURES)


@dataclass
class PID:
    """A discrete PID controller with a clamped integral (anti-windup).

    :param kp: proportional gain.
    :param ki: integral gain (1/s).
    :param kd: derivative gain (s).
    :param integral_limit: bound of the integral state (error units * s).
    """

    kp: float
    ki: float = 0.0
    kd: float = 0.0
    integral_limit: float = 5.0

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Clear the integral and derivative state."""
        self._integral = 0.0
        self._prev_error: float | None = None

    def __call__(self, error: float, dt: float) -> float:
        """One control update.

        :param error: setpoint - measurement.
        :param dt: time since the previous update (s), > 0.
        :return: the control output (unbounded).
        """
        self._integral = float(np.clip(self._integral + error * dt, -self.integral_limit, self.integral_limit))
        derivative = 0.0 if self._prev_error is None else (error - self._prev_error) / dt
        self._prev_error = error
        return self.kp * error + self.ki * self._integral + self.kd * derivative


class PIDPurePursuit:
    """PID speed control + pure-pursuit steering for the driving env contract.

    Steering: the look-ahead point at ``Ld = clip(lookahead_gain * v + lookahead_min_m, lookahead_min_m,
    lookahead_max_m)`` along the route polyline (from the observation's route points) gives the curvature
    ``k = 2 sin(alpha) / Ld``; the wheel angle is ``atan(wheelbase * k)`` and ``steer = angle / max_steer_rad``.

    Speed: the setpoint is the target speed, lowered when a leader is reported (ACC: ``v_lead + gap_gain *
    (gap - standstill_m - time_gap_s * v)``); a PID turns the speed error into ``throttle_brake``.

    :param target_speed_ms: the env's target speed (m/s); the observation's speed feature is divided by it.
    :param dt: control period (s).
    :param wheelbase_m: effective wheelbase (m) of the vehicle model (Lite: 5 m).
    :param max_steer_rad: the wheel angle (rad) at steer = 1 (Lite: 0.5).
    :param cruise_fraction: cruise at this fraction of the target speed.
    """

    def __init__(
        self,
        target_speed_ms: float = 8.0,
        dt: float = 0.05,
        wheelbase_m: float = 5.0,
        max_steer_rad: float = 0.5,
        cruise_fraction: float = 1.0,
        lookahead_gain: float = 0.4,
        lookahead_min_m: float = 3.0,
        lookahead_max_m: float = 20.0,
        time_gap_s: float = 1.5,
        standstill_m: float = 5.0,
        gap_gain: float = 0.4,
        speed_pid: PID | None = None,
    ) -> None:
        if not target_speed_ms > 0 or not dt > 0 or not wheelbase_m > 0 or not max_steer_rad > 0:
            raise ValueError("target_speed_ms, dt, wheelbase_m and max_steer_rad must be > 0")
        self.target_speed_ms = float(target_speed_ms)
        self.dt = float(dt)
        self.wheelbase_m = float(wheelbase_m)
        self.max_steer_rad = float(max_steer_rad)
        self.cruise_fraction = float(cruise_fraction)
        self.lookahead_gain = float(lookahead_gain)
        self.lookahead_min_m = float(lookahead_min_m)
        self.lookahead_max_m = float(lookahead_max_m)
        self.time_gap_s = float(time_gap_s)
        self.standstill_m = float(standstill_m)
        self.gap_gain = float(gap_gain)
        self.speed_pid = speed_pid or PID(kp=0.5, ki=0.2, kd=0.0)

    @classmethod
    def from_env(cls, env: gym.Env, **kwargs: Any) -> PIDPurePursuit:
        """A controller for an env: target speed, control period (the env's ``dt`` x ``action_repeat``: one
        ``step()``) and (for Lite) steering geometry read from the env.

        :param env: a driving env, possibly wrapped.
        :param kwargs: overrides of the constructor's arguments.
        """
        base = env.unwrapped
        config = getattr(base, "config", None)
        backend = getattr(base, "backend", None)
        settings: dict[str, Any] = {}
        if config is not None:
            settings["target_speed_ms"] = config.target_speed_ms
            settings["dt"] = config.dt * getattr(config, "action_repeat", 1)
        if backend is not None and hasattr(backend, "max_steer_rad"):
            settings["max_steer_rad"] = backend.max_steer_rad
        settings.update(kwargs)
        return cls(**settings)

    def reset(self) -> None:
        """Reset the controller state at an episode start."""
        self.speed_pid.reset()

    def act(self, observation: dict[str, np.ndarray], info: dict[str, Any] | None = None) -> np.ndarray:
        """The action for one observation.

        :param observation: the env's Dict observation (only ``vector`` is used).
        :param info: the env's last info; ``info["backend"]["lead_distance_m"/"lead_speed_ms"]`` are used if present.
        :return: ``(2,)`` float32 action ``[steer, throttle_brake]`` in [-1, 1].
        """
        vector = np.asarray(observation["vector"], dtype=np.float64)
        speed = float(vector[0]) * self.target_speed_ms
        points = vector[_N_HEAD:].reshape(-1, 2) * ROUTE_POINT_SCALE_M
        steer = self._steer(points, speed)
        setpoint = self.cruise_fraction * self.target_speed_ms
        backend = (info or {}).get("backend", {}) or {}
        gap, lead_speed = backend.get("lead_distance_m"), backend.get("lead_speed_ms")
        if gap is not None and lead_speed is not None:
            acc_speed = float(lead_speed) + self.gap_gain * (float(gap) - self.standstill_m - self.time_gap_s * speed)
            setpoint = float(np.clip(acc_speed, 0.0, setpoint))
        throttle_brake = self.speed_pid(setpoint - speed, self.dt)
        if gap is not None and float(gap) < 0.5 * self.standstill_m:
            throttle_brake = -1.0
        return np.clip(np.array([steer, throttle_brake], dtype=np.float32), -1.0, 1.0)

    def predict(
        self,
        observation: dict[str, np.ndarray],
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, None]:
        """SB3-style ``predict`` (no leader information; use :meth:`act` with the info for ACC).

        :param observation: the env's Dict observation.
        :return: the action and None (no recurrent state).
        """
        return self.act(observation), None

    def _steer(self, points: np.ndarray, speed: float) -> float:
        lookahead = float(
            np.clip(self.lookahead_gain * speed + self.lookahead_min_m, self.lookahead_min_m, self.lookahead_max_m)
        )
        target = points[-1]
        prev = np.zeros(2)
        for p in points:
            if np.hypot(*p) >= lookahead:
                # Interpolate between prev and p to the point at distance `lookahead` from the ego.
                d = p - prev
                a, b, c = d @ d, 2 * prev @ d, prev @ prev - lookahead**2
                disc = max(b * b - 4 * a * c, 0.0)
                t = (-b + math.sqrt(disc)) / (2 * a) if a > 0 else 1.0
                target = prev + float(np.clip(t, 0.0, 1.0)) * d
                break
            prev = p
        dist = max(float(np.hypot(*target)), 1e-3)
        alpha = math.atan2(float(target[1]), float(target[0]))
        curvature = 2.0 * math.sin(alpha) / dist
        return math.atan(self.wheelbase_m * curvature) / self.max_steer_rad
