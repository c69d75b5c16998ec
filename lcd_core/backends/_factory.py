"""Choosing a backend by name (what ``--backend`` and the app's Train page call)."""

from __future__ import annotations

from ._base import Backend
from ._local import LocalBackend

BACKENDS = ("local", "ray")


def get_backend(name: str = "local", *, address: str | None = None, **options) -> Backend:
    """The backend called ``name``.

    Parameters
    ----------
    name
        ``local`` or ``ray``.
    address
        Ray only: ``None``/``"local"`` starts a private Ray instance in this process (loopback only);
        ``"auto"`` joins the cluster started on this machine with ``ray start``; ``HOST:PORT`` joins a
        cluster's head (GCS port, 6379 by default); ``ray://HOST:10001`` connects as a Ray Client.
    options
        Ray only: see :class:`lcd_core.backends.ray.RayBackend` (``transfer``, ``num_cpus``, ...).
    """
    from ..errors import ConfigError

    if name == "local":
        if address is not None or options:
            raise ConfigError("--ray-address and Ray options need --backend ray")
        return LocalBackend()
    if name == "ray":
        from .ray import RayBackend  # the only import of the Ray module

        return RayBackend(address, **options)
    raise ConfigError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
