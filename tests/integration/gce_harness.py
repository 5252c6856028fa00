"""Helpers for the GCE provider tests: a real GceProvider pointed at a running fake Compute API."""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import urlsplit

from burla.coordinator.providers.base import BootStep
from burla.coordinator.providers.gce import GceProvider
from burla.coordinator.providers.gce_config import GceConfig
from tests.fakes.compute import FakeCompute

PROJECT = "test-project"
REGION = "us-central1"
CLUSTER = "testc"
STARTUP_SCRIPT = "#!/bin/sh\necho booted\n"


def provider_for(fake: FakeCompute, **settings: Any) -> GceProvider:
    """A GceProvider on `fake`, with quick retries so a lost reply is retried at once."""
    config: dict[str, Any] = dict(
        project=PROJECT, region=REGION, cluster_name=CLUSTER, api_endpoint=fake.url,
        coordinator_endpoint="tcp://10.128.0.1:5555", token="bootstrap-token",
        startup_script=STARTUP_SCRIPT, retry_initial_s=0.01, operation_timeout_s=30.0)
    config.update(settings)
    return GceProvider(GceConfig(**config))


def refuses_connections(url: str) -> bool:
    """Whether nothing listens at `url` any more (the fake's server is really shut down)."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "", parts.port or 80), timeout=1):
            return False
    except OSError:
        return True


class Steps(list[BootStep]):
    """An on_step callback that keeps the steps, and their words."""

    def __call__(self, step: BootStep) -> None:
        self.append(step)

    def words(self) -> list[str]:
        return [step.describe() for step in self]
