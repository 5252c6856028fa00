"""A coordinator handler that raises answers instead of going silent: the job the message was
about is cancelled with the error's words to its client, the asking peer is told, and the slots
are free. A daemon whose log cannot be written (a full disk) goes on."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

from burla import protocol
from burla.client.results import error_for
from burla.coordinator.config import CoordinatorConfig
from burla.coordinator.service import Coordinator
from burla.logs import UnfailingStream

from .test_scheduler import CLIENT, NOW, hello, sent, submit


@pytest.fixture
def coordinator(tmp_path):
    made = Coordinator(CoordinatorConfig("tcp://127.0.0.1:0", tmp_path, "agent-token"))
    yield made
    made.store.close()
    made.ctx.term()


def broken(*args):
    raise KeyError("chunk 3")


def test_a_handler_that_raises_cancels_its_job_and_tells_its_client_and_the_asker(coordinator):
    s = coordinator.scheduler
    s.add_node(b"agent-a", hello("a"), NOW)
    s.submit(CLIENT, "me", submit("job"), NOW)
    asker = b"client-2"
    msg = protocol.Cancel("job", "why not")
    out = coordinator.handle(msg, asker, "me", broken, coordinator, asker, "me", msg)
    to_client = sent(out, protocol.JobFailed, CLIENT)
    assert [f.kind for f in to_client] == ["canceled"]
    assert "failed while handling cancel for job 'job' (KeyError: 'chunk 3')" \
        in to_client[0].message
    to_asker = sent(out, protocol.JobFailed, asker)
    assert [f.kind for f in to_asker] == ["coordinator_error"]
    assert [r.job_id for r in sent(out, protocol.Release, b"agent-a")] == ["job"]
    assert s.jobs == {} and s.nodes["a"].used_cpus == 0


def test_a_failed_handler_of_no_job_still_answers_the_asker(coordinator):
    msg = protocol.StatusRequest()
    out = coordinator.handle(msg, CLIENT, "me", broken, coordinator, CLIENT, "me", msg)
    refused = sent(out, protocol.Refuse, CLIENT)
    assert [r.kind for r in refused] == ["coordinator_error"]
    assert "its log has the traceback" in refused[0].message
    assert type(error_for(refused[0].kind, refused[0].message)).__name__ == "BurlaError"


def test_a_stream_that_cannot_be_written_drops_the_text_and_counts_it():
    class Full(io.StringIO):
        def write(self, text: str) -> int:
            raise OSError(28, "No space left on device")

    stream = UnfailingStream(Full())
    assert stream.write("line\n") == 0 and stream.lost == 1
    working = UnfailingStream(io.StringIO())
    working.write("line\n")
    assert working.stream.getvalue() == "line\n" and working.lost == 0


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_daemon_logging_to_a_full_disk_goes_on():
    code = ("from burla import logs; logs.configure('coordinator'); import structlog; "
            "structlog.get_logger().info('job_submitted'); print('alive')")
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-c", code], stderr=full, stdout=subprocess.PIPE,
                              text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == "alive\n"


def test_a_failed_handler_never_ends_another_owners_job(coordinator):
    s = coordinator.scheduler
    s.add_node(b"agent-a", hello("a"), NOW)
    s.submit(CLIENT, "me", submit("job"), NOW)
    msg = protocol.Ack("job", 1)
    out = coordinator.handle(msg, b"intruder", "other", broken, coordinator, b"intruder",
                             "other", msg)
    assert "job" in s.jobs and not sent(out, protocol.Release)
    assert [f.kind for f in sent(out, protocol.JobFailed, b"intruder")] == ["coordinator_error"]


def test_a_failed_agent_handler_cancels_the_job_it_was_about(coordinator):
    s = coordinator.scheduler
    s.add_node(b"agent-a", hello("a"), NOW)
    s.submit(CLIENT, "me", submit("job"), NOW)
    msg = protocol.Credit("job", 1)
    out = coordinator.handle(msg, None, None, broken, coordinator, s.nodes["a"], msg)
    assert [f.kind for f in sent(out, protocol.JobFailed, CLIENT)] == ["canceled"]
    assert s.jobs == {} and s.nodes["a"].used_cpus == 0
