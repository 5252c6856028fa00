"""How a call slot's shape becomes an executor's limits, GPU, environment and sandbox; no I/O
beyond reading the machine's facts, and it creates no cgroup or process itself."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import resource
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

import burla
from burla.agent.cgroups import CgroupBackend, Limits, detect_backend
from burla.agent.config import AgentConfig
from burla.agent.gpus import Gpu, discover_gpus
from burla.agent.sandbox import SandboxSpec, sandbox_supported

log = structlog.get_logger("burla.agent")

GIB = 1 << 30
# Shape of a call slot: (func_cpu, func_ram GB with 0 = dynamic, func_gpu type or None).
Shape = tuple[int, int, "str | None"]
# The parent cgroup of every func_ram="dynamic" executor; its memory limit is the node budget.
DYNAMIC_GROUP = "dynamic"
# Where sandboxed calls start: on the private /tmp, owned by the sandbox uid.
SANDBOX_WORKDIR = "/tmp/burla"
# The NVIDIA character devices: major 195; nvidiactl and nvidia-modeset sit at its top minors.
NVIDIA_MAJOR = 195
NVIDIA_CONTROL_MINORS = (255, 254)
NVIDIA_CONTROL_NODES = ("/dev/nvidiactl", "/dev/nvidia-modeset", "/dev/nvidia-uvm",
                        "/dev/nvidia-uvm-tools")
# A devices rule that only repeats a basic device: on a GPU node it turns the v1 devices
# controller on for executors without a GPU, so every GPU is denied to them.
NO_GPU_RULE = "c 1:3 rwm"


def cgroup_root_name(state_dir: Path) -> str:
    """The agent's cgroup root: one per state dir, so a restarted agent finds what its previous
    run left (cleanup_stale) and two agents on one machine never touch each other's."""
    digest = hashlib.sha1(str(state_dir.resolve()).encode()).hexdigest()[:12]
    return f"burla-{digest}"


def runtime_paths() -> tuple[str, ...]:
    """What a sandboxed executor must still reach: the interpreter, its library dirs, burla."""
    paths = [sys.prefix, sys.exec_prefix, sys.base_prefix,
             os.path.dirname(os.path.dirname(os.path.abspath(burla.__file__)))]
    paths += [p for p in sys.path if os.path.isabs(p)]
    return tuple(dict.fromkeys(p for p in paths if os.path.exists(p)))


def base_sandbox(state_dir: Path, token_file: Path | None) -> SandboxSpec:
    """The sandbox every executor of this agent gets; its state and token stay out of reach."""
    hidden = [str(state_dir.resolve())]
    if token_file is not None:
        hidden.append(str(token_file.resolve()))
    return SandboxSpec(
        hidden_paths=tuple(hidden),
        workdir=SANDBOX_WORKDIR,
        rlimits={resource.RLIMIT_CORE: (0, 0)},
        exposed_paths=runtime_paths(),
    )


def unreadable_runtime_paths(uid: int, gid: int) -> list[str]:
    """Runtime paths the sandbox uid could not read even once their way is opened."""
    bad = []
    for path in runtime_paths():
        st = os.stat(path)
        bits = 0o700 if st.st_uid == uid else 0o070 if st.st_gid == gid else 0o007
        if (st.st_mode & bits) & 0o555 != bits & 0o555:
            bad.append(path)
    return bad


def _char_major(name: str, proc_devices: str = "/proc/devices") -> int | None:
    try:
        text = Path(proc_devices).read_text()
    except OSError:
        return None
    chars = text.split("Block devices:", 1)[0]
    for line in chars.splitlines():
        number, _, device = line.strip().partition(" ")
        if device == name and number.isdigit():
            return int(number)
    return None


def gpu_device_rules(gpu: Gpu | None) -> tuple[str, ...]:
    """v1 devices rules of an executor on a GPU node: its GPU and the driver's control nodes."""
    if gpu is None:
        return (NO_GPU_RULE,)
    rules = [f"c {NVIDIA_MAJOR}:{gpu.minor} rwm"]
    rules += [f"c {NVIDIA_MAJOR}:{minor} rwm" for minor in NVIDIA_CONTROL_MINORS]
    uvm = _char_major("nvidia-uvm")
    if uvm is not None:
        rules.append(f"c {uvm}:* rwm")
    return tuple(rules)


def gpu_device_nodes(gpu: Gpu | None) -> tuple[str, ...]:
    """The /dev nodes a private /dev (cgroup v2) holds for an executor: its GPU, the controls."""
    if gpu is None:
        return ()
    nodes = (f"/dev/nvidia{gpu.minor}", *NVIDIA_CONTROL_NODES)
    return tuple(node for node in nodes if os.path.exists(node))


@dataclass(frozen=True)
class LimitPolicy:
    """The agent's rules for its executors, fixed at start."""

    backend: CgroupBackend
    gpus: tuple[Gpu, ...] = ()
    memory_budget_bytes: int = 0
    sandbox: SandboxSpec | None = None  # None: executors run unsandboxed
    pids_max: int | None = None  # processes and threads per executor (pids.max); None: any

    def limits(self, shape: Shape, gpu: Gpu | None) -> tuple[Limits, str | None]:
        """The cgroup limits of an executor of `shape` and the group it belongs under."""
        func_cpu, func_ram, _ = shape
        devices = gpu_device_rules(gpu) if self.gpus else ()
        memory = func_ram * GIB if func_ram else None
        limits = Limits(cpus=func_cpu, memory_bytes=memory, pids=self.pids_max, devices=devices)
        return limits, None if func_ram else DYNAMIC_GROUP

    def env(self, gpu: Gpu | None) -> dict[str, str]:
        """Environment an executor starts with: its GPU by UUID, every other GPU hidden."""
        env: dict[str, str] = {}
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpu.uuid if gpu is not None else ""
        if self.sandbox is not None:
            env["HOME"] = SANDBOX_WORKDIR  # the sandbox uid has no home of its own
        return env

    def sandbox_fields(self, gpu: Gpu | None) -> dict[str, Any] | None:
        """The executor's SandboxSpec as plain fields for the zygote, or None when off."""
        if self.sandbox is None:
            return None
        spec = self.sandbox
        if self.gpus and self.backend.name == "v2":  # v2 has no devices files: hide by /dev
            spec = dataclasses.replace(spec, private_dev=gpu_device_nodes(gpu))
        return dataclasses.asdict(spec)


def executor_pids_max(configured: int, backend: CgroupBackend) -> int | None:
    """The pids.max each executor gets: the agent's option (0: none), where the backend can."""
    if not configured:
        return None
    if not backend.pids_limited:
        if backend.enforced:  # the none backend already said that nothing is enforced
            log.warning("executor_pids_not_limited", cgroups=backend.name,
                        reason="no pids controller is mounted or delegated to the agent")
        return None
    return configured


def build_policy(config: AgentConfig) -> LimitPolicy:
    """The cgroup backend, GPUs, memory budget and sandbox this agent's executors get."""
    force = None if config.cgroups == "auto" else config.cgroups
    backend = detect_backend(root_name=cgroup_root_name(config.state_dir), force=force)
    gpus = tuple(discover_gpus(config.fake_gpus))
    sandbox = None
    if config.sandbox:
        unsupported = sandbox_supported()
        if unsupported is None:
            sandbox = base_sandbox(config.state_dir, config.token_file)
            unreadable = unreadable_runtime_paths(sandbox.uid, sandbox.gid)
            if unreadable:
                log.warning("runtime_unreadable_in_sandbox", paths=unreadable,
                            uid=sandbox.uid, advice="make them readable by others (chmod o+rX)")
        else:
            log.warning("sandbox_unavailable", reason=unsupported)
    pids_max = executor_pids_max(config.executor_pids_max, backend)
    log.info("executor_policy", cgroups=backend.name, enforced=backend.enforced,
             gpus=[gpu.type for gpu in gpus], sandbox=sandbox is not None,
             memory_budget_gb=round(config.memory_budget_bytes / 2**30, 2), pids_max=pids_max)
    return LimitPolicy(backend, gpus, config.memory_budget_bytes, sandbox, pids_max)
