"""The scheduler's side of grow=True, driven by plain events: which jobs are accepted for
growth, where joining nodes go, draining nodes, and a job growth gives up on."""

from __future__ import annotations

from burla import protocol
from burla.coordinator.capacity import Shape
from burla.coordinator.scheduler import Scheduler

CLIENT = b"client-1"
NOW = 100.0


def hello(agent_id: str, cpus: int = 2) -> protocol.Hello:
    return protocol.Hello("agent", protocol.PROTOCOL_VERSION, "x", "t", "s",
                          {"agent_id": agent_id, "cpus": cpus, "ram_gb": 8, "gpus": [],
                           "image": "", "python_version": "3.11"})


def submit(job_id: str = "job", *, grow: bool = True, n_inputs: int = -1, func_cpu: int = 1,
           func_gpu: str | None = None) -> protocol.Submit:
    return protocol.Submit(job_id, "hash", "f", func_cpu, 0, func_gpu, None, None, grow, False,
                           n_inputs, "3.11", None, b"function")


def sent(out, kind, peer=None):
    return [m for p, m in out if isinstance(m, kind) and (peer is None or p == peer)]


class Advice:
    """A stand-in for growth's could_help that records what it was asked."""

    def __init__(self, helps: bool, why: str) -> None:
        self.helps, self.why = helps, why
        self.asked: list[tuple[Shape, float]] = []

    def __call__(self, shape: Shape, now: float) -> tuple[bool, str]:
        self.asked.append((shape, now))
        return self.helps, self.why


def growing(helps: bool = True, why: str = "grow=True can boot local-2 (2 calls each)"):
    advice = Advice(helps, why)
    return Scheduler(b"secret", could_grow=advice), advice


def test_a_grow_job_with_no_nodes_is_accepted_and_queued_when_growth_can_serve_it():
    s, advice = growing()
    out = s.submit(CLIENT, "me", submit(), NOW)
    [accept] = sent(out, protocol.Accept)
    assert accept.parallelism == 0 and s.queued == ["job"] and s.jobs["job"].grow
    assert advice.asked == [(Shape(1, 0, None, "3.11", None), NOW)]
    # Its node registers: the queued job gets the slots at once.
    out = s.add_node(b"agent-n", hello("burla-c-1"), NOW + 5)
    assert sum(a.slots for a in sent(out, protocol.Assign)) == 2 and s.queued == []


def test_grow_false_is_refused_but_told_grow_true_would_help():
    s, _ = growing()
    [(_, refuse)] = s.submit(CLIENT, "me", submit(grow=False), NOW)
    assert isinstance(refuse, protocol.Refuse) and refuse.kind == "no_nodes"
    assert "Or pass grow=True: this cluster can boot nodes for it (grow=True can boot local-2" \
        in refuse.message
    assert s.jobs == {}


def test_where_growth_cannot_help_grow_is_not_advised_and_a_grow_job_is_told_why():
    s, _ = growing(helps=False, why="no machine type this cluster can boot fits one call of X")
    s.add_node(b"agent-a", hello("a"), NOW)
    [(_, plain)] = s.submit(CLIENT, "me", submit("plain", grow=False, func_gpu="A100_40G"), NOW)
    assert plain.kind == "no_compatible_nodes:gpu" and "grow" not in plain.message
    [(_, grow)] = s.submit(CLIENT, "me", submit("grown", func_gpu="A100_40G"), NOW)
    assert grow.kind == "no_compatible_nodes:gpu"
    assert grow.message.endswith("grow=True cannot help here: no machine type this cluster can "
                                 "boot fits one call of X.")


def test_a_grow_job_no_registered_node_fits_waits_for_a_node_growth_boots():
    s, _ = growing()
    s.add_node(b"agent-a", hello("small", cpus=2), NOW)
    out = s.submit(CLIENT, "me", submit(func_cpu=4), NOW)
    assert sent(out, protocol.Accept)[0].parallelism == 0 and s.queued == ["job"]
    out = s.add_node(b"agent-b", hello("big", cpus=8), NOW + 1)
    assert [(p, a.slots) for p, a in out if isinstance(a, protocol.Assign)] == [(b"agent-b", 2)]


def test_without_a_provider_nothing_changes():
    s = Scheduler(b"secret")
    [(_, refuse)] = s.submit(CLIENT, "me", submit(), NOW)
    assert refuse.kind == "no_nodes" and "grow" not in refuse.message


def test_a_joining_node_goes_to_running_jobs_that_want_more_but_no_further():
    s = Scheduler(b"secret")
    s.add_node(b"agent-a", hello("a", cpus=2), NOW)
    s.submit(CLIENT, "me", submit("big", n_inputs=5, grow=False), NOW)
    assert s.jobs["big"].slots == 2
    # A node joins: the running job takes what its 5 inputs still want (3), not all 4 slots.
    out = s.add_node(b"agent-b", hello("b", cpus=4), NOW + 1)
    [assign] = sent(out, protocol.Assign, b"agent-b")
    assert assign.slots == 3 and s.jobs["big"].slots == 5
    [progress] = sent(out, protocol.Progress, CLIENT)
    assert progress.running == 5
    # A job that holds all it can use takes nothing from the next one.
    assert sent(s.add_node(b"agent-c", hello("c", cpus=4), NOW + 2), protocol.Assign) == []


def test_a_draining_node_gets_no_new_work():
    s = Scheduler(b"secret")
    s.add_node(b"agent-a", hello("a", cpus=2), NOW)
    s.add_node(b"agent-b", hello("b", cpus=2), NOW)
    s.draining = {"a"}
    out = s.submit(CLIENT, "me", submit(grow=False), NOW)
    assert {p for p, m in out if isinstance(m, protocol.Assign)} == {b"agent-b"}


def test_growths_words_reach_the_client_once_per_change():
    s, _ = growing()
    s.submit(CLIENT, "me", submit(), NOW)
    out = s.growth_said("job", "booting 2× local-2")
    assert sent(out, protocol.Progress) == [protocol.Progress("job", 0, "booting 2× local-2")]
    assert s.growth_said("job", "booting 2× local-2") == []
    assert s.growth_said("no-such-job", "x") == []
    # The Progress of the slots a joining node brings carries the words too.
    out = s.add_node(b"agent-n", hello("n"), NOW)
    assert sent(out, protocol.Progress, CLIENT) == [
        protocol.Progress("job", 2, "booting 2× local-2")]


def test_a_job_growth_gives_up_on_fails_with_what_was_tried():
    s, _ = growing()
    s.submit(CLIENT, "me", submit(), NOW)
    out = s.give_up("job", "no node can run X and none could be booted: quota 'CPUS' is "
                           "exhausted")
    [failed] = sent(out, protocol.JobFailed, CLIENT)
    assert failed.kind == "no_compatible_nodes:grow"
    assert failed.message.startswith("no node can run X and none could be booted: quota 'CPUS'")
    assert "--max-nodes" in failed.message
    assert "job" not in s.jobs and s.queued == []
    assert s.give_up("job", "again") == []


def test_while_nodes_boot_for_a_job_its_agents_get_no_chunks_ahead():
    s = Scheduler(b"secret")
    hello_a = hello("a", cpus=1)
    hello_a.info["prefetch"] = 2
    s.add_node(b"agent-a", hello_a, NOW)
    s.submit(CLIENT, "me", submit(grow=True, n_inputs=3), NOW)
    job = s.jobs["job"]
    s.growth_said("job", "booting 2× local-1", awaiting=True)
    sent_chunks = [sent(s.add_inputs(job, protocol.InputChunk("job", i, 1, b"x")), protocol.Chunk)
                   for i in range(3)]
    # One chunk for its one slot; the other two wait for the nodes that boot.
    assert [len(c) for c in sent_chunks] == [1, 0, 0]
    # Its nodes are up (or growth gave up booting): the prefetch goes out at once.
    out = s.growth_said("job", "", awaiting=False)
    assert [c.first_index for c in sent(out, protocol.Chunk, b"agent-a")] == [1, 2]
