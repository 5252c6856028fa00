"""Private network namespaces for partition tests: made, wired to the host, cut, and removed.

Each namespace gets one veth pair and a /30 of 10.250.X.0/24, X picked unused on this host; the
tests send traffic only to those addresses and to loopback. Everything is removed on exit,
even when the test fails.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

# The private block partition tests may use; one /24 of it per test run.
PRIVATE_BLOCK = ipaddress.ip_network("10.250.0.0/16")


def run_ip(*args: str) -> subprocess.CompletedProcess[str]:
    """`ip ARGS`, bounded in time, its output captured."""
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)


def must_ip(*args: str) -> None:
    """`ip ARGS`, raising with its stderr if it fails."""
    done = run_ip(*args)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is missing"
    return None


@dataclass
class Namespace:
    name: str
    host_if: str  # the host's end of the veth pair
    ns_if: str
    host_address: str  # what processes inside reach the host at
    ns_address: str

    @property
    def exec_prefix(self) -> tuple[str, ...]:
        """Run a command inside (ip execs it, so its pid is the command's own)."""
        return ("ip", "netns", "exec", self.name)

    def cut(self) -> None:
        """Partition: take the host's end of the link down."""
        must_ip("link", "set", self.host_if, "down")

    def restore(self) -> None:
        must_ip("link", "set", self.host_if, "up")


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 of PRIVATE_BLOCK with no address on this host, starting from one our pid picks."""
    shown = run_ip("-4", "-o", "addr", "show").stdout
    used = {ipaddress.ip_interface(word).network.supernet(new_prefix=24)
            for line in shown.splitlines() for word in line.split()
            if word.startswith("10.250.") and "/" in word}
    subnets = list(PRIVATE_BLOCK.subnets(new_prefix=24))
    start = os.getpid() % len(subnets)
    for subnet in subnets[start:] + subnets[:start]:
        if subnet not in used and subnet.network_address.packed[2] != 0:
            return subnet
    raise RuntimeError("no free /24 in 10.250.0.0/16")


def _remove(ns: Namespace) -> None:
    run_ip("netns", "del", ns.name)
    run_ip("link", "del", ns.host_if)  # gone already with its peer, unless a process holds it


@contextlib.contextmanager
def namespaces(count: int) -> Iterator[list[Namespace]]:
    """`count` namespaces, each linked to the host by its own veth pair and /30."""
    subnet = _free_subnet()
    pairs = list(subnet.subnets(new_prefix=30))
    made: list[Namespace] = []
    tag = f"{os.getpid()}{os.urandom(2).hex()}"
    try:
        for i in range(count):
            host, inside = list(pairs[i].hosts())
            ns = Namespace(f"burla-{tag}-{i}", f"bh{tag}{i}"[:15], f"bn{tag}{i}"[:15],
                           str(host), str(inside))
            must_ip("netns", "add", ns.name)
            made.append(ns)
            must_ip("link", "add", ns.host_if, "type", "veth", "peer", "name", ns.ns_if,
                  "netns", ns.name)
            must_ip("addr", "add", f"{host}/30", "dev", ns.host_if)
            must_ip("link", "set", ns.host_if, "up")
            must_ip("netns", "exec", ns.name, "ip", "addr", "add", f"{inside}/30", "dev", ns.ns_if)
            must_ip("netns", "exec", ns.name, "ip", "link", "set", ns.ns_if, "up")
            must_ip("netns", "exec", ns.name, "ip", "link", "set", "lo", "up")
        yield made
    finally:
        for ns in made:
            _remove(ns)


def leftovers(made: list[Namespace]) -> list[str]:
    """Namespaces or links of `made` that still exist."""
    names = set(run_ip("netns", "list").stdout.split())
    links = run_ip("-o", "link", "show").stdout
    return [ns.name for ns in made if ns.name in names] + \
        [ns.host_if for ns in made if f" {ns.host_if}@" in links or f" {ns.host_if}:" in links]
