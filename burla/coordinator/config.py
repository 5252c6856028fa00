"""The coordinator's settings, built once by the CLI and passed down; never read globally."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class CoordinatorConfig:
    endpoint: str  # where to bind, e.g. tcp://0.0.0.0:7700 (port 0 picks a free one)
    state_dir: Path
    agent_token: str  # agents present this in Hello
    client_tokens: dict[str, str] = field(default_factory=dict)  # token -> owner
    admin_owner: str = ""  # this owner may stop the coordinator remotely (`burla local down`)
    idle_timeout: float = 0.0  # stop after this long with no job and no client; 0 = never
