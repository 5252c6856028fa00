"""GPU calls get one GPU each by UUID (others hidden), on a declared fake inventory; image= runs
only on agents started with that image and is refused otherwise, naming the images there are."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

import burla
from burla import remote_parallel_map
from burla.agent.cgroups.detect import plan_backend
from burla.agent.gpus import fake_gpus

pytestmark = pytest.mark.timeout(60)
GPUS = fake_gpus("A100_40G:2")


def gpu_facts(_x: Any) -> dict[str, Any]:
    time.sleep(0.5)  # both executors of the job hold a call at once
    devices = ""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        if "devices" in names.split(",") and path != "/":
            devices = (Path("/sys/fs/cgroup/devices") / path.lstrip("/") / "devices.list")\
                .read_text()
    return {"visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "pid": os.getpid(),
            "devices": devices.splitlines()}


def test_each_gpu_call_sees_its_own_fake_gpu_and_cpu_calls_see_none(make_cluster) -> None:
    make_cluster(agent_args=("--fake-gpus", "A100_40G:2", "--image", "x"))
    facts = remote_parallel_map(gpu_facts, [1, 2], func_gpu="A100", image="x", spinner=False)
    assert len({f["pid"] for f in facts}) == 2
    assert sorted(f["visible"] for f in facts) == sorted(gpu.uuid for gpu in GPUS)
    if plan_backend().backend == "v1":  # the devices cgroup allows just that GPU's node
        for f in facts:
            gpu = next(g for g in GPUS if g.uuid == f["visible"])
            other = next(g for g in GPUS if g is not gpu)
            assert f"c 195:{gpu.minor} rwm" in f["devices"]
            assert f"c 195:{other.minor} rwm" not in f["devices"]
    [cpu_call] = remote_parallel_map(gpu_facts, [1], spinner=False)
    assert cpu_call["visible"] == ""
    with pytest.raises(burla.NoCompatibleNodes, match="GPUs available: A100_40G"):
        remote_parallel_map(gpu_facts, [1], func_gpu="H100", spinner=False)


def image_of(_x: Any) -> str:
    return "ran"


def test_image_jobs_run_only_where_that_image_is(make_cluster) -> None:
    make_cluster(agent_args=("--image", "x"))
    assert remote_parallel_map(image_of, [1, 2], image="x", spinner=False) == ["ran", "ran"]
    with pytest.raises(burla.NoCompatibleNodes) as caught:
        remote_parallel_map(image_of, [1], image="y", spinner=False)
    assert caught.value.reason == "image"
    assert "images available: x" in str(caught.value)
