"""Turning what the cluster sends back into Python values and exceptions for the caller."""

from __future__ import annotations

import pickle
from typing import Any

from burla import errors, protocol

# Refuse/JobFailed kinds -> the burla error the caller gets.
_ERRORS_BY_KIND: dict[str, type[errors.BurlaError]] = {
    "no_nodes": errors.NoNodes,
    "version": errors.VersionMismatch,
    "unauthorized": errors.Unauthorized,
    "canceled": errors.JobCanceled,
    "node_disconnected": errors.NodeDisconnected,
    "unreachable": errors.ClusterUnreachable,
}


def error_for(kind: str, message: str) -> errors.BurlaError:
    """The exception for a refusal or job failure of `kind`."""
    if kind.startswith("no_compatible_nodes"):
        return errors.NoCompatibleNodes(message, reason=kind.partition(":")[2])
    return _ERRORS_BY_KIND.get(kind, errors.BurlaError)(message)


def decode_results(msg: protocol.Results) -> list[tuple[int, bool, Any]]:
    """`(index, ok, value-or-exception)` for every result in a batch."""
    data = msg.data.buffer if hasattr(msg.data, "buffer") else memoryview(msg.data)
    failed = set(msg.errors)
    out = []
    offset = 0
    for position, size in enumerate(msg.sizes):
        index = msg.first_index + position
        blob = data[offset : offset + size]
        offset += size
        try:
            value = pickle.loads(blob)
        except Exception as exc:
            value = errors.RemoteError(
                type(exc).__name__,
                f"the result of input {index} could not be unpickled here: {exc}. Is every "
                f"module it uses installed on this machine?",
                "",
            )
            out.append((index, False, value))
            continue
        out.append((index, index not in failed, value))
    return out


def mark_remote(exc: BaseException, index: int) -> BaseException:
    """Tag a user exception with the input that raised it (attribute and a note)."""
    try:
        exc.burla_input_index = index  # type: ignore[attr-defined]
    except AttributeError:
        pass
    note = f"[burla] failed on input index {index}"
    if hasattr(exc, "add_note") and note not in getattr(exc, "__notes__", ()):
        exc.add_note(note)
    return exc
