"""Where state lives, and which cluster a client call uses (DESIGN §7); no role logic here."""

from __future__ import annotations

import functools
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import platformdirs

# Limits of what one call may ship (DESIGN §1).
MAX_FUNCTION_BYTES = 100 * 1024 * 1024
MAX_INPUT_BYTES = 200 * 1024 * 1024
# Largest pickled result of one call; a bigger one fails its input with ResultTooBig. A batch of
# results is cut to stay under it too. transport.MAX_MESSAGE_BYTES (ZeroMQ's MAXMSGSIZE) leaves
# 64 MiB above it for a message's envelope, so a result within the limit always travels.
MAX_RESULT_BYTES = 256 * 1024 * 1024
# What users may pass as func_gpu, and the GPU type each one means (as agents name them).
GPU_ALIASES: dict[str, str] = {
    "A100": "A100_40G",
    "A100_40G": "A100_40G",
    "A100_80G": "A100_80G",
    "H100": "H100_80G",
    "H100_80G": "H100_80G",
}
# A peer silent this long is dead (DESIGN §3); idle links ping at a fraction of it.
PEER_TIMEOUT_SECONDS = 5.0
PING_INTERVAL_SECONDS = 1.0
# A client connection silent this long is forgotten by the coordinator; it must Hello again.
CLIENT_FORGET_SECONDS = 60.0


def user_state_dir() -> Path:
    return path_of(os.environ.get("BURLA_STATE_DIR") or _platform_dir("user_state_dir"))


def user_config_dir() -> Path:
    return path_of(os.environ.get("BURLA_CONFIG_DIR") or _platform_dir("user_config_dir"))


@functools.lru_cache(maxsize=64)
def path_of(*parts: str) -> Path:
    """Path(*parts), made once: every call asks for the same few paths, and building one
    costs several microseconds."""
    return Path(*parts)


@functools.cache
def _platform_dir(kind: str) -> str:
    """platformdirs' answer, once per process: every call asks, and platformdirs works it out
    anew each time (0.1 ms, a few percent of a small call's whole cost)."""
    return str(getattr(platformdirs, kind)("burla"))


def credentials_path() -> Path:
    return path_of(str(user_config_dir()), "burla_credentials.json")


def new_token() -> str:
    return secrets.token_urlsafe(24)


def write_private_json(path: Path, data: dict[str, object]) -> None:
    """Write `data` readable by the owner only, atomically (readers never see half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle)
    os.replace(tmp, path)


@dataclass(frozen=True)
class ClusterAddress:
    """How a client reaches a cluster: endpoint, token, and whether it is the embedded one."""

    endpoint: str
    token: str
    embedded: bool
    source: str  # what chose it, for error messages


def configured_cluster(api_key: str | None) -> ClusterAddress | None:
    """The cluster chosen by `api_key`/environment or saved login; None means embedded."""
    endpoint = os.environ.get("BURLA_CLUSTER")
    token = api_key or os.environ.get("BURLA_API_KEY")
    if endpoint:
        return ClusterAddress(endpoint, token or "", False, "BURLA_CLUSTER")
    path = credentials_path()
    if path.exists():
        saved = json.loads(path.read_text())
        return ClusterAddress(saved["address"], token or saved["token"], False, str(path))
    if api_key:
        raise ValueError(
            "api_key= was given but no cluster address is configured: set BURLA_CLUSTER to "
            "the coordinator's endpoint (e.g. tcp://10.0.0.2:7700)"
        )
    return None
