"""Every exception burla raises to its users; no role logic lives here."""

from __future__ import annotations


class BurlaError(Exception):
    """Base of every error burla raises itself (user exceptions keep their own type)."""


class NoNodes(BurlaError):
    """The cluster has no nodes at all.

    Recover: start one (`burla local up`), or pass `grow=True` so the cluster boots nodes.
    """


class NoCompatibleNodes(BurlaError):
    """No node can run this job: wrong image, GPU type, Python version, or too little CPU/RAM.

    The message names the request, what the nodes do offer, and suggests `grow=True`.
    Recover: lower the request, or pass `grow=True` to boot matching nodes.
    """

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


class FunctionTooBig(BurlaError):
    """The function pickles to more than the limit (100 MB).

    Recover: load large data inside the function (from a file or bucket) instead of
    closing over it.
    """


class InputTooBig(BurlaError):
    """One input pickles to more than the limit (200 MB); the message names its index.

    Recover: pass a path or URL to the data instead of the data itself.
    """

    def __init__(self, message: str, index: int) -> None:
        super().__init__(message)
        self.index = index


class ResultTooBig(BurlaError):
    """One call's result pickles to more than the limit (256 MiB, `burla.config.MAX_RESULT_BYTES`).

    Only that input fails; every other result still arrives. The message names its index, its
    pickled size and the limit. Recover: write a large result to a file or bucket and return
    its path instead.
    """

    def __init__(self, message: str, index: int) -> None:
        super().__init__(message)
        self.index = index

    def __reduce__(self) -> tuple[type, tuple[str, int]]:
        return (type(self), (str(self), self.index))


class NodeDisconnected(BurlaError):
    """An executor or node failed under a call: crash, OOM kill, or node loss past retries.

    The message says what happened (exit code, signal, memory limit). Recover: fix the crash,
    raise `func_ram`, or retry the job.
    """


class JobCanceled(BurlaError):
    """The job was cancelled (Ctrl-C, `burla jobs cancel`, or the cluster shut down)."""


class VersionMismatch(BurlaError):
    """Client and cluster speak different protocol versions; the message names both.

    Recover: install the cluster's burla version on the client, or upgrade the cluster.
    """


class Unauthorized(BurlaError):
    """The cluster refused our credentials.

    Recover: run `burla login`, or pass a valid `api_key=`.
    """


class ClusterUnreachable(BurlaError):
    """No answer from the cluster within the connect timeout; the message says what was tried.

    Recover: check the address (`BURLA_CLUSTER`, `burla login`), or `burla local up`.
    """


class RemoteError(BurlaError):
    """A remote exception that could not be pickled home, carried as text.

    `type_name`, `remote_message` and `remote_traceback` hold what the executor saw.
    """

    def __init__(self, type_name: str, message: str, traceback_text: str) -> None:
        super().__init__(f"{type_name}: {message}\n\nRemote traceback:\n{traceback_text}")
        self.type_name = type_name
        self.remote_message = message
        self.remote_traceback = traceback_text

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:
        return (type(self), (self.type_name, self.remote_message, self.remote_traceback))


ALL_ERRORS = (
    BurlaError,
    NoNodes,
    NoCompatibleNodes,
    FunctionTooBig,
    InputTooBig,
    ResultTooBig,
    NodeDisconnected,
    JobCanceled,
    VersionMismatch,
    Unauthorized,
    ClusterUnreachable,
    RemoteError,
)
