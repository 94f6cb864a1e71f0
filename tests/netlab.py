"""A small internet in Linux network namespaces: public hosts and homes behind NAT routers.

    lab = NatLab.create(publics=2, homes=3)     # raises LabUnavailable(reason) where it cannot
    lab.run("pub1", [...])                      # a command inside a host's namespace
    lab.prefix("home1")                         # ["ip", "netns", "exec", ...] for PeerProcess
    lab.destroy()

The "internet" is a bridge in its own namespace on 198.51.100.0/24 (a documentation range:
peer/reach.py counts it as public). Public host ``pubK`` is 198.51.100.K. Home ``homeK`` is
192.168.1.2 behind router 198.51.100.(10+K), which masquerades (nftables) what the home dials
out and drops every connection from outside that the home did not open: the home can dial
the public hosts, nobody can dial the home. Like a home router, the router answers nothing
that comes in unasked (it drops it, rather than answering a TCP SYN with a reset: a reset, and
the conntrack entry it leaves, would break the simultaneous open of a TCP hole punch). Every
home has the same private address, as real homes do. The kernel here has no netem: latency
and loss stay in the simulator.

``internet``: the first three octets of the internet's /24. The default, a documentation
range, is public to seedswarm but *unroutable* to libp2p (go-multiaddr's ``IsPublicAddr``), so
p2pd never sees a public address there: no DCUtR hole punching (its service waits for one
forever), and a public node's AutoNAT never confirms it is public, so its relay runs with
go-libp2p's default limits (128 KiB / 2 min per circuit). Give a public range (the namespaces
reach nothing outside) to exercise those as on the internet.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field

INTERNET = "198.51.100"

_NAT_RULES = """
table ip nat {
  chain postrouting { type nat hook postrouting priority 100; oifname "wan" masquerade; }
}
table ip filter {
  chain forwarding {
    type filter hook forward priority 0; policy drop;
    ct state established,related accept;
    iifname "lan" oifname "wan" accept;
  }
  chain input {
    type filter hook input priority 0; policy accept;
    iifname "wan" ct state new,invalid drop;
  }
}
"""


class LabUnavailable(RuntimeError):
    """Namespaces cannot be built here (not root, no ip/nft, no permission): the reason."""


def _sh(*cmd: str, input: str | None = None) -> None:
    done = subprocess.run(cmd, input=input, capture_output=True, text=True)
    if done.returncode:
        raise LabUnavailable(f"{' '.join(cmd)}: {done.stderr.strip() or done.returncode}")


@dataclass
class NatLab:
    tag: str
    internet: str = INTERNET
    namespaces: list[str] = field(default_factory=list)
    addresses: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, publics: int, homes: int, internet: str = INTERNET) -> "NatLab":
        if os.geteuid() != 0:
            raise LabUnavailable("network namespaces need root")
        for tool in ("ip", "nft"):
            if shutil.which(tool) is None:
                raise LabUnavailable(f"`{tool}` is not installed (apt-get install iproute2 nftables)")
        lab = cls(tag="ss" + uuid.uuid4().hex[:6], internet=internet)
        try:
            lab._build(publics, homes)
        except BaseException:
            lab.destroy()
            raise
        return lab

    def ns(self, host: str) -> str:
        return f"{self.tag}-{host}"

    def prefix(self, host: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns(host)]

    def run(self, host: str, cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run([*self.prefix(host), *cmd], **kwargs)

    def _add_ns(self, host: str) -> str:
        name = self.ns(host)
        _sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        _sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def _build(self, publics: int, homes: int) -> None:
        inet = self._add_ns("inet")
        _sh("ip", "-n", inet, "link", "add", "br0", "type", "bridge")
        _sh("ip", "-n", inet, "link", "set", "br0", "up")
        port = 0

        def wire(host: str, address: str) -> str:
            nonlocal port
            port += 1
            name = self._add_ns(host)
            _sh("ip", "link", "add", "name", f"v{port}", "netns", inet, "type", "veth", "peer", "name", "wan", "netns", name)
            _sh("ip", "-n", inet, "link", "set", f"v{port}", "master", "br0", "up")
            _sh("ip", "-n", name, "addr", "add", f"{address}/24", "dev", "wan")
            _sh("ip", "-n", name, "link", "set", "wan", "up")
            self.addresses[host] = address
            return name

        for k in range(1, publics + 1):
            wire(f"pub{k}", f"{self.internet}.{k}")
        for k in range(1, homes + 1):
            router = wire(f"router{k}", f"{self.internet}.{10 + k}")
            home = self._add_ns(f"home{k}")
            _sh("ip", "link", "add", "name", "lan", "netns", router, "type", "veth", "peer", "name", "eth0", "netns", home)
            _sh("ip", "-n", router, "addr", "add", "192.168.1.1/24", "dev", "lan")
            _sh("ip", "-n", router, "link", "set", "lan", "up")
            _sh("ip", "netns", "exec", router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            _sh("ip", "netns", "exec", router, "nft", "-f", "-", input=_NAT_RULES)
            _sh("ip", "-n", home, "addr", "add", "192.168.1.2/24", "dev", "eth0")
            _sh("ip", "-n", home, "link", "set", "eth0", "up")
            _sh("ip", "-n", home, "route", "add", "default", "via", "192.168.1.1")
            self.addresses[f"home{k}"] = "192.168.1.2"

    def destroy(self) -> None:
        for name in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self.namespaces.clear()
