"""The executor's end-of-job hygiene: the fingerprint names each change a job can leave and
none of what calls ordinarily do, the leftovers of a call are killed and reaped, a failed fork
at the pid limit says so, and a runner that was changed runs nothing more."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cloudpickle
import pytest

from burla import protocol
from burla.exec import leftovers
from burla.exec.fingerprint import Fingerprint
from burla.exec.runner import Runner

pytestmark = pytest.mark.timeout(30)

# Runs in a fresh interpreter: the runtime as an executor has it, the fingerprint, then the
# job's code, then the changes found, as JSON on the real stdout.
FINGERPRINT_SCRIPT = """
import builtins, gc, io, os, signal, sys, types, ctypes, subprocess, threading, time
import cloudpickle, tblib.pickling_support, zmq, msgpack
import burla, burla.exec.runner
from burla.exec import fingerprint as module, leftovers
leftovers.become_subreaper()
if {disable_versions}:
    module._versions_work = lambda: False
fingerprint = module.Fingerprint()
out = os.dup(1)
{code}
import json
os.write(out, json.dumps(fingerprint.changes()).encode())
"""


def changes_after(code: str, disable_versions: bool = False) -> list[str]:
    script = FINGERPRINT_SCRIPT.format(code=textwrap.dedent(code),
                                       disable_versions=disable_versions)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=20)
    assert done.returncode == 0, done.stderr.decode()
    found: list[str] = json.loads(done.stdout.decode().rsplit("\n", 1)[-1] or "[]")
    return found


@pytest.mark.parametrize(("code", "named"), [
    ("builtins.len = lambda obj: 42", "changed builtins.len"),
    ("builtins.helper = print", "changed builtins.helper"),
    ("del builtins.input", "changed builtins.input"),
    ("import pickle; pickle.dumps = None", "changed pickle.dumps"),
    ("burla.protocol.encode = None", "changed burla.protocol.encode"),
    ("sys.modules['pickle'] = types.ModuleType('pickle')", "module pickle in sys.modules"),
    ("os.close(0)", "fd 0"),
    ("os.close(1); os.close(2)", "fd 2"),
    ("os.dup2(os.open(os.devnull, os.O_WRONLY), 2)", "fd 2"),
    ("os.set_blocking(1, False)", "fd 1"),
    ("signal.signal(signal.SIGTERM, lambda *a: None)", "handler of SIGTERM"),
    ("signal.signal(signal.SIGINT, signal.SIG_IGN)", "handler of SIGINT"),
    ("signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})", "blocked signal mask"),
    ("signal.alarm(100)", "interval timer armed"),
    ("os.chdir('/')", "the working directory"),
    ("import tempfile; d = tempfile.mkdtemp(); os.chdir(d); os.rmdir(d)",
     "the working directory"),
    ("os.umask(0o077)", "the umask"),
    ("sys.stdout = io.StringIO()", "sys.stdout"),
    ("sys.settrace(lambda *a: None)", "trace function"),
    ("gc.disable()", "gc.isenabled()"),
    ("ctypes.CDLL(None).prctl(36, 0, 0, 0, 0)", "adopts orphans"),
])
def test_the_fingerprint_names_what_a_job_changed(code: str, named: str) -> None:
    found = changes_after(code)
    assert any(named in change for change in found), found


@pytest.mark.parametrize("code", ["builtins.len = lambda obj: 42", "burla.protocol.encode = 1"])
def test_without_dict_versions_the_values_themselves_are_compared(code: str) -> None:
    assert changes_after(code, disable_versions=True) == [f"changed {code.split(' =')[0]}"]
    assert changes_after("import burla.client.api", disable_versions=True) == []


def test_what_calls_ordinarily_do_changes_nothing() -> None:
    assert changes_after("""
        import json, decimal, colorsys
        print("output"); sys.stderr.write("more\\n")
        subprocess.run(["true"], check=True)
        worker = threading.Thread(target=time.sleep, args=(0.01,)); worker.start(); worker.join()
        try:
            raise ValueError("a user error")
        except ValueError:
            pass
        import burla.client.api
        os.environ["SOMETHING"] = "set"
        signal.signal(signal.SIGUSR1, signal.getsignal(signal.SIGUSR1))  # put back as it was
        cloudpickle.loads(cloudpickle.dumps(lambda x: x))
    """) == []


KILL_SCRIPT = """
import os, signal, sys, time
from burla.exec import leftovers
assert leftovers.become_subreaper()
for _ in range(5):  # zombies
    if os.fork() == 0:
        os._exit(0)
if os.fork() == 0:  # a daemon: setsid and a double fork, its parent gone
    os.setsid()
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(60)
        os._exit(0)
    os._exit(0)
stubborn = os.fork()
if stubborn == 0:  # forks on and on until killed
    while True:
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        time.sleep(0.001)
time.sleep(0.2)
before = len(leftovers.children())
count, gone = leftovers.kill_leftovers()
print(before, count, gone, leftovers.children(), leftovers.kill_leftovers())
"""


def test_kill_leftovers_ends_daemons_fork_loops_and_zombies_and_reaps_them() -> None:
    done = subprocess.run([sys.executable, "-c", KILL_SCRIPT], capture_output=True, text=True,
                          timeout=20)
    assert done.returncode == 0, done.stderr
    before, count, gone, after, again = done.stdout.split(maxsplit=4)
    # 5 zombies, the daemon (reparented to us), the fork loop; the middle process was reaped.
    assert int(before) >= 7 and int(count) >= int(before)
    assert (gone, after, again.strip()) == ("True", "[]", "(0, True)")


def test_a_refused_fork_at_the_pid_limit_gets_a_note_once(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pids.max").write_text("64\n")
    (tmp_path / "pids.events").write_text("max 0\n")
    monkeypatch.setattr(leftovers, "_pids_cgroup", lambda: str(tmp_path))
    limit = leftovers.PidLimit()
    unrelated = BlockingIOError(11, "a non-blocking read found nothing")
    limit.explain(unrelated)
    assert not getattr(unrelated, "__notes__", None)  # the cgroup refused no fork
    (tmp_path / "pids.events").write_text("max 3\n")
    refused = BlockingIOError(11, "Resource temporarily unavailable")
    limit.explain(refused)
    assert "at most 64 at once" in refused.__notes__[0]
    assert "--executor-pids-max" in refused.__notes__[0]
    again = BlockingIOError(11, "Resource temporarily unavailable")
    limit.explain(again)
    assert not getattr(again, "__notes__", None)  # no new refusal since
    (tmp_path / "pids.events").write_text("max 4\n")
    thread = RuntimeError("can't start new thread")
    limit.explain(thread)
    assert "at most 64" in thread.__notes__[0]
    other = ValueError("bad")
    limit.explain(other)
    assert not getattr(other, "__notes__", None)


class FakeLink:
    """The runner's side of the link: messages to receive, and what it sent."""

    def __init__(self, incoming: list[protocol.Message]) -> None:
        self.incoming = incoming
        self.sent: list[protocol.Message] = []
        self.job_id = ""
        self.due = self.busy = False

    def recv(self) -> protocol.Message:
        return self.incoming.pop(0)

    def send(self, msg: protocol.Message) -> None:
        self.sent.append(msg)


def chdir_and_return(x: int) -> int:
    os.chdir("/")
    return x


def test_a_runner_that_a_job_changed_retires_and_runs_nothing_of_the_next_job(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # restored after the test, whatever the job did
    monkeypatch.setattr(leftovers, "kill_leftovers", lambda: (0, True))  # not pytest's children
    function = cloudpickle.dumps(chdir_and_return)
    inputs = pickle.dumps([1])
    link = FakeLink([
        protocol.Load("job-a", "f", {}, function),
        protocol.Chunk("job-a", 0, 0, 0, 1, 0, False, inputs),
        # No Release came first: the next job's Load is where the runner notices the change.
        protocol.Load("job-b", "f", {}, b""),
        protocol.Chunk("job-b", 0, 0, 0, 1, 0, False, inputs),
        protocol.Shutdown("done"),
    ])
    capture = SimpleNamespace(texts=([], []), exact=False, running_index=-1)
    Runner(link, capture, Fingerprint()).serve()  # type: ignore[arg-type]
    assert [type(msg) for msg in link.sent] == [protocol.Results, protocol.Retire]
    assert link.sent[0].job_id == "job-a"  # type: ignore[attr-defined]
    assert "the working directory" in link.sent[1].reason  # type: ignore[attr-defined]


def test_a_clean_job_end_keeps_the_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(leftovers, "kill_leftovers", lambda: (0, True))
    link = FakeLink([
        protocol.Load("job-a", "f", {}, cloudpickle.dumps(abs)),
        protocol.Chunk("job-a", 0, 0, 0, 1, 0, False, pickle.dumps([-1])),
        protocol.Release("job-a", False),
        protocol.Load("job-b", "f", {}, b""),
        protocol.Chunk("job-b", 0, 0, 0, 1, 0, False, pickle.dumps([-2])),
        protocol.Shutdown("done"),
    ])
    capture = SimpleNamespace(texts=([], []), exact=False, running_index=-1)
    Runner(link, capture, Fingerprint()).serve()  # type: ignore[arg-type]
    results: list[Any] = [pickle.loads(msg.data) for msg in link.sent]  # type: ignore[attr-defined]
    assert results == [[1], [2]]
    assert os.getcwd()  # unchanged by the runner


@pytest.mark.skipif(sys.implementation.name != "cpython", reason="CPython's dict versions")
def test_cpython_dict_versions_are_read_so_the_common_check_is_cheap() -> None:
    from burla.exec import fingerprint

    assert fingerprint._versions_work()
    namespace: dict[str, Any] = {"f": len}
    versions = fingerprint.DictVersions((namespace,))
    assert versions.unchanged()
    namespace["f"] = abs
    assert not versions.unchanged()
    versions.rebase()
    assert versions.unchanged()
