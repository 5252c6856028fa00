"""burla: run any Python function on every input at once, across a cluster, with one call."""

from __future__ import annotations

__version__ = "0.1.0"

from burla.errors import (  # noqa: E402
    BurlaError,
    ClusterStorageError,
    ClusterUnreachable,
    FunctionTooBig,
    InputTooBig,
    JobCanceled,
    JobCollected,
    JobNotFound,
    NoCompatibleNodes,
    NodeDisconnected,
    NoNodes,
    OutOfMemory,
    RemoteError,
    ResultTooBig,
    Unauthorized,
    VersionMismatch,
)


def __getattr__(name: str) -> object:
    # The client pulls in zmq and cloudpickle; daemons that import `burla` for __version__
    # should not pay for it, so the API is loaded on first use.
    if name in ("remote_parallel_map", "attach"):
        from burla.client import api

        return getattr(api, name)
    raise AttributeError(f"module 'burla' has no attribute {name!r}")


__all__ = [
    "__version__",
    "remote_parallel_map",
    "attach",
    "BurlaError",
    "ClusterStorageError",
    "ClusterUnreachable",
    "FunctionTooBig",
    "InputTooBig",
    "JobCanceled",
    "JobCollected",
    "JobNotFound",
    "NoCompatibleNodes",
    "NodeDisconnected",
    "NoNodes",
    "OutOfMemory",
    "RemoteError",
    "ResultTooBig",
    "Unauthorized",
    "VersionMismatch",
]
