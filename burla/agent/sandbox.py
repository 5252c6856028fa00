"""Puts a freshly forked executor into its sandbox; decides no policy, never talks to the agent."""

from __future__ import annotations

import contextlib
import errno
import functools
import gc
import os
import resource
import select
import signal
import stat
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any, NoReturn

from burla.agent.reach import Way
from burla.agent.syscalls import (
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    PR_SET_NO_NEW_PRIVS,
    PR_SET_PDEATHSIG,
    SandboxError,
    check,
    libc,
    mount,
    step,
)

# The conventional overflow uid/gid ('nobody'/'nogroup'): it owns no files.
NOBODY = 65534
CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWPID = 0x00020000, 0x08000000, 0x20000000
# systemd's PrivateTmp= pair plus /dev/shm: the world-writable places executors would share.
PRIVATE_TMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")
# What a private /dev always holds, as in a container runtime's default /dev.
BASIC_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty")
DEV_SYMLINKS = {"fd": "/proc/self/fd", "ptmx": "pts/ptmx"} | {
    name: f"/proc/self/fd/{fd}" for fd, name in enumerate(("stdin", "stdout", "stderr"))
}
# Signals the reapers pass on to the executor: the ones an agent or a terminal stops it with.
FORWARDED_SIGNALS = tuple(signal.Signals[f"SIG{n}"] for n in "TERM INT HUP QUIT USR1 USR2".split())
# A reaper's exit status when the executor could not be started (the runtime's own failure,
# as `docker run` and `env` use 125).
SETUP_FAILED_EXIT = 125
Nodes = list[tuple[str, os.stat_result]]  # device path and its host stat
_RLIMIT_NAMES = {  # reversed so RLIMIT_NOFILE wins over its alias RLIMIT_OFILE
    getattr(resource, n): n for n in sorted(dir(resource), reverse=True) if n.startswith("RLIMIT_")
}


@dataclass(frozen=True)
class SandboxSpec:
    """What one executor's sandbox looks like; the agent builds it, enter_sandbox applies it."""

    uid: int = NOBODY  # unprivileged uid/gid the executor runs as; 0 is refused
    gid: int = NOBODY
    hidden_paths: tuple[str, ...] = ()  # dirs get an empty mode-000 tmpfs, files /dev/null
    workdir: str | None = None  # chdir target; created 0700 and owned by uid if missing
    # By default no core files: one would spill user data onto the node.
    rlimits: dict[int, tuple[int, int]] = field(
        default_factory=lambda: {resource.RLIMIT_CORE: (0, 0)}
    )
    pdeath_signal: int = signal.SIGKILL
    # If set: /dev holds only BASIC_DEVICES plus these nodes (hides GPUs on cgroup v2).
    private_dev: tuple[str, ...] | None = None
    # Paths uid must still reach (the Python installation, burla itself): an ancestor closed to
    # uid (a Python under a 0700 /root), and a private tmp dir they lie under, are covered by a
    # tmpfs holding only the way back to them: the entries on it, symlinks included.
    exposed_paths: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.uid == 0 or self.gid == 0:
            raise ValueError(f"sandbox uid/gid must be unprivileged, got {self.uid}/{self.gid}")
        for path in (*self.hidden_paths, *self.exposed_paths, *filter(None, [self.workdir])):
            if not os.path.isabs(path):
                raise ValueError(f"sandbox paths must be absolute, got {path!r}")
        for device in self.private_dev or ():
            if not device.startswith("/dev/") or ".." in device:
                raise ValueError(f"private_dev entries must be paths under /dev/, got {device!r}")
        for limit, (soft, hard) in self.rlimits.items():
            if hard != resource.RLIM_INFINITY and not 0 <= soft <= hard:
                raise ValueError(
                    f"{_RLIMIT_NAMES.get(limit, limit)}: soft {soft} must be in 0..{hard}"
                )
        signal.Signals(self.pdeath_signal)  # ValueError names a bad signal number


def _set_pdeath_signal(sig: int) -> None:
    with step(f"prctl(PR_SET_PDEATHSIG, {signal.Signals(sig).name})"):
        check(libc().prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0))


def sandbox_supported() -> str | None:
    """None when enter_sandbox can work here, else the reason it cannot (for logs and skips)."""
    if not sys.platform.startswith("linux"):
        return f"namespaces need Linux, this is {sys.platform}"
    if os.geteuid() != 0:
        return f"the agent is not root (euid {os.geteuid()})"
    return _probe_namespaces()


@functools.cache
def _probe_namespaces() -> str | None:
    # A fresh interpreter, not a fork: the agent has threads, and forking those is unsafe.
    flags, propagation = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC, MS_REC | MS_PRIVATE
    probe = (
        "import ctypes as c\nl = c.CDLL(None, use_errno=True)\n"
        "l.mount.argtypes = [c.c_char_p] * 3 + [c.c_ulong, c.c_char_p]\n"
        f"if l.unshare({flags}) or l.mount(None, b'/', None, {propagation}, None):\n"
        "    raise SystemExit(c.get_errno())\n"
    )
    try:
        rc = subprocess.run([sys.executable, "-I", "-c", probe], timeout=30).returncode
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"could not run the namespace probe: {e}"
    if rc != 0:
        return f"unshare(mount|pid|ipc) or making / private failed: {errno.errorcode.get(rc, rc)}"
    return None


def enter_sandbox(spec: SandboxSpec) -> None:
    """Called in a freshly forked, single-threaded child; on return it is inside the sandbox.

    The calling process stays outside as a reaper: it unshares the namespaces, forks pid 1 of
    the new pid namespace (a second reaper, since pid 1 ignores signals it has no handler for
    and must reap orphans) and that forks the executor (pid 2), which alone returns here. The
    reapers forward FORWARDED_SIGNALS down, and end with the executor's exit status or signal;
    they never return into the caller. Every level sets spec.pdeath_signal, so killing the
    caller's parent ends all of them, and pid 1 exiting SIGKILLs whatever the user left.

    The caller must, before calling: put this process in its cgroup (children inherit it),
    connect any socket to the agent (connected fds keep working; a path under hidden_paths
    cannot be reconnected), and close fds that lead into hidden paths. On SandboxError it
    must report and `os._exit`: the process may still be root.
    """
    parent = os.getppid()
    libc()
    hidden = [(path, os.path.isdir(path)) for path in _existing(spec.hidden_paths, "hide")]
    devices = None if spec.private_dev is None else _device_nodes(spec.private_dev)
    emptied = _private_tmp_dirs(spec.private_dev is not None)
    way = Way.to(spec.exposed_paths, spec.uid, spec.gid, emptied)
    bridged = way.bridge_under(spec.workdir) if spec.workdir else None
    if bridged:  # it would be the host's own dir, created in as root, and the call's cwd
        why = f"it lies in {bridged}, which the sandbox shares to reach the runtime"
        raise SandboxError(f"create workdir {spec.workdir}", f"{why}; move the runtime out of it",
                           errno.EEXIST)
    _set_pdeath_signal(spec.pdeath_signal)
    if os.getppid() != parent:
        raise SandboxError("watch the parent", f"parent {parent} died before the sandbox")
    with step("unshare mount, pid and ipc namespaces"):
        check(libc().unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC))
    with step("make all mounts private (mount --make-rprivate /)"):
        mount(None, "/", None, MS_REC | MS_PRIVATE)  # else our mounts would reach the host

    # Blocked across both forks, so no signal lands before a reaper's handlers are installed.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED_SIGNALS)
    status_r, status_w = os.pipe()  # pid 1 -> outer reaper: the executor's raw wait status
    try:
        init_pid = os.fork()
    except OSError as e:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        raise SandboxError("fork pid 1 of the new pid namespace", str(e), e.errno) from e
    if init_pid:
        os.close(status_w)
        _outer_reaper(init_pid, status_r)
    os.close(status_r)
    _become_init(spec.pdeath_signal, status_w)  # returns only in the executor
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    _enter_as_executor(spec, hidden, devices, way)


def _private_tmp_dirs(private_dev: bool) -> tuple[str, ...]:
    """Real paths of the PRIVATE_TMP_DIRS there are; /dev/shm always under a private /dev."""
    dirs = []
    for tmp in PRIVATE_TMP_DIRS:
        if private_dev and tmp.startswith("/dev/"):
            dirs.append(tmp)  # created in the private /dev, a plain directory
        elif os.path.isdir(tmp):
            dirs.append(os.path.realpath(tmp))
    return tuple(dict.fromkeys(dirs))


def _existing(paths: tuple[str, ...], purpose: str) -> list[str]:
    resolved = []
    for path in paths:
        real = os.path.realpath(path)
        if not os.path.exists(real):
            why = "no such path; create it or hide its parent, lest what appears there leak"
            raise SandboxError(f"{purpose} {path}", why, errno.ENOENT)
        resolved.append(real)
    return resolved


def _device_nodes(extra: tuple[str, ...]) -> Nodes:
    nodes: dict[str, os.stat_result] = {}
    for path in (*BASIC_DEVICES, *extra):
        with step(f"stat device {path}"):
            try:
                st = os.stat(path)
            except FileNotFoundError:
                if path in BASIC_DEVICES:
                    continue  # a host without e.g. /dev/full: the sandbox goes without too
                raise
        if not (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            raise SandboxError(f"stat device {path}", "not a character or block device")
        nodes[path] = st
    return list(nodes.items())


def _become_reaper(child: int, keep_fd: int) -> None:
    gc.disable()  # a collection writes to every object and would un-share the zygote's pages
    signal.set_wakeup_fd(-1)
    for fd_range in ((3, keep_fd), (keep_fd + 1, os.sysconf("SC_OPEN_MAX"))):
        os.closerange(*fd_range)  # hold nothing of the caller's: sockets, pipes, files

    def forward(signum: int, _frame: Any) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    for sig in FORWARDED_SIGNALS:
        signal.signal(sig, forward)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED_SIGNALS)


def _outer_reaper(init_pid: int, status_r: int) -> NoReturn:
    """The caller's child: waits for pid 1, then exits the way the executor did."""
    try:
        _become_reaper(init_pid, status_r)
        _, status = os.waitpid(init_pid, 0)
        os.set_blocking(status_r, False)
        with contextlib.suppress(BlockingIOError):
            data = os.read(status_r, 4)
            if len(data) == 4:  # else pid 1 itself was killed: report that
                (status,) = struct.unpack("i", data)
        if os.WIFSIGNALED(status):
            _die_by_signal(os.WTERMSIG(status))
        os._exit(os.waitstatus_to_exitcode(status))
    except BaseException as e:
        _write_stderr(f"burla sandbox: outer reaper failed: {e!r}\n")
    finally:
        os._exit(SETUP_FAILED_EXIT)


def _become_init(pdeath_signal: int, status_w: int) -> None:
    """Runs as pid 1 of the new namespace; returns only in its child, the executor."""
    try:
        _set_pdeath_signal(pdeath_signal)
        # The outer reaper may have died before prctl took effect: no reader left on the pipe.
        poller = select.poll()
        poller.register(status_w, select.POLLOUT)
        if any(events & select.POLLERR for _, events in poller.poll(0)):
            os._exit(SETUP_FAILED_EXIT)
        executor = os.fork()
    except BaseException as e:
        _write_stderr(f"burla sandbox: pid 1 could not start the executor: {e}\n")
        os._exit(SETUP_FAILED_EXIT)
    if executor == 0:
        os.close(status_w)
        return
    try:
        _become_reaper(executor, status_w)
        while True:  # pid 1 inherits the user's orphans: reap them too
            pid, status = os.waitpid(-1, 0)
            if pid == executor:
                break
        os.write(status_w, struct.pack("i", status))
        os._exit(0)  # pid 1 exiting makes the kernel SIGKILL whatever is left in the namespace
    except BaseException as e:
        _write_stderr(f"burla sandbox: pid 1 failed: {e!r}\n")
    finally:
        os._exit(SETUP_FAILED_EXIT)


def _die_by_signal(sig: int) -> NoReturn:
    # Only the outer reaper does this: pid 1 of a namespace cannot be killed by its own signal.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the executor's SIGSEGV is not ours to dump
    if sig not in (signal.SIGKILL, signal.SIGSTOP):
        signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
    os.kill(os.getpid(), sig)
    os._exit(128 + sig)


def _write_stderr(text: str) -> None:
    with contextlib.suppress(OSError):
        os.write(2, text.encode())


def _enter_as_executor(
    spec: SandboxSpec,
    hidden: list[tuple[str, bool]],
    devices: Nodes | None,
    way: Way,
) -> None:
    """Pid 2: mounts, limits, then the irreversible drop to the unprivileged uid."""
    _set_pdeath_signal(spec.pdeath_signal)  # no race check: pid 1 dying SIGKILLs us anyway
    nodev = MS_NOSUID | MS_NODEV | MS_NOEXEC
    with step("mount a fresh /proc for the new pid namespace"):
        mount("proc", "/proc", "proc", nodev)  # the old one shows every host process
    bridges = way.open()  # before any cover hides what it bridges
    if devices is not None:
        _mount_private_dev(devices)
    way.cover(bridges)
    for path, is_dir in hidden:
        if path in way.emptied or not os.path.lexists(path):
            continue  # a private tmp dir, or under a covered dir and not on the way: out of reach
        with step(f"hide {path}"):
            if is_dir:
                mount("tmpfs", path, "tmpfs", MS_RDONLY | nodev, "mode=000,size=4k")
            else:
                mount("/dev/null", path, None, MS_BIND)
    workdir = spec.workdir or "/"  # always chdir: an old cwd could sit in a hidden path
    if not os.path.exists(workdir):
        with step(f"create workdir {workdir}"):
            os.makedirs(workdir, mode=0o700)
            os.chown(workdir, spec.uid, spec.gid)
    for limit, (soft, hard) in spec.rlimits.items():
        # Before the drop: raising a hard limit needs root.
        with step(f"setrlimit({_RLIMIT_NAMES.get(limit, limit)}, ({soft}, {hard}))"):
            resource.setrlimit(limit, (soft, hard))
    with step(f"drop to uid {spec.uid} gid {spec.gid}"):
        os.setgroups([])
        os.setresgid(spec.gid, spec.gid, spec.gid)
        os.setresuid(spec.uid, spec.uid, spec.uid)
    with step("prctl(PR_SET_NO_NEW_PRIVS, 1)"):
        check(libc().prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
    _set_pdeath_signal(spec.pdeath_signal)  # the kernel clears it when the uid changes
    with step(f"chdir to {workdir}"):
        os.chdir(workdir)
    _verify_dropped(spec)


def _mount_private_dev(devices: Nodes) -> None:
    with step("mount a tmpfs on /dev"):
        mount("tmpfs", "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=64k")
    for path, st in devices:
        with step(f"create device node {path}"):
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            os.mknod(path, st.st_mode, st.st_rdev)
            os.chown(path, st.st_uid, st.st_gid)
            os.chmod(path, stat.S_IMODE(st.st_mode))  # undo the umask
    with step("populate /dev"):
        for name, target in DEV_SYMLINKS.items():
            os.symlink(target, f"/dev/{name}")
        os.mkdir("/dev/shm")  # its tmpfs comes with PRIVATE_TMP_DIRS
        os.mkdir("/dev/pts")
    with step("mount a new devpts instance on /dev/pts"):
        mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666")


def _verify_dropped(spec: SandboxSpec) -> None:
    ids = (os.getresuid(), os.getresgid(), os.getgroups())
    if ids != ((spec.uid,) * 3, (spec.gid,) * 3, []):
        raise SandboxError("verify the uid drop", f"still running as uid/gid/groups {ids}")
    with contextlib.suppress(PermissionError):
        os.setuid(0)
        raise SandboxError("verify the uid drop", "setuid(0) succeeded after dropping privileges")
