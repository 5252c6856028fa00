"""What an agent on a GCE VM learns from the metadata server; it reads, and never writes there.

`burla agent --from-metadata` reads its coordinator, bootstrap token and identity from the
instance's attributes, which the coordinator set when it created the VM. Plain `urllib`: the
agent's start pays no import of google-auth for a few GETs.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

DEFAULT_URL = "http://metadata.google.internal/computeMetadata/v1"
# The real server refuses a request without this header, and sends it back on every answer
# (which tells it from a proxy or captive portal answering in its place).
FLAVOR_HEADER = "Metadata-Flavor"
FLAVOR = "Google"
# Instance attributes (the coordinator's GCE provider sets the first two at insert).
COORDINATOR_KEY = "burla-coordinator"
TOKEN_KEY = "burla-token"
SERVER_KEY_KEY = "burla-server-key"  # the coordinator's public key, once encryption lands
COMPUTE_ENDPOINT_KEY = "burla-compute-endpoint"  # tests: a fake Compute API, anonymous
ORPHAN_TIMEOUT_KEY = "burla-orphan-timeout"  # seconds; overrides DEFAULT_VM_ORPHAN_TIMEOUT
# A VM whose coordinator is gone this long deletes itself: long enough for a coordinator's
# restart or upgrade, short enough that a cluster abandoned for good stops billing.
DEFAULT_VM_ORPHAN_TIMEOUT = 600.0
# At boot the network (and so the metadata server) may come up a moment after the agent:
# retry a refused or failed read for this long before giving up with the URL named.
RETRY_FOR_SECONDS = 30.0
RETRY_PAUSE_SECONDS = 0.5
REQUEST_TIMEOUT_SECONDS = 5.0


class MetadataError(Exception):
    """The metadata server could not be read, or lacks an attribute the agent needs.

    The message names the URL or attribute. On a VM the coordinator did not make (or made
    with an older burla), start the agent with --coordinator and --token-file instead.
    """


@dataclass(frozen=True)
class VmIdentity:
    """The VM an agent runs on: what it needs to delete itself through the Compute API."""

    project: str
    zone: str
    name: str
    compute_endpoint: str = ""  # "" = the real API with the VM's default credentials


@dataclass(frozen=True)
class VmSettings:
    """Everything `--from-metadata` read."""

    coordinator: str
    token: str = field(repr=False)
    vm: VmIdentity
    server_key: str = ""  # kept for encryption (the next issue); unused so far
    orphan_timeout: float = DEFAULT_VM_ORPHAN_TIMEOUT


Fetch = Callable[[str], "str | None"]


def fetcher(base_url: str = DEFAULT_URL, retry_for: float = RETRY_FOR_SECONDS) -> Fetch:
    """A function reading one path below `base_url`: its text, or None when the server says
    it does not exist (404). Other failures are retried for `retry_for` seconds."""
    base = base_url.rstrip("/")

    def fetch(path: str) -> str | None:
        url = f"{base}/{path}"
        deadline = time.monotonic() + retry_for
        while True:
            try:
                return _get(url)
            except urllib.error.HTTPError as e:
                if e.code == 404:
                    return None
                problem = f"it answered HTTP {e.code} {e.reason}"
                if e.code == 403:
                    raise MetadataError(f"the metadata server refused {url}: {problem}") from e
            except (urllib.error.URLError, OSError) as e:
                problem = f"{getattr(e, 'reason', e)}"
            if time.monotonic() >= deadline:
                raise MetadataError(
                    f"cannot read {url} from the metadata server ({problem}, for "
                    f"{retry_for:.0f}s): is this a GCE VM? Elsewhere give --metadata-url "
                    f"of a server that answers, or run the agent with --coordinator")
            time.sleep(RETRY_PAUSE_SECONDS)

    return fetch


def _get(url: str) -> str:
    request = urllib.request.Request(url, headers={FLAVOR_HEADER: FLAVOR})
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_SECONDS) as answer:
        if answer.headers.get(FLAVOR_HEADER) != FLAVOR:
            raise MetadataError(f"{url} answered without the {FLAVOR_HEADER}: {FLAVOR} header, "
                                f"so it is not a GCE metadata server")
        return str(answer.read().decode())


def read(fetch: Fetch) -> VmSettings:
    """The VM's settings; MetadataError naming what is missing or wrong."""

    def required(path: str, why: str) -> str:
        value = fetch(path)
        if not value:
            raise MetadataError(why)
        return value.strip()

    def attribute(key: str) -> str:
        return (fetch(f"instance/attributes/{key}") or "").strip()

    coordinator = required(
        f"instance/attributes/{COORDINATOR_KEY}",
        f"metadata attribute {COORDINATOR_KEY} is missing on this instance: the coordinator "
        f"sets it when it creates the VM (else start the agent with --coordinator)")
    token = required(
        f"instance/attributes/{TOKEN_KEY}",
        f"metadata attribute {TOKEN_KEY} is missing on this instance: the coordinator sets it "
        f"when it creates the VM (else start the agent with --token-file)")
    name = required("instance/name", "the metadata server has no instance/name")
    zone = required("instance/zone", "the metadata server has no instance/zone")
    project = required("project/project-id", "the metadata server has no project/project-id")
    orphan_text = attribute(ORPHAN_TIMEOUT_KEY)
    orphan = DEFAULT_VM_ORPHAN_TIMEOUT
    if orphan_text:
        try:
            orphan = float(orphan_text)
        except ValueError:
            orphan = -1.0
        if not orphan >= 0:  # also NaN
            raise MetadataError(f"metadata attribute {ORPHAN_TIMEOUT_KEY}={orphan_text[:40]!r} "
                                f"is not a number of seconds >= 0 (0: never)")
    vm = VmIdentity(project, zone.rsplit("/", 1)[-1], name, attribute(COMPUTE_ENDPOINT_KEY))
    return VmSettings(coordinator, token, vm, attribute(SERVER_KEY_KEY), orphan)
