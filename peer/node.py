"""The seedswarm peer: the swarm core driven by libp2p links, a DHT, and a tensor worker.

``Node`` is a thin driver. Every rule lives in the pure ``SwarmCore`` (peer/core); the node
feeds it events and carries out the actions it returns, through one adapter per concern:

    Links       (transport.py)  frames to and from neighbours      Send, Connect, Disconnect
    SwarmDHT    (dht.py)        rendezvous, member status           -> PeersFound
    History     (history.py)    ledger + replica + checkpoints      Compute, Seal, Rebuild, ServeRange
    checkpoints (checkpoint.py) download a verified checkpoint      FetchCheckpoint

One asyncio task pumps events into the core, in order. Tensor work (computing our record,
sealing, rebuilding, installing checkpoints, reading old ledger ranges) runs on a single
worker thread, in the order the core asked for it, so the event loop never blocks on it
and the replica is never touched by two things at once.

    node = Node(PeerConfig(spec=spec, steps=100, data="train.jsonl"))
    await node.start()
    summary = await node.train()
    await node.shutdown()
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import math
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from hivemind.p2p import PeerID
from torch import nn

from ..model.data import BatchStream, read_jsonl
from ..model.tasks import build_task, task_labels
from ..protocol.directory import MEMBER_BUCKETS, Announcement, MemberInfo
from ..protocol.errors import ProtocolError
from ..protocol.identity import check_ticket, solve_pow
from ..protocol.ledger import DiskWriteError, decode_ledger
from ..protocol.messages import RangeReply
from ..protocol.spec import SwarmSpec
from .artifacts import DigestMismatch, load_base
from .checkpoint import TransferCut, checkpoint_protocol, part_path, receive_checkpoint, serve_checkpoint
from .config import PeerConfig
from .core import CoreConfig, SwarmCore
from .core.events import (CheckpointInstalled, Compute, ComputeFailed, Connect, Disconnect, Fail, FetchCheckpoint, Finished,
                          Log, PeersFound, Rebuild, Rebuilt, RecordReady, Seal, Send, ServeRange, StepSealed, Stop, Tick)
from .dht import SwarmDHT
from .history import LEDGER_NAME, History, HistoryError, NoCheckpoint
from .identity import load_identity
from . import reach
from .process import descendants
from .transport import Links
from .wire import WireMeter

logger = logging.getLogger("seedswarm.peer")

TICK = 0.05
PHASE_STATUS = {"start": "starting", "barrier": "waiting", "sync": "syncing", "join_standing": "syncing",
                "join_checkpoint": "syncing", "train": "training", "finish": "finishing", "done": "done"}


# DHT upkeep (seconds; the DHT loop runs once a second). A member entry lives 3 x dht_refresh
# and is refreshed every dht_refresh (PeerConfig); discovery, once linked to every member a
# peer knows, reads every SETTLED_DISCOVERY; the spec entry (900 s) is refreshed every
# SPEC_EVERY, the directory entry every ANNOUNCE_EVERY. scripts/bench_dht.py measures each.
SETTLED_DISCOVERY = 120.0
SPEC_EVERY = 300
ANNOUNCE_EVERY, ANNOUNCE_TTL = 60, 150.0

class PeerError(RuntimeError):
    """The peer cannot go on; the message says why and what to change."""


class Node:
    """A seedswarm peer (asyncio). See the module docstring."""

    def __init__(self, config: PeerConfig, *, model: nn.Module | None = None, loss_fn: Callable | None = None,
                 paired_fn: Callable | None = None, batches: Iterator | None = None,
                 on_event: Callable[[dict], None] | None = None) -> None:
        self.config = config
        self.model, self.loss_fn, self.paired_fn, self.batches = model, loss_fn, paired_fn, batches
        self.on_event = on_event
        self.loss: float | None = None
        self.wire: tuple[int, int] | None = None
        self._events: asyncio.Queue | None = None
        self._done: asyncio.Future | None = None
        self._tasks: set[asyncio.Task] = set()
        self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="seedswarm-tensors")
        self._log = None
        self._started = False
        self._closing = False
        self._fatal: BaseException | None = None
        self._wire_at_step: tuple[int, int] | None = None
        self.history: History | None = None
        self.dht: SwarmDHT | None = None
        self.links: Links | None = None
        self.core: SwarmCore | None = None
        self.reach: reach.ReachPlan = reach.ReachPlan(False, (), "")
        self.relayed_via: list[str] = []            # our relays we hold a connection (reservation) to
        self.addrs_of: dict[bytes, list[str]] = {}  # members' published dial addresses (DHT)

    # =========================================================================== start
    async def start(self) -> None:
        cfg = self.config
        try:
            cfg.validate()
        except ValueError as exc:
            raise PeerError(str(exc)) from None
        loop = asyncio.get_running_loop()
        self._events = asyncio.Queue()
        self._done = loop.create_future()
        self.workdir = Path(cfg.checkpoint_dir or tempfile.mkdtemp(prefix="seedswarm-"))
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PeerError(f"--checkpoint-dir {str(self.workdir)!r}: {exc.strerror or exc}") from None
        if cfg.json_log:
            try:
                Path(cfg.json_log).parent.mkdir(parents=True, exist_ok=True)
                self._log = open(cfg.json_log, "a", buffering=1)
            except OSError as exc:
                raise PeerError(f"--json-log {cfg.json_log!r}: {exc.strerror or exc}") from None
        self.identity = load_identity(cfg.identity_path or self.workdir / "identity.key")
        self.signer = self.identity.signer
        self.machine = self.signer.machine
        self.reach = reach.plan(cfg.reachability, [*cfg.host_maddrs, *cfg.announce_maddrs], cfg.initial_peers,
                                cfg.relays)
        for attempt in range(3):  # a bootstrap node that is busy or restarting gets two more chances
            try:  # created on this long-lived thread: its process dies with this one
                self.dht = SwarmDHT.start(self.signer, str(self.identity.path), initial_peers=cfg.initial_peers,
                                          host_maddrs=cfg.host_maddrs, announce_maddrs=cfg.announce_maddrs,
                                          relays=self.reach.relays if self.reach.private else ())
                break
            except Exception as exc:
                if attempt < 2 and "bootstrap peers" in str(exc):
                    self._event("retrying", reason=f"could not reach the initial peers ({str(exc)[-120:]}); retrying")
                    await asyncio.sleep(3.0)
                    continue
                raise PeerError(f"could not start the libp2p/DHT node (check --host-maddrs, --initial-peers): {exc}") from None
        self._started = True
        self.p2p = await self.dht.replicate_p2p()
        self.meter = WireMeter(descendants(self.dht.pid))
        self.spec = await self._resolve_spec()
        self.swarm = self.spec.swarm_id
        self.ticket = await self._ticket()
        await self._prepare_model()
        checkpoint_every = cfg.checkpoint_every or 2 * self.spec.digest_every
        if checkpoint_every % self.spec.digest_every:
            raise PeerError(f"--checkpoint-every must be a multiple of the swarm's digest_every ({self.spec.digest_every})")
        self.history = History(self.workdir, self.spec, self.model, self.loss_fn, self.paired_fn, checkpoint_every,
                               final_step=cfg.steps, drift_at=cfg.fault_corrupt_at)
        try:
            opened = await self._in_worker(self.history.open, cfg.resume)
        except (HistoryError, ProtocolError, DiskWriteError) as exc:
            raise PeerError(str(exc)) from None
        self.opened = opened
        if opened.damage:
            where = ", ".join(f"offset {o} ({n} bytes)" for o, n in opened.damage)
            self._event("ledger_damaged", file=str(self.workdir / LEDGER_NAME), damage=where,
                        rolled_back_to=opened.sealed, kept=str(self.workdir / (LEDGER_NAME + ".damaged")))
        needs_peers = ""
        if not opened.verified:
            needs_peers = (f"{self.workdir / LEDGER_NAME} does not reproduce this replica's weights"
                           + (f" (damaged at {where})" if opened.damage else "")
                           + f": rolled back to step {opened.sealed}, and the records since must come from peers")
        core_cfg = CoreConfig(target=cfg.steps, min_peers=cfg.min_peers, join_by=cfg.join_by,
                              checkpoint_every=checkpoint_every, max_links=cfg.max_links,
                              finish_timeout=cfg.finish_timeout, needs_peers=needs_peers)
        self.core = SwarmCore(self.spec, self.signer, core_cfg, ticket=self.ticket, sealed=opened.sealed,
                              ledger=self.history.ledger, digests=opened.digests)
        self.core.floor = self.history.base_step
        self.links = Links(self.p2p, self.swarm, self.machine, self._post, addresses=self._dial_addrs,
                           on_path=lambda peer, via: self._event("link", peer=str(PeerID(peer)), via=via))
        await self.links.start()
        await self.p2p.add_binary_stream_handler(checkpoint_protocol(self.swarm), self._serve_checkpoint)
        if not self.config.initial_peers:  # a new swarm's first peer (the others publish from _dht_loop)
            await self.dht.publish_spec(self.spec)
        self._event("started", peer_id=str(self.identity.peer_id), swarm_id=self.swarm.hex(), maddrs=self.dht.maddrs(),
                    step=opened.sealed, resumed=cfg.resume, reach="private" if self.reach.private else "public",
                    reach_reason=self.reach.reason, relays=list(self.reach.relays))
        self._tasks = {asyncio.create_task(self._pump()), asyncio.create_task(self._ticker()),
                       asyncio.create_task(self._dht_loop())}

    async def _resolve_spec(self) -> SwarmSpec:
        cfg = self.config
        if cfg.resume:
            path = self.workdir / LEDGER_NAME
            if not path.exists():
                raise PeerError(f"--resume: {self.workdir} holds no ledger to resume from")
            try:
                from ..protocol.ledger import scan_ledger

                spec = scan_ledger(path.read_bytes()).spec
            except (OSError, ProtocolError) as exc:
                raise PeerError(f"--resume: {path}: {exc}") from None
            if cfg.swarm_id is not None and spec.swarm_id != cfg.swarm_id:
                raise PeerError(f"--resume: {self.workdir} belongs to swarm {spec.swarm_id_hex}, not --swarm {cfg.swarm_id.hex()}")
            return spec
        if cfg.spec is not None:
            return cfg.spec
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            spec = await self.dht.fetch_spec(cfg.swarm_id)
            if spec is not None:
                return spec
            await asyncio.sleep(1.0)
        raise PeerError(f"no peer announces swarm {cfg.swarm_id.hex()} (is it running, and are --initial-peers right?)")

    async def _ticket(self) -> bytes:
        a = self.spec.admission
        if a.mode == "members":
            if self.config.ticket is None:
                raise PeerError("this swarm is members-only: pass --ticket (issued by the swarm's authority for "
                                f"peer id {self.identity.peer_id})")
            ticket = bytes.fromhex(self.config.ticket)
        elif a.pow_bits:
            path = self.workdir / f"pow-{self.swarm.hex()[:16]}.bin"
            ticket = path.read_bytes() if path.exists() else b""
            try:
                check_ticket(a.mode, a.pow_bits, b"", self.swarm, self.machine, ticket)
            except ProtocolError:
                self._event("proof_of_work", bits=a.pow_bits)
                ticket = await self._in_worker(solve_pow, self.swarm, self.machine, a.pow_bits)
                path.write_bytes(ticket)
            return ticket
        else:
            return b""
        try:
            check_ticket(a.mode, a.pow_bits, self.spec.authority_key, self.swarm, self.machine, ticket)
        except ProtocolError:
            raise PeerError(f"--ticket does not admit peer id {self.identity.peer_id} to this swarm") from None
        return ticket

    async def _prepare_model(self) -> None:
        cfg = self.config
        spec = self.spec
        if self.model is None:
            try:
                self.model, tokenizer, task = await self._in_worker(load_base, spec, cfg.model, cfg.resolved_device(),
                                                                    bool(spec.model.digest))
            except DigestMismatch as exc:
                raise PeerError(str(exc)) from None
        else:
            tokenizer = task = None
            from ..model.digest import weight_digest

            if spec.model.digest and weight_digest(self.model) != spec.model.digest:
                raise PeerError("the model passed in does not have the swarm's base weights (digest mismatch)")
        if self.loss_fn is None:
            task = task or build_task(spec.task, tokenizer)
            self.loss_fn, self.paired_fn = task.loss, getattr(task, "paired", None)
            if self.batches is None:
                if not cfg.data:
                    raise PeerError("--data is required: this peer's private JSONL training data")
                examples = read_jsonl(cfg.data, labels=task_labels(task))
                stream = BatchStream(examples, spec.batch_size, seed=cfg.data_seed)
                self.batches = (task.collate(batch) for batch in stream)
        if self.batches is None:
            raise PeerError("a peer with its own loss function needs a batch iterator")

    # =========================================================================== the pump
    def _post(self, event) -> None:
        if self._events is not None:
            self._events.put_nowait(event)

    async def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                event = await self._events.get()
                for action in self.core.feed(event, loop.time()):
                    self._act(action)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a bug: stop the peer with the error rather than hang
            logger.exception("the swarm core failed")
            self._fail(exc)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            self._post(Tick())

    def _act(self, action) -> None:
        if isinstance(action, Send):
            self.links.send(action.peer, action.message)
        elif isinstance(action, Connect):
            self.links.connect(action.peer)
        elif isinstance(action, Disconnect):
            self.links.disconnect(action.peer)
        elif isinstance(action, Compute):
            self._work(self._compute, action.step)
        elif isinstance(action, Seal):
            self._work(self._seal, action.step, action.records)
        elif isinstance(action, Rebuild):
            self._work(self._rebuild, action)
        elif isinstance(action, ServeRange):
            self._work(self._serve_range, action)
        elif isinstance(action, FetchCheckpoint):
            # held in _tasks: the loop keeps only a weak reference to a task, and a download
            # that waits on the network long enough is otherwise collected mid-way (the
            # newcomer then never joins)
            task = asyncio.create_task(self._fetch_checkpoint(action))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif isinstance(action, Log):
            self._core_log(action)
        elif isinstance(action, Fail):
            self._fail(PeerError(action.reason + " (restore the folder from a backup, or start a fresh --checkpoint-dir)"))
        elif isinstance(action, Finished):
            if not self._done.done():
                self._done.set_result(action.summary)

    # =========================================================================== tensor work
    def _work(self, fn, *args) -> None:
        """Run ``fn`` on the tensor worker (in submission order); it returns the event to post."""
        loop = asyncio.get_running_loop()

        def run():
            try:
                event = fn(*args)
            except BaseException as exc:
                loop.call_soon_threadsafe(self._fail, exc)
                return
            if event is not None:
                loop.call_soon_threadsafe(self._post, event)

        self._worker.submit(run)

    async def _in_worker(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)

    def _compute(self, step: int):
        try:
            batches = [next(self.batches) for _ in range(self.spec.samples_per_step)]
            local = self.history.compute(step, batches, self.signer, self.ticket)
        except (FloatingPointError, StopIteration, ValueError, RuntimeError) as exc:
            return ComputeFailed(step, str(exc))
        if local.losses:  # (empty for a record published before a restart, sent again as it was)
            self.loss = float(statistics.fmean(local.losses))
        return RecordReady(local.record, local.seconds)

    def _seal(self, step: int, records):
        return StepSealed(step, self.history.seal(step, records))

    def _rebuild(self, action: Rebuild):
        try:
            done = self.history.rebuild(action.first, action.records, action.replace, action.last, action.trusted,
                                        action.expect)
        except NoCheckpoint as exc:
            logger.info("%s", exc)
            return Rebuilt(self.history.sealed, {}, ok=False)
        return Rebuilt(self.history.sealed, done.digests, kept=done.kept)

    def _serve_range(self, action: ServeRange):
        records = self.history.records(action.first, action.last)
        loop = self._loop

        def send():
            chunks = [records[i:i + 256] for i in range(0, len(records), 256)] or [[]]
            for i, chunk in enumerate(chunks):
                self.links.send(action.peer, RangeReply(action.first, action.last, i < len(chunks) - 1, tuple(chunk)))

        loop.call_soon_threadsafe(send)
        return None

    async def _fetch_checkpoint(self, action: FetchCheckpoint) -> None:
        """Download the voted checkpoint from one of ``action.peers``, then install it. A cut
        transfer continues where it ended, from the same peer while each part brings bytes (a
        connection through a circuit relay ends after 128 KiB: a NATed newcomer gets a
        checkpoint in parts), else from the next peer."""
        dest = self.workdir / "incoming.safetensors"
        part = part_path(dest)
        for peer in action.peers:
            resume, stalled = None, 0
            while stalled < 5:
                before = part.stat().st_size if resume is not None and part.exists() else 0
                try:
                    await self._checkpoint_part(peer, action.step, dest, resume)
                except TransferCut as cut:
                    resume = cut.header
                    stalled = 0 if cut.received > before else stalled + 1
                    if stalled:  # the connection is being replaced: give the new one a moment
                        self._event("checkpoint_cut", peer=str(PeerID(peer)), step=action.step, received=cut.received,
                                    size=cut.header["size"])
                        await asyncio.sleep(1.0)
                    continue
                except Exception as exc:
                    logger.info("checkpoint of step %d from %s failed: %s", action.step, PeerID(peer), exc)
                    self._event("checkpoint_source_failed", peer=str(PeerID(peer)), step=action.step,
                                error=(str(exc) or type(exc).__name__)[:200])
                    if isinstance(exc, ProtocolError):  # refused, or another file: the next peer, at once
                        break
                    # the connection went: continue where we were (a relayed one is being replaced);
                    # with nothing received yet, one more try, then the next peer
                    stalled += 1 if resume is not None else 3
                    if stalled < 5:
                        await asyncio.sleep(1.0)
                    continue
                ok = await self._in_worker(self.history.install, dest, action.step, action.digest, action.replay_to)
                if ok:
                    self._post(CheckpointInstalled(self.history.sealed, True))
                    return
                self._event("checkpoint_refused", peer=str(PeerID(peer)), step=action.step)
                break
        part.unlink(missing_ok=True)
        self._post(CheckpointInstalled(action.step, False))

    async def _checkpoint_part(self, peer: bytes, step: int, dest: Path, resume: dict | None) -> None:
        with contextlib.suppress(Exception):  # behind NAT it is reachable only at what it published
            await self.links.connect_published(peer)
        with contextlib.suppress(Exception):  # a checkpoint through a relay is cut every circuit limit
            await self.links.await_direct(peer)
        _, reader, writer = await asyncio.wait_for(
            self.p2p.call_binary_stream_handler(PeerID(peer), checkpoint_protocol(self.swarm)), 30)
        try:
            await asyncio.wait_for(receive_checkpoint(reader, writer, step, dest, resume), timeout=900)
        finally:
            writer.close()

    async def _serve_checkpoint(self, info, reader, writer) -> None:
        try:
            await asyncio.wait_for(serve_checkpoint(self.workdir, reader, writer), timeout=900)
        except Exception as exc:
            logger.debug("serving a checkpoint to %s failed: %s", info.peer_id, exc)
        finally:
            writer.close()

    # =========================================================================== the DHT
    async def _dht_loop(self) -> None:
        """Discovery and our entries. The DHT is for finding each other, so once a peer has
        its neighbours it asks ever more rarely: discovery backs off while it finds no one new
        (to every 2 minutes once linked to every member it knows); the member entry is
        refreshed every dht_refresh seconds, and within seconds when the peer's status
        changed (starting, training, ...) or it sealed its first step; the spec entry every
        5 minutes, the directory every minute. A 4-peer swarm's upkeep is then a few hundred bytes a second per peer
        (scripts/bench_dht.py prints what each operation costs)."""
        swarm, cfg = self.swarm, self.config
        rng = random.Random(self.machine)
        loop = asyncio.get_running_loop()
        seen: set[bytes] = set()
        discover_every, next_discovery, next_register, rounds, lacking = 1.0, 0.0, 0.0, 0, True
        registered_status, last_register, next_unreachable_note = None, 0.0, loop.time() + 20.0
        # peers that start together write the keys every member could write (the spec, and the
        # directory where they represent the swarm) at different seconds: each reads before it
        # writes, so few race past the cap (SwarmDHT._store_few). A joiner found the spec there
        # already (or was given it), so its first spec write can wait up to 100 rounds
        spec_at, announce_at = (rng.randrange(100), rng.randrange(3)) if cfg.initial_peers else (0, 0)
        announced_peers, announced_round = None, 0
        while True:
            try:
                now = loop.time()
                shown = (self._status_word(), self.core.sealed > 0)  # `seedswarm status` sees these change within seconds
                if now >= next_register or (shown != registered_status and now >= last_register + 5.0):
                    registered_status, last_register = shown, now
                    await self.dht.register(swarm, self._member_info(), ttl=3 * cfg.dht_refresh)
                    next_register = now + cfg.dht_refresh
                await self._check_relays()
                starting = self.core.phase in ("start", "barrier") and len(self.core.gossip.links) + 1 < cfg.min_peers
                unreachable = self._unreachable() if starting and now >= next_unreachable_note else {}
                if unreachable:
                    self._event("unreachable", step=self.core.sealed, **unreachable)
                    next_unreachable_note = now + 30.0
                if now >= next_discovery or starting:
                    # all buckets at first; 8 while looking for neighbours; a peer linked to every
                    # member it knows only checks now and then (newcomers dial it themselves, and
                    # peer exchange names them): each bucket read costs ~1 KB, empty or not
                    settled = not starting and not lacking
                    buckets = None if rounds == 0 else rng.sample(range(MEMBER_BUCKETS), 2 if settled else 8)
                    members = await self.dht.members(swarm, buckets)
                    for machine, info in members.items():
                        if machine != self.machine:
                            self.addrs_of[machine] = list(info.addrs)
                    found = set(members) - {self.machine}
                    self._post(PeersFound(tuple(sorted(found))))
                    new, seen = found - seen, seen | found
                    # linked to every member we know of, or to as many as we keep: nothing to look for
                    # until the next slow round (a discovery reads 8 DHT buckets: kilobytes)
                    lacking = len(self.core.gossip.links) < min(cfg.max_links, len(seen))
                    discover_every = (1.0 if new and lacking else min(2 * discover_every, 60.0) if lacking
                                      else SETTLED_DISCOVERY)
                    next_discovery = now + discover_every
                if rounds % SPEC_EVERY == spec_at:
                    await self.dht.publish_spec(self.spec)
                # the directory is refreshed every minute, and sooner (at most every 10 s) when the
                # number of peers we see changed, so that a listing soon counts a peer who just joined
                peers_now = 1 + len(self.core.gossip.links)
                reshaped = announced_peers not in (None, peers_now) and rounds - announced_round >= 10
                if cfg.announce and (rounds % ANNOUNCE_EVERY == announce_at or reshaped) and self._represents():
                    await self.dht.announce(swarm, Announcement(self.spec.name[:200], self.spec.model.id[:200],
                                                                self.spec.task.kind[:200], self.core.sealed,
                                                                peers_now), ttl=ANNOUNCE_TTL)
                    announced_peers, announced_round = peers_now, rounds
                self.wire = await loop.run_in_executor(None, self.meter.read)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("DHT refresh failed")
            rounds += 1
            await asyncio.sleep(1.0)

    async def _check_relays(self) -> None:
        """Which of our relays we are connected to (a reservation lives on that connection);
        says so when that changes, e.g. when a relay went away and only the others remain."""
        if not self.reach.private:
            return
        try:
            connected = {str(p.peer_id) for p in await self.p2p.list_peers()}
        except Exception as exc:  # the daemon is busy or gone: keep what we had
            logger.debug("list_peers failed: %r", exc)
            return
        via = [r for r in self.reach.relays if reach.relay_peer_id(r) in connected]
        if via != self.relayed_via:
            self.relayed_via = via
            self._event("relays", connected=[reach.relay_peer_id(r) for r in via], of=len(self.reach.relays))

    def _dial_addrs(self, machine: bytes) -> list[str]:
        return self.addrs_of.get(machine, [])

    def _represents(self) -> bool:
        """A few peers per swarm announce it: those whose id is among the 3 smallest they know
        (and the directory keeps at most ANNOUNCERS of them, SwarmDHT.announce)."""
        known = sorted([self.machine, *self.core.gossip.links])
        return self.machine in known[:3]

    def _status_word(self) -> str:
        """The status our member entry shows (SPEC 14.4)."""
        return "isolated" if self.core.isolated else PHASE_STATUS.get(self.core.phase, "training")

    def _member_info(self) -> MemberInfo:
        core = self.core
        digest_step = max(core.digests, default=0)
        digest = core.digests.get(digest_step)
        sent, received = self.wire or (0, 0)
        loss = self.loss if self.loss is not None and math.isfinite(self.loss) else None
        return MemberInfo(step=core.sealed, status=self._status_word(), name=self.config.name[:64],
                          loss=loss, step_time_ms=int(core.step_time * 1000),
                          checkpoint=core.sealed // core.cfg.checkpoint_every * core.cfg.checkpoint_every,
                          sent=sent, received=received, heals=core.heals, late=core.late_applied,
                          rejected=sum(core.reasons.values()),
                          suspects={m.hex(): n for m, n in core.rejects_of.most_common(8)},
                          peers=len(core.gossip.links), digest=digest.hex() if digest else "", digest_step=digest_step,
                          reach=("relayed" if self.relayed_via else "private") if self.reach.private else "public",
                          relay=reach.relay_peer_id(self.relayed_via[0])[:128] if self.relayed_via else "",
                          addrs=tuple(reach.dial_addrs(self.dht.maddrs(), self.reach, str(self.identity.peer_id))))

    # =========================================================================== train, stop
    async def train(self) -> dict:
        """Train with the swarm until it has sealed ``steps`` steps; returns the final summary."""
        if self._done is None:
            raise PeerError("start() the node first")
        summary = await self._done
        if isinstance(summary, BaseException):
            raise summary
        await self._linger()
        summary = dict(summary)
        summary.update(peer_id=str(self.identity.peer_id), swarm_id=self.swarm.hex(), loss=self.loss,
                       ledger_records=len(self.history.ledger), **self._record_fields(), **self._wire_fields())
        self._event("finished", **summary)
        return summary

    async def _linger(self) -> None:
        """Keep serving neighbours still catching up (ranges, wants), then leave."""
        deadline = time.monotonic() + self.config.linger
        while time.monotonic() < deadline:
            behind = [link for link in self.core.gossip.links.values()
                      if link.status is not None and link.status.sealed < self.config.steps]
            if not behind:
                return
            await asyncio.sleep(0.2)

    def _record_fields(self) -> dict:
        """Bytes per gradient of the records in our ledger: the one-byte payload and the signed record."""
        records = list(self.history.ledger)
        gradients = sum(len(r.grads) for r in records)
        if not gradients:
            return {"payload_bytes_per_gradient": None, "record_bytes_per_gradient": None}
        return {"payload_bytes_per_gradient": round(sum(len(r.grads) for r in records) / gradients, 2),
                "record_bytes_per_gradient": round(sum(len(r.encode()) for r in records) / gradients, 2)}

    def _wire_fields(self) -> dict:
        sent, received = self.wire or (None, None)
        return {"wire_sent": sent, "wire_received": received, "link_frames_sent": self.links.sent_frames,
                "link_bytes_sent": self.links.sent_bytes}

    def _fail(self, exc: BaseException) -> None:
        if isinstance(exc, DiskWriteError):
            exc = PeerError(f"{exc.strerror}: free disk space, then restart with --resume (nothing written is lost)")
        elif isinstance(exc, HistoryError):
            exc = PeerError(str(exc))
        self._fatal = exc
        if self._done is not None and not self._done.done():
            self._done.set_result(exc)

    async def shutdown(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self.core is not None and self.links is not None:
            for action in self.core.feed(Stop(), asyncio.get_running_loop().time()):
                if isinstance(action, Send):
                    self.links.send(action.peer, action.message)
        if self.links is not None:
            await self.links.close()
        tasks = list(self._tasks)  # (a task's done callback leaves the set)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        if self._started:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.p2p.shutdown(), timeout=5)
            self.dht.shutdown()
        self._worker.shutdown(wait=True, cancel_futures=True)
        if self.history is not None:
            self.history.close()
        if self._log:
            self._log.close()

    # =========================================================================== events
    @property
    def _loop(self):
        return self._done.get_loop()

    def _unreachable(self) -> dict:
        """Known peers we cannot link to, and why (the last dial error), for the messages
        that say why a peer waits."""
        failures = {m: e for m, e in self.links.failures.items() if m not in self.core.gossip.links}
        if not failures:
            return {}
        hint = ("" if self.reach.private or not self.config.initial_peers else
                "; if this machine is behind NAT, try --reachability private (relays: the initial peers)")
        error = next(iter(failures.values()))
        return {"unreachable": len(failures), "reason": f"cannot reach {len(failures)} peer(s): {error}{hint}"}

    def _core_log(self, action: Log) -> None:
        fields = dict(action.fields)
        if action.event == "isolated":
            fields.update(self._unreachable())
        if action.event == "step":
            fields["loss"] = self.loss
            fields["wire_sent"], fields["wire_received"] = self.wire or (None, None)
            fields["link_bytes_sent"], fields["link_frames_sent"] = self.links.sent_bytes, self.links.sent_frames
            self._read_wire()
        self._event(action.event, **fields)

    def _read_wire(self) -> None:
        """Refresh the wire counters off the event loop (``ss`` takes a few milliseconds)."""
        if getattr(self, "_wire_reading", False):
            return
        self._wire_reading = True
        future = self._loop.run_in_executor(None, self.meter.read)

        def done(f):
            self._wire_reading = False
            if not f.cancelled() and f.exception() is None and f.result() is not None:
                self.wire = f.result()

        future.add_done_callback(done)

    def _event(self, event: str, **fields) -> None:
        entry = {"event": event, "time": round(time.time(), 3), **fields}
        if self._log:
            try:
                self._log.write(json.dumps(entry) + "\n")
            except OSError as exc:
                self._log = None
                logger.warning("--json-log stopped: %s", exc)
        if self.on_event is not None:
            self.on_event(entry)

    # =========================================================================== facts
    @property
    def maddrs(self) -> list[str]:
        return self.dht.maddrs()

    def digest(self) -> str:
        return self.history.digest().hex()


AsyncPeer = Node  # the name of the asyncio peer in earlier releases


class Peer:
    """Synchronous facade: runs a ``Node`` on its own event-loop thread.

    >>> with Peer(PeerConfig(spec=spec, steps=50), model=model, loss_fn=loss, batches=batches) as peer:
    ...     summary = peer.train()
    """

    def __init__(self, config: PeerConfig, **kwargs) -> None:
        self.core = Node(config, **kwargs)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="seedswarm-peer", daemon=True)
        self._thread.start()

    def _call(self, coro, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> "Peer":
        try:
            self._call(self.core.start())
        except BaseException:
            self.shutdown()
            raise
        return self

    def train(self) -> dict:
        return self._call(self.core.train())

    def shutdown(self) -> None:
        if self._loop.is_running():
            try:
                self._call(self.core.shutdown(), timeout=60)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(timeout=10)

    @property
    def peer_id(self) -> str:
        return str(self.core.identity.peer_id)

    @property
    def maddrs(self) -> list[str]:
        return self.core.maddrs

    @property
    def swarm_id(self) -> str:
        return self.core.swarm.hex()

    @property
    def model(self) -> nn.Module:
        return self.core.model

    def digest(self) -> str:
        return self._call(self.core._in_worker(self.core.digest))

    def __enter__(self) -> "Peer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.shutdown()
