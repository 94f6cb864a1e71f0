"""Reachability: who can dial whom, and libp2p circuit relays for peers behind NAT.

Most volunteers sit behind a home router: they can dial out, nobody can dial in. libp2p's own
answer, which the p2pd bundled with hivemind implements, is circuit relay v2: a public node
(every ``seedswarm bootstrap`` and every public peer runs the relay service) keeps a
*reservation* for a peer behind NAT, and anyone can then reach that peer through
``<relay address>/p2p-circuit/p2p/<peer id>``; p2pd then tries to upgrade the relayed
connection to a direct one (DCUtR hole punching, on with AutoNAT).

What this module decides, purely from addresses (no I/O):

- ``plan(...)``: whether this peer is *private* (it has no public address of its own while
  its bootstrap/relay peers do) and which relays it reserves slots on. A private peer runs
  its DHT node as a client (nobody can dial it to ask) and reserves on every relay at once
  (p2pd's static relays: no three-minute wait for relay discovery);
- ``dial_addrs``: the addresses others may dial us at (direct ones, then one circuit
  address per relay), published in our member entry so that peers can reach us without a
  libp2p DHT lookup;
- ``encode_maddr``: the binary multiaddr p2pd's CONNECT request takes. hivemind's bundled
  multiaddr library writes ``/p2p/<id>`` as a CID, which p2pd (go-multiaddr) rejects
  ("length greater than remaining number of bytes"); we write the bare multihash.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..protocol.directory import MAX_ADDR_CHARS, MAX_MEMBER_ADDRS

REACHABILITY = ("auto", "public", "private")

_P2P_CODE = b"\xa5\x03"          # varint(421)
_CIRCUIT_CODE = b"\xa2\x02"      # varint(290)


@dataclass(frozen=True)
class ReachPlan:
    private: bool                 # behind NAT: reserve relay slots, DHT client only
    relays: tuple[str, ...]       # relay multiaddrs (with /p2p/<relay id>) we reserve on
    reason: str                   # why, in words (shown at start)


def host_of(maddr: str) -> str | None:
    """The IP of ``/ip4/A/...`` or ``/ip6/A/...`` (None for dns and others)."""
    parts = maddr.split("/")
    if len(parts) >= 3 and parts[1] in ("ip4", "ip6"):
        return parts[2]
    return None


def is_public(maddr: str) -> bool:
    """An address on the public internet: not loopback, not RFC 1918 / unique-local, not
    link-local, not unspecified. (Documentation and benchmark ranges count as public: test
    networks use them to stand for the internet.) DNS names count as public."""
    parts = maddr.split("/")
    if len(parts) >= 3 and parts[1] in ("dns", "dns4", "dns6", "dnsaddr"):
        return parts[2] not in ("localhost",)
    host = host_of(maddr)
    if host is None:
        return False
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast:
        return False
    private_nets = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
    return not any(ip in ipaddress.ip_network(net) for net in private_nets)


def plan(mode: str, own_maddrs: Iterable[str], initial_peers: Sequence[str], relays: Sequence[str] = ()) -> ReachPlan:
    """Private or public, and the relays to reserve on (default: the initial peers, which
    are bootstrap nodes or public peers: all run the relay service).

    ``mode`` "auto": private when we have no public address (listen or announce) while a
    relay has one: the bootstrap lives on the internet and we do not. A swarm on one host
    or one LAN (everyone private, bootstrap included) dials directly."""
    if mode not in REACHABILITY:
        raise ValueError(f"reachability must be one of {REACHABILITY}")
    candidates = tuple(dict.fromkeys(r for r in (relays or initial_peers) if "/p2p/" in r and "p2p-circuit" not in r))
    own = [m for m in own_maddrs if host_of(m) not in ("0.0.0.0", "::")]
    if mode == "public":
        return ReachPlan(False, (), "public (--reachability public): others dial this peer directly")
    if mode == "private":
        if not candidates:
            return ReachPlan(True, (), "private (--reachability private) but no relay: give --relays or --initial-peers")
        return ReachPlan(True, candidates, f"private (--reachability private): reachable through {len(candidates)} relay(s)")
    if not candidates:
        return ReachPlan(False, (), "no relays known (no --initial-peers): others dial this peer directly")
    if any(is_public(m) for m in own):
        return ReachPlan(False, (), "has a public address: others dial this peer directly")
    if not any(is_public(r) for r in candidates):
        return ReachPlan(False, (), "this peer and its bootstrap peers share a private network: direct dials")
    return ReachPlan(True, candidates, f"no public address of its own: reachable through {len(candidates)} relay(s) "
                                       "(libp2p circuit relay v2, with hole punching where the routers allow it)")


def circuit_addr(relay: str, peer_id: str) -> str:
    return f"{relay}/p2p-circuit/p2p/{peer_id}"


def dial_addrs(own_maddrs: Iterable[str], reach: ReachPlan, peer_id: str) -> list[str]:
    """What we publish in our member entry: direct addresses (not loopback), then circuits."""
    direct = [m for m in own_maddrs if "p2p-circuit" not in m and not (host_of(m) or "").startswith("127.")
              and host_of(m) not in ("::1", "0.0.0.0", "::")]
    circuits = [circuit_addr(r, peer_id) for r in reach.relays] if reach.private else []
    out = [m for m in circuits + direct if len(m) <= MAX_ADDR_CHARS]  # circuits first: direct ones may be NAT-private
    return list(dict.fromkeys(out))[:MAX_MEMBER_ADDRS]


def relay_peer_id(relay: str) -> str:
    return relay.rsplit("/p2p/", 1)[-1]


# --- binary multiaddrs for p2pd ----------------------------------------------------------------
def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def encode_maddr(text: str) -> bytes:
    """The binary form of a multiaddr string, as go-multiaddr reads it. ValueError (only) if it
    is not one: we encode addresses strangers published."""
    try:
        return _encode_maddr(text)
    except ValueError:
        raise
    except Exception as exc:  # the multiaddr and peer-id parsers raise what they like
        raise ValueError(f"not a multiaddr: {text[:80]!r} ({type(exc).__name__})") from None


def _encode_maddr(text: str) -> bytes:
    from hivemind.p2p import PeerID
    from hivemind.p2p.p2p_daemon import Multiaddr

    if not text.startswith("/") or len(text) > MAX_ADDR_CHARS:
        raise ValueError(f"not a multiaddr: {text[:80]!r}")
    parts = text.split("/")[1:]
    out, plain, i = bytearray(), [], 0

    def flush() -> None:
        if plain:
            out.extend(Multiaddr("/" + "/".join(plain)).to_bytes())
            plain.clear()

    while i < len(parts):
        proto = parts[i]
        if proto == "p2p-circuit":
            flush()
            out.extend(_CIRCUIT_CODE)
            i += 1
        elif proto in ("p2p", "ipfs"):
            if i + 1 >= len(parts):
                raise ValueError(f"{text!r}: /p2p needs a peer id")
            flush()
            digest = PeerID.from_base58(parts[i + 1]).to_bytes()
            out.extend(_P2P_CODE + _uvarint(len(digest)) + digest)
            i += 2
        else:
            plain.append(proto)
            i += 1
    flush()
    return bytes(out)


class BinaryMaddr:
    """What hivemind's p2p client needs of a multiaddr (``to_bytes``), from a string."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._bytes = encode_maddr(text)

    def to_bytes(self) -> bytes:
        return self._bytes

    def __str__(self) -> str:
        return self.text

    __repr__ = __str__
