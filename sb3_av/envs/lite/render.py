"""An ego-centred, heading-up, grayscale top-down camera for the embedded road, rendered offscreen with pygame.

The static road (surface, dashed lane lines, edges) is drawn once into a world-sized surface; each frame
blits the patch around the ego, rotates it heading-up and draws the vehicles on top (a few hundred
microseconds for an 84x84 image).
"""

from __future__ import annotations

import math
import os

import numpy as np

from sb3_av.envs.lite.road import LiteRoad

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
# Plain Surfaces need no display; "offscreen" keeps SDL from opening one. ("dummy" yields black display frames.)
os.environ.setdefault("SDL_VIDEODRIVER", "offscreen")
import pygame

__all__ = ["GRAY_EGO", "GRAY_LANE_LINE", "GRAY_NPC", "GRAY_OFF_ROAD", "GRAY_ROAD", "TopDownCamera"]

GRAY_OFF_ROAD = 0
GRAY_ROAD = 90
GRAY_LANE_LINE = 200
GRAY_NPC = 255
GRAY_EGO = 150
_DASH_M, _GAP_M = 3.0, 6.0
_MARGIN_M = 30.0


def _gray(value: int) -> tuple[int, int, int]:
    return (value, value, value)


class TopDownCamera:
    """Renders ``(size, size)`` uint8 grayscale images of the road around the ego.

    :param road: the road to draw.
    :param size: image height = width (pixels).
    :param pixels_per_m: scale (pixels per metre).
    :param ego_row_fraction: the ego's row as a fraction of the image height (0.75: it sees 3x further ahead than behind).
    """

    def __init__(self, road: LiteRoad, size: int = 84, pixels_per_m: float = 2.0, ego_row_fraction: float = 0.75) -> None:
        self.size = int(size)
        self.ppm = float(pixels_per_m)
        self.ego_ahead_m = (ego_row_fraction - 0.5) * self.size / self.ppm
        self._patch = math.ceil(self.size * math.sqrt(2.0)) + 4
        self._scratch = pygame.Surface((self._patch, self._patch))
        self._canvas = pygame.Surface((self.size, self.size))
        self._bg, self._origin = self._draw_background(road)

    # ------------------------------------------------------------------ static background
    def _to_px(self, pts: np.ndarray, origin: tuple[float, float]) -> list[tuple[float, float]]:
        xmin, ymax = origin
        return [((x - xmin) * self.ppm, (ymax - y) * self.ppm) for x, y in pts]

    def _draw_background(self, road: LiteRoad) -> tuple[pygame.Surface, tuple[float, float]]:
        half_w = road.lane_width_m / 2
        edges_left = [self._chain_line(road, 0, +half_w)]
        edges_right = [self._chain_line(road, road.n_lanes - 1, -half_w)]
        all_pts = np.concatenate(edges_left + edges_right)
        xmin, ymin = all_pts.min(axis=0) - _MARGIN_M
        xmax, ymax = all_pts.max(axis=0) + _MARGIN_M
        origin = (float(xmin), float(ymax))
        surf = pygame.Surface((int((xmax - xmin) * self.ppm) + 1, int((ymax - ymin) * self.ppm) + 1))
        surf.fill(_gray(GRAY_OFF_ROAD))
        # Road surface: one quad strip between the outer edges, drawn piecewise so each polygon is convex.
        left, right = edges_left[0], edges_right[0]
        for k in range(len(left) - 1):
            quad = np.array([left[k], left[k + 1], right[k + 1], right[k]])
            pygame.draw.polygon(surf, _gray(GRAY_ROAD), self._to_px(quad, origin))
        # Lane separators dashed, road edges solid.
        for i in range(1, road.n_lanes):
            line = self._chain_line(road, i, +half_w)
            s = np.concatenate(([0.0], np.cumsum(np.hypot(*np.diff(line, axis=0).T))))
            on = (s % (_DASH_M + _GAP_M)) < _DASH_M
            for k in range(len(line) - 1):
                if on[k]:
                    start, end = self._to_px(line[k : k + 2], origin)
                    pygame.draw.line(surf, _gray(GRAY_LANE_LINE), start, end, 1)
        for edge in (left, right):
            pygame.draw.lines(surf, _gray(GRAY_LANE_LINE), False, self._to_px(edge, origin), 1)
        return surf, origin

    @staticmethod
    def _chain_line(road: LiteRoad, chain: int, lateral: float, step_m: float = 0.5) -> np.ndarray:
        s_values = np.arange(0.0, road.chain_lengths[chain] + step_m, step_m)
        return np.array([road.position(chain, min(s, road.chain_lengths[chain]), lateral)[0] for s in s_values])

    # ------------------------------------------------------------------ per frame
    def render(self, x: float, y: float, yaw: float, boxes: np.ndarray, ego_box: tuple[float, float]) -> np.ndarray:
        """Render one frame.

        :param x: ego x (m).
        :param y: ego y (m).
        :param yaw: ego heading (rad, counter-clockwise).
        :param boxes: ``(M, 5)`` other vehicles ``[x, y, yaw, length, width]`` (m, rad); those out of view are skipped.
        :param ego_box: ego ``(length, width)`` (m).
        :return: ``(size, size)`` uint8 image, the ego's heading pointing up.
        """
        c, s = math.cos(yaw), math.sin(yaw)
        cx, cy = x + self.ego_ahead_m * c, y + self.ego_ahead_m * s  # view centre (world)
        xmin, ymax = self._origin
        half = self._patch / 2
        self._scratch.fill(_gray(GRAY_OFF_ROAD))
        self._scratch.blit(
            self._bg,
            (0, 0),
            pygame.Rect(int((cx - xmin) * self.ppm - half), int((ymax - cy) * self.ppm - half), self._patch, self._patch),
        )
        rotated = pygame.transform.rotate(self._scratch, 90.0 - math.degrees(yaw))
        rw, rh = rotated.get_size()
        self._canvas.blit(rotated, (0, 0), pygame.Rect((rw - self.size) // 2, (rh - self.size) // 2, self.size, self.size))
        centre = self.size / 2
        reach = self.size / self.ppm  # metres: anything farther from the view centre is out of view
        if len(boxes):
            dx = boxes[:, 0] - cx
            dy = boxes[:, 1] - cy
            near = np.flatnonzero(np.abs(dx) + np.abs(dy) < reach * 1.5)
            for j in near:
                self._draw_box(dx[j], dy[j], boxes[j, 2], boxes[j, 3], boxes[j, 4], c, s, centre, GRAY_NPC)
        self._draw_box(x - cx, y - cy, yaw, ego_box[0], ego_box[1], c, s, centre, GRAY_EGO)
        return pygame.surfarray.array_red(self._canvas).T.copy()

    def _draw_box(
        self, dx: float, dy: float, heading: float, length: float, width: float, c: float, s: float, centre: float, gray: int
    ) -> None:
        # Corners in the world relative to the view centre, then in the ego frame (forward, left), then pixels.
        hc, hs = math.cos(heading), math.sin(heading)
        corners = []
        for lon, lat in (
            (length / 2, width / 2),
            (length / 2, -width / 2),
            (-length / 2, -width / 2),
            (-length / 2, width / 2),
        ):
            wx = dx + lon * hc - lat * hs
            wy = dy + lon * hs + lat * hc
            fwd = c * wx + s * wy
            left = -s * wx + c * wy
            corners.append((centre - left * self.ppm, centre - fwd * self.ppm))
        pygame.draw.polygon(self._canvas, _gray(gray), corners)
