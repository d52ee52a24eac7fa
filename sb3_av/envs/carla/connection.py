"""The connection to one CARLA server: timeouts, version check, town, synchronous mode, Traffic Manager.

One :class:`CarlaConnection` per env. It claims its ``(host, port, tm_port)`` with a lock file, so two envs
on one machine (in one process or several) can never drive the same Traffic Manager, and, unless
``share_server`` is set, one server serves one env (two envs ticking one world each advance it, so each sees
twice its ``dt`` per step). The world settings the first env found are kept next to the lock and restored by
the last env that leaves the server (a run that died without restoring them leaves the file behind, and the
next run restores those, not the synchronous mode the dead run left on the server).

LibCarla keeps one Traffic Manager per port per *process* (``trafficmanager/TrafficManager.cpp``,
``TrafficManager::_tm_map``): a new client in the same process gets the old TM back, still bound to the old
server connection, and the next tick or settings change steps it and aborts the process if that server is gone.
So a reconnect in the same process is only done to the same server episode (a hang that passed); a server
that restarted raises :class:`~sb3_av.envs.carla.errors.CarlaServerRestarted` and the env's worker process is
replaced (:mod:`sb3_av.envs.carla.worker`). ``close()`` takes the TM out of synchronous mode and shuts it
down while the server answers, never after it died.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sb3_av.envs.carla.config import CarlaConfig
from sb3_av.envs.carla.errors import (
    CARLA_VERSION,
    CarlaBackendError,
    CarlaConnectionError,
    CarlaServerRestarted,
    CarlaVersionError,
)

try:  # POSIX only; elsewhere the port claim is skipped
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["CarlaConnection", "lock_dir"]

logger = logging.getLogger(__name__)

_CLOSE_TIMEOUT_S = 2.0  # RPC limit while cleaning up, so a dead server cannot stall close()


def lock_dir() -> Path:
    """The folder of the port-claim lock files (``$SB3_AV_CARLA_LOCK_DIR`` or the temp dir)."""
    path = Path(os.environ.get("SB3_AV_CARLA_LOCK_DIR", Path(tempfile.gettempdir()) / "sb3_av_carla_locks"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _safe(host: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "_", host)


def _server_address(host: str) -> str:
    """The address that names a server in the lock files: a host name resolved to its IPv4 address, so that
    ``localhost`` and ``127.0.0.1`` are one server (the name itself when it does not resolve)."""
    try:
        return socket.gethostbyname(host)
    except OSError:
        return host


class _Claim:
    """Exclusive ``flock`` s (released on close or process exit) on this machine.

    ``tm<tm_port>.lock``: the Traffic Manager runs in the client process and listens on ``tm_port`` of this
    machine, so one port serves one env. ``srv_<host>_<port>.tm<tm_port>.lock``: marks this env as a user
    of the server, so the last one to leave restores the world settings.
    """

    def __init__(self, host: str, port: int, tm_port: int) -> None:
        self.server_prefix = f"srv_{_safe(_server_address(host))}_{port}."
        self.tm_path = lock_dir() / f"tm{tm_port}.lock"
        self.path = lock_dir() / f"{self.server_prefix}tm{tm_port}.lock"
        self.world_path = lock_dir() / f"{self.server_prefix}world.lock"  # exclusive: sole user; shared: sharing
        self._fds: list[int] = []

    def acquire(self, share_server: bool = False) -> bool:
        if fcntl is None:
            return True
        world_mode = fcntl.LOCK_SH if share_server else fcntl.LOCK_EX
        locks = ((self.tm_path, fcntl.LOCK_EX), (self.path, fcntl.LOCK_EX), (self.world_path, world_mode))
        for path, mode in locks:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                self.release()
                return False
            if mode == fcntl.LOCK_EX:
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode())
            self._fds.append(fd)
        return True

    def tm_free(self) -> bool:
        """Whether no env on this machine holds the TM port (so a refused claim was for the server alone)."""
        if fcntl is None:
            return True
        fd = os.open(self.tm_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return True
        except OSError:
            return False
        finally:
            os.close(fd)

    def holder(self) -> str:
        try:
            return self.tm_path.read_text().strip() or "?"
        except OSError:
            return "?"

    def others_on_server(self) -> int:
        """How many other envs on this machine use the same server right now."""
        if fcntl is None:
            return 0
        n = 0
        for path in lock_dir().glob(f"{self.server_prefix}tm*.lock"):
            if path == self.path:
                continue
            fd = os.open(path, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                n += 1
            finally:
                os.close(fd)
        return n

    @property
    def settings_path(self) -> Path:
        return lock_dir() / f"{self.server_prefix}settings.json"

    def release(self) -> None:
        for fd in self._fds:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        self._fds = []


def _version_tuple(text: str) -> tuple[int, ...] | None:
    match = re.match(r"\s*(\d+)\.(\d+)\.(\d+)", str(text))
    return tuple(int(g) for g in match.groups()) if match else None


def _map_basename(name: str) -> str:
    return str(name).rstrip("/").rsplit("/", 1)[-1]


class CarlaConnection:
    """Client, world, map and Traffic Manager of one server, with bounded reconnects.

    :param config: backend settings (server, ports, timeouts, town, dt).
    :param carla_module: the ``carla`` module (or a stand-in exposing the same names).
    :param client_factory: ``(host, port) -> carla.Client``.
    """

    def __init__(self, config: CarlaConfig, carla_module: Any, client_factory: Callable[..., Any]) -> None:
        self.config = config
        self._candidates = config.candidates()
        self.host, self.port, self.tm_port = self._candidates[0]
        self._carla = carla_module
        self._client_factory = client_factory
        self._claim = _Claim(self.host, self.port, self.tm_port)
        self._claimed = False
        self._original: dict[str, Any] | None = None
        self.client: Any = None
        self.world: Any = None
        self.map: Any = None
        self.traffic_manager: Any = None
        self.generation = 0  # incremented by every successful (re)connect
        self.episode_id: int | None = None  # the server's world (episode) id this connection set up
        #: Called with ``(bound_s, what)`` before a step that may take up to ``bound_s`` seconds (the worker's heartbeat).
        self.on_progress: Callable[[float, str], None] | None = None

    @property
    def address(self) -> str:
        """``host:port`` of the server."""
        return f"{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        """True while a world is held."""
        return self.world is not None

    # ------------------------------------------------------------------ open / reconnect / close
    def open(self) -> None:
        """Claim the server's TM port on this machine, then connect (one attempt, ``connect_timeout_s``).

        :raises CarlaBackendError: another env on this machine uses this server with the same TM port.
        :raises CarlaConnectionError: no server answered within ``connect_timeout_s``.
        :raises CarlaVersionError: the server is not CARLA 0.9.16.
        """
        if not self._claimed:
            self._claim_server()
        try:
            self._connect()
        except BaseException:
            self.close()  # restores the settings if the failure came after they were changed
            raise

    def _claim_server(self) -> None:
        """Take the first candidate server that no other env on this machine uses (``share_server``: whose TM port)."""
        share = self.config.share_server
        for host, port, tm_port in self._candidates:
            claim = _Claim(host, port, tm_port)
            if claim.acquire(share):
                self.host, self.port, self.tm_port, self._claim = host, port, tm_port, claim
                self._claimed = True
                return
        if len(self._candidates) == 1 and self._claim.tm_free():
            raise CarlaBackendError(
                f"The CARLA server {self.address} is already used by another env on this machine. Two envs ticking "
                "one world each advance it, so each would see twice its dt per step: give each env its own server "
                "(servers=[...], one per env plus one for an eval env), or pass share_server=True to every env of "
                "this server if you accept the changed dynamics."
            )
        if len(self._candidates) == 1:
            raise CarlaBackendError(
                f"Traffic Manager port {self.tm_port} is already used by another env on this machine "
                f"(pid {self._claim.holder()}; lock {self._claim.tm_path}). Every env needs its own TM port: give "
                "each env its own server (servers=[...]; TM port = port + 6000), a tm_port of its own, or, for "
                "servers on different hosts with the same port, write them as 'host:port:tm_port'. An eval env counts "
                "too: with train.py use --eval-env-kwargs port:<another server's port>, list both servers in servers=[...], "
                "or --eval-freq -1."
            )
        listed = ", ".join(f"{h}:{p} (TM {t})" for h, p, t in self._candidates)
        raise CarlaBackendError(
            f"Every server in servers=[...] is already used by another env on this machine: {listed}. "
            "List one server per env (n_envs, plus one for an eval env); sharing a server (share_server=True, distinct "
            "TM ports 'host:port:tm_port') changes the dynamics."
        )

    def reconnect(self, cause: BaseException) -> None:
        """Drop the current client and reconnect, at most ``max_reconnects`` attempts with growing waits.

        :param cause: the error that showed the server was lost or hung (quoted in the final error).
        :raises CarlaConnectionError: every attempt failed; the message names host:port and how to start CARLA.
        """
        self._drop()
        attempts = self.config.max_reconnects
        last: BaseException = cause
        for k in range(1, attempts + 1):
            wait = k * self.config.reconnect_backoff_s
            logger.warning(
                "CARLA server %s lost (%s); reconnect attempt %d/%d in %.1f s", self.address, last, k, attempts, wait
            )
            self._progress(wait + self.config.connect_timeout_s + 3 * self.config.timeout_s, f"reconnect attempt {k}")
            time.sleep(wait)
            try:
                self._connect()
                logger.warning("Reconnected to the CARLA server %s", self.address)
                return
            except CarlaServerRestarted:
                self._drop()
                raise
            except (RuntimeError, CarlaConnectionError) as exc:
                self._drop()
                last = exc
            except BaseException:  # the server is back but unusable (version, TM port): say so at once
                self._drop()
                raise
        raise CarlaConnectionError(
            f"Lost the CARLA server at {self.address} and {attempts} reconnect attempt(s) failed "
            f"(first error: {_one_line(cause)}; last: {_one_line(last)}). Nothing written so far (checkpoints, logs) "
            "was touched; restart the server and resume from the last checkpoint.",
            self.host,
            self.port,
        )

    def close(self) -> None:
        """Restore the world settings (if no other env on this machine still uses the server) and release the port.

        Idempotent; never blocks longer than a few seconds on a dead server.
        """
        try:
            if self.connected:
                with contextlib.suppress(Exception):
                    self.client.set_timeout(min(self.config.timeout_s, _CLOSE_TIMEOUT_S))
                try:
                    self.client.get_server_version()  # does it answer? A TM must not be touched after its server died
                    alive = True
                except Exception as exc:
                    alive = False
                    logger.warning("The CARLA server %s does not answer on close: %s", self.address, _one_line(exc))
                if alive:
                    self._close_on_live_server()
        finally:
            self._drop()
            self._release_claim()

    def _close_on_live_server(self) -> None:
        """TM out of synchronous mode, world settings restored (by the last env), TM shut down."""
        tm = self.traffic_manager
        try:
            if tm is not None:
                tm.set_synchronous_mode(False)
            if self._claim.others_on_server() == 0:
                self._restore_settings()
        except Exception as exc:  # the server may be gone; closing must still succeed
            logger.warning("Could not restore the CARLA settings on %s: %s", self.address, _one_line(exc))
        if tm is not None:
            try:
                tm.shut_down()  # unregisters it from the process's TM map; its threads and RPC server stop
            except Exception as exc:
                logger.warning("Could not shut down the Traffic Manager %d: %s", self.tm_port, _one_line(exc))

    # ------------------------------------------------------------------ internals
    def _connect(self) -> None:
        cfg = self.config
        client = self._client_factory(self.host, self.port)
        client.set_timeout(cfg.connect_timeout_s)
        try:
            server_version = client.get_server_version()
        except RuntimeError as exc:
            raise CarlaConnectionError(
                f"No CARLA server answered at {self.address} within {cfg.connect_timeout_s:g} s (connect_timeout_s): "
                f"{_one_line(exc)}.",
                self.host,
                self.port,
            ) from None
        client_version = client.get_client_version()
        if _version_tuple(server_version) != _version_tuple(client_version):
            raise CarlaVersionError(
                f"The CARLA server at {self.address} runs version {server_version} but the client is {client_version}; "
                f"run a CARLA {CARLA_VERSION} server (docker image carlasim/carla:{CARLA_VERSION}) "
                f"with carla=={CARLA_VERSION}."
            )
        client.set_timeout(cfg.timeout_s)
        world = client.get_world()
        if self.episode_id is not None and int(world.id) != self.episode_id:
            raise CarlaServerRestarted(
                f"The CARLA server at {self.address} answers again but with a new world (episode {world.id}, was "
                f"{self.episode_id}): it restarted or another client loaded a map. This process's Traffic Manager is bound "
                "to the old one, so the env needs a new client process.",
                self.host,
                self.port,
            )
        if _map_basename(world.get_map().name) != _map_basename(cfg.town):
            self._progress(cfg.load_timeout_s + cfg.timeout_s, f"loading {cfg.town}")
            world = self._load_town(client)
        self.client = client
        self.world = world
        self.episode_id = int(world.id)
        self._apply_sync_settings()
        try:
            tm = client.get_trafficmanager(self.tm_port)
        except RuntimeError as exc:
            raise CarlaBackendError(
                f"Could not start the Traffic Manager on port {self.tm_port} for {self.address} ({_one_line(exc)}); "
                "the port is probably used by another program: pass a free tm_port"
            ) from None
        tm.set_synchronous_mode(True)
        tm.set_global_distance_to_leading_vehicle(cfg.tm_distance_to_leading_m)
        tm.set_random_device_seed(int(cfg.seed) if cfg.seed is not None else 0)
        self.traffic_manager = tm
        world.tick(cfg.timeout_s)
        self.map = world.get_map()
        self.generation += 1

    def _load_town(self, client: Any) -> Any:
        cfg = self.config
        available = [_map_basename(m) for m in client.get_available_maps()]
        if _map_basename(cfg.town) not in available:
            raise CarlaBackendError(
                f"The CARLA server at {self.address} has no map {cfg.town!r}; available: {', '.join(available)}"
            )
        logger.info("Loading %s on the CARLA server %s", cfg.town, self.address)
        client.set_timeout(cfg.load_timeout_s)
        try:
            world = client.load_world(cfg.town, reset_settings=False)
        finally:
            client.set_timeout(cfg.timeout_s)
        return world

    def _apply_sync_settings(self) -> None:
        """Record the settings to restore later (once per connection's life), then switch to synchronous mode.

        The original settings are kept in a file next to the locks and removed by the last env that restores
        them. So when this is the only env on the server and the file is still there, a previous run died
        (e.g. SIGKILL) without restoring: the world is still in that run's synchronous mode, and the file, not
        the world, holds what the user had.
        """
        settings = self.world.get_settings()
        current = {
            "synchronous_mode": bool(settings.synchronous_mode),
            "fixed_delta_seconds": settings.fixed_delta_seconds,
            "no_rendering_mode": bool(settings.no_rendering_mode),
        }
        path = self._claim.settings_path
        if self._original is None:
            saved = _read_settings(path)  # another live env's record, or a dead run's
            if saved is not None and saved != current and self._claim.others_on_server() == 0:
                logger.warning(
                    "A previous run on the CARLA server %s ended without restoring its world settings; "
                    "%s (saved in %s) will be restored on close, not the current %s",
                    self.address,
                    saved,
                    path,
                    current,
                )
            self._original = saved if saved is not None else current
        path.write_text(json.dumps(self._original))
        settings.synchronous_mode = True
        settings.fixed_delta_seconds = self.config.dt
        settings.no_rendering_mode = False  # else the camera delivers no images
        self.world.apply_settings(settings)

    def _restore_settings(self) -> None:
        original = self._original
        path = self._claim.settings_path
        if original is None:
            original = _read_settings(path)
        if original is None:
            return
        settings = self.world.get_settings()
        settings.synchronous_mode = bool(original["synchronous_mode"])
        settings.fixed_delta_seconds = original["fixed_delta_seconds"]
        settings.no_rendering_mode = bool(original.get("no_rendering_mode", False))
        self.world.apply_settings(settings)
        with contextlib.suppress(OSError):
            path.unlink()

    def _progress(self, bound_s: float, what: str) -> None:
        if self.on_progress is not None:
            self.on_progress(bound_s, what)

    def _drop(self) -> None:
        self.client = None
        self.world = None
        self.map = None
        self.traffic_manager = None

    def _release_claim(self) -> None:
        if self._claimed:
            self._claim.release()
            self._claimed = False


def _read_settings(path: Path) -> dict[str, Any] | None:
    """The saved original world settings, or None when the file is absent or unreadable."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("Ignoring the unreadable saved CARLA settings %s: %s", path, exc)
        return None
    if not isinstance(data, dict) or "synchronous_mode" not in data or "fixed_delta_seconds" not in data:
        logger.warning("Ignoring the saved CARLA settings %s: unexpected content %r", path, data)
        return None
    return {
        "synchronous_mode": bool(data["synchronous_mode"]),
        "fixed_delta_seconds": data["fixed_delta_seconds"],
        "no_rendering_mode": bool(data.get("no_rendering_mode", False)),
    }


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0].rstrip('.') if text else ''}"
