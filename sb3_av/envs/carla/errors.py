"""Errors of the CARLA backend; every message says what went wrong and what to do."""

from __future__ import annotations

__all__ = [
    "CarlaBackendError",
    "CarlaConnectionError",
    "CarlaError",
    "CarlaRouteError",
    "CarlaSensorTimeout",
    "CarlaServerRestarted",
    "CarlaVersionError",
    "how_to_start_carla",
]

#: The CARLA version the ``carla`` client on PyPI and this backend are pinned to.
CARLA_VERSION = "0.9.16"


def how_to_start_carla(host: str, port: int) -> str:
    """A few lines telling a user how to start a CARLA server that this backend can reach.

    :param host: the host the backend tried.
    :param port: the CARLA RPC port the backend tried.
    """
    return (
        f"Start a CARLA {CARLA_VERSION} server listening on {host}:{port} "
        f"(it also uses ports {port + 1} and {port + 2}), e.g.\n"
        f"  docker run -d --rm --privileged --gpus all --net=host carlasim/carla:{CARLA_VERSION} "
        f"/bin/bash ./CarlaUE4.sh -RenderOffScreen -nosound -carla-rpc-port={port}\n"
        f"or, from an unpacked CARLA {CARLA_VERSION} release: ./CarlaUE4.sh -RenderOffScreen -nosound -carla-rpc-port={port}\n"
        "wait until it accepts connections (10-60 s), then run again; pass host=/port= (or servers=[...]) "
        "in the env kwargs to use another server."
    )


class CarlaError(Exception):
    """Base class of the CARLA backend's errors."""


class CarlaConnectionError(CarlaError, ConnectionError):
    """The CARLA server cannot be reached, or was lost and did not come back after the reconnect attempts.

    The message names ``host:port`` and says how to start CARLA.

    :param message: what went wrong.
    :param host: the server's host.
    :param port: the server's RPC port.
    """

    def __init__(self, message: str, host: str, port: int) -> None:
        self.host = host
        self.port = port
        super().__init__(f"{message}\n{how_to_start_carla(host, port)}")


class CarlaServerRestarted(CarlaConnectionError):
    """The server answers again, but with a new world: it restarted (or a map was loaded by another client).

    LibCarla's Traffic Manager of this process is still bound to the old world, so only a new client process can
    go on (the env's worker is replaced).
    """


class CarlaVersionError(CarlaError):
    """The server's CARLA version differs from the client's."""


class CarlaBackendError(CarlaError):
    """A setting or a world state that the backend cannot work with (bad town, occupied start, port clash)."""


class CarlaRouteError(CarlaBackendError):
    """The route cannot be planned: a junction lacks the requested exit, or the start is not on the map."""


class CarlaSensorTimeout(CarlaError):
    """No sensor data for the ticked frame arrived within the bounded wait (the server is hung or overloaded)."""
