"""A stand-in GCE metadata server: each VM reads its own attributes, known by its address.

The real server answers each VM about itself; this one tells its callers apart by their source
address (a VM's namespace address, or loopback for tests run on the host). It also relays the
Compute API (`/compute/v1/...`) to a fake on loopback, which a VM in a network namespace cannot
reach itself. Tests only.
"""

from __future__ import annotations

import copy
import http.client
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

PREFIX = "/computeMetadata/v1/"
COMPUTE_PREFIX = "/compute/v1/"
# The project number the real server puts in instance/zone (projects/NUMBER/zones/ZONE).
PROJECT_NUMBER = "123456789012"


@dataclass
class VmRecord:
    """What the server knows of one VM."""

    name: str
    zone: str
    project: str
    attributes: dict[str, str] = field(default_factory=dict)

    def answer(self, path: str) -> str | None:
        """The text of a metadata path, or None where the real server says 404."""
        if path.startswith("instance/attributes/"):
            return self.attributes.get(path.removeprefix("instance/attributes/"))
        return {
            "instance/name": self.name,
            "instance/hostname": f"{self.name}.{self.zone}.c.{self.project}.internal",
            "instance/zone": f"projects/{PROJECT_NUMBER}/zones/{self.zone}",
            "project/project-id": self.project,
            "project/numeric-project-id": PROJECT_NUMBER,
        }.get(path)


class FakeMetadata:
    """The server. Use as a context manager, or start() and close()."""

    def __init__(self, host: str = "127.0.0.1", compute_url: str = "") -> None:
        self.compute_url = compute_url  # relayed to for /compute/v1/...; "" = no relay
        self._vms: dict[str, VmRecord] = {}  # source address -> the VM there
        self._lock = threading.Lock()
        self.reads: list[tuple[str, str]] = []  # (source address, path) of every answer
        self.relayed: list[tuple[str, str, str]] = []  # (source address, method, path)
        self._server = _serve(self, host)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name="fake-metadata", daemon=True)

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The metadata base URL, as `--metadata-url` takes it."""
        return f"http://{self.host}:{self.port}/computeMetadata/v1"

    @property
    def compute_relay(self) -> str:
        """The Compute API endpoint a VM can reach (the relay to `compute_url`)."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> FakeMetadata:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> FakeMetadata:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, address: str, name: str, zone: str, project: str,
            attributes: Mapping[str, str]) -> None:
        """Serve the VM at source `address`."""
        with self._lock:
            self._vms[address] = VmRecord(name, zone, project, dict(attributes))

    def remove(self, address: str) -> None:
        with self._lock:
            self._vms.pop(address, None)

    def vm_at(self, address: str) -> VmRecord | None:
        with self._lock:
            vm = self._vms.get(address)
            return copy.deepcopy(vm)

    def answer(self, address: str, path: str, flavor: str | None) -> tuple[int, str]:
        """(HTTP status, body) for a GET of `path` from `address`, as the real server answers."""
        if flavor != "Google":
            return 403, "Missing required header: Metadata-Flavor\n"
        if not path.startswith(PREFIX):
            return 404, f"no such metadata path {path}\n"
        with self._lock:
            vm = self._vms.get(address)
            if vm is None:
                return 404, f"no VM at {address} in this fake\n"
            self.reads.append((address, path))
            text = vm.answer(path.removeprefix(PREFIX))
        return (404, "not found\n") if text is None else (200, text)

    def relay(self, address: str, method: str, path: str, body: bytes,
              content_type: str) -> tuple[int, bytes, str]:
        """Pass one Compute API call to the fake on loopback; (status, body, content type)."""
        with self._lock:
            self.relayed.append((address, method, path))
        target = urlsplit(self.compute_url)
        connection = http.client.HTTPConnection(target.hostname or "", target.port, timeout=150)
        try:
            headers = {"content-type": content_type} if content_type else {}
            connection.request(method, path, body=body or None, headers=headers)
            answer = connection.getresponse()
            return answer.status, answer.read(), answer.getheader("content-type") or ""
        finally:
            connection.close()


def _serve(fake: FakeMetadata, host: str) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _send(self, status: int, body: bytes, content_type: str,
                  flavor: bool = True) -> None:
            self.send_response(status)
            if flavor:
                self.send_header("Metadata-Flavor", "Google")
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            if self.path.startswith(COMPUTE_PREFIX) and fake.compute_url:
                self._relay()
                return
            status, text = fake.answer(self.client_address[0], urlsplit(self.path).path,
                                       self.headers.get("Metadata-Flavor"))
            self._send(status, text.encode(), "application/text")

        def _relay(self) -> None:
            if not fake.compute_url:
                self._send(404, b"this fake relays no Compute API\n", "text/plain")
                return
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            status, data, content_type = fake.relay(self.client_address[0], self.command,
                                                    self.path, body,
                                                    self.headers.get("content-type") or "")
            self._send(status, data, content_type or "application/json", flavor=False)

        do_POST = do_DELETE = _relay

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer((host, 0), Handler)
    server.daemon_threads = True
    return server
