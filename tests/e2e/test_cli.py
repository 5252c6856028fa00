"""Through the real `burla` command: the embedded cluster's life, the example, daemons' signals."""

from __future__ import annotations

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
    assert "stopped" in burla("local", "down", env=home).stdout
    assert burla("local", "status", env=home).returncode == 1


def test_embedded_cluster_stops_itself_when_idle(home):
    home["BURLA_LOCAL_IDLE_TIMEOUT"] = "2"
    assert burla("local", "up", env=home).returncode == 0
    state = Path(home["BURLA_STATE_DIR"]) / "local" / "cluster.json"
    import json

    pids = json.loads(state.read_text())
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        alive = [p for p in (pids["coordinator_pid"], pids["agent_pid"]) if _alive(p)]
        if not alive:
            break
        time.sleep(0.2)
    assert not alive, "the idle embedded cluster did not stop by itself"


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
