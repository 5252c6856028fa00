"""Growth decisions driven by plain events: jobs, nodes and the time passed in; no provider."""

from __future__ import annotations

import pytest

from burla import protocol
from burla.coordinator.capacity import Shape
from burla.coordinator.demand import UNKNOWN_DEMAND_CALLS, GrowthLimits, JobView
from burla.coordinator.growth import Boot, Delete, GiveUp, Growth
from burla.coordinator.scheduler import Scheduler
from burla.coordinator.state import Node

T0 = 1000.0
CPU = Shape(func_cpu=1, func_ram=0, func_gpu=None, python_version="3.11")
N2 = [(f"n2-standard-{n}", n, 4 * n, 0) for n in (2, 4, 8, 16, 32)]
A2 = [(f"a2-highgpu-{n}g", 12 * n, 85 * n, n) for n in (1, 2, 4, 8)]
A2_ULTRA = [(f"a2-ultragpu-{n}g", 12 * n, 170 * n, n) for n in (1, 2, 4, 8)]


def catalog(shape: Shape) -> list[tuple[str, int, int, int]]:
    """Like a GCE catalog: the family that fits the shape's GPU, a standard family for CPUs."""
    return {None: N2, "A100_40G": A2, "A100_80G": A2_ULTRA}.get(shape.func_gpu, [])


def growth(catalog_=catalog, **limits) -> Growth:
    return Growth(GrowthLimits(**limits), catalog_, "burla-test")


def job(job_id: str = "job", remaining: int | None = 100, *, slots: int = 0,
        max_parallelism: int | None = None, grow: bool = True, shape: Shape = CPU) -> JobView:
    return JobView(job_id, shape, grow, slots, remaining, max_parallelism)


def gpu(kind: str = "A100_40G") -> Shape:
    return Shape(func_cpu=1, func_ram=0, func_gpu=kind, python_version="3.11")


def node(name: str, cpus: int = 8, *, used: int = 0, gpus: list[str] | None = None) -> Node:
    n = Node(name, name.encode(), "s", cpus, 4 * cpus, gpus or [], "", "3.11", T0)
    n.used_cpus = used
    return n


def boots(decision) -> list[tuple[str, int, tuple[str, ...]]]:
    return [(i.machine_type, i.count, i.job_ids) for i in decision.instructions
            if isinstance(i, Boot)]


def deletes(decision) -> list[Delete]:
    return [i for i in decision.instructions if isinstance(i, Delete)]


def booted_nodes(decision) -> list[Node]:
    """The nodes that register once what `decision` booted is up (agent id = instance name)."""
    sizes = {name: (cpus, gpus) for name, cpus, _, gpus in N2 + A2 + A2_ULTRA}
    return [node(name, sizes[b.machine_type][0]) for b in decision.instructions
            if isinstance(b, Boot) for name in b.names]


def test_from_zero_nodes_a_job_boots_what_covers_its_demand():
    g = growth()
    d = g.step(T0, [job(remaining=100)], [])
    # Largest sizes first; the remaining 4 calls go on the smallest type that holds them.
    assert boots(d) == [("n2-standard-32", 3, ("job",)), ("n2-standard-4", 1, ("job",))]
    assert d.jobs["job"].status == "booting 3× n2-standard-32, 1× n2-standard-4"
    assert d.jobs["job"].short == 0
    names = [n for b in d.instructions if isinstance(b, Boot) for n in b.names]
    assert len(set(names)) == 4 and all(n.startswith("burla-test-") for n in names)
    # Asked again before anything registered: the booting nodes cover it.
    again = g.step(T0 + 1, [job(remaining=100)], [])
    assert boots(again) == [] and again.jobs["job"].status.startswith("booting 3×")


def test_demand_is_the_smaller_of_inputs_left_and_max_parallelism_less_held_slots():
    assert job(remaining=50, max_parallelism=10).wanted == 10
    assert job(remaining=5, max_parallelism=10).wanted == 5
    assert job(remaining=50, max_parallelism=10, slots=4).wanted == 6
    assert job(remaining=None, max_parallelism=7).wanted == 7
    assert job(remaining=None).wanted == UNKNOWN_DEMAND_CALLS
    d = growth().step(T0, [job(remaining=50, max_parallelism=10)], [])
    assert boots(d) == [("n2-standard-8", 1, ("job",)), ("n2-standard-2", 1, ("job",))]


def test_an_unknown_input_count_boots_only_up_to_the_bound_and_the_caps():
    d = growth(max_cpus=64).step(T0, [job(remaining=None)], [])
    assert boots(d) == [("n2-standard-32", 2, ("job",))]
    assert "--max-cpus=64" in d.jobs["job"].status


def test_demand_covered_by_free_slots_boots_nothing():
    g = growth()
    d = g.step(T0, [job(remaining=6)], [node("static", cpus=8)])
    assert boots(d) == [] and d.jobs["job"].short == 0 and d.jobs["job"].status == ""
    # Held slots count too: a job at its max_parallelism wants nothing more.
    d = g.step(T0, [job(remaining=100, slots=8, max_parallelism=8)], [node("x", 8, used=8)])
    assert boots(d) == []
    # Only the part the free slots leave is booted.
    d = g.step(T0, [job(remaining=10)], [node("static", cpus=8)])
    assert boots(d) == [("n2-standard-2", 1, ("job",))]


def test_free_slots_are_counted_once_across_jobs_in_age_order():
    # 8 free CPUs: the older job counts them, so the younger one's demand is all short.
    d = growth().step(T0, [job("old", 8), job("young", 8)], [node("static", cpus=8)])
    assert boots(d) == [("n2-standard-8", 1, ("young",))]


def test_two_jobs_of_one_shape_growing_at_once_boot_once_for_the_sum():
    g = growth()
    d = g.step(T0, [job("a", 20), job("b", 20)], [])
    # Packed together: 40 calls are 32 + 8, not (16 + 4) twice.
    assert boots(d) == [("n2-standard-32", 1, ("a", "b")), ("n2-standard-8", 1, ("b",))]
    assert sum(b.count for b in d.instructions if isinstance(b, Boot)) == 2
    # Neither boots again while those boot; a third job boots only its own share.
    d = g.step(T0 + 1, [job("a", 20), job("b", 20), job("c", 8)], [])
    assert boots(d) == [("n2-standard-8", 1, ("c",))]


def test_a_second_job_does_not_double_book_what_the_first_is_booting():
    g = growth()
    first = g.step(T0, [job("a", 20)], [])
    assert boots(first) == [("n2-standard-16", 1, ("a",)), ("n2-standard-4", 1, ("a",))]
    second = g.step(T0 + 1, [job("a", 20), job("b", 20)], [])
    assert boots(second) == [("n2-standard-16", 1, ("b",)), ("n2-standard-4", 1, ("b",))]


def test_max_nodes_is_a_hard_cap_over_booting_and_running_grown_nodes():
    g = growth(max_nodes=2)
    d = g.step(T0, [job(remaining=1000)], [])
    assert boots(d) == [("n2-standard-32", 2, ("job",))]
    assert d.jobs["job"].short == 1000 - 64
    assert "--max-nodes=2 is reached" in d.jobs["job"].status
    # Once they run they still count: more demand boots nothing.
    joined = booted_nodes(d)
    d = g.step(T0 + 1, [job(remaining=1000, slots=64)], [*joined])
    assert boots(d) == []
    assert "--max-nodes=2" in d.jobs["job"].status
    # A node growth did not boot does not count against the cap.
    g2 = growth(max_nodes=1)
    assert boots(g2.step(T0, [job(remaining=8)], [node("static", 8, used=8)])) == [
        ("n2-standard-8", 1, ("job",))]


def test_max_cpus_packs_smaller_machines_into_what_is_left():
    d = growth(max_cpus=44).step(T0, [job(remaining=1000)], [])
    assert boots(d) == [("n2-standard-32", 1, ("job",)), ("n2-standard-8", 1, ("job",)),
                        ("n2-standard-4", 1, ("job",))]
    assert "--max-cpus=44 leaves 0 CPUs" in d.jobs["job"].status


def test_max_gpus_caps_gpu_machines():
    g = growth(max_gpus=3)
    d = g.step(T0, [job(remaining=16, shape=gpu())], [])
    assert boots(d) == [("a2-highgpu-2g", 1, ("job",)), ("a2-highgpu-1g", 1, ("job",))]
    assert d.jobs["job"].short == 13 and "--max-gpus=3 leaves 0 GPUs" in d.jobs["job"].status


def test_grow_false_boots_nothing_but_says_whether_grow_could_help():
    d = growth().step(T0, [job(remaining=100, grow=False)], [])
    assert boots(d) == [] and d.instructions == []
    status = d.jobs["job"]
    assert status.short == 100 and status.status == ""
    assert status.could_help
    assert status.reason == "grow=True can boot n2-standard-32 (32 calls each)"


def test_grow_could_help_only_where_a_type_fits_and_the_caps_leave_room():
    huge = Shape(func_cpu=500, func_ram=0, func_gpu=None, python_version="3.11")
    helps, why = growth().could_help(huge, T0)
    assert not helps and why == ("no machine type this cluster can boot fits one call of "
                                 "func_cpu=500, func_ram='dynamic', Python 3.11")
    helps, why = growth(catalog_=lambda shape: []).could_help(CPU, T0)  # the local provider
    assert not helps and "no machine type" in why
    full = growth(max_nodes=1)
    full.step(T0, [job(remaining=1)], [])
    helps, why = full.could_help(CPU, T0)
    assert not helps and why == "the caps leave no room: --max-nodes=1 is reached"
    assert growth().could_help(gpu("A100_80G"), T0) == (
        True, "grow=True can boot a2-ultragpu-8g (8 calls each)")
    # A grow job whose shape fits nothing boots nothing and says why.
    d = growth().step(T0, [job(remaining=3, shape=huge)], [])
    assert boots(d) == [] and "no machine type" in d.jobs["job"].status


def test_gpu_shapes_pick_gpu_types_and_cpu_shapes_never_do():
    d = growth().step(T0, [job("g", 10, shape=gpu())], [])
    assert boots(d) == [("a2-highgpu-8g", 1, ("g",)), ("a2-highgpu-2g", 1, ("g",))]
    d = growth().step(T0, [job("u", 3, shape=gpu("A100_80G"))], [])
    # 3 GPUs: a 2-GPU and a 1-GPU machine cost less than one 4-GPU machine.
    assert boots(d) == [("a2-ultragpu-2g", 1, ("u",)), ("a2-ultragpu-1g", 1, ("u",))]
    everything = growth(catalog_=lambda shape: N2 + A2)  # a catalog that lists all its types
    d = everything.step(T0, [job("c", 200), job("g", 1, shape=gpu())], [])
    assert [b[0] for b in boots(d) if "c" in b[2]] == ["n2-standard-32", "n2-standard-8"]
    assert [b[0] for b in boots(d) if "g" in b[2]] == ["a2-highgpu-1g"]


def test_registration_with_the_instance_name_joins_the_booting_node():
    g = growth()
    d = g.step(T0, [job(remaining=8)], [])
    [(name,)] = [b.names for b in d.instructions if isinstance(b, Boot)]
    # An agent with another id is not that VM: it stays booting.
    d = g.step(T0 + 5, [job(remaining=8)], [node("elsewhere", 2, used=2)])
    assert name in g.booting and d.jobs["job"].status == "booting 1× n2-standard-8"
    # Its own agent registers, and the scheduler gives the job its slots.
    d = g.step(T0 + 9, [job(remaining=8, slots=8)], [node(name, 8, used=8)])
    assert name not in g.booting and name in g.grown
    assert d.instructions == [] and d.jobs["job"].status == "" and d.jobs["job"].short == 0
    assert name in g.known()


def test_a_grown_node_idle_for_the_timeout_is_deleted():
    g = growth(node_idle_timeout=60)
    d = g.step(T0, [job(remaining=8)], [])
    [joined] = booted_nodes(d)
    g.step(T0 + 10, [], [joined])  # joins idle at T0+10 (its job has finished)
    joined.used_cpus = 4  # work arrives, then goes: idle again from T0+40
    assert deletes(g.step(T0 + 30, [], [joined])) == []
    joined.used_cpus = 0
    assert deletes(g.step(T0 + 40, [], [joined])) == []
    assert deletes(g.step(T0 + 99, [], [joined])) == []
    [delete] = deletes(g.step(T0 + 100, [], [joined]))
    assert delete == Delete(joined.agent_id, "idle for 60s (--node-idle-timeout=60s)")
    assert g.draining() == {joined.agent_id}
    # Being deleted, its free slots are not counted: a new job boots afresh.
    assert boots(g.step(T0 + 101, [job(remaining=8)], [joined])) == [
        ("n2-standard-8", 1, ("job",))]


def test_min_nodes_stay_up_and_the_longest_idle_go_first():
    g = growth(node_idle_timeout=60, min_nodes=1)
    d = g.step(T0, [job(remaining=40)], [])
    first, second = booted_nodes(d)
    g.step(T0 + 1, [], [first])
    g.step(T0 + 5, [], [first, second])
    assert [x.name for x in deletes(g.step(T0 + 100, [], [first, second]))] == [first.agent_id]
    assert deletes(g.step(T0 + 1000, [], [second])) == []  # the one kept stays
    assert second.agent_id in g.grown


def test_a_node_growth_did_not_boot_is_never_deleted():
    g = growth(node_idle_timeout=60)
    assert g.step(T0 + 10_000, [], [node("static")]).instructions == []


def test_a_boot_that_never_registers_is_deleted_and_stops_counting():
    g = growth(boot_timeout=600, retry_after=60)
    static = node("static", 2, used=2)  # the job runs here, so it does not give up
    d = g.step(T0, [job(remaining=10, slots=2)], [static])
    [(name,)] = [b.names for b in d.instructions if isinstance(b, Boot)]
    assert deletes(g.step(T0 + 599, [job(remaining=10, slots=2)], [static])) == []
    d = g.step(T0 + 600, [job(remaining=10, slots=2)], [static])
    assert deletes(d) == [Delete(name, "its agent did not register within --boot-timeout=600s")]
    # Its capacity no longer counts; the shape is paused before it is tried again.
    assert name not in g.booting and d.jobs["job"].short == 8 and boots(d) == []
    assert "booting is paused for 60s more" in d.jobs["job"].status
    assert boots(g.step(T0 + 660, [job(remaining=10, slots=2)], [static])) == [
        ("n2-standard-8", 1, ("job",))]


def test_a_job_nothing_can_run_gives_up_when_its_boot_fails():
    g = growth()
    d = g.step(T0, [job(remaining=8)], [])
    names = [n for b in d.instructions if isinstance(b, Boot) for n in b.names]
    g.boot_note(names, "us-central1-a exhausted, trying us-central1-b")
    d = g.step(T0 + 1, [job(remaining=8)], [])
    assert d.jobs["job"].status == ("booting 1× n2-standard-8: us-central1-a exhausted, "
                                    "trying us-central1-b")
    g.boot_failed(names, "n2-standard-8 is exhausted in us-central1-a, us-central1-b", T0 + 2)
    d = g.step(T0 + 3, [job(remaining=8)], [])
    assert [i for i in d.instructions if isinstance(i, GiveUp)] == [GiveUp(
        "job", "no node can run func_cpu=1, func_ram='dynamic', Python 3.11 and none could be "
        "booted: n2-standard-8 is exhausted in us-central1-a, us-central1-b")]
    assert boots(d) == [] and not d.jobs["job"].could_help
    assert g.step(T0 + 4, [job(remaining=8)], []).instructions == []  # said once


def test_a_job_a_busy_node_can_run_waits_for_it_when_its_boot_fails():
    g = growth()
    busy = node("static", 2, used=2)  # another job's: it frees up in time
    d = g.step(T0, [job(remaining=8)], [busy])
    names = [n for b in d.instructions if isinstance(b, Boot) for n in b.names]
    g.boot_failed(names, "QUOTA_EXCEEDED: CPUS in us-central1", T0 + 1)
    d = g.step(T0 + 2, [job(remaining=8)], [busy])
    assert d.instructions == []
    assert d.jobs["job"].status == ("8 calls more wanted, but booting is paused for 59s more: "
                                    "QUOTA_EXCEEDED: CPUS in us-central1")


def test_a_preempted_node_is_deleted_and_regrown_while_demand_remains():
    g = growth()
    d = g.step(T0, [job(remaining=40)], [])
    first, second = booted_nodes(d)
    first.used_cpus, second.used_cpus = 32, 8
    assert g.step(T0 + 5, [job(remaining=40, slots=40)], [first, second]).instructions == []
    # The 32-CPU spot VM is preempted: the scheduler lost its agent and took its slots back.
    d = g.step(T0 + 9, [job(remaining=30, slots=8)], [second])
    assert deletes(d) == [Delete(first.agent_id,
                                 "lost: its agent went silent (preempted, or the VM died)")]
    assert boots(d) == [("n2-standard-16", 1, ("job",)), ("n2-standard-4", 1, ("job",)),
                        ("n2-standard-2", 1, ("job",))]
    # Once the job needs nothing more, a loss boots nothing.
    done = growth()
    lost = booted_nodes(done.step(T0, [job(remaining=8)], []))[0]
    done.step(T0 + 1, [job(remaining=8, slots=8)], [lost])
    d = done.step(T0 + 2, [job(remaining=0)], [])
    assert len(deletes(d)) == 1 and boots(d) == []


def test_a_lost_node_counts_against_the_caps_until_its_delete_is_done():
    g = growth(max_nodes=1)
    [lost] = booted_nodes(g.step(T0, [job(remaining=8)], []))
    lost.used_cpus = 8
    g.step(T0 + 1, [job(remaining=8, slots=8)], [lost])
    d = g.step(T0 + 2, [job(remaining=8)], [])
    assert len(deletes(d)) == 1 and boots(d) == []
    g.deleted(lost.agent_id)
    assert boots(g.step(T0 + 3, [job(remaining=8)], [])) == [("n2-standard-8", 1, ("job",))]


def test_adopted_vms_are_tracked_and_their_names_never_reused():
    g = growth(node_idle_timeout=60)
    g.adopt(["burla-test-7", "burla-test-3"], T0)
    assert g.known() == {"burla-test-7", "burla-test-3"}
    d = g.step(T0, [job(remaining=8)], [node("burla-test-7", 8, used=8)])
    assert [b.names for b in d.instructions if isinstance(b, Boot)] == [("burla-test-8",)]
    # The one that never registers is deleted at the boot timeout like any other.
    late = g.step(T0 + 600, [], [node("burla-test-7", 8, used=8)])
    assert {x.name for x in deletes(late)} == {"burla-test-3", "burla-test-8"}


def test_job_view_of_a_scheduler_job():
    s = Scheduler(b"secret")
    s.add_node(b"agent-a", protocol.Hello("agent", protocol.PROTOCOL_VERSION, "x", "t", "s", {
        "agent_id": "a", "cpus": 2, "ram_gb": 8, "gpus": [], "image": "",
        "python_version": "3.11"}), T0)
    s.submit(b"client", "me", protocol.Submit("job", "hash", "f", 1, 4, None, None, None, True,
                                             False, 5, "3.11", None, b"function"), T0)
    view = JobView.of(s.jobs["job"], grow=True)
    assert view == JobView("job", Shape(1, 4, None, "3.11", None), True, 2, 5, None)
    assert view.wanted == 3


def test_bad_settings_name_the_value():
    with pytest.raises(ValueError, match="max_cpus must be a whole number >= 0, got -1"):
        GrowthLimits(max_cpus=-1)
    with pytest.raises(ValueError, match="boot_timeout must be a number of seconds > 0, got 0"):
        GrowthLimits(boot_timeout=0)
    with pytest.raises(ValueError, match="name_prefix 'Burla_1'"):
        Growth(GrowthLimits(), catalog, "Burla_1")
