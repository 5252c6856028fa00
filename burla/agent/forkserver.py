"""The agent's handle on its zygote: start it, ask it for forks, hear of their exits.

It decides nothing about limits or jobs, and runs on the agent's event loop without threads.
The wire format is burla.exec.zygote's.
"""

from __future__ import annotations

import asyncio
import select
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any

import structlog

from burla.agent import zygote_spawn
from burla.exec.zygote import MAX_PACKET_BYTES, pack, unpack

log = structlog.get_logger("burla.agent")

# A request the zygote has not taken within this long means it hangs: it is treated as lost.
SEND_TIMEOUT_S = 5.0
# How long a zygote told to quit may take before it is killed.
STOP_TIMEOUT_S = 5.0

OnForked = Callable[[str, int], None]
# Executor id, raw wait status, crash report, last words (entries [index, stream, text], index
# -1 for the input it died in) and how many lines of them were lost.
OnExited = Callable[[str, int, str, list[list[Any]], int], None]
OnFailed = Callable[[str, str], None]


class ForkServer:
    """One zygote process; `on_lost` is called (from the loop) if it dies unasked."""

    def __init__(self, on_forked: OnForked, on_exited: OnExited, on_failed: OnFailed,
                 on_lost: Callable[[], None], cgroup_roots: list[str]) -> None:
        """`cgroup_roots`: what the zygote removes should the agent die before it."""
        self.cgroup_roots = cgroup_roots
        self.on_forked = on_forked
        self.on_exited = on_exited
        self.on_failed = on_failed
        self.on_lost = on_lost
        self.process: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self.started_at = 0.0

    @property
    def pid(self) -> int:
        return self.process.pid if self.process is not None else 0

    def start(self) -> None:
        spawned = zygote_spawn.take()
        self.process, self.sock, self.started_at = spawned.process, spawned.sock, spawned.started_at
        self.sock.setblocking(False)
        asyncio.get_running_loop().add_reader(self.sock, self._readable)
        self._send({"op": "roots", "roots": self.cgroup_roots})

    def fork(self, executor_id: str, endpoint: str, env: dict[str, str],
             sandbox: dict[str, Any] | None) -> None:
        self._send({"op": "fork", "id": executor_id, "endpoint": endpoint, "env": env,
                    "sandbox": sandbox})

    def go(self, executor_id: str, ok: bool) -> None:
        """Let a forked child run (ok) or make it quit, once the agent placed it."""
        self._send({"op": "go", "id": executor_id, "ok": ok})

    def _send(self, msg: dict[str, Any]) -> None:
        if self.sock is None:
            return  # lost: on_lost has been or will be called, and will fail what was asked
        data = pack(msg)
        try:
            self.sock.send(data)
            return
        except BlockingIOError:
            pass
        except OSError as e:
            log.warning("zygote_send_failed", op=msg["op"], error=str(e))
            return  # its end: the reader sees EOF and calls on_lost
        _, writable, _ = select.select([], [self.sock], [], SEND_TIMEOUT_S)
        try:
            if not writable:
                raise TimeoutError(f"zygote took no request for {SEND_TIMEOUT_S}s")
            self.sock.send(data)
        except OSError as e:
            log.error("zygote_stuck", op=msg["op"], error=str(e))
            if self.process is not None:
                self.process.kill()  # its EOF then takes the lost path

    def _readable(self) -> None:
        assert self.sock is not None
        while True:
            try:
                data = self.sock.recv(MAX_PACKET_BYTES)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._lost()
                return
            try:
                msg = unpack(data)
                self._dispatch(msg)
            except Exception:
                log.exception("zygote_message_failed")

    def _dispatch(self, msg: dict[str, Any]) -> None:
        op = msg["op"]
        if op == "forked":
            self.on_forked(str(msg["id"]), int(msg["pid"]))
        elif op == "exited":
            self.on_exited(str(msg["id"]), int(msg["status"]), str(msg.get("crash", "")),
                           _entries(msg.get("output")), int(msg.get("lost", 0)))
        elif op == "fork_failed":
            self.on_failed(str(msg["id"]), str(msg["error"]))
        elif op == "ready":
            log.info("zygote_ready", pid=msg["pid"],
                     ms=round((time.monotonic() - self.started_at) * 1000, 1))

    def _close(self) -> int | None:
        """Stop reading, close the socket, reap the process if it ended; its exit code."""
        if self.sock is not None:
            asyncio.get_running_loop().remove_reader(self.sock)
            self.sock.close()
            self.sock = None
        if self.process is None:
            return None
        return self.process.poll()

    def _lost(self) -> None:
        code = self._close()
        if self.process is not None and code is None:
            self.process.kill()
            code = self.process.wait()
        log.error("zygote_lost", pid=self.pid, exit_code=code)
        self.process = None
        self.on_lost()

    async def stop(self) -> None:
        """Tell the zygote to quit (it kills what children it still has) and wait for it."""
        process = self.process
        self._send({"op": "quit"})
        self._close()
        self.process = None
        if process is None:
            return
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if process.poll() is None:
            process.kill()
            process.wait()


def _entries(output: Any) -> list[list[Any]]:
    """The well-formed entries of an `exited` message's output (the zygote's, but made from
    what a dead executor left)."""
    if not isinstance(output, list):
        return []
    return [list(e) for e in output
            if isinstance(e, list) and len(e) == 3 and isinstance(e[0], int)
            and e[1] in (1, 2) and isinstance(e[2], str)]
