"""One CARLA client per process: each env's :class:`CarlaBackend` lives in a worker process of its own.

LibCarla 0.9.16 keeps one Traffic Manager per port per *process* (``trafficmanager/TrafficManager.cpp``,
``TrafficManager::_tm_map``), steps every one of them on any client's ``world.tick()`` or
``apply_settings()`` (``client/detail/Simulator.cpp``, ``SynchronizeFrame``), and when a TM's server is gone
its thread's RPC throws inside a ``std::thread`` and the process aborts (SIGABRT; no ``except`` or ``finally``
runs). So every CARLA env, training or eval, whatever the VecEnv, keeps its client, world, TM and sensors in
a worker process of its own, and :class:`WorkerBackend` in the env's process talks to it:

- the worker is a fresh interpreter (nothing is forked from a process with torch or CARLA threads) that loads
  only the CARLA backend's modules, not the ``sb3_av`` package with torch (see :data:`_BOOTSTRAP`): it starts in
  about half a second and holds no torch memory; it runs in a session of its own, so a Ctrl-C reaches only the
  trainer, which closes its envs, and it cleans up and exits when the env's process is gone;
- requests and the frame's numbers go through a socket pair, the camera image through a shared memory map
  (one ``camera_size``² uint8 frame per step; the frame stack is built in the env), followed there by the chase
  camera's RGB image when ``chase_camera_size`` is on (:func:`_shared_images` lays the map out for both sides);
- a worker that dies (abort, segfault, SIGKILL) is seen at once (its end of the pipe closes); one that stays
  silent longer than ``worker_timeout_s`` (phases that may take longer, a town load or reconnect attempts,
  announce their own bound) counts as hung and is killed;
- either way, or when the worker reports the server lost (its in-process recovery gave up, or the server
  restarted), the episode is truncated (``episode_restarted``, so ``termination = "backend_restarted"``) and a
  fresh worker reconnects, waiting up to ``server_wait_s`` for the server to come back; only past that budget
  does the env raise :class:`~sb3_av.envs.carla.errors.CarlaConnectionError` (and the trainer checkpoints);
- a hang on a live server keeps the cheap recovery inside the worker (:meth:`CarlaBackend.step`).

Tests point the worker at a stand-in client module with ``SB3_AV_CARLA_CLIENT_MODULE`` (a module with a
``CARLA_API`` object standing for ``carla``); unset, the worker imports the real ``carla``.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import replace
import mmap
import tempfile
import weakref
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from sb3_av.envs.backend import DrivingBackend, Frame, RouteSpec
from sb3_av.envs.carla import errors
from sb3_av.envs.carla.config import CarlaConfig
from sb3_av.envs.carla.errors import CarlaConnectionError

__all__ = ["CLIENT_MODULE_ENV", "WorkerBackend", "import_client_module"]

logger = logging.getLogger(__name__)

#: Names a module to use instead of ``carla`` in the worker (tests only): it must define ``CARLA_API``.
CLIENT_MODULE_ENV = "SB3_AV_CARLA_CLIENT_MODULE"

_START_S = 30.0  # a new interpreter's start and imports, on a loaded machine
_CLOSE_WAIT_S = 20.0  # the worker's close: destroy the actors, restore the settings, shut the TM down (2 s RPC limit each)
_RESET_WORKER_LOSSES = 3  # reset() gives up after losing this many workers in a row
_EXIT_LOST = 3  # the worker's exit status after reporting a lost server
_EXIT_STARTUP = 4  # ... after failing to start (no server within its budget, a bad setting)

#: The worker's interpreter runs this: ``sb3_av`` is entered as a bare namespace over its folder, so that only the
#: modules the CARLA backend imports are loaded (``sb3_av/__init__`` would import torch and the algorithms, ~1 s and
#: hundreds of MB per worker), then :func:`main` reads its settings from the socket on fd ``argv[2]``.
_BOOTSTRAP = (
    "import sys, types, pickle\n"
    "pkg = types.ModuleType('sb3_av'); pkg.__path__ = [sys.argv[1]]; sys.modules['sb3_av'] = pkg\n"
    "from sb3_av.envs.carla.worker import main\n"
    "main(int(sys.argv[2]), pickle.loads(bytes.fromhex(sys.argv[3])))\n"
)


def import_client_module() -> tuple[Any, Any]:
    """The ``carla`` module (or the stand-in named by ``SB3_AV_CARLA_CLIENT_MODULE``) and its client class."""
    name = os.environ.get(CLIENT_MODULE_ENV)
    if not name:
        from sb3_av.envs.carla.backend import import_carla

        carla = import_carla()
        return carla, carla.Client
    api = importlib.import_module(name).CARLA_API
    logger.info("The CARLA worker uses the client stand-in %s (%s)", name, CLIENT_MODULE_ENV)
    return api, api.Client


class _WorkerLost(Exception):
    """The worker died, hung, or reported its server lost."""


def _rebuild(name: str, text: str, host: str, port: int) -> BaseException:
    """The worker's exception, raised again in this process (the message already says what to do)."""
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, CarlaConnectionError):
        exc = cls.__new__(cls)
        Exception.__init__(exc, text)
        exc.host, exc.port = host, port
        return exc
    if isinstance(cls, type) and issubclass(cls, errors.CarlaError):
        return cls(text)
    builtin = {"ValueError": ValueError, "RuntimeError": RuntimeError, "TypeError": TypeError, "KeyError": KeyError}
    return builtin.get(name, RuntimeError)(text if name in builtin else f"{name}: {text}")


class WorkerBackend(DrivingBackend):
    """The :class:`~sb3_av.envs.carla.backend.CarlaBackend` of one env, run in a worker process of its own.

    Adds to each frame's ``extra`` (the env's ``info["backend"]``): ``restarts`` (episodes ended by a lost server
    or worker, recovered in the worker or by a new one), ``workers_started`` and ``worker_ms`` (the worker's own
    time for the request; the rest of a step's time is the hand-over to this process).

    :param config: the backend settings (``worker_timeout_s``, ``server_wait_s`` govern the worker).
    :raises CarlaConnectionError: no server answered within ``connect_timeout_s`` (the first connect fails fast).
    """

    def __init__(self, config: CarlaConfig) -> None:
        self.config = config
        self.dt = config.dt
        self.uid = uuid.uuid4().hex[:12]
        self.host, self.port, _ = config.candidates()[0]
        self.restarts = 0  # episodes ended by a lost server or worker, over the env's life
        self.workers_started = 0
        self.worker_start_s: list[float] = []  # seconds from start() to "ready", per worker
        self._route: RouteSpec | None = None
        self._last: Frame | None = None
        self._episode_ready = False
        self._closed = False
        self._proc: Any = None
        self._conn: Connection | None = None
        self.info: dict[str, Any] = {}
        self._chase_image: np.ndarray | None = None
        fd, self._shm_path = tempfile.mkstemp(prefix="sb3av-carla-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        self._unlink = weakref.finalize(self, _unlink, self._shm_path)  # also if the env is never closed
        nbytes = _shared_bytes(config)
        os.ftruncate(fd, nbytes)
        self._map = mmap.mmap(fd, nbytes)
        os.close(fd)
        self._image, self._chase_shared = _shared_images(self._map, config)
        try:
            self._start_worker(wait_s=0.0)
        except BaseException:
            self._release_memory()
            raise

    # ------------------------------------------------------------------ DrivingBackend API
    @property
    def route(self) -> RouteSpec:
        """The current episode's route (valid after :meth:`reset`)."""
        if self._route is None:
            raise RuntimeError("CarlaBackend.route is only valid after reset()")
        return self._route

    @property
    def chase_image(self) -> np.ndarray | None:
        """The chase camera's RGB image of the latest frame, ``(height, width, 3)`` uint8; None when
        ``chase_camera_size`` is off or before the first :meth:`reset`."""
        return self._chase_image

    @property
    def worker_pid(self) -> int | None:
        """The worker's process id (None while there is none)."""
        return self._proc.pid if self._proc is not None else None

    def reset(self, seed: int | None = None) -> Frame:
        """Start an episode in the worker; a lost worker is replaced (waiting up to ``server_wait_s``) and the reset retried.

        :param seed: the episode seed.
        :raises CarlaConnectionError: the server did not come back within ``server_wait_s``, or the worker was lost
            on every one of a few tries.
        """
        self._check_open()
        self._episode_ready = False
        cause: BaseException | None = None
        for _ in range(_RESET_WORKER_LOSSES):
            if self._proc is None:
                self._replace_worker(cause or RuntimeError("no worker"))
            try:
                frame = self._frame(self._request(("reset", seed)))
            except _WorkerLost as lost:
                cause = lost
                self._kill_worker()
                continue
            self._episode_ready = True
            return frame
        raise CarlaConnectionError(
            f"reset() lost its CARLA worker {_RESET_WORKER_LOSSES} times in a row on {self.host}:{self.port} "
            f"(last: {cause}); the server is unstable: restart it, then resume from the last checkpoint.",
            self.host,
            self.port,
        )

    def step(self, steer: float, throttle: float, brake: float) -> Frame:
        """One step in the worker; a lost worker ends the episode (``extra["episode_restarted"]``) and is replaced.

        :raises CarlaConnectionError: the server did not come back within ``server_wait_s``.
        """
        self._check_open()
        if not self._episode_ready:
            raise RuntimeError("CarlaBackend.step() called before reset()")
        try:
            reply = self._request(("step", float(steer), float(throttle), float(brake)))
        except _WorkerLost as lost:
            self._episode_ready = False
            self._kill_worker()
            self.restarts += 1
            self._replace_worker(lost)
            assert self._last is not None
            extra = {**self._last.extra, "episode_restarted": True, "restart_cause": str(lost)[:200]}
            return replace(self._last, extra={**extra, "restarts": self.restarts, "workers_started": self.workers_started})
        except BaseException:
            self._episode_ready = False
            raise
        return self._frame(reply)

    def close(self) -> None:
        """Close the worker's backend (actors, settings, TM) and end the worker; idempotent, bounded in time."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._proc is not None and self._proc.is_alive() and self._conn is not None:
                try:
                    self._conn.send(("close",))
                    self._wait(_CLOSE_WAIT_S)
                except (_WorkerLost, OSError) as exc:
                    logger.warning("The CARLA worker of %s:%d did not close cleanly: %s", self.host, self.port, exc)
            self._kill_worker(grace_s=2.0)
        finally:
            self._release_memory()

    # ------------------------------------------------------------------ worker management
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("This CarlaBackend is closed; make a new env")

    def _start_worker(self, wait_s: float) -> None:
        """Start a worker and wait until it is connected (``wait_s`` > 0: it retries until the server is back)."""
        ours, theirs = socket.socketpair()
        values = {f: getattr(self.config, f) for f in CarlaConfig.defaults()}
        settings = {"values": values, "uid": self.uid, "shm": self._shm_path, "wait_s": wait_s, "sys_path": sys.path}
        package_dir = str(Path(__file__).resolve().parents[2])
        t0 = time.monotonic()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", _BOOTSTRAP, package_dir, str(theirs.fileno()), pickle.dumps(settings).hex()],
                pass_fds=(theirs.fileno(),),
                start_new_session=True,  # Ctrl-C in the terminal reaches the trainer only
            )
        finally:
            theirs.close()
        self._proc, self._conn = _Process(proc), Connection(ours.detach())
        self.workers_started += 1
        try:
            reply = self._wait(_START_S + self.config.answer_timeout_s)
        except _WorkerLost:
            self._kill_worker()
            raise
        if reply[0] == "error":
            self._kill_worker()
            raise _rebuild(reply[1], reply[2], self.host, self.port)
        self.info = reply[1]  # address, tm_port, pid: the server this worker claimed (servers=[...]: the first free one)
        host, _, port = self.info["address"].rpartition(":")
        self.host, self.port = host, int(port)
        self.worker_start_s.append(time.monotonic() - t0)

    def _replace_worker(self, cause: BaseException) -> None:
        """Start fresh workers until one is connected, within ``server_wait_s``; else raise CarlaConnectionError."""
        wait = self.config.server_wait_s
        logger.warning(
            "CARLA worker for %s:%d lost (%s); starting a new one (waiting up to %.0f s for the server)",
            self.host,
            self.port,
            cause,
            wait,
        )
        deadline = time.monotonic() + wait
        last: BaseException = cause
        while True:
            try:
                self._start_worker(wait_s=max(deadline - time.monotonic(), 0.0))
                logger.warning("A new CARLA worker is connected to %s:%d", self.host, self.port)
                return
            except _WorkerLost as lost:  # died while connecting (e.g. the server went down again): try again in time
                last = lost
            except CarlaConnectionError as exc:  # the worker waited the whole budget
                last = exc
                deadline = time.monotonic()
            if time.monotonic() >= deadline:
                raise CarlaConnectionError(
                    f"Lost the CARLA server at {self.host}:{self.port} and a new client process waited "
                    f"{wait:g} s (server_wait_s) for it in vain (first error: {str(cause)[:200]}; last: "
                    f"{str(last).splitlines()[0][:200]}). Nothing written so far (checkpoints, logs) was touched; restart "
                    "the server (e.g. docker --restart unless-stopped) and resume from the last checkpoint.",
                    self.host,
                    self.port,
                ) from None

    def _request(self, message: tuple) -> tuple:
        """Send a request and wait for its answer (``frame``); raise what the worker raised."""
        assert self._conn is not None
        try:
            self._conn.send(message)
        except OSError:
            raise self._died() from None
        reply = self._wait(self.config.answer_timeout_s)
        if reply[0] == "error":
            raise _rebuild(reply[1], reply[2], self.host, self.port)
        return reply

    def _wait(self, timeout_s: float) -> tuple:
        """The worker's next answer; ``progress`` messages restart the clock with their own bound."""
        assert self._conn is not None and self._proc is not None
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _WorkerLost(f"the worker (pid {self._proc.pid}) did not answer within {timeout_s:g} s")
            if self._conn.poll(min(remaining, 1.0)):
                try:
                    reply = self._conn.recv()
                except (EOFError, OSError):
                    raise self._died() from None
                if reply[0] == "progress":
                    deadline = time.monotonic() + max(float(reply[1]), self.config.answer_timeout_s)
                    continue
                if reply[0] == "lost":
                    raise _WorkerLost(reply[2])
                return reply
            if not self._proc.is_alive() and not self._conn.poll(0):
                raise self._died()

    def _died(self) -> _WorkerLost:
        """The error for a worker whose end of the socket closed: it died (its exit code says how)."""
        assert self._proc is not None
        self._proc.join(1.0)
        return _WorkerLost(f"the worker (pid {self._proc.pid}) died (exit code {self._proc.exitcode})")

    def _kill_worker(self, grace_s: float = 0.0) -> None:
        proc, conn = self._proc, self._conn
        self._proc, self._conn = None, None
        if proc is not None:
            proc.join(grace_s)
            if proc.is_alive():
                proc.kill()  # SIGKILL also ends a stopped (SIGSTOP) process
                proc.join(5.0)
        if conn is not None:
            conn.close()

    def _frame(self, reply: tuple) -> Frame:
        _, fields, route = reply
        if route is not None:
            self._route = RouteSpec(points=route[0], half_lane_width_m=route[1])
        extra = dict(fields.pop("extra"))
        if extra.get("episode_restarted"):
            self.restarts += 1
        extra["restarts"] = self.restarts
        extra["workers_started"] = self.workers_started
        frame = Frame(image=self._image.copy(), extra=extra, **fields)
        if self._chase_shared is not None:
            self._chase_image = self._chase_shared.copy()
        self._last = frame
        return frame

    def _release_memory(self) -> None:
        with contextlib.suppress(Exception):
            del self._image, self._chase_shared  # views of the map: close() refuses while they exist
            self._map.close()
        self._unlink()


def _shared_bytes(config: CarlaConfig) -> int:
    """Size of the shared memory map: the camera image, then the chase camera's RGB image (if on)."""
    chase = config.chase_camera_size
    return config.camera_size**2 + (chase[0] * chase[1] * 3 if chase is not None else 0)


def _shared_images(buffer: mmap.mmap, config: CarlaConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """The views of the shared map, the same on both sides: the ``(camera_size, camera_size)`` gray image and the
    ``(height, width, 3)`` RGB chase image (None when ``chase_camera_size`` is off)."""
    size = config.camera_size
    image = np.ndarray((size, size), dtype=np.uint8, buffer=buffer)
    chase = config.chase_camera_size
    if chase is None:
        return image, None
    return image, np.ndarray((chase[1], chase[0], 3), dtype=np.uint8, buffer=buffer, offset=size * size)


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


class _Process:
    """The worker's ``subprocess.Popen`` with the ``multiprocessing.Process`` calls this module uses."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self._proc = proc

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def exitcode(self) -> int | None:
        return self._proc.poll()

    def is_alive(self) -> bool:
        return self._proc.poll() is None

    def join(self, timeout: float | None = None) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self._proc.kill()


# ---------------------------------------------------------------------------------------------- the worker
def main(fd: int, settings: dict[str, Any]) -> None:
    """The worker process's entry (see :data:`_BOOTSTRAP`): serve the env on the socket ``fd``.

    :param fd: this process's end of the socket pair.
    :param settings: ``values`` (the :class:`CarlaConfig` dict), ``uid``, ``shm``, ``wait_s``, ``sys_path``.
    """
    sys.path[:] = [p for p in settings["sys_path"] if p] + [p for p in sys.path if p not in settings["sys_path"]]
    _serve(Connection(fd), settings["values"], settings["uid"], settings["shm"], settings["wait_s"])


def _serve(conn: Connection, values: dict[str, Any], uid: str, shm_name: str, wait_s: float) -> None:
    """Connect (retrying for ``wait_s``), then serve ``reset``/``step``/``close`` requests until closed."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's; it closes this worker itself
    from sb3_av.envs.carla.backend import CarlaBackend

    try:
        carla_module, client_factory = import_client_module()
        config = CarlaConfig.from_dict(values)
        backend = CarlaBackend(config, client_factory=client_factory, carla_module=carla_module, connect=False, uid=uid)
        backend.conn.on_progress = lambda bound_s, what: conn.send(("progress", bound_s, what))
        _connect(backend, conn, wait_s)
    except BaseException as exc:
        conn.send(("error", type(exc).__name__, str(exc)))
        os._exit(_EXIT_STARTUP)
    conn.send(("ready", {"address": backend.conn.address, "tm_port": backend.conn.tm_port, "pid": os.getpid()}))
    with open(shm_name, "r+b") as f:
        shared = mmap.mmap(f.fileno(), _shared_bytes(config))
    image, chase = _shared_images(shared, config)
    route_sent = None
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError, SystemExit):  # the env's process is gone (or ended us): leave the world clean
            with contextlib.suppress(BaseException):
                backend.close()
            os._exit(0)
        op = message[0]
        try:
            if op == "close":
                backend.close()
                conn.send(("closed",))
                os._exit(0)
            t0 = time.perf_counter()
            frame = backend.reset(message[1]) if op == "reset" else backend.step(*message[1:])
            frame.extra["worker_ms"] = 1000.0 * (time.perf_counter() - t0)
        except CarlaConnectionError as exc:  # lost server (or restarted): a new process must take over
            conn.send(("lost", type(exc).__name__, str(exc).splitlines()[0]))
            os._exit(_EXIT_LOST)  # no destructor may touch a Traffic Manager whose server is gone
        except Exception as exc:
            conn.send(("error", type(exc).__name__, str(exc)))
            continue
        route = backend.route
        send_route = route is not route_sent
        route_sent = route
        image[:] = frame.image
        if chase is not None:
            chase[:] = backend.chase_image
        fields = {
            name: getattr(frame, name)
            for name in ("x", "y", "yaw", "speed_ms", "sim_time_s", "collision", "on_driving_lane", "extra")
        }
        conn.send(("frame", fields, (route.points, route.half_lane_width_m) if send_route else None))


def _connect(backend: Any, conn: Connection, wait_s: float) -> None:
    """Open the backend's connection; with ``wait_s`` > 0 retry (1 s apart) until the server answers or time is up."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            backend.conn.open()
            return
        except CarlaConnectionError:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise
            conn.send(("progress", backend.config.connect_timeout_s + 1.0 + backend.config.answer_timeout_s, "waiting"))
            time.sleep(min(1.0, remaining))


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(0)
