"""Sensor data matched to the ticked frame id, and the camera image conversion.

CARLA delivers sensor data on its own threads. Taking "the latest callback" mixes frames; instead each
sensor pushes into a :class:`FrameQueue` and the backend asks for the data of the frame ``world.tick``
returned, waiting a bounded time and dropping anything older.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

import numpy as np

from sb3_av.envs.carla.errors import CarlaSensorTimeout

__all__ = ["EventQueue", "FrameQueue", "bgra_to_gray", "bgra_to_rgb"]

# ITU-R BT.601 luma weights, as OpenCV's BGR2GRAY uses.
_LUMA_BGR = np.array([0.114, 0.587, 0.299], dtype=np.float32)


def bgra_to_gray(raw: bytes | bytearray | memoryview | np.ndarray, width: int, height: int, size: int) -> np.ndarray:
    """Convert a CARLA ``Image.raw_data`` (32-bit BGRA, row-major) to a grayscale ``(size, size)`` uint8 image.

    :param raw: ``height * width * 4`` bytes.
    :param width: image width (pixels).
    :param height: image height (pixels).
    :param size: output height = width (pixels); a different input size is resampled (nearest pixel).
    :return: ``(size, size)`` uint8.
    :raises ValueError: the buffer does not hold ``height * width * 4`` bytes.
    """
    buf = np.frombuffer(raw, dtype=np.uint8) if not isinstance(raw, np.ndarray) else raw.reshape(-1).astype(np.uint8)
    if buf.size != width * height * 4:
        raise ValueError(f"A {width}x{height} BGRA image needs {width * height * 4} bytes, got {buf.size}")
    bgr = buf.reshape(height, width, 4)[:, :, :3]
    if (height, width) != (size, size):
        rows = (np.arange(size) * height) // size
        cols = (np.arange(size) * width) // size
        bgr = bgr[rows][:, cols]
    gray = bgr.astype(np.float32) @ _LUMA_BGR
    return np.clip(np.rint(gray), 0, 255).astype(np.uint8)


def bgra_to_rgb(raw: bytes | bytearray | memoryview | np.ndarray, width: int, height: int) -> np.ndarray:
    """Convert a CARLA ``Image.raw_data`` (32-bit BGRA, row-major) to an RGB ``(height, width, 3)`` uint8 image.

    :param raw: ``height * width * 4`` bytes.
    :param width: image width (pixels).
    :param height: image height (pixels).
    :return: ``(height, width, 3)`` uint8, a copy (the client may reuse the buffer).
    :raises ValueError: the buffer does not hold ``height * width * 4`` bytes.
    """
    buf = np.frombuffer(raw, dtype=np.uint8) if not isinstance(raw, np.ndarray) else raw.reshape(-1).astype(np.uint8)
    if buf.size != width * height * 4:
        raise ValueError(f"A {width}x{height} BGRA image needs {width * height * 4} bytes, got {buf.size}")
    return np.ascontiguousarray(buf.reshape(height, width, 4)[:, :, 2::-1])


class FrameQueue:
    """One sensor's data, matched to a frame id.

    Holds at most ``maxlen`` items; when more arrive (the world was ticked by someone else while this env
    waited) the oldest are dropped, which are the stale ones.

    :param name: sensor name for messages.
    :param maxlen: the most items kept.
    """

    def __init__(self, name: str, maxlen: int = 64) -> None:
        self.name = name
        self._items: deque[Any] = deque(maxlen=maxlen)
        self._cond = threading.Condition()
        self.stale_dropped = 0

    def put(self, data: Any) -> None:
        """The sensor callback (``sensor.listen(q.put)``); ``data`` has a ``frame`` attribute."""
        with self._cond:
            if len(self._items) == self._items.maxlen:
                self.stale_dropped += 1
            self._items.append(data)
            self._cond.notify()

    def get(self, frame: int, timeout_s: float) -> Any:
        """The data of ``frame``; older data is dropped, newer data kept (data may arrive out of order), a bounded wait.

        :param frame: the frame id ``world.tick`` returned.
        :param timeout_s: the longest wait (s).
        :raises CarlaSensorTimeout: nothing for ``frame`` within ``timeout_s`` (if newer frames came, the data of
            ``frame`` was lost).
        """
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                newer = []
                found = None
                while self._items:
                    data = self._items.popleft()
                    if data.frame == frame and found is None:
                        found = data
                    elif data.frame <= frame:
                        self.stale_dropped += 1
                    else:
                        newer.append(data)
                self._items.extend(newer)
                if found is not None:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if newer:
                        raise CarlaSensorTimeout(
                            f"The {self.name} data of frame {frame} was lost (got frame {newer[0].frame}); "
                            "another client may be ticking this world"
                        )
                    raise CarlaSensorTimeout(
                        f"No {self.name} data for frame {frame} within {timeout_s:.1f} s (sensor_timeout_s); "
                        "the CARLA server is hung or overloaded"
                    )
                self._cond.wait(remaining)

    def clear(self) -> int:
        """Drop everything queued; return how many items were dropped."""
        with self._cond:
            n = len(self._items)
            self._items.clear()
        return n


class EventQueue:
    """Events (collision, lane invasion) collected up to a frame id.

    Events of later frames stay queued for the next step; an event that arrives after its frame was
    collected is counted with the next step (at most one step late, never lost).

    :param name: sensor name for messages.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._events: list[Any] = []

    def put(self, event: Any) -> None:
        """The sensor callback; ``event`` has a ``frame`` attribute."""
        with self._lock:
            self._events.append(event)

    def take(self, frame: int) -> list[Any]:
        """Remove and return the events of frames ``<= frame``.

        :param frame: the ticked frame id.
        """
        with self._lock:
            taken = [e for e in self._events if e.frame <= frame]
            self._events = [e for e in self._events if e.frame > frame]
        return taken

    def clear(self) -> None:
        """Drop every queued event."""
        with self._lock:
            self._events = []
