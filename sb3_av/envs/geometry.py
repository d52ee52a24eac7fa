"""Rectangle geometry shared by the backends: a vehicle's footprint as ``[x, y, heading, length, width]`` (m, rad)
and the exact distance between two footprints (``info["backend"]["clearance_m"]`` of Lite and CARLA)."""

from __future__ import annotations

import numpy as np

__all__ = ["box_corners", "box_distances"]


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """Corners ``(N, 4, 2)``, counter-clockwise, of rectangles ``(N, 5)`` = ``[x, y, heading, length, width]``."""
    boxes = np.asarray(boxes, dtype=float).reshape(-1, 5)
    half = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]], dtype=float) / 2  # (forward, left) signs, CCW
    local = half[None] * boxes[:, None, 3:5]  # (N, 4, 2) in each box's frame
    cos, sin = np.cos(boxes[:, 2])[:, None], np.sin(boxes[:, 2])[:, None]
    x = boxes[:, None, 0] + cos * local[..., 0] - sin * local[..., 1]
    y = boxes[:, None, 1] + sin * local[..., 0] + cos * local[..., 1]
    return np.stack([x, y], axis=-1)


def _point_segment_distances(points: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Distances ``(N, P, S)`` from points ``(N, P, 2)`` to the segments ``starts`` -> ``ends`` (each ``(N, S, 2)``)."""
    edge = ends - starts  # (N, S, 2)
    rel = points[:, :, None, :] - starts[:, None, :, :]  # (N, P, S, 2)
    t = np.clip(np.sum(rel * edge[:, None], axis=-1) / np.sum(edge * edge, axis=-1)[:, None], 0.0, 1.0)
    return np.hypot(*np.moveaxis(rel - t[..., None] * edge[:, None], -1, 0))


_NEXT_CORNER = np.array([1, 2, 3, 0])  # each corner's edge ends at the next corner


def box_distances(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Euclidean distance (m) between rectangle ``box`` ``[x, y, heading, length, width]`` and each of ``boxes``
    ``(N, 5)``: 0 where they overlap (separating-axis test on the four edge normals), else the smallest distance
    from a corner of one to an edge of the other (exact for two convex polygons that do not overlap)."""
    boxes = np.asarray(boxes, dtype=float).reshape(-1, 5)
    own = np.broadcast_to(box_corners(box), (len(boxes), 4, 2))
    other = box_corners(boxes)
    # the separating axes: a rectangle's two edge directions are the normals of its other two edges
    axes = np.concatenate([own[:, 1:3] - own[:, 0:2], other[:, 1:3] - other[:, 0:2]], axis=1)
    proj_own = (axes[:, :, None, :] * own[:, None, :, :]).sum(-1)  # (N, 4 axes, 4 corners)
    proj_other = (axes[:, :, None, :] * other[:, None, :, :]).sum(-1)
    separated = (proj_own.max(-1) < proj_other.min(-1)) | (proj_other.max(-1) < proj_own.min(-1))
    overlap = ~separated.any(axis=1)
    to_own = _point_segment_distances(other, own, own[:, _NEXT_CORNER]).min(axis=(1, 2))
    to_other = _point_segment_distances(own, other, other[:, _NEXT_CORNER]).min(axis=(1, 2))
    return np.where(overlap, 0.0, np.minimum(to_own, to_other))
