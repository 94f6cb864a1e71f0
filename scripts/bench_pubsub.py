"""libp2p gossipsub (p2pd -pubsub) against framed records over hivemind's streams, in one run.

    python scripts/bench_pubsub.py [--json] [--topology line|mesh] [--messages 200] [--rate 20]
                                   [--idle 35] [--batch-ms 0] [--no-sign]

The same harness runs both systems, one after the other, each on its own K (default 4)
p2pd daemons started here with identical flags (TCP on loopback, no DHT, no relay), the
gossipsub ones with ``-pubsub`` added (router gossipsub, message signing on: the defaults):

- gossipsub  every daemon subscribes to one topic through the daemon's control protocol
             (PSRequest SUBSCRIBE, then a stream of PSMessage on that control connection; the
             minimal client is below: hivemind's bindings do not wrap PUBSUB); peer 0 publishes
             (PSRequest PUBLISH); the daemons forward (mesh + flood publish) and deduplicate.
- streams    hivemind.p2p.P2P attached to each daemon (P2P.replicate): one persistent binary
             stream per neighbour (call_binary_stream_handler / add_binary_stream_handler),
             each record in a frame as seedswarm's links send it (8-byte length +
             msgpack ["gossip", [record], [], []], peer/transport.py, protocol/messages.py);
             each peer forwards a record it has not seen to every neighbour but the sender
             (plain flood: on a line or a full mesh of 4 it sends the same copies gossipsub does).

Peer 0 publishes ``--messages`` records of 115 random bytes (a 4-byte sequence number, then
random bytes) at ``--rate`` per second; with ``--batch-ms`` it packs what accumulated in that
interval into one publish / one frame instead (as seedswarm batches per frame_interval).

Bytes on the wire are counted by a TCP proxy in this process: daemon i listens on a private
port and announces only its proxy's port (-announceAddrs), and every connect goes to proxy
ports, so every byte between daemons (TLS or Noise, yamux, multistream, identify, pubsub or
stream payload) passes a proxy, which adds up the TCP payload bytes in both directions. IP
and TCP headers are not included. After each run /proc/net/tcp is checked for a daemon
connection that bypassed the proxies (reported as ``bypass_connections``; must be 0).

Figures, per system:
- delivered / expected             records received by the K-1 other peers (each counted once)
- wire_bytes_per_delivery          TCP payload bytes between daemons during the publish window
                                   (first publish to last delivery + 1 s) / records delivered
- overhead_bytes_per_delivery      the same minus the 115 payload bytes
- latency_ms p50 / p99             publish call -> arrival at a receiving peer's Python client
- idle_bytes_per_s                 TCP payload bytes per second between all daemons with no
                                   messages, over --idle seconds after the swarm has settled
Ratios gossipsub / streams are from this one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import hivemind
import msgpack
from hivemind.p2p import P2P, PeerID
from hivemind.p2p.p2p_daemon_bindings.utils import raise_if_failed, read_pbmsg_safe, write_pbmsg
from hivemind.proto import p2pd_pb2 as pb
from hivemind.utils.multiaddr import Multiaddr

P2PD = Path(hivemind.__file__).parent / "hivemind_cli" / "p2pd"
RECORD_BYTES = 115
TOPIC = "seedswarm-bench"
PROTO = "seedswarm-bench/link"


# --- byte counting --------------------------------------------------------------------------
class Meter:
    def __init__(self) -> None:
        self.bytes = 0
        self.connections = 0
        self.local_ports: set[int] = set()  # our own sockets towards the daemons


class CountingProxy:
    """Listens on a loopback port and forwards every connection to ``target``, counting bytes."""

    def __init__(self, meter: Meter, target: int) -> None:
        self.meter, self.target = meter, target
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        self.meter.connections += 1
        self.meter.local_ports.add(up_writer.get_extra_info("sockname")[1])

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(1 << 16):
                    self.meter.bytes += len(data)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        with contextlib.suppress(asyncio.CancelledError):  # at shutdown
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bypass_connections(daemon_ports: set[int], proxy_side_ports: set[int]) -> int:
    """Established TCP connections to a daemon's private port that do not come from a proxy.

    ``proxy_side_ports``: the proxies' listening ports and their sockets towards the daemons
    (go-libp2p dials from its listening port, so a proxy's accepted socket also has a daemon
    port as its remote end)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state = fields[1], fields[2], fields[3]
        if state != "01":  # ESTABLISHED
            continue
        lport, rport = int(local.split(":")[1], 16), int(remote.split(":")[1], 16)
        if rport in daemon_ports and lport not in proxy_side_ports:
            count += 1
    return count


# --- daemons and their control protocol ---------------------------------------------------
class Daemon:
    def __init__(self, index: int, meter: Meter, pubsub: bool, workdir: str, sign: bool = True) -> None:
        self.index, self.pubsub, self.sign = index, pubsub, sign
        self.sock = os.path.join(workdir, f"p2pd-{index}.sock")
        self.port = free_port()
        self.proxy = CountingProxy(meter, self.port)
        self.proc: subprocess.Popen | None = None
        self.peer_id: bytes = b""

    @property
    def control(self) -> Multiaddr:
        return Multiaddr(f"/unix{self.sock}")

    @property
    def public_addr(self) -> Multiaddr:
        return Multiaddr(f"/ip4/127.0.0.1/tcp/{self.proxy.port}")

    async def start(self) -> None:
        await self.proxy.start()
        args = [str(P2PD), f"-listen=/unix{self.sock}", f"-hostAddrs=/ip4/127.0.0.1/tcp/{self.port}",
                f"-announceAddrs={self.public_addr}", "-relay=false", "-autonat=false", "-natPortMap=false",
                "-quic=false", "-q"]
        if self.pubsub:
            args.append("-pubsub")  # router gossipsub, signing on (the defaults)
            if not self.sign:
                args.append("-pubsubSign=false")
        env = dict(os.environ, GOLOG_LOG_LEVEL="error")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        for attempt in range(200):  # the socket file may appear before the daemon accepts on it
            try:
                response = await self.request(pb.Request(type=pb.Request.IDENTIFY))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if attempt == 199:
                    raise
                await asyncio.sleep(0.05)
        self.peer_id = response.identify.id

    async def request(self, req: pb.Request) -> pb.Response:
        reader, writer = await asyncio.open_unix_connection(self.sock)
        try:
            await write_pbmsg(writer, req)
            response = pb.Response()
            await read_pbmsg_safe(reader, response)
            raise_if_failed(response)
            return response
        finally:
            writer.close()

    async def connect(self, other: "Daemon") -> None:
        await self.request(pb.Request(type=pb.Request.CONNECT, connect=pb.ConnectRequest(
            peer=other.peer_id, addrs=[other.public_addr.to_bytes()])))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proxy.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.sock)


class PubSubClient:
    """The PUBSUB part of p2pd's control protocol (p2pd.proto: PSRequest / PSMessage)."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.publisher: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def subscribe(self, topic: str, on_message) -> asyncio.Task:
        reader, writer = await asyncio.open_unix_connection(self.daemon.sock)
        await write_pbmsg(writer, pb.Request(type=pb.Request.PUBSUB, pubsub=pb.PSRequest(
            type=pb.PSRequest.SUBSCRIBE, topic=topic)))
        response = pb.Response()
        await read_pbmsg_safe(reader, response)
        raise_if_failed(response)

        async def pump() -> None:
            try:
                while True:
                    msg = pb.PSMessage()
                    await read_pbmsg_safe(reader, msg)
                    on_message(msg.data, getattr(msg, "from"))
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        return asyncio.get_running_loop().create_task(pump())

    async def publish(self, topic: str, data: bytes) -> None:
        # one control connection carries all publishes (the daemon reads requests until EOF)
        if self.publisher is None:
            self.publisher = await asyncio.open_unix_connection(self.daemon.sock)
        reader, writer = self.publisher
        await write_pbmsg(writer, pb.Request(type=pb.Request.PUBSUB, pubsub=pb.PSRequest(
            type=pb.PSRequest.PUBLISH, topic=topic, data=data)))
        response = pb.Response()
        await read_pbmsg_safe(reader, response)
        raise_if_failed(response)

    async def topic_peers(self, topic: str) -> int:
        response = await self.daemon.request(pb.Request(type=pb.Request.PUBSUB, pubsub=pb.PSRequest(
            type=pb.PSRequest.LIST_PEERS, topic=topic)))
        return len(response.pubsub.peerIDs)


# --- the experiment -----------------------------------------------------------------------
def edges(k: int, topology: str) -> list[tuple[int, int]]:
    if topology == "line":
        return [(i, i + 1) for i in range(k - 1)]
    return [(i, j) for i in range(k) for j in range(i + 1, k)]


def pack_records(records: list[bytes]) -> bytes:
    return msgpack.packb(["gossip", records, [], []], use_bin_type=True)


def unpack_records(data: bytes) -> list[bytes]:
    return msgpack.unpackb(data, raw=False)[1]


class Tally:
    def __init__(self, k: int) -> None:
        self.sent: dict[int, float] = {}
        self.arrived: list[dict[int, float]] = [dict() for _ in range(k)]

    def on_records(self, peer: int, records: list[bytes]) -> list[bytes]:
        now, fresh = time.perf_counter(), []
        for rec in records:
            seq = int.from_bytes(rec[:4], "big")
            if seq not in self.arrived[peer]:
                self.arrived[peer][seq] = now
                fresh.append(rec)
        return fresh

    def delivered(self) -> int:
        return sum(len(a) for a in self.arrived[1:])


async def publish_loop(args, publish, tally: Tally) -> None:
    """Peer 0's records at args.rate per second; with batch_ms, one publish per batch interval."""
    interval, start = 1.0 / args.rate, time.perf_counter()
    batch: list[bytes] = []
    batch_due = start + args.batch_ms / 1000
    for seq in range(args.messages):
        delay = start + seq * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        record = seq.to_bytes(4, "big") + secrets.token_bytes(RECORD_BYTES - 4)
        tally.sent[seq] = time.perf_counter()
        tally.arrived[0][seq] = tally.sent[seq]
        batch.append(record)
        if args.batch_ms <= 0 or time.perf_counter() >= batch_due or seq == args.messages - 1:
            await publish(batch)
            batch, batch_due = [], time.perf_counter() + args.batch_ms / 1000


async def run_system(system: str, args) -> dict:
    meter, k = Meter(), args.peers
    workdir = tempfile.mkdtemp(prefix="bench-pubsub-")
    daemons = [Daemon(i, meter, system == "gossipsub", workdir, sign=not args.no_sign) for i in range(k)]
    tally = Tally(k)
    tasks: list[asyncio.Task] = []
    p2ps: list[P2P] = []
    try:
        await asyncio.gather(*(d.start() for d in daemons))
        graph = edges(k, args.topology)
        neighbours = {i: [] for i in range(k)}
        for a, b in graph:
            neighbours[a].append(b)
            neighbours[b].append(a)

        if system == "gossipsub":
            clients = [PubSubClient(d) for d in daemons]
            for i, client in enumerate(clients):
                def on_message(data: bytes, sender: bytes, i=i) -> None:
                    tally.on_records(i, unpack_records(data))
                tasks.append(await client.subscribe(TOPIC, on_message))
            for a, b in graph:
                await daemons[a].connect(daemons[b])
            for _ in range(100):  # wait until every peer knows its neighbours' subscriptions
                counts = [await c.topic_peers(TOPIC) for c in clients]
                if counts == [len(neighbours[i]) for i in range(k)]:
                    break
                await asyncio.sleep(0.1)

            async def publish(records: list[bytes]) -> None:
                await clients[0].publish(TOPIC, pack_records(records))
        else:
            p2ps = [await P2P.replicate(d.control) for d in daemons]
            links: list[dict[int, asyncio.StreamWriter]] = [dict() for _ in range(k)]
            peer_index = {d.peer_id: i for i, d in enumerate(daemons)}

            async def read_loop(i: int, j: int, reader: asyncio.StreamReader) -> None:
                with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
                    while True:
                        fresh = tally.on_records(i, unpack_records(await P2P.receive_raw_data(reader)))
                        if fresh:
                            frame = pack_records(fresh)
                            for n, writer in links[i].items():
                                if n != j:
                                    await P2P.send_raw_data(frame, writer)

            for i, p2p in enumerate(p2ps):
                async def handler(info, reader, writer, i=i) -> None:
                    j = peer_index[info.peer_id.to_bytes()]
                    links[i][j] = writer
                    await read_loop(i, j, reader)
                await p2p.add_binary_stream_handler(PROTO, handler)
            await asyncio.sleep(0.5)  # identify pushes for the new protocol go before we connect
            for a, b in graph:
                await daemons[a].connect(daemons[b])
                _, reader, writer = await p2ps[a].call_binary_stream_handler(PeerID(daemons[b].peer_id), PROTO)
                links[a][b] = writer
                tasks.append(asyncio.get_running_loop().create_task(read_loop(a, b, reader)))
            for _ in range(100):
                if all(len(links[i]) == len(neighbours[i]) for i in range(k)):
                    break
                await asyncio.sleep(0.05)

            async def publish(records: list[bytes]) -> None:
                frame = pack_records(records)
                for writer in links[0].values():
                    await P2P.send_raw_data(frame, writer)

        await asyncio.sleep(args.settle)  # connections, identify, gossipsub GRAFTs settle
        setup_bytes = meter.bytes
        idle_start, idle_bytes0 = time.perf_counter(), meter.bytes
        await asyncio.sleep(args.idle)
        idle_s, idle_bytes = time.perf_counter() - idle_start, meter.bytes - idle_bytes0

        expected = args.messages * (k - 1)
        window_bytes0, window_start = meter.bytes, time.perf_counter()
        await publish_loop(args, publish, tally)
        deadline = time.perf_counter() + args.drain
        while tally.delivered() < expected and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # anything the last delivery still sets off
        window_bytes, window_s = meter.bytes - window_bytes0, time.perf_counter() - window_start

        latencies = sorted((t - tally.sent[seq]) * 1000 for arrived in tally.arrived[1:]
                           for seq, t in arrived.items())
        delivered = tally.delivered()
        per_delivery = window_bytes / max(delivered, 1)
        return {
            "delivered": delivered,
            "expected": expected,
            "setup_bytes": setup_bytes,
            "window_bytes": window_bytes,
            "window_s": round(window_s, 2),
            "wire_bytes_per_delivery": round(per_delivery, 1),
            "overhead_bytes_per_delivery": round(per_delivery - RECORD_BYTES, 1),
            "latency_ms_p50": round(statistics.median(latencies), 2) if latencies else None,
            "latency_ms_p99": round(latencies[int(0.99 * (len(latencies) - 1))], 2) if latencies else None,
            "idle_s": round(idle_s, 1),
            "idle_bytes": idle_bytes,
            "idle_bytes_per_s": round(idle_bytes / idle_s, 1) if idle_s > 0 else None,
            "tcp_connections": meter.connections,
            "peer_key": "ed25519" if daemons[0].peer_id[:2] == b"\x00\x24" else f"other ({len(daemons[0].peer_id)} B id)",
            "bypass_connections": bypass_connections({d.port for d in daemons},
                                                     meter.local_ports | {d.proxy.port for d in daemons}),
        }
    finally:
        for task in tasks:
            task.cancel()
        for p2p in p2ps:
            with contextlib.suppress(Exception):
                await p2p.shutdown()
        for d in daemons:
            d.stop()
        with contextlib.suppress(OSError):
            os.rmdir(workdir)


async def amain(args) -> dict:
    out = {"config": {"peers": args.peers, "topology": args.topology, "messages": args.messages,
                      "rate": args.rate, "record_bytes": RECORD_BYTES, "batch_ms": args.batch_ms,
                      "idle_s": args.idle, "pubsub_sign": not args.no_sign}}
    for system in ("gossipsub", "streams"):
        out[system] = await run_system(system, args)
    g, s = out["gossipsub"], out["streams"]
    out["ratios"] = {
        "wire_bytes_per_delivery": round(g["wire_bytes_per_delivery"] / s["wire_bytes_per_delivery"], 2),
        "overhead_bytes_per_delivery": round(g["overhead_bytes_per_delivery"]
                                             / max(s["overhead_bytes_per_delivery"], 1e-9), 2),
        "latency_p50": round(g["latency_ms_p50"] / s["latency_ms_p50"], 2)
        if g["latency_ms_p50"] and s["latency_ms_p50"] else None,
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print only the JSON object")
    parser.add_argument("--peers", type=int, default=4, help="daemons per system (at most 5)")
    parser.add_argument("--topology", choices=("line", "mesh"), default="line")
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20.0, help="records per second from peer 0")
    parser.add_argument("--batch-ms", type=float, default=0.0,
                        help="pack the records of this interval into one publish / frame (0: one each)")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after setup before measuring")
    parser.add_argument("--idle", type=float, default=35.0, help="idle window in seconds (0: skip)")
    parser.add_argument("--no-sign", action="store_true", help="gossipsub daemons with -pubsubSign=false")
    parser.add_argument("--drain", type=float, default=5.0, help="seconds to wait for late deliveries")
    args = parser.parse_args()
    assert 2 <= args.peers <= 5, "2..5 daemons"
    out = asyncio.run(amain(args))
    print(json.dumps(out, indent=None if args.json else 1))
    if args.json:
        return
    c = out["config"]
    print(f"\n{c['peers']} peers, {c['topology']}, {c['messages']} records of {RECORD_BYTES} B at "
          f"{c['rate']:g}/s, batch {c['batch_ms']:g} ms, pubsub signing {'on' if c['pubsub_sign'] else 'off'}; TCP payload bytes between daemons (proxy-counted)")
    print(f"{'':12}{'delivered':>12}{'B/delivery':>12}{'overhead B':>12}{'p50 ms':>9}{'p99 ms':>9}{'idle B/s':>10}")
    for system in ("gossipsub", "streams"):
        r = out[system]
        print(f"{system:12}{r['delivered']:>6}/{r['expected']:<5}{r['wire_bytes_per_delivery']:>12}"
              f"{r['overhead_bytes_per_delivery']:>12}{r['latency_ms_p50']!s:>9}{r['latency_ms_p99']!s:>9}"
              f"{r['idle_bytes_per_s']!s:>10}")
    print(f"gossipsub/streams: bytes per delivery x{out['ratios']['wire_bytes_per_delivery']}, "
          f"overhead x{out['ratios']['overhead_bytes_per_delivery']}, p50 latency x{out['ratios']['latency_p50']}")


if __name__ == "__main__":
    main()
