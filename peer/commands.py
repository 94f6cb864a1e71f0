"""The networked CLI commands: peer, bootstrap, status, swarms (hivemind/Petals conventions).

    seedswarm bootstrap [--host-maddrs ...]            a DHT-only node; prints its multiaddrs
    seedswarm peer --swarm-spec F | --swarm ID --data F.jsonl [--initial-peers ...] [...]
    seedswarm status --initial-peers ... [--swarm ID] [--json]
    seedswarm swarms --initial-peers ... [--json]
    seedswarm monitor --initial-peers ... [--swarm ID] [--port 8000]   a live web page
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

from ..protocol.errors import ProtocolError
from ..protocol.spec import SwarmSpec, parse_swarm_id
from .cli import UsageError, _task_ref

DEFAULT_HOST = ["/ip4/127.0.0.1/tcp/0"]


def _network_flags(p: argparse.ArgumentParser, host: bool = True) -> None:
    p.add_argument("--initial-peers", nargs="*", default=[], metavar="MADDR",
                   help="multiaddrs of peers already in the DHT (as printed by `seedswarm bootstrap` or a peer)")
    if host:
        p.add_argument("--host-maddrs", nargs="*", default=DEFAULT_HOST, metavar="MADDR",
                       help="where to listen (default: loopback, a free port; use /ip4/0.0.0.0/tcp/PORT to be reachable)")
        p.add_argument("--announce-maddrs", nargs="*", default=[], metavar="MADDR",
                       help="addresses others should dial, if different from --host-maddrs (NAT, containers)")
        p.add_argument("--identity-path", default=None, help="libp2p private key file (created if missing): a stable peer id")


def add_commands(sub) -> None:
    p = sub.add_parser("peer", help="start or join a swarm and train")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--swarm-spec", default=None, metavar="FILE", help="start (or join) the swarm this JSON spec defines")
    group.add_argument("--swarm", default=None, metavar="ID", help="join the swarm with this id (its spec comes from the DHT)")
    _network_flags(p)
    p.add_argument("--model", default=None, help="where to load the base weights from (default: the spec's model id)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (default: cuda when available)")
    p.add_argument("--task", default=None, help="with neither --swarm-spec nor --swarm: the task of a new default swarm")
    p.add_argument("--data", default=None, metavar="F.jsonl", help="this peer's private training data")
    p.add_argument("--steps", type=int, default=100, help="train until the swarm has sealed this many steps")
    p.add_argument("--min-peers", type=int, default=1, help="wait for this many live peers (this one included) before the first step")
    p.add_argument("--checkpoint-dir", default=None, help="ledger, checkpoints and identity of this peer (default: a temp folder)")
    p.add_argument("--checkpoint-every", type=int, default=0, help="steps between checkpoints (default: 4 x digest_every)")
    p.add_argument("--resume", action="store_true", help="continue the peer whose --checkpoint-dir this is")
    p.add_argument("--join-by", choices=["checkpoint", "replay"], default="checkpoint",
                   help="catch up by downloading a verified checkpoint, or by replaying the ledger on the base weights")
    p.add_argument("--json-log", default=None, metavar="FILE", help="append one JSON object per event (steps, bytes, heals)")
    p.add_argument("--name", default="", help="a display name in `seedswarm status`")
    p.add_argument("--data-seed", type=int, default=0, help="order in which this peer walks its own data")
    p.add_argument("--lr", type=float, default=None, help="with no --swarm-spec: the learning rate of a new default swarm")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.add_argument("--fault-corrupt-at", type=int, default=None, help=argparse.SUPPRESS)  # chaos testing of healing
    p.set_defaults(func=cmd_peer)

    from .demo import DEFAULT_PEERS, DEFAULT_STEPS

    p = sub.add_parser("demo", help="the main job: N peers on loopback fine-tune the bundled MiniLM, one byte per gradient")
    p.add_argument("--peers", type=int, default=DEFAULT_PEERS, help=f"peer processes to start (default {DEFAULT_PEERS})")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"swarm steps (default {DEFAULT_STEPS})")
    p.add_argument("--out", default="seedswarm-demo", help="where the model, ledger, spec and logs go (replaced)")
    p.add_argument("--model", default=None, help="another hub id or folder instead of the bundled MiniLM")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default 1e-4)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the live display")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bootstrap", help="run a DHT-only node that others use as --initial-peers")
    _network_flags(p)
    p.add_argument("--duration", type=float, default=0, help="seconds to run (default: until interrupted)")
    p.set_defaults(func=cmd_bootstrap)

    p = sub.add_parser("status", help="live peers of a swarm: steps, digests, loss, bytes")
    _network_flags(p, host=False)
    p.add_argument("--swarm", default=None, metavar="ID", help="the swarm (default: every announced swarm)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("monitor", help="a live web page of the swarms in the DHT: peers, steps, loss curve, join command")
    _network_flags(p, host=False)
    p.add_argument("--swarm", default=None, metavar="ID", help="the swarm the page opens on (default: the one with most peers)")
    p.add_argument("--host", default="127.0.0.1", help="where the web page listens (default: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="web page port (default 8000; 0: any free port)")
    p.add_argument("--refresh", type=float, default=2.0, help="seconds between page refreshes (default 2)")
    p.set_defaults(func=cmd_monitor)

    p = sub.add_parser("swarms", help="swarms announced in the DHT, with the command to join each")
    _network_flags(p, host=False)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_swarms)


# --- peer ----------------------------------------------------------------------------------------
def _spec_from_flags(args) -> SwarmSpec | None:
    if args.swarm_spec:
        try:
            with open(args.swarm_spec, encoding="utf-8") as f:
                return SwarmSpec.from_json(f.read())
        except FileNotFoundError:
            raise UsageError(f"--swarm-spec {args.swarm_spec!r}: no such file") from None
        except ProtocolError as exc:
            raise UsageError(f"--swarm-spec {args.swarm_spec!r}: {exc}") from None
    if args.swarm or args.resume:
        if args.task:
            raise UsageError("--task only applies when starting a new swarm; a joined swarm's task comes from its spec")
        return None
    from .demo import default_spec

    return default_spec(model=args.model, task=_task_ref(args.task) if args.task else None, lr=args.lr)


def cmd_peer(args) -> int:
    from .config import PeerConfig
    from .node import AsyncPeer, PeerError

    try:
        swarm_id = parse_swarm_id(args.swarm) if args.swarm else None
    except ProtocolError as exc:
        raise UsageError(f"--swarm: {exc}") from None
    config = PeerConfig(
        spec=_spec_from_flags(args), swarm_id=swarm_id, initial_peers=args.initial_peers, host_maddrs=args.host_maddrs,
        announce_maddrs=args.announce_maddrs, identity_path=args.identity_path, steps=args.steps,
        min_peers=args.min_peers, model=args.model, device=args.device,
        data=args.data, data_seed=args.data_seed, checkpoint_dir=args.checkpoint_dir, checkpoint_every=args.checkpoint_every,
        resume=args.resume, join_by=args.join_by, json_log=args.json_log, name=args.name,
        fault_corrupt_at=args.fault_corrupt_at,
    )
    try:
        config.validate()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    progress = Progress(quiet=args.quiet)
    peer = AsyncPeer(config, on_step=progress)

    async def main() -> dict:
        try:
            await peer.start()
            return await peer.train()
        finally:
            await peer.shutdown()

    try:
        summary = _run_until_signal(main())
    except PeerError as exc:
        raise UsageError(str(exc)) from None
    progress.close()
    print(json.dumps({"event": "summary", **summary}), flush=True)
    return 0


def _run_until_signal(coro):
    """Run the peer; SIGTERM and SIGINT stop it gracefully (announced leave)."""
    import asyncio

    loop = asyncio.new_event_loop()
    task = loop.create_task(coro)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return loop.run_until_complete(task)
    except asyncio.CancelledError:
        print("seedswarm: stopped", file=sys.stderr)
        sys.exit(130)
    finally:
        loop.close()


class Progress:
    """A live progress line on a terminal (rich); one line per step otherwise."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.tty = sys.stdout.isatty()
        self._status = None
        self._last = time.monotonic()

    def __call__(self, event: dict) -> None:
        kind = event["event"]
        if kind == "started":
            print(f"seedswarm peer {event['peer_id']} in swarm {event['swarm_id']}", flush=True)
            print("others can join with: --initial-peers " + " ".join(event["maddrs"]), flush=True)
            return
        if self.quiet:
            return
        if kind == "step":
            now = time.monotonic()
            line = (f"step {event['step']:>5}  loss {event['loss'] if event['loss'] is None else round(event['loss'], 4)}  "
                    f"peers {event['peers']}  records {event['records']}  "
                    f"{_fmt(event.get('payload_bytes_per_gradient'))} B/grad payload  "
                    f"wire {_kb(event.get('wire_sent'))} sent  {now - self._last:.2f}s/step")
            self._last = now
            if self.tty:
                if self._status is None:
                    from rich.console import Console

                    self._status = Console().status(line)
                    self._status.start()
                self._status.update(line)
            else:
                print(line, flush=True)
        elif kind in ("joining", "joined", "late", "heal", "healed", "resumed"):
            print(" ".join(f"{k}={v}" for k, v in event.items() if k != "time"), flush=True)

    def close(self) -> None:
        if self._status is not None:
            self._status.stop()


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _kb(x) -> str:
    return "n/a" if x is None else f"{x / 1024:.1f} KiB"


# --- demo ----------------------------------------------------------------------------------------
def cmd_demo(args) -> int:
    from .demo import DemoConfig, check_out_dir, run_demo

    if args.peers < 1 or args.steps < 1:
        raise UsageError("--peers and --steps must be at least 1")
    cfg = DemoConfig(peers=args.peers, steps=args.steps, out=args.out, model=args.model, lr=args.lr, live=not args.json)
    try:
        check_out_dir(Path(cfg.out))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps(run_demo(cfg)), flush=True)
        return 0
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    console = Console()
    console.print(f"[bold]seedswarm demo[/]: {cfg.peers} peers on loopback fine-tune "
                  f"{cfg.model or 'the bundled all-MiniLM-L6-v2'} on VADER sentiment, one byte per gradient")
    with Live(console=console, refresh_per_second=4, transient=True) as live:
        result = run_demo(cfg, on_update=lambda state: live.update(_demo_line(state)))
    table = Table(title="seedswarm demo", show_header=False)
    rows = [
        ("held-out accuracy", f"{result['accuracy_before']:.1f}% -> {result['accuracy_after']:.1f}%"),
        ("held-out loss", f"{result['loss_before']:.4f} -> {result['loss_after']:.4f}"),
        ("peers x steps", f"{result['peers']} x {result['steps']} = {result['gradients']} one-byte gradients"),
        ("payload per gradient", f"{result['payload_bytes_per_gradient']:.2f} B"),
        ("record per gradient", f"{result['record_bytes_per_gradient']:.1f} B (msgpack record, headers included)"),
        ("wire per gradient", "n/a" if result["wire_bytes_per_gradient"] is None
         else f"{result['wire_bytes_per_gradient']:.0f} B (TCP payload, DHT + signatures + pushes, start-up included)"),
        ("wire per gradient, steady", "n/a" if result["wire_bytes_per_gradient_steady"] is None
         else f"{result['wire_bytes_per_gradient_steady']:.0f} B (median step)"),
        ("replicas identical", "yes" if result["replicas_identical"] else "NO"),
        ("late records / heals", f"{result['late_records']} / {result['heals']}"),
        ("time", f"{result['seconds']:.0f} s"),
        ("saved to", f"{result['out']}/model (save_pretrained), {result['out']}/model/ledger.ssl, {result['out']}/spec.json"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
    return 0


def _demo_line(state: dict):
    from rich.text import Text

    loss = "..." if state["loss"] is None else f"{state['loss']:.4f}"
    acc = f"{state['accuracy']:.1f}% (step {state['accuracy_step']})"
    payload = "..." if state["payload"] is None else f"{state['payload']:.2f} B/grad"
    return Text(f"step {state['step']}/{state['steps']}  loss {loss}  held-out acc {acc}  peers {state['peers']}  "
                f"payload {payload}  wire {_kb(state['wire_sent'])} sent")


# --- bootstrap, status, swarms ----------------------------------------------------------------------
@contextlib.contextmanager
def _client_dht(initial_peers):
    """A short-lived client node for the read-only commands; shut down on leaving."""
    from .dhtschema import validators
    from .identity import load_identity
    from .process import ReapedDHT

    if not initial_peers:
        raise UsageError("--initial-peers is required: the multiaddr of any node of the DHT")
    identity = load_identity(tempfile.mkdtemp(prefix="seedswarm-client-") + "/id.key")
    try:
        dht = ReapedDHT(initial_peers=initial_peers, client_mode=True, start=True, record_validators=validators(identity))
    except Exception as exc:
        raise UsageError(f"--initial-peers: could not join the DHT through {initial_peers}: {exc}") from None
    try:
        yield dht
    finally:
        dht.shutdown()


def cmd_bootstrap(args) -> int:
    from .dhtschema import validators
    from .identity import load_identity
    from .process import ReapedDHT

    identity = load_identity(args.identity_path or tempfile.mkdtemp(prefix="seedswarm-boot-") + "/id.key")
    try:
        dht = ReapedDHT(initial_peers=args.initial_peers, host_maddrs=args.host_maddrs,
                        announce_maddrs=args.announce_maddrs or None, identity_path=str(identity.path),
                        record_validators=validators(identity), start=True)
    except Exception as exc:
        raise UsageError(f"could not start the DHT node (check --host-maddrs / --identity-path): {exc}") from None
    maddrs = [str(m) for m in dht.get_visible_maddrs()]
    print(f"seedswarm bootstrap node {identity.peer_id} (a DHT node only: it trains nothing)", flush=True)
    print("peers, monitors and `seedswarm status` join through it with:", flush=True)
    print("--initial-peers " + " ".join(maddrs), flush=True)
    if all(_is_loopback(m) for m in maddrs):
        print("this listens on loopback only: reachable from this machine alone. For other machines, listen on\n"
              "every interface with a fixed port, announce the address they can dial, and keep the peer id stable:\n"
              "  seedswarm bootstrap --host-maddrs /ip4/0.0.0.0/tcp/31337 --announce-maddrs /ip4/PUBLIC_IP/tcp/31337 "
              "--identity-path bootstrap.key\n"
              "(open TCP port 31337 in the firewall; PUBLIC_IP is the address others reach this machine at)", flush=True)
    elif not args.identity_path:
        print("without --identity-path the peer id (the /p2p/... part) changes on every restart", flush=True)
    print("Ctrl-C stops it" + (f" (or it stops by itself after {args.duration:g} s)" if args.duration else ""), flush=True)
    stop = {"now": False}
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.update(now=True))
    started = time.monotonic()
    while not stop["now"] and (not args.duration or time.monotonic() - started < args.duration):
        time.sleep(0.2)
    dht.shutdown()
    return 0


def _is_loopback(maddr: str) -> bool:
    return maddr.startswith(("/ip4/127.", "/ip6/::1/"))


def cmd_status(args) -> int:
    try:
        chosen = [parse_swarm_id(args.swarm)] if args.swarm else None
    except ProtocolError as exc:
        raise UsageError(f"--swarm: {exc}") from None
    from .observe import swarm_snapshot

    with _client_dht(args.initial_peers) as dht:
        swarms = chosen or [bytes.fromhex(row["swarm_id"]) for row in swarm_snapshot(dht)["swarms"]]
        report = {s.hex(): swarm_snapshot(dht, s)["swarm"]["peers"] for s in swarms}
    if args.json:
        print(json.dumps(report))
        return 0
    if not report:
        print("no swarm announced in this DHT")
    for sid, rows in report.items():
        print(f"swarm {sid}: {len(rows)} live peer(s)")
        for r in rows:
            loss = "n/a" if r["loss"] is None else f"{r['loss']:.4f}"
            print(f"  {r['peer_id'][:16]}..  {r['name'] or '-':12s} {r['status']:8s} step {r['step']:>6}  loss {loss:>8}  "
                  f"digest@{r['digest_step']} {r['digest'][:12] or '-':12s}  sent {_kb(r['sent'])}  heals {r['heals']}")
    return 0


def cmd_swarms(args) -> int:
    from .observe import swarm_snapshot

    with _client_dht(args.initial_peers) as dht:
        rows = swarm_snapshot(dht, initial_peers=args.initial_peers)["swarms"]
    if args.json:
        print(json.dumps(rows))
        return 0
    if not rows:
        print("no swarm announced in this DHT")
    for r in rows:
        print(f"{r['swarm_id']}  {r['name']!r}  model {r['model']}  task {r['task']}  peers {r['peers']}  step {r['step']}")
        print(f"  join: {r['join_command']}")
    return 0


def cmd_monitor(args) -> int:
    try:
        default_swarm = parse_swarm_id(args.swarm).hex() if args.swarm else None
    except ProtocolError as exc:
        raise UsageError(f"--swarm: {exc}") from None
    if args.refresh <= 0:
        raise UsageError("--refresh must be positive")
    from .monitor import Poller, create_app, listen, serve
    from .observe import LossHistory, swarm_snapshot

    try:
        sock = listen(args.host, args.port)
    except OSError as exc:
        raise UsageError(f"--host/--port: cannot listen on {args.host}:{args.port} ({exc.strerror}); try --port 0") from None
    history = LossHistory()
    with _client_dht(args.initial_peers) as dht:
        def take(swarm):
            return swarm_snapshot(dht, swarm, initial_peers=args.initial_peers, history=history)

        with Poller(take, interval=args.refresh) as poller:
            host, port = sock.getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            print(f"seedswarm monitor: open http://{shown}:{port}/ (refreshes every {args.refresh:g} s; Ctrl-C stops it)",
                  flush=True)
            serve(create_app(poller, refresh=args.refresh, default_swarm=default_swarm), sock)
    return 0
