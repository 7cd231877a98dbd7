"""A second "host" on this machine: a network namespace joined by a veth pair.

The root namespace keeps the servers; a worker started with ``Host.command``
runs in the namespace and reaches them through the veth, at ``Host.gateway``.
``cut`` sets the root end of the link down: from then on the worker's packets
and the servers' packets to it are dropped silently, as when a host falls off
the network (no RST, no FIN). ``heal`` brings it back.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import uuid


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def _used_subnets() -> set[str]:
    out = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, timeout=30).stdout
    return {line.split()[0].rsplit(".", 1)[0] for line in out.splitlines() if line and line[0].isdigit()}


class Host:
    def __init__(self, label: str) -> None:
        tag = uuid.uuid4().hex[:6]
        self.namespace = f"fault-{label}-{tag}"
        self.outer = f"vf{tag}{label[:4]}"[:15]  # interface names are at most 15 characters
        used = _used_subnets()
        while True:  # a /30 of our own in 10.250-254.x.x
            prefix = f"10.{random.randint(250, 254)}.{random.randint(0, 255)}"
            if prefix not in used:
                break
        block = random.randrange(0, 256, 4)
        self.gateway = f"{prefix}.{block + 1}"  # root side: the servers listen here
        self.address = f"{prefix}.{block + 2}"  # namespace side: the worker
        self.network = f"{prefix}.{block}/30"
        self._created = False

    def create(self) -> None:
        _ip("netns", "add", self.namespace)
        self._created = True
        _ip("link", "add", self.outer, "type", "veth", "peer", "name", "eth0", "netns", self.namespace)
        _ip("addr", "add", f"{self.gateway}/30", "dev", self.outer)
        _ip("link", "set", self.outer, "up")
        _ip("-n", self.namespace, "addr", "add", f"{self.address}/30", "dev", "eth0")
        _ip("-n", self.namespace, "link", "set", "eth0", "up")
        _ip("-n", self.namespace, "link", "set", "lo", "up")

    def command(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *argv]

    def cut(self) -> None:
        _ip("link", "set", self.outer, "down")

    def heal(self) -> None:
        _ip("link", "set", self.outer, "up")

    def delete(self) -> None:
        if not self._created:
            return
        subprocess.run(["ip", "link", "del", self.outer], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True, timeout=30)
        self._created = False


def namespaces_available() -> str | None:
    """None if network namespaces and veth pairs can be made here, else why not."""
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    probe = Host("probe")
    try:
        probe.create()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        return f"cannot create a network namespace with a veth pair: {exc}"
    finally:
        probe.delete()
    return None
