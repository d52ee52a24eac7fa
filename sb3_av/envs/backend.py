"""The interface between :class:`~sb3_av.envs.core.DrivingEnv` and a simulator backend.

A backend (CARLA, or the embedded highway-env simulator) only moves the world and reports what it sees
in a :class:`Frame`; every rule of the env contract (observation, reward terms, termination, info keys)
lives in ``DrivingEnv`` so that both backends obey the same contract by construction.

Geometry convention: world coordinates in metres, yaw in radians, counter-clockwise positive, measured
from the world x axis (a right-handed x/y plane seen from above). A backend whose simulator is
left-handed (CARLA, Unreal: y points right, yaw clockwise) converts to this convention before filling a
:class:`Frame` or a :class:`RouteSpec`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

import numpy as np

__all__ = ["DrivingBackend", "Frame", "RouteSpec"]


@dataclass(frozen=True)
class RouteSpec:
    """The route the ego vehicle must follow, fixed for one episode.

    :param points: ``(N, 2)`` float64 polyline of lane-centre points in world coordinates (m), in driving
        order, N >= 2, consecutive points distinct. Its arc length is the route length.
    :param half_lane_width_m: half the width of the driving lane (m), used to normalise lateral offset.
    """

    points: np.ndarray
    half_lane_width_m: float


@dataclass(frozen=True)
class Frame:
    """What a backend observed after one simulation step (or right after reset).

    :param image: ``(H, W)`` uint8 grayscale camera image, H = W = the env's ``camera_size`` (84).
    :param x: ego position x (m), world frame.
    :param y: ego position y (m), world frame.
    :param yaw: ego heading (rad), world frame, counter-clockwise from the x axis.
    :param speed_ms: ego forward speed (m/s), >= 0.
    :param sim_time_s: simulation time since the episode started (s).
    :param collision: a collision happened since the previous frame (any other actor or static object).
    :param on_driving_lane: False when the ego is on a non-driving surface (sidewalk, shoulder, off-map).
    :param extra: backend-specific diagnostics copied to ``info["backend"]`` (never used for rewards).
    """

    image: np.ndarray
    x: float
    y: float
    yaw: float
    speed_ms: float
    sim_time_s: float
    collision: bool = False
    on_driving_lane: bool = True
    extra: dict = field(default_factory=dict)


class DrivingBackend(abc.ABC):
    """A simulator that a :class:`~sb3_av.envs.core.DrivingEnv` drives, one instance per env.

    Contract:

    - :meth:`reset` starts a new episode (new NPCs, ego at the route start) and returns the first frame;
      :attr:`route` is valid after it.
    - :meth:`step` applies one control for exactly one simulation step of :attr:`dt` seconds.
    - :meth:`close` releases everything the backend created; it is idempotent and safe after a failed reset.
    - Errors a user can cause or meet (server unreachable, bad setting) are raised as exceptions with a
      message that says what to do; the env never sees a half-built world.
    """

    #: Simulation step (s).
    dt: float = 0.05

    @property
    @abc.abstractmethod
    def route(self) -> RouteSpec:
        """The current episode's route (valid after :meth:`reset`)."""

    @abc.abstractmethod
    def reset(self, seed: int | None = None) -> Frame:
        """Start a new episode and return its first frame.

        :param seed: seeds the episode's randomness (NPC placement and behaviour) when given.
        """

    @abc.abstractmethod
    def step(self, steer: float, throttle: float, brake: float) -> Frame:
        """Apply one control for one simulation step and return the resulting frame.

        :param steer: steering in [-1, 1], positive turns left (counter-clockwise), backends convert.
        :param throttle: throttle in [0, 1].
        :param brake: brake in [0, 1].
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release every resource this backend created (idempotent)."""
