"""Turning what the cluster sends back into Python values and exceptions for the caller."""

from __future__ import annotations

import pickle
import traceback
from typing import Any

from burla import errors, protocol

# Refuse/JobFailed kinds -> the burla error the caller gets.
_ERRORS_BY_KIND: dict[str, type[errors.BurlaError]] = {
    "no_nodes": errors.NoNodes,
    "version": errors.VersionMismatch,
    "unauthorized": errors.Unauthorized,
    "canceled": errors.JobCanceled,
    "unknown_job": errors.JobNotFound,
    "collected": errors.JobCollected,
    "node_disconnected": errors.NodeDisconnected,
    "unreachable": errors.ClusterUnreachable,
    "storage": errors.ClusterStorageError,
}


def error_for(kind: str, message: str) -> errors.BurlaError:
    """The exception for a refusal or job failure of `kind`."""
    if kind.startswith("no_compatible_nodes"):
        return errors.NoCompatibleNodes(message, reason=kind.partition(":")[2])
    return _ERRORS_BY_KIND.get(kind, errors.BurlaError)(message)


def decode_results(msg: protocol.Results) -> list[Any]:
    """The batch's values, in index order (exceptions at the indexes in `msg.errors`)."""
    data = msg.data.buffer if hasattr(msg.data, "buffer") else msg.data
    try:
        values = pickle.loads(data)
    except Exception as exc:
        last = msg.first_index + msg.count - 1
        why = "".join(traceback.format_exception_only(exc)).strip()
        failure = errors.RemoteError(
            type(exc).__name__,
            f"the results of inputs {msg.first_index}..{last} could not be unpickled here: "
            f"{exc}. Is every module they use installed on this machine?",
            f"the results of inputs {msg.first_index}..{last} arrived, but unpickling them in "
            f"this process raised:\n{why}\n",
        )
        return [failure] * msg.count
    if not isinstance(values, list) or len(values) != msg.count:
        raise errors.BurlaError(f"a result batch for inputs from {msg.first_index} held "
                                f"{type(values).__name__} instead of {msg.count} values")
    return values


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
