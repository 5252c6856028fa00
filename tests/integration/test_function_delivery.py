"""A big function crosses the wire once per agent: later jobs with it send only its hash."""

from __future__ import annotations

import json
import os

import pytest

from burla import remote_parallel_map
from burla.client.session import INLINE_FUNCTION_BYTES

pytestmark = pytest.mark.timeout(90)


def function_bytes_assigned(log_text: str) -> list[int]:
    """The function bytes each Assign brought this agent, in order."""
    events = [json.loads(line) for line in log_text.splitlines() if line.startswith("{")]
    return [e["function_bytes"] for e in events if e.get("event") == "job_assigned"]


def test_a_big_function_crosses_to_each_agent_once(make_cluster):
    made = make_cluster(agents=2, cpus=2)
    data = os.urandom(4 * INLINE_FUNCTION_BYTES)  # random: no layer can shrink it

    def uses_data(x):
        return len(data) + x

    for _ in range(2):  # the second job finds it on the coordinator and on both agents
        assert remote_parallel_map(uses_data, range(100), spinner=False) == [
            len(data) + x for x in range(100)
        ]
    for agent in ("agent0", "agent1"):
        sent = function_bytes_assigned((made.root / f"{agent}.log").read_text())
        assert len(sent) == 2, f"{agent} was assigned {len(sent)} jobs, not both: {sent}"
        assert sent[0] > len(data) and sent[1] == 0, f"{agent} got function bytes {sent}"


def closure_over(data: bytes):
    def uses(x):
        return len(data) + x

    return uses


def test_an_agent_keeps_old_functions_only_within_its_budget(make_cluster):
    """Past AGENT_FUNCTION_BYTES the coordinator has the agent forget the least recently used
    function; the next job with it ships it again and runs."""
    from burla.coordinator.functions import AGENT_FUNCTION_BYTES

    made = make_cluster(agents=1, cpus=2)
    size = AGENT_FUNCTION_BYTES * 3 // 8  # three do not fit, two do
    first, second, third = (closure_over(os.urandom(size)) for _ in range(3))
    for function in (first, second, third, first):
        assert remote_parallel_map(function, range(4), spinner=False) == [
            size + x for x in range(4)]
    log_text = (made.root / "agent0.log").read_text()
    sent = function_bytes_assigned(log_text)
    assert len(sent) == 4 and all(n > size for n in sent), f"function bytes per job: {sent}"
    events = [json.loads(line) for line in log_text.splitlines() if line.startswith("{")]
    assert [e["event"] for e in events if e.get("event") == "function_forgotten"] == [
        "function_forgotten"] * 2  # the first one for the third, the second one for the first
