"""Every exception burla raises to its users; no role logic lives here."""

from __future__ import annotations


class BurlaError(Exception):
    """Base of every error burla raises itself (user exceptions keep their own type)."""


class NoNodes(BurlaError):
    """The cluster has no nodes at all.

    Recover: start an agent for it (`burla agent --coordinator ENDPOINT`), or use the embedded
    cluster (unset BURLA_CLUSTER; `burla local up`). On a coordinator with a node provider,
    `grow=True` boots nodes instead, and the message says so where it can.
    """


class NoCompatibleNodes(BurlaError):
    """No node can run this job: wrong image, GPU type, Python version, or too little CPU/RAM.

    The message names the request and what the nodes do offer. Recover: change the request to
    fit a node, or add a node that fits (`burla agent`). It advises `grow=True` only where the
    coordinator's provider could boot a node that fits. `reason` is "grow" when a grow=True job
    failed because no node could be booted for it; the message lists what was tried.
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

    The message says what happened (exit code, signal, memory limit); an out-of-memory kill
    is its subclass OutOfMemory. Recover: fix the crash, raise `func_ram`, or retry the job.
    """


class OutOfMemory(NodeDisconnected):
    """A call used more memory than it may have, and the kernel killed it.

    Raised for that input when, with an integer `func_ram`, the call used more than `func_ram`
    GB; or, with `func_ram="dynamic"`, it did not fit in the node's memory even as the job's
    only call there. `func_ram` (GB, or "dynamic") and `limit_bytes` name the limit it passed.
    A subclass of NodeDisconnected, so handlers of that still catch it.

    Recover: pass a larger `func_ram`, run on nodes with more memory, or make the call use less
    (load less at once, process the data in pieces).
    """

    def __init__(self, message: str, func_ram: int | str = "dynamic",
                 limit_bytes: int = 0) -> None:
        super().__init__(message)
        self.func_ram = func_ram
        self.limit_bytes = limit_bytes


class JobCanceled(BurlaError):
    """The job was cancelled: Ctrl-C, `burla jobs cancel`, or `burla local down` stopped the
    embedded cluster under it. The message says which. Recover: run the job again.
    """


class JobNotFound(BurlaError):
    """`burla.attach` (or `burla jobs logs`) named a job the cluster neither holds nor saw end.

    The message names the id. Recover: check it (attach takes the id printed when the job was
    detached), and check that this is the cluster it ran on (each Python environment has its
    own embedded cluster); `burla jobs list` shows the jobs kept.
    """


class JobCollected(BurlaError):
    """A detached job's results went to another process: it collected them all (the job is
    gone; the message says when), or it attached after this one and collects them now.

    Results are delivered to one process only. Recover: use them where they were collected, or
    run the job again.
    """


class VersionMismatch(BurlaError):
    """Client and cluster speak different protocol versions; the message names both.

    Recover: install the cluster's burla version on the client, or upgrade the cluster.
    """


class Unauthorized(BurlaError):
    """The cluster refused our credentials.

    Recover: pass the cluster's token as `api_key=` or in BURLA_API_KEY (the coordinator's
    `--token-file` holds it).
    """


class ClusterUnreachable(BurlaError):
    """No answer from the cluster within the connect timeout; the message says what was tried.

    Recover: check the address in BURLA_CLUSTER, or unset it to use the embedded cluster
    (`burla local up`).
    """


class ClusterStorageError(BurlaError):
    """The cluster could not store a detached job: the disk of the coordinator's state dir is
    full (or failed). The message names the state dir and its free space.

    The job is refused, or fails and frees its slots; other jobs go on. Recover: free space in
    that state dir, or run the job without `detach=True` (an attached job keeps nothing on the
    cluster's disk).
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
    OutOfMemory,
    JobCanceled,
    JobNotFound,
    JobCollected,
    VersionMismatch,
    Unauthorized,
    ClusterUnreachable,
    ClusterStorageError,
    RemoteError,
)
