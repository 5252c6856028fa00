"""Through the real `burla` command: the embedded cluster's life, the example, daemons' signals."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[2]


def burla(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "burla", *args], env=env, text=True,
                          capture_output=True, timeout=timeout)


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    """An environment with its own embedded cluster, stopped afterwards."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("BURLA_CLUSTER", "BURLA_API_KEY", "BURLA_PARENT_JOB")}
    env["BURLA_STATE_DIR"] = str(tmp_path / "state")
    env["BURLA_CONFIG_DIR"] = str(tmp_path / "config")
    yield env
    burla("local", "down", env=env)


def test_help_lists_the_daemons_and_commands(home):
    out = burla("--help", env=home).stdout
    for command in ("coordinator", "agent", "exec", "local", "status"):
        assert command in out


def test_embedded_cluster_starts_on_first_call_is_reused_and_stops(home):
    assert burla("local", "status", env=home).returncode == 1
    example = subprocess.run([sys.executable, str(ROOT / "examples" / "hello.py")], env=home,
                             text=True, capture_output=True, timeout=90)
    assert example.returncode == 0, example.stderr
    assert example.stdout.count("working on") == 10
    assert "results: [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]" in example.stdout
    first = burla("local", "status", env=home)
    assert first.returncode == 0 and "running at tcp://127.0.0.1:" in first.stdout
    again = subprocess.run([sys.executable, str(ROOT / "examples" / "hello.py")], env=home,
                           text=True, capture_output=True, timeout=90)
    assert again.returncode == 0, again.stderr
    assert burla("local", "status", env=home).stdout == first.stdout  # same processes reused
    status = burla("status", env=home)
    assert "0/" in status.stdout and "CPUs in use" in status.stdout
    assert f"calls run in environment {sys.prefix} (Python " in status.stdout
    assert f"for environment {sys.prefix} (Python " in first.stdout
    assert "stopped" in burla("local", "down", env=home).stdout
    assert burla("local", "status", env=home).returncode == 1


def test_embedded_cluster_stops_itself_when_idle(home):
    home["BURLA_LOCAL_IDLE_TIMEOUT"] = "2"
    assert burla("local", "up", env=home).returncode == 0
    pids = record(home)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        alive = [p for p in (pids["coordinator_pid"], pids["agent_pid"]) if _alive(p)]
        if not alive:
            break
        time.sleep(0.2)
    assert not alive, "the idle embedded cluster did not stop by itself"


def record(home: dict[str, str]) -> dict:
    """The embedded cluster's record (this test environment has one interpreter's)."""
    [path] = (Path(home["BURLA_STATE_DIR"]) / "local").glob("*/cluster.json")
    return json.loads(path.read_text())


def _alive(pid: int) -> bool:
    try:
        return b"burla" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def test_daemon_sends_watchdog_pings_and_stops_on_sigterm(tmp_path, home):
    import socket

    name = f"burla-wd-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind("\0" + name)
        notify.settimeout(10)
        env = dict(home, NOTIFY_SOCKET="@" + name, WATCHDOG_USEC="500000")
        (tmp_path / "token").write_text("t")
        daemon = subprocess.Popen(
            [sys.executable, "-m", "burla", "coordinator", "--endpoint", "tcp://127.0.0.1:0",
             "--state-dir", str(tmp_path / "c"), "--token-file", str(tmp_path / "token")],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        seen = set()
        while not {"READY=1", "WATCHDOG=1"} <= seen:
            seen.update(notify.recv(4096).decode().splitlines())
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=10) == 0
        assert b"coordinator_stopping" in daemon.stderr.read()


SPINNER_SCRIPT = """
from burla import remote_parallel_map
import time
def f(x):
    print(f"line from {x}")
    time.sleep(0.4)
    return x
print(remote_parallel_map(f, range(6)))
"""


def test_spinner_shows_on_a_terminal_and_keeps_lines_whole(home):
    burla("local", "up", env=home)
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", SPINNER_SCRIPT], env=home,
                            stdin=terminal, stdout=terminal, stderr=terminal)
    os.close(terminal)
    output = b""
    while True:
        ready, _, _ = select.select([controller], [], [], 30)
        if not ready:
            break
        try:
            data = os.read(controller, 65536)
        except OSError:
            break
        if not data:
            break
        output += data
    proc.wait(timeout=30)
    os.close(controller)
    text = output.decode(errors="replace")
    assert "/6 done" in text  # the status line was drawn
    for x in range(6):
        assert f"line from {x}\r\n" in text or f"line from {x}\n" in text
    assert "[0, 1, 2, 3, 4, 5]" in text


def test_spinner_stays_out_of_pipes(home):
    done = subprocess.run([sys.executable, "-c", SPINNER_SCRIPT], env=home, text=True,
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "done" not in done.stderr and "\x1b[" not in done.stdout + done.stderr
    assert sorted(done.stdout.splitlines()[:-1]) == [f"line from {x}" for x in range(6)]


def test_status_of_a_stopped_embedded_cluster_says_so_and_starts_nothing(home):
    for command in (("status",), ("jobs", "list")):
        down = burla(*command, env=home)
        assert down.returncode == 1, down
        assert "embedded cluster: not running" in down.stdout + down.stderr
        assert "burla local up" in down.stdout + down.stderr
    assert burla("local", "status", env=home).returncode == 1  # still down
    assert not list(Path(home["BURLA_STATE_DIR"]).glob("local/*/cluster.json"))


SLOW_SCRIPT = """
import sys, time
from burla import remote_parallel_map, JobCanceled
SECONDS = float(sys.argv[1])  # travels with the function
def slow(x):
    print("started", x, flush=True)
    time.sleep(SECONDS)
    return x
try:
    print("results:", remote_parallel_map(slow, range(4), spinner=False), flush=True)
except JobCanceled as exc:
    print("JobCanceled:", exc, flush=True)
    sys.exit(3)
"""


def start_slow_job(home: dict[str, str], seconds: float) -> subprocess.Popen[str]:
    """A client running four calls of `seconds` each; returns once the first has started."""
    client = subprocess.Popen([sys.executable, "-c", SLOW_SCRIPT, str(seconds)], env=home,
                              text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert client.stdout is not None
    line = client.stdout.readline()
    assert line.startswith("started"), line + client.stdout.read()
    return client


def test_local_down_during_a_job_ends_it_with_job_canceled(home):
    client = start_slow_job(home, 20)
    try:
        assert "stopped" in burla("local", "down", env=home).stdout
        out, _ = client.communicate(timeout=30)
    finally:
        client.kill()
    assert client.returncode == 3, out
    assert "JobCanceled: the embedded cluster was stopped by `burla local down`" in out
    assert burla("local", "status", env=home).returncode == 1  # not started again


def test_a_crashed_embedded_cluster_is_started_again_and_the_job_finishes(home):
    client = start_slow_job(home, 1)
    try:
        crashed = record(home)
        os.kill(crashed["coordinator_pid"], signal.SIGKILL)
        out, _ = client.communicate(timeout=90)
    finally:
        client.kill()
    assert client.returncode == 0, out
    assert "results: [0, 1, 2, 3]" in out
    assert record(home)["coordinator_pid"] != crashed["coordinator_pid"]


def test_jobs_commands_refuse_a_bad_job_id_quoting_it_short(home):
    for command in ("show", "logs", "cancel"):
        done = burla("jobs", command, "x" * 100_000, env=home)
        assert done.returncode == 2, done
        assert "is not a burla job id" in done.stderr and "(100000 characters)" in done.stderr
        assert len(done.stdout + done.stderr) < 200, done.stderr
    assert burla("local", "status", env=home).returncode == 1  # no cluster was started
