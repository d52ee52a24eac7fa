"""Route geometry shared by every backend: arc-length projection, lateral offset, heading error, look-ahead.

All quantities use the right-handed world convention of :mod:`sb3_av.envs.backend` (metres, radians,
yaw counter-clockwise from the x axis). Lateral offsets are positive to the left of the route.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Projection", "Route", "wrap_angle"]


def wrap_angle(angle: float) -> float:
    """Wrap an angle to [-pi, pi): highway-env's ``utils.wrap_to_pi`` (1.12.1), the package's one angle wrapper,
    kept here so that CARLA runs need no highway-env (tests/test_lite.py checks it against upstream).

    :param angle: angle (rad).
    """
    return (angle + math.pi) % (2.0 * math.pi) - math.pi


@dataclass(frozen=True)
class Projection:
    """A point projected on the route.

    :param s: arc length (m) of the closest route point, in [0, route length].
    :param lateral: signed distance (m) from the route, positive to the left of the driving direction.
    :param tangent_yaw: heading (rad) of the route at ``s``.
    """

    s: float
    lateral: float
    tangent_yaw: float


class Route:
    """A polyline route with arc-length parametrisation.

    :param points: ``(N, 2)`` lane-centre points (m), N >= 2, in driving order.
    :param half_lane_width_m: half the lane width (m), > 0.
    :raises ValueError: fewer than 2 points, non-finite values, or repeated consecutive points.
    """

    def __init__(self, points: np.ndarray, half_lane_width_m: float) -> None:
        pts = np.asarray(points, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[0] < 2 or pts.shape[1] != 2:
            raise ValueError(f"A route needs an (N, 2) array of points with N >= 2, got shape {pts.shape}")
        if not np.all(np.isfinite(pts)):
            raise ValueError("Route points must be finite")
        if not half_lane_width_m > 0:
            raise ValueError(f"half_lane_width_m must be > 0, got {half_lane_width_m}")
        seg = np.diff(pts, axis=0)
        seg_len = np.hypot(seg[:, 0], seg[:, 1])
        if np.any(seg_len <= 1e-9):
            raise ValueError("Route points must be distinct: two consecutive points coincide")
        self.points = pts
        self.half_lane_width_m = float(half_lane_width_m)
        self._start = pts[:-1]
        self._seg = seg
        self._seg_len = seg_len
        self._unit = seg / seg_len[:, None]
        self._seg_yaw = np.arctan2(seg[:, 1], seg[:, 0])
        self._cum = np.concatenate(([0.0], np.cumsum(seg_len)))
        self.length_m = float(self._cum[-1])

    def project(
        self, x: float, y: float, s_hint: float | None = None, window_m: tuple[float, float] = (-10.0, 30.0)
    ) -> Projection:
        """Project a point on the route.

        With ``s_hint`` only the segments whose arc length lies in ``[s_hint + window[0], s_hint + window[1]]``
        are searched, so a route that comes back near itself cannot make progress jump (no shortcuts).

        :param x: point x (m).
        :param y: point y (m).
        :param s_hint: the previous arc length (m), or None to search the whole route.
        :param window_m: search window (m) around ``s_hint``.
        """
        if s_hint is None:
            lo, hi = 0, len(self._seg)
        else:
            lo = max(int(np.searchsorted(self._cum, s_hint + window_m[0], side="right")) - 1, 0)
            hi = min(int(np.searchsorted(self._cum, s_hint + window_m[1], side="left")) + 1, len(self._seg))
            hi = max(hi, lo + 1)
        start = self._start[lo:hi]
        unit = self._unit[lo:hi]
        seg_len = self._seg_len[lo:hi]
        dx = x - start[:, 0]
        dy = y - start[:, 1]
        t = np.clip(dx * unit[:, 0] + dy * unit[:, 1], 0.0, seg_len)
        ex = dx - t * unit[:, 0]
        ey = dy - t * unit[:, 1]
        i = int(np.argmin(ex * ex + ey * ey))
        lateral = float(unit[i, 0] * dy[i] - unit[i, 1] * dx[i])
        return Projection(s=float(self._cum[lo + i] + t[i]), lateral=lateral, tangent_yaw=float(self._seg_yaw[lo + i]))

    def position_at(self, s: np.ndarray) -> np.ndarray:
        """Route points at given arc lengths; values beyond the ends are clamped (the last point repeats).

        :param s: ``(K,)`` arc lengths (m).
        :return: ``(K, 2)`` world positions (m).
        """
        s = np.clip(np.asarray(s, dtype=np.float64), 0.0, self.length_m)
        i = np.clip(np.searchsorted(self._cum, s, side="right") - 1, 0, len(self._seg) - 1)
        t = s - self._cum[i]
        return self._start[i] + t[:, None] * self._unit[i]

    def lookahead_ego(self, x: float, y: float, yaw: float, s: float, n_points: int, spacing_m: float) -> np.ndarray:
        """The next route points in the ego frame (x forward, y left).

        :param x: ego x (m).
        :param y: ego y (m).
        :param yaw: ego heading (rad).
        :param s: ego arc length on the route (m).
        :param n_points: number of points K.
        :param spacing_m: arc-length spacing (m); point k (1-based) is at ``s + k * spacing_m``.
        :return: ``(K, 2)`` points (m) in the ego frame; points past the route end repeat the last point.
        """
        world = self.position_at(s + spacing_m * np.arange(1, n_points + 1))
        dx = world[:, 0] - x
        dy = world[:, 1] - y
        c, sn = math.cos(yaw), math.sin(yaw)
        return np.stack((c * dx + sn * dy, -sn * dx + c * dy), axis=1)
