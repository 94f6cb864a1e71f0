"""DHT upkeep benchmark: the wire bytes of each DHT operation a peer repeats, and what they
add up to per peer per second under the node's cadences (peer/node.py).

    python scripts/bench_dht.py [--json] [--nodes 4] [--rounds 3]

Starts ``--nodes`` real DHT nodes (hivemind + p2pd, loopback, seedswarm's signed entries),
lets each write its member, spec and directory entries once, then runs every operation on
every node ``--rounds`` times and reads the kernel's TCP counters of all the nodes' p2pd
sockets (peer/wire.py) around each batch: "bytes_per_op" is everything sent, requests and
answers, per operation, as the demo's wire_bytes_per_gradient counts it. "upkeep" spreads
each operation over its period in a settled swarm: a member refresh every dht_refresh seconds
(PeerConfig), a check for newcomers (2 member buckets) every
SETTLED_DISCOVERY, the spec every SPEC_EVERY, the directory every
ANNOUNCE_EVERY by the ANNOUNCERS peers that represent the swarm.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from seedswarm.peer.config import PeerConfig
from seedswarm.peer.demo import default_spec
from seedswarm.peer.dht import SwarmDHT
from seedswarm.peer.identity import load_identity
from seedswarm.peer.node import ANNOUNCE_EVERY, ANNOUNCE_TTL, SETTLED_DISCOVERY, SPEC_EVERY
from seedswarm.peer.process import descendants
from seedswarm.peer.wire import WireMeter
from seedswarm.protocol.directory import ANNOUNCERS, Announcement, MemberInfo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-dht-"))
    nodes: list[SwarmDHT] = []
    try:
        for i in range(args.nodes):
            ident = load_identity(tmp / f"{i}.key")
            nodes.append(SwarmDHT.start(ident.signer, str(ident.path), host_maddrs=["/ip4/127.0.0.1/tcp/0"],
                                        initial_peers=nodes[0].maddrs() if nodes else ()))
        result = asyncio.run(_measure(nodes, args.rounds))
    finally:
        for node in nodes:
            node.shutdown()
    if args.json:
        print(json.dumps(result))
        return
    for op, size in result["bytes_per_op"].items():
        print(f"{op:22s} {size:8.0f} B per operation")
    print(f"upkeep per peer: {result['upkeep_bytes_per_s']:.0f} B/s ({result['upkeep']})")


async def _measure(nodes: list[SwarmDHT], rounds: int) -> dict:
    spec = default_spec()
    swarm = spec.swarm_id
    meters = [WireMeter(descendants(node.pid)) for node in nodes]

    def sent() -> int:
        return sum(meter.read()[0] for meter in meters)

    def info(node: SwarmDHT) -> MemberInfo:  # a member entry as a training peer writes it
        return MemberInfo(step=1234, status="training", name="peer", loss=0.5, step_time_ms=800, checkpoint=1200,
                          sent=10 ** 7, received=10 ** 7, addrs=tuple(node.maddrs())[:4])

    announcement = Announcement(spec.name, spec.model.id, spec.task.kind, 1234, len(nodes))
    member_ttl = 3 * PeerConfig.dht_refresh  # as the node writes them
    operations = {
        "member_refresh": lambda node: node.register(swarm, info(node), ttl=member_ttl),
        "announce": lambda node: node.announce(swarm, announcement, ttl=ANNOUNCE_TTL),
        "spec_refresh": lambda node: node.publish_spec(spec),
        "discovery_8_buckets": lambda node: node.members(swarm, list(range(8))),  # looking for neighbours
        "settled_discovery": lambda node: node.members(swarm, [8, 9]),  # 2 buckets: checking for newcomers
    }
    for node in nodes:  # the entries exist, as in a running swarm
        await node.register(swarm, info(node), ttl=member_ttl)
        await node.publish_spec(spec)
        await node.announce(swarm, announcement, ttl=ANNOUNCE_TTL)
    await asyncio.sleep(1.0)
    idle_from, idle_start = sent(), time.monotonic()
    await asyncio.sleep(5.0)
    idle = (sent() - idle_from) / (len(nodes) * (time.monotonic() - idle_start))
    per_op = {}
    for name, op in operations.items():
        before = sent()
        for _ in range(rounds):
            for node in nodes:
                await op(node)
        await asyncio.sleep(0.5)  # the last answers reach the counters
        per_op[name] = round((sent() - before) / (rounds * len(nodes)), 1)
    periods = {"member_refresh": PeerConfig.dht_refresh, "settled_discovery": SETTLED_DISCOVERY,
               "spec_refresh": float(SPEC_EVERY), "announce": ANNOUNCE_EVERY / (min(ANNOUNCERS, len(nodes)) / len(nodes))}
    upkeep = {name: round(per_op[name] / period, 1) for name, period in periods.items()}
    return {"nodes": len(nodes), "rounds": rounds, "bytes_per_op": per_op, "idle_bytes_per_s": round(idle, 1),
            "upkeep": upkeep, "upkeep_bytes_per_s": round(sum(upkeep.values()) + idle, 1)}


if __name__ == "__main__":
    main()
