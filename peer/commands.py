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
from .reach import REACHABILITY

DEFAULT_HOST = ["/ip4/127.0.0.1/tcp/0"]


def _network_flags(p: argparse.ArgumentParser, host: bool = True) -> None:
    p.add_argument("--initial-peers", nargs="*", default=None, metavar="MADDR",
                   help="multiaddrs of peers already in the DHT (as printed by `seedswarm bootstrap` or a peer); "
                        "default: $SEEDSWARM_INITIAL_PEERS, else initial_peers in ~/.config/seedswarm/config.toml")
    if host:
        p.add_argument("--host-maddrs", nargs="*", default=DEFAULT_HOST, metavar="MADDR",
                       help="where to listen (default: loopback, a free port; use /ip4/0.0.0.0/tcp/PORT to be reachable)")
        p.add_argument("--announce-maddrs", nargs="*", default=[], metavar="MADDR",
                       help="addresses others should dial, if different from --host-maddrs (NAT, containers)")
        p.add_argument("--identity-path", default=None,
                   help="Ed25519 libp2p private key file (created if missing): a stable peer id")


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
    p.add_argument("--ticket", default=None, metavar="HEX",
                   help="members-only swarms: the ticket the swarm's authority issued for this peer id")
    p.add_argument("--max-links", type=int, default=6, help="neighbours to keep links with (default 6)")
    p.add_argument("--relays", nargs="*", default=None, metavar="MADDR",
                   help="behind NAT: public nodes to reserve a circuit-relay slot on (default: $SEEDSWARM_RELAYS, "
                        "relays in the config file, else the initial peers; every bootstrap and public peer relays)")
    p.add_argument("--reachability", choices=REACHABILITY, default="auto",
                   help="auto (default): behind NAT when this machine has no public address and the bootstrap "
                        "peers do; public: others can dial this peer; private: always go through relays")
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

    p = sub.add_parser("identity", help="print the peer id of an identity file (created if missing)")
    p.add_argument("--identity-path", required=True, help="Ed25519 libp2p private key file")
    p.set_defaults(func=cmd_identity)

    p = sub.add_parser("members", help="members-only swarms: an authority key, and tickets for members")
    msub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = msub.add_parser("authority", help="create the swarm's authority key; prints the public key for the spec")
    q.add_argument("--out", required=True, help="where to write the authority's private key (keep it secret)")
    q.set_defaults(func=cmd_members_authority)
    q = msub.add_parser("ticket", help="issue the ticket that admits one peer id to the swarm")
    q.add_argument("--authority", required=True, help="the authority key file")
    q.add_argument("--swarm-spec", required=True, metavar="FILE", help="the members-only swarm's spec (JSON)")
    q.add_argument("--peer-id", required=True, help="the member's peer id (`seedswarm identity` prints it)")
    q.set_defaults(func=cmd_members_ticket)

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
    from .node import Node, PeerError

    try:
        swarm_id = parse_swarm_id(args.swarm) if args.swarm else None
    except ProtocolError as exc:
        raise UsageError(f"--swarm: {exc}") from None
    config = PeerConfig(
        spec=_spec_from_flags(args), swarm_id=swarm_id, initial_peers=args.initial_peers, host_maddrs=args.host_maddrs,
        announce_maddrs=args.announce_maddrs, identity_path=args.identity_path, ticket=args.ticket, steps=args.steps,
        min_peers=args.min_peers, model=args.model, device=args.device,
        data=args.data, data_seed=args.data_seed, checkpoint_dir=args.checkpoint_dir, checkpoint_every=args.checkpoint_every,
        resume=args.resume, join_by=args.join_by, json_log=args.json_log, name=args.name, max_links=args.max_links,
        fault_corrupt_at=args.fault_corrupt_at, relays=args.relays, reachability=args.reachability,
    )
    try:
        config.validate()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    progress = Progress(quiet=args.quiet, steps=args.steps, min_peers=args.min_peers)
    peer = Node(config, on_event=progress)

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
    finally:
        progress.close(interrupted=sys.exc_info()[0] is not None)
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
    """What `seedswarm peer` shows, phase by phase (progress.Phases: a live display on a terminal,
    a plain line every few seconds otherwise). --quiet: only how others can join."""

    def __init__(self, quiet: bool = False, steps: int = 0, min_peers: int = 1) -> None:
        from .progress import Phases

        self.quiet, self.steps, self.min_peers = quiet, steps, min_peers
        self.swarm_id = ""
        self.show = None if quiet else Phases(every=5.0).__enter__()
        self._phase = None
        self._last = time.monotonic()
        self._phase_to("start", "the DHT node (p2pd), then the model and the swarm's spec")

    def _phase_to(self, name: str, detail: str, total: int | None = None) -> None:
        if self.show is not None and name != self._phase:
            self._phase = name
            self.show.phase(name, detail, total)

    def _note(self, text: str) -> None:
        if self.show is not None:
            self.show.note(text)
        else:
            print(text, flush=True)

    def __call__(self, event: dict) -> None:
        kind = event["event"]
        if kind == "started":
            self.swarm_id = event["swarm_id"]
            self._note(f"seedswarm peer {event['peer_id']} in swarm {event['swarm_id']}")
            self._note("others can join with: --initial-peers " + " ".join(event["maddrs"]))
            if event.get("reach") == "private":
                self._note(f"reachability: behind NAT ({event.get('reach_reason', '')})")
            if self.min_peers > 1:
                self._phase_to("wait for peers", f"until {self.min_peers} peers (this one included) are up (--min-peers)")
            else:
                self._phase_to("find the swarm", "look for peers already training, and where they are")
            return
        if self.show is None:
            return
        if kind == "step":
            now = time.monotonic()
            done = event["step"] + 1
            loss = "n/a" if event["loss"] is None else f"{event['loss']:.4f}"
            line = (f"step {done}/{self.steps}  training loss {loss} (this peer's latest batch)  {event['peers']} peers "
                    f"(this one and its neighbours)  {event['records']} records sealed this step\n"
                    f"wire {_kb(event.get('wire_sent'))} sent by this peer so far  {now - self._last:.2f} s/step")
            self._last = now
            self._phase_to("train", f"until the swarm has sealed {self.steps} steps", total=self.steps)
            self.show.progress(done, line)
            if done >= self.steps:
                self._phase_to("finish", "wait for the others to reach the last step, apply late records, "
                                         "agree on the final weight digest")
        elif kind == "joining":
            self._note(f"joining swarm {self.swarm_id[:16]}... at step {event['frontier']}, {event['peers']} peer(s) "
                       f"already training it (this peer catches up by {event['by']} first)")
            self._phase_to("catch up", f"the swarm is at step {event['frontier']}: joining by {event['by']}")
        elif kind in ("isolated", "unreachable"):
            self._note(f"isolated at step {event['step']}: {event.get('reason', '')}; waiting and retrying "
                       "(no step is sealed alone)" if kind == "isolated" else
                       f"still waiting for peers: {event.get('reason', '')}; retrying")
        elif kind == "held_back":
            self._note(f"holding step {event['step']}: most neighbours are behind (it may seal up to step "
                       f"{event['limit']}); sealing on would write records they refuse as too far ahead")
        elif kind == "relays":
            self._note(f"relays: connected to {len(event['connected'])} of {event['of']} "
                       f"({', '.join(event['connected']) or 'none: peers behind NAT cannot reach this one now'})")
        elif kind in ("joined", "late", "heal", "healed", "resumed", "split", "banned", "ledger_damaged",
                      "proof_of_work", "join_checkpoint", "join_replay", "checkpoint_installed"):
            self._note(" ".join(f"{k}={v}" for k, v in event.items() if k != "time"))

    def close(self, interrupted: bool = False) -> None:
        if self.show is not None:
            self.show.close(interrupted)
            self.show = None


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _kb(x) -> str:
    return "n/a" if x is None else f"{x / 1024:.1f} KiB"


# --- identities and membership -----------------------------------------------------------------------
def cmd_identity(args) -> int:
    from .identity import load_identity

    print(load_identity(args.identity_path).peer_id)
    return 0


def cmd_members_authority(args) -> int:
    from .membership import create_authority

    signer = create_authority(args.out)
    print(f"authority key written to {args.out} (keep it secret; it admits members)")
    print(f'spec: "admission": {{"mode": "members", "authority": "{signer.public_key.hex()}"}}')
    return 0


def cmd_members_ticket(args) -> int:
    from .membership import member_ticket

    spec = _spec_from_flags(argparse.Namespace(swarm_spec=args.swarm_spec))
    print(member_ticket(args.authority, spec, args.peer_id).hex())
    return 0


# --- demo ----------------------------------------------------------------------------------------
def cmd_demo(args) -> int:
    from .demo import DemoConfig, check_out_dir, run_demo
    from .progress import Phases

    if args.peers < 1 or args.steps < 1:
        raise UsageError("--peers and --steps must be at least 1")
    cfg = DemoConfig(peers=args.peers, steps=args.steps, out=args.out, model=args.model, lr=args.lr)
    try:
        check_out_dir(Path(cfg.out))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.json:  # stdout is the JSON object; progress goes to stderr as plain lines
        with Phases(tty=False, out=sys.stderr) as show:
            result = run_demo(cfg, show)
        print(json.dumps(result), flush=True)
        return 0
    with Phases() as show:
        show.note(f"seedswarm demo: {cfg.peers} peers on loopback fine-tune {cfg.model or 'the bundled all-MiniLM-L6-v2'} "
                  "on VADER sentiment, one byte per gradient")
        result = run_demo(cfg, show)
    from rich.console import Console

    Console(width=None if sys.stdout.isatty() else 100).print(demo_table(result))
    return 0


def demo_table(result: dict):
    """The demo's summary: three narrow columns (under 100 characters wide), each number with
    what it was measured on."""
    from rich import box
    from rich.table import Table

    r, kb = result, lambda b: ("n/a" if b is None else f"{b:,.0f} B/gradient" if b < 10_000
                               else f"{b / 1000:.1f} KB/gradient")
    table = Table(title=f"seedswarm demo: {r['peers']} peers x {r['steps']} steps", box=box.SIMPLE_HEAD)
    table.add_column("", style="bold", max_width=20)
    table.add_column("result", max_width=30, overflow="fold")
    table.add_column("measured on", max_width=42, style="dim")
    rows = [
        ("held-out accuracy", f"{r['accuracy_before']:.2f}% -> {r['accuracy_after']:.2f}%",
         f"all {r['test_examples']} held-out words (never trained on), training templates: base -> final"),
        ("held-out loss", f"{r['loss_before']:.4f} -> {r['loss_after']:.4f}", "the same examples"),
        ("out-of-template", f"{r['unseen_accuracy_before']:.2f}% -> {r['unseen_accuracy_after']:.2f}%",
         f"the {r['unseen_examples']} held-out words in templates never trained on"),
        ("gradients", f"{r['gradients']} x one byte", f"{r['peers']} peers x {r['steps']} steps"),
        ("payload", f"{r['payload_bytes_per_gradient']:.2f} B/gradient", "the quantized projected gradient"),
        ("record", f"{r['record_bytes_per_gradient']:.1f} B/gradient", "signed msgpack record: 38-byte machine id, 64-byte Ed25519 signature"),
        ("wire, whole run", kb(r["wire_bytes_per_gradient"]),
         "TCP payload of all peers: link frames, DHT upkeep, libp2p framing; start-up included"),
        ("wire, steady state", kb(r["wire_bytes_per_gradient_steady"]), "middle half of each peer's steps"),
        ("replicas identical", "yes" if r["replicas_identical"] else "NO",
         f"weight digests of the {r['peers']} peers and of the evaluator's replay"),
        ("late records, heals", f"{r['late_records']}, {r['heals']}", "all peers"),
        ("wall time", f"{r['seconds']:.0f} s", "everything above, on this machine"),
        ("model", f"{r['out']}/model/", "save_pretrained folder + ledger.ssl"),
        ("curves", r["curves"], "accuracy and loss per step (PNG)"),
    ]
    for row in rows:
        table.add_row(*row)
    return table


# --- bootstrap, status, swarms ----------------------------------------------------------------------
_CLIENT_ATTEMPTS = 3


@contextlib.contextmanager
def _client_dht(initial_peers):
    """A short-lived client node for the read-only commands; shut down on leaving."""
    from .dht import SwarmDHT
    from .identity import load_identity

    if not initial_peers:
        raise UsageError("--initial-peers is required: the multiaddr of any node of the DHT")
    identity = load_identity(tempfile.mkdtemp(prefix="seedswarm-client-") + "/id.key")
    for attempt in range(_CLIENT_ATTEMPTS):  # a busy node can miss p2pd's bootstrap deadline once
        try:
            dht = SwarmDHT.start(identity.signer, str(identity.path), initial_peers=initial_peers, client_mode=True)
            break
        except Exception as exc:
            if attempt + 1 == _CLIENT_ATTEMPTS:
                raise UsageError(f"--initial-peers: could not join the DHT through {initial_peers} "
                                 f"({_CLIENT_ATTEMPTS} attempts): {exc}") from None
            time.sleep(1.0)
    try:
        yield dht
    finally:
        dht.shutdown()


def cmd_bootstrap(args) -> int:
    from .dht import SwarmDHT
    from .identity import load_identity

    identity = load_identity(args.identity_path or tempfile.mkdtemp(prefix="seedswarm-boot-") + "/id.key")
    try:
        dht = SwarmDHT.start(identity.signer, str(identity.path), initial_peers=args.initial_peers,
                             host_maddrs=args.host_maddrs, announce_maddrs=args.announce_maddrs)
    except Exception as exc:
        raise UsageError(f"could not start the DHT node (check --host-maddrs / --identity-path): {exc}") from None
    maddrs = dht.maddrs()
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
    print("it also relays (libp2p circuit relay v2) for peers behind NAT that use it as an initial peer; "
          "run it as a service on a public server: README, 'Behind a home router, and running a public bootstrap'",
          flush=True)
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
        print(f"swarm {sid}: {len(rows)} peer(s) registered")
        for r in rows:
            loss = "n/a" if r["loss"] is None else f"{r['loss']:.4f}"
            print(f"  {r['peer_id'][:16]}..  {r['name'] or '-':12s} {r['status']:9s} step {r['step']:>6}  loss {loss:>8}  "
                  f"sent {_kb(r['sent'])}  heals {r['heals']}  rejected {r['rejected']}  links {r['links']}  "
                  f"{_reach_text(r)}")
    return 0


def _reach_text(row: dict) -> str:
    reach = {"private": "unreachable"}.get(row.get("reach"), row.get("reach") or "unknown")
    return f"{reach} via relay {row['relay'][:16]}.." if row.get("relay") else reach


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
