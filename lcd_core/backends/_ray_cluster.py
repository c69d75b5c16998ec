"""Finding and joining a Ray cluster for :mod:`lcd_core.backends.ray`: the address, a fast probe, and
what Ray reads when it is imported. Imports nothing of Ray at module level (``grpc``, a Ray dependency,
only inside :func:`_probe`)."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from .._dependencies import require
from ..errors import ConfigError
from ._base import BackendUnavailable

#: Ray reads this when it is imported: "0" makes a private instance advertise and bind 127.0.0.1 only
#: (Ray's single-machine mode); set only when this process starts its own instance.
_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_PROBE_SECONDS = 3.0


def _import_ray(*, local: bool, client: bool = False):
    """``import ray``, first setting what Ray reads at import time: loopback-only for a private
    instance, token mode for a Ray Client (see :func:`_client_auth_mode`)."""
    require("ray", feature="--backend ray")
    if "ray" not in sys.modules:
        if local:
            os.environ.setdefault(_LOOPBACK_ENV, "0")
        if client:
            _client_auth_mode()
    import ray

    return ray


def _parse_address(address: str) -> tuple[str, int]:
    client = address.startswith("ray://")
    rest = address[len("ray://"):] if client else address
    host, sep, port = rest.rpartition(":")
    if not sep:
        host, port = rest, "10001" if client else "6379"
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        raise ConfigError(f"malformed Ray address {address!r}; expected HOST:PORT or ray://HOST:PORT") from None


def _probe(address: str, timeout: float = _PROBE_SECONDS) -> None:
    """Fail within seconds unless a Ray head answers at ``address`` (ray.init itself retries for a
    minute or more, against a closed port and against a server that is not Ray alike).

    Two steps: a TCP connection, then one real gRPC call of the service Ray listens with there (the GCS
    for ``HOST:PORT``, the Ray Client server for ``ray://``). A Ray server answers it (possibly with
    "unauthenticated": the token is ray.init's business); anything else (a proxy, a web server, another
    gRPC service) does not implement the method.
    """
    host, port = _parse_address(address)
    hint = "start one with 'ray start --head' (docs/ray.md), or check the address, the port and the firewall"
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        reason = "timed out" if isinstance(e, (TimeoutError, socket.timeout)) else (e.strerror or type(e).__name__)
        raise BackendUnavailable(f"no Ray cluster answers at {address} ({reason}); {hint}") from None
    import grpc  # a dependency of ray[default]

    method = ("/ray.rpc.RayletDriver/ClusterInfo" if address.startswith("ray://")
              else "/ray.rpc.NodeInfoGcsService/GetClusterId")
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    channel = grpc.insecure_channel(target)
    try:
        channel.unary_unary(method)(b"", timeout=timeout)
    except grpc.RpcError as e:
        code = e.code()
        if code in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise BackendUnavailable(f"no Ray cluster answers at {address}: the port is open but what answers is "
                                     f"not a Ray {'client server' if address.startswith('ray://') else 'head (GCS)'} "
                                     f"({code.name}); {hint}") from None
    finally:
        channel.close()


def _client_auth_mode() -> None:
    """A Ray Client sends the cluster's token only in token mode, read when ray is imported; a driver
    (HOST:PORT) turns that on by itself when it finds a token, the client does not. Turn it on when a
    token is configured (the variables or the file Ray reads; the token itself is never read or logged
    here). In a process that imported ray earlier, set ``RAY_AUTH_MODE=token`` yourself."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    if (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
            or (Path.home() / ".ray" / "auth_token").is_file()):
        os.environ["RAY_AUTH_MODE"] = "token"
