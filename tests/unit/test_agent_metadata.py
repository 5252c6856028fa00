"""`burla agent --from-metadata`: what it reads from a (stand-in) metadata server, how its flags
combine with it, and the errors that name what is missing."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from burla import daemon_cli
from burla.agent import metadata
from burla.agent.metadata import DEFAULT_VM_ORPHAN_TIMEOUT, MetadataError, VmIdentity
from tests.fakes.metadata import FakeMetadata

pytestmark = pytest.mark.timeout(30)

ATTRIBUTES = {"burla-coordinator": "tcp://10.128.0.2:7700", "burla-token": "boot-token",
              "burla-server-key": "server-public-key"}


@pytest.fixture
def server() -> Iterator[FakeMetadata]:
    with FakeMetadata() as fake:
        fake.add("127.0.0.1", "burla-c-1a2b3c-0001", "us-central1-b", "my-project", ATTRIBUTES)
        yield fake


def settings_of(fake: FakeMetadata) -> metadata.VmSettings:
    return metadata.read(metadata.fetcher(fake.url, retry_for=0))


def test_reads_coordinator_token_key_and_identity(server):
    settings = settings_of(server)
    assert settings.coordinator == "tcp://10.128.0.2:7700"
    assert settings.token == "boot-token" and "boot-token" not in repr(settings)
    assert settings.server_key == "server-public-key"
    assert settings.vm == VmIdentity("my-project", "us-central1-b", "burla-c-1a2b3c-0001", "")
    assert settings.orphan_timeout == DEFAULT_VM_ORPHAN_TIMEOUT


def test_optional_attributes(server):
    server.add("127.0.0.1", "vm", "us-central1-a", "p", {
        "burla-coordinator": "tcp://10.0.0.2:1", "burla-token": "t",
        "burla-orphan-timeout": "12.5", "burla-compute-endpoint": "http://10.0.0.1:9"})
    settings = settings_of(server)
    assert settings.orphan_timeout == 12.5 and settings.server_key == ""
    assert settings.vm.compute_endpoint == "http://10.0.0.1:9"


@pytest.mark.parametrize("missing", ["burla-coordinator", "burla-token"])
def test_a_missing_attribute_is_named(server, missing):
    server.add("127.0.0.1", "vm", "us-central1-a", "p",
               {k: v for k, v in ATTRIBUTES.items() if k != missing})
    with pytest.raises(MetadataError, match=f"metadata attribute {missing} is missing on this "
                                            "instance: the coordinator sets it"):
        settings_of(server)


@pytest.mark.parametrize("value", ["soon", "-1", "nan"])
def test_a_bad_orphan_timeout_is_named(server, value):
    server.add("127.0.0.1", "vm", "us-central1-a", "p",
               {**ATTRIBUTES, "burla-orphan-timeout": value})
    with pytest.raises(MetadataError, match=f"burla-orphan-timeout='{value}' is not a number"):
        settings_of(server)


def test_an_unreachable_server_is_named_after_bounded_retries():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/computeMetadata/v1"
    with pytest.raises(MetadataError) as caught:
        metadata.read(metadata.fetcher(url, retry_for=1.0))
    assert f"cannot read {url}/instance/attributes/burla-coordinator" in str(caught.value)
    assert "--coordinator" in str(caught.value)


def test_a_server_that_is_not_the_metadata_server_is_refused():
    class NotMetadata(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    portal = ThreadingHTTPServer(("127.0.0.1", 0), NotMetadata)
    threading.Thread(target=portal.serve_forever, daemon=True).start()
    try:
        with pytest.raises(MetadataError, match="without the Metadata-Flavor: Google header"):
            metadata.read(metadata.fetcher(f"http://127.0.0.1:{portal.server_port}", 0))
    finally:
        portal.shutdown()
        portal.server_close()


def test_the_fake_refuses_a_request_without_the_flavor_header(server):
    assert server.answer("127.0.0.1", "/computeMetadata/v1/instance/name", None)[0] == 403


# --- the flags ------------------------------------------------------------------------------


def agent_args(tmp_path: Path, *flags: str) -> daemon_cli.argparse.Namespace:
    return daemon_cli.parser().parse_args(["agent", "--state-dir", str(tmp_path), *flags])


def test_from_metadata_builds_the_config(server, tmp_path):
    config = daemon_cli.agent_config(agent_args(tmp_path, "--from-metadata", "--metadata-url",
                                                server.url))
    assert (config.coordinator, config.token) == ("tcp://10.128.0.2:7700", "boot-token")
    assert config.agent_id == "burla-c-1a2b3c-0001"  # the instance name
    assert config.vm == VmIdentity("my-project", "us-central1-b", "burla-c-1a2b3c-0001", "")
    assert config.orphan_timeout == DEFAULT_VM_ORPHAN_TIMEOUT


def test_flags_given_win_over_the_metadata(server, tmp_path):
    config = daemon_cli.agent_config(agent_args(
        tmp_path, "--from-metadata", "--metadata-url", server.url, "--agent-id", "mine",
        "--orphan-timeout", "0", "--coordinator", "tcp://10.0.0.9:1", "--token", "flag-token"))
    assert (config.agent_id, config.orphan_timeout) == ("mine", 0.0)
    assert (config.coordinator, config.token) == ("tcp://10.0.0.9:1", "flag-token")


def test_without_metadata_there_is_no_vm_and_no_orphan_timeout(tmp_path):
    config = daemon_cli.agent_config(agent_args(tmp_path, "--coordinator", "tcp://10.0.0.9:1",
                                                "--token", "t"))
    assert config.vm is None and config.orphan_timeout == 0.0


def run_agent(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "burla", "agent", "--state-dir", str(tmp_path),
                           *flags], capture_output=True, text=True, timeout=20)


def test_the_cli_says_to_give_coordinator_or_from_metadata(tmp_path):
    done = run_agent(tmp_path, "--token", "t")
    assert done.returncode == 2
    assert "give --coordinator ENDPOINT, or --from-metadata on a GCE VM" in done.stderr
    done = run_agent(tmp_path, "--coordinator", "tcp://10.0.0.2:1", "--metadata-url", "http://x")
    assert done.returncode == 2 and "--metadata-url needs --from-metadata" in done.stderr


def test_the_cli_names_a_missing_attribute_and_a_bad_endpoint(server, tmp_path):
    server.add("127.0.0.1", "vm", "us-central1-a", "p", {"burla-token": "t"})
    done = run_agent(tmp_path, "--from-metadata", "--metadata-url", server.url)
    assert done.returncode == 1, done.stderr
    assert "burla agent: metadata attribute burla-coordinator is missing" in done.stderr
    server.add("127.0.0.1", "vm", "us-central1-a", "p",
               {"burla-token": "t", "burla-coordinator": "10.0.0.2:7700"})
    done = run_agent(tmp_path, "--from-metadata", "--metadata-url", server.url)
    assert done.returncode == 1, done.stderr
    assert "metadata attribute burla-coordinator: '10.0.0.2:7700' is not an endpoint" in \
        done.stderr
