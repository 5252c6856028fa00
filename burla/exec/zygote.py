"""The fork server: imports the executor runtime once and forks executors when its agent asks.

It holds no ZeroMQ context (each executor makes its own after the fork), runs no user code
itself, and decides no limits: the agent puts each child in its cgroup before telling it to go.
If the agent dies (its socket closes, or the death signal SIGTERM arrives), the zygote kills
its children and removes the agent's cgroup roots, so a killed agent leaves nothing behind.

The agent talks to it over one SOCK_SEQPACKET socket, one msgpack map per packet:

    agent -> zygote   {"op": "roots", "roots"}  the agent's cgroup roots, removed if it dies
                      {"op": "fork", "id", "endpoint", "env", "sandbox": spec fields | None}
                      {"op": "go", "id", "ok"}      the child is in its cgroup (ok) or must quit
                      {"op": "quit"}
    zygote -> agent   {"op": "ready", "pid"}
                      {"op": "forked", "id", "pid"}
                      {"op": "exited", "id", "pid", "status", "crash", "output", "lost"}
                                    raw wait status, what faulthandler wrote if it died of a
                                    fatal signal, and its last words: output it captured and
                                    had not sent ([index, stream, text], index -1: the input
                                    it died in; `lastwords`), and how many lines were lost
                      {"op": "fork_failed", "id", "error"}
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import resource
import select
import signal
import socket
import sys
import traceback
from pathlib import Path
from typing import Any, NoReturn

import msgpack

from burla.exec import lastwords
from burla.exec.lastwords import Pipes

# A child's exit status when it failed before running the executor (the sandbox's reapers
# and `docker run` use the same).
SETUP_FAILED_EXIT = 125
# Largest control packet; a fork request holds the job environment and the sandbox spec.
MAX_PACKET_BYTES = 1 << 20
# Most of an executor's crash report (faulthandler's traceback) passed on to the agent, and
# the pipe it is written into.
MAX_CRASH_REPORT_BYTES = 32 * 1024
# Largest `exited` packet: a SOCK_SEQPACKET message must fit the socket's send buffer (about
# 208 KiB by default), or sending it fails.
MAX_EXITED_BYTES = 192 * 1024
CRASH_PIPE_BYTES = 256 * 1024
_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15


def pack(msg: dict[str, Any]) -> bytes:
    return msgpack.packb(msg, use_bin_type=True)


def unpack(data: bytes) -> dict[str, Any]:
    msg = msgpack.unpackb(data, raw=False, strict_map_key=False)
    if not isinstance(msg, dict) or not isinstance(msg.get("op"), str):
        raise ValueError(f"zygote packet is not an op map: {msg!r}")
    return msg


def set_death_signal(sig: int) -> None:
    """Ask the kernel to send `sig` when our parent dies (the agent, for the zygote)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)


def set_process_name(name: bytes) -> None:
    """What ps -o comm and top show (a fork keeps the zygote's command line)."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_NAME, ctypes.c_char_p(name[:15]), 0, 0, 0)


def _preimport() -> None:
    """Everything an executor loads before user code, so a fork starts with it in memory."""
    import cloudpickle  # noqa: F401
    import tblib.pickling_support  # noqa: F401
    import zmq  # noqa: F401  # the module only: a context made here would break in children

    import burla  # noqa: F401  # the client too: calls may start nested jobs
    import burla.agent.sandbox  # noqa: F401
    import burla.exec.capture  # noqa: F401
    import burla.exec.link  # noqa: F401
    import burla.exec.runner  # noqa: F401


class Zygote:
    """The fork loop. Reaps its children and reports each exit with its wait status."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.agent_gone = False
        self.cgroup_roots: list[str] = []  # removed if the agent dies first
        self.children: dict[int, str] = {}  # pid -> executor id
        self.go_fds: dict[str, int] = {}  # executor id -> write end of its go pipe
        self.crash_fds: dict[int, int] = {}  # pid -> read end of its crash report pipe
        self.outputs: dict[int, Pipes] = {}  # pid -> its fds 1 and 2 and journal, read at death
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda _sig, _frame: None)  # wakes select via the fd
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the agent's
        signal.signal(signal.SIGTERM, self._on_sigterm)  # also our death signal: agent gone

    def _on_sigterm(self, _sig: int, _frame: Any) -> None:
        self.agent_gone = True

    def send(self, msg: dict[str, Any]) -> None:
        self.sock.sendall(pack(msg))

    def run(self) -> bool:
        """Serve until told to quit (False) or until the agent is gone (True)."""
        import gc

        gc.freeze()  # the runtime's objects stay shared with every child, never copied by gc
        self.send({"op": "ready", "pid": os.getpid()})
        while not self.agent_gone:
            readable, _, _ = select.select([self.sock.fileno(), self.wake_r], [], [])
            if self.wake_r in readable:
                while True:
                    try:
                        if not os.read(self.wake_r, 4096):
                            break
                    except BlockingIOError:
                        break
                self.reap()
            if self.sock.fileno() in readable:
                data = self.sock.recv(MAX_PACKET_BYTES)
                if not data:
                    return True
                msg = unpack(data)
                if msg["op"] == "fork":
                    self.fork(msg)
                elif msg["op"] == "roots":
                    self.cgroup_roots = [str(root) for root in msg["roots"]]
                elif msg["op"] == "go":
                    self.go(msg["id"], bool(msg["ok"]))
                elif msg["op"] == "quit":
                    return False
        return True

    def fork(self, msg: dict[str, Any]) -> None:
        executor_id = str(msg["id"])
        go_r, go_w = os.pipe()
        crash_r, crash_w = crash_pipe()
        try:
            pipes = Pipes.make()
        except OSError as e:
            for fd in (go_r, go_w, crash_r, crash_w):
                os.close(fd)
            self.send({"op": "fork_failed", "id": executor_id, "error": str(e)})
            return
        try:
            pid = os.fork()
        except OSError as e:
            for fd in (go_r, go_w, crash_r, crash_w):
                os.close(fd)
            pipes.close(pipes.fds())
            self.send({"op": "fork_failed", "id": executor_id, "error": str(e)})
            return
        if pid == 0:
            os.close(go_w)
            os.close(crash_r)
            _child(msg, go_r, crash_w, pipes, self.sock.detach())
        os.close(go_r)
        os.close(crash_w)
        pipes.close(pipes.write_fds)  # the read ends stay: read once the child is reaped
        self.children[pid] = executor_id
        self.go_fds[executor_id] = go_w
        self.crash_fds[pid] = crash_r
        self.outputs[pid] = pipes
        self.send({"op": "forked", "id": executor_id, "pid": pid})

    def go(self, executor_id: str, ok: bool) -> None:
        fd = self.go_fds.pop(executor_id, None)
        if fd is None:
            return  # it died before the agent answered; its exit is on its way
        try:
            os.write(fd, b"1" if ok else b"0")
        except BrokenPipeError:
            pass
        os.close(fd)

    def reap(self) -> None:
        """Report every exited child; kill its process group first, while its pid is held."""
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None:
                return
            pid = info.si_pid
            try:  # subprocesses the user left behind in its session (the zombie holds the id)
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            _, status = os.waitpid(pid, 0)
            executor_id = self.children.pop(pid, "")
            fd = self.go_fds.pop(executor_id, None)
            if fd is not None:
                os.close(fd)
            crash = _read_crash_report(self.crash_fds.pop(pid, -1))
            output: list[list[Any]] = []
            lost = 0
            pipes = self.outputs.pop(pid, None)
            if pipes is not None:  # dead and reaped: its pipes are ours to read now
                try:
                    output, lost = lastwords.collect(pipes)
                except Exception as e:  # a dead process's leftovers must not stop the zygote
                    output = [[-1, 2, f"[burla] its last output could not be read: {e}\n"]]
            exited = {"op": "exited", "id": executor_id, "pid": pid, "status": status,
                      "crash": crash, "output": output, "lost": lost}
            if len(pack(exited)) > MAX_EXITED_BYTES:  # never: lastwords bounds it; but a
                exited["output"] = []  # packet this socket cannot take would end the zygote
                exited["lost"] = lost + sum(str(e[2]).count("\n") or 1 for e in output)
            self.send(exited)

    def stop(self) -> None:
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in list(self.children):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


def crash_pipe() -> tuple[int, int]:
    """The pipe a child's faulthandler writes into and the zygote reads once the child is dead.
    Neither end blocks: a dying process must never hang on its report (room for the longest
    one faulthandler writes, 100 frames; a full pipe drops the rest), nor the zygote on an
    empty pipe."""
    read_fd, write_fd = os.pipe()
    with contextlib.suppress(OSError):  # an older kernel: the default 64 KiB
        fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, CRASH_PIPE_BYTES)
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    return read_fd, write_fd


def _read_crash_report(fd: int) -> str:
    """What the dead child's faulthandler wrote (usually nothing); closes `fd`."""
    if fd < 0:
        return ""
    try:  # one read takes all a pipe holds, up to the limit
        data = os.read(fd, MAX_CRASH_REPORT_BYTES)
    except BlockingIOError:  # nothing was written
        data = b""
    finally:
        os.close(fd)
    return without_runtime_frames(data.decode("utf-8", "replace"))


def without_runtime_frames(report: str) -> str:
    """faulthandler's report without the frames below the user's call (the executor's runner,
    this zygote, the interpreter's start-up), as a remote exception's traceback leaves them."""
    runtime = os.path.dirname(os.path.abspath(__file__)) + os.sep
    kept = []
    below_user_code = False
    for line in report.splitlines(keepends=True):
        if line.startswith('  File "'):
            below_user_code = below_user_code or runtime in line or "<frozen runpy>" in line
            if below_user_code:
                continue
        else:
            below_user_code = False
        kept.append(line)
    return "".join(kept)


def _close_fds_except(keep: list[int]) -> None:
    """Close every fd from 3 up but those in `keep`: nothing of the zygote's, nor of another
    executor's, reaches the child."""
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))


def _child(msg: dict[str, Any], go_r: int, crash_w: int, pipes: Pipes,
           control_fd: int) -> NoReturn:
    """In the fork: wait to be placed in the cgroup, then (sandbox and) run the executor."""
    code = SETUP_FAILED_EXIT
    try:
        zygote = os.getppid()
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        os.setsid()  # its own process group: the zygote kills what is left of it at exit
        set_death_signal(signal.SIGKILL)
        if os.getppid() != zygote:
            os._exit(code)
        set_process_name(b"burla-exec")
        os.close(control_fd)
        _close_fds_except([go_r, crash_w, *pipes.fds()])
        resource.setrlimit(resource.RLIMIT_NOFILE, _EXECUTOR_NOFILE)
        if os.read(go_r, 1) != b"1":  # the agent could not place us in our cgroup
            os._exit(code)
        os.close(go_r)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash never dumps user data
        os.environ.update(msg["env"])
        sys.argv = ["burla-exec", "--id", str(msg["id"])]
        parent = zygote
        if msg.get("sandbox") is not None:
            from burla.agent.sandbox import SandboxError, enter_sandbox

            try:
                enter_sandbox(sandbox_spec(msg["sandbox"]))
            except SandboxError as e:
                os.write(2, f"burla executor {msg['id']}: {e}\n".encode())
                os._exit(code)
            parent = 1  # pid 1 of the new pid namespace, the sandbox's reaper
        from burla.exec.runner import main

        code = 1
        main(str(msg["endpoint"]), str(msg["id"]), parent=parent, crash_fd=crash_w,
             pipes=pipes)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


# The open-files limit the zygote started with, given back to each executor.
_EXECUTOR_NOFILE = resource.getrlimit(resource.RLIMIT_NOFILE)


def _raise_fd_limit() -> None:
    """The zygote holds four fds per live executor (its output pipes, journal and crash
    report): a node with hundreds of CPUs would pass the usual soft limit of 1024."""
    soft, hard = _EXECUTOR_NOFILE
    wanted = 1 << 16 if hard == resource.RLIM_INFINITY else min(hard, 1 << 16)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def sandbox_spec(fields: dict[str, Any]) -> Any:
    """The SandboxSpec a fork request carries (lists back to tuples, rlimits keyed by int)."""
    from burla.agent.sandbox import SandboxSpec

    values: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()
    }
    values["rlimits"] = {int(k): tuple(v) for k, v in fields.get("rlimits", {}).items()}
    return SandboxSpec(**values)


def serve(control_fd: int) -> None:
    """Run the zygote on the socket the agent passed as `control_fd`, until told to quit.

    If the agent dies first, the cgroup roots it named (op "roots") are removed here.
    """
    agent = os.getppid()
    set_death_signal(signal.SIGTERM)
    _raise_fd_limit()
    _preimport()
    zygote = Zygote(socket.socket(fileno=control_fd))
    agent_gone = True
    try:
        if os.getppid() == agent:
            agent_gone = zygote.run()
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        zygote.stop()
    if agent_gone and zygote.cgroup_roots:
        from burla.agent.cgroups.base import remove_tree

        for root in zygote.cgroup_roots:
            try:
                remove_tree(Path(root))
            except Exception as e:  # best effort: the next agent's cleanup_stale retries
                os.write(2, f"burla zygote: cannot remove cgroup {root}: {e}\n".encode())
