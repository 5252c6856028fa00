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
