"""The seedswarm peer: an asyncio core over hivemind's DHT, and a synchronous facade.

A round (step t) on a peer:

1. apply late records and heal if its weights disagree with the swarm (between rounds only);
2. if the swarm is ahead, catch up by sealing the missing steps from the swarm's records;
3. compute n SPSA estimates on its private data (in a worker thread), quantise them into one
   record; if the swarm moved on meanwhile, catch up and re-stamp the record for the current step;
4. publish the record under ``step/<t>`` (a subkey only this peer can write) and collect the
   others' until every live peer working on t has published or a deadline adapted to the
   measured step times passes, so a slow or dead peer stalls nobody;
5. seal t: append the records to the ledger on disk, apply them in canonical order, and every
   ``digest_every`` steps publish the weight digest; checkpoint every ``checkpoint_every``.

In the background the peer sends heartbeats (liveness, progress, what it can serve) and
re-reads recent steps: a record that arrives after its step was sealed is applied at its
canonical place by rebuilding from a checkpoint and the ledger, so it counts exactly once and
the replicas stay bit-identical. A replica whose digest differs from the majority heals: it
merges a majority peer's ledger and rebuilds, and if that is not enough, downloads a checkpoint
that the majority's digests vouch for.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import logging
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import torch
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.routing import DHTID
from hivemind.dht.validation import DHTRecord
from hivemind.p2p import P2P, PeerID
from hivemind.utils import get_dht_time
from torch import nn

from ..model.data import BatchStream, read_jsonl
from ..model.digest import weight_digest
from ..model.replica import Replica
from ..model.tasks import build_task
from ..protocol.errors import ProtocolError
from ..protocol.ledger import LedgerFile
from ..protocol.records import MAX_RECORD_BYTES, Record, decode_record
from ..protocol.spec import SwarmSpec
from .artifacts import DigestMismatch, load_base
from .checkpoint import (checkpoint_meta, checkpoint_stream, ledger_stream, list_checkpoints, load_checkpoint,
                         push_stream, read_frame, receive_checkpoint, receive_ledger, save_checkpoint, serve_checkpoint,
                         serve_ledger)
from .config import PeerConfig
from .dhtschema import (DIRECTORY_KEY, Announcement, Heartbeat, decode_entries, digest_key, encode_announcement,
                        encode_digest, encode_heartbeat, encode_record, encode_spec, peers_key, spec_key, step_key,
                        validators)
from .identity import load_identity
from .process import ReapedDHT, descendants
from .wire import WireMeter

logger = logging.getLogger("seedswarm.peer")


class PeerError(RuntimeError):
    """The peer cannot go on; the message says why and what to change."""


@dataclasses.dataclass
class PeerStats:
    records_published: int = 0
    gradients_published: int = 0
    payload_bytes: int = 0       # gradient bytes in my records
    record_bytes: int = 0        # my records as encoded
    records_applied: int = 0
    late_records: int = 0
    rebuilds: int = 0
    heals: int = 0
    rejected: int = 0            # invalid or conflicting entries seen
    wire_sent: int | None = None
    wire_received: int | None = None


async def _get_many(dht, node, keys, latest):
    """Runs inside the DHT process: one round trip for several keys. latest: crawl every node
    holding a key and merge all their subkeys; otherwise stop at the first live copy (often this
    node's own replica: no network at all), which is what the per-step polls use."""
    return await node.get_many(keys, sufficient_expiration_time=float("inf") if latest else None)


async def _store_near(dht, node, key, subkey, value, expiration):
    """Runs inside the DHT process: store one signed subkey value. hivemind's store first crawls
    toward the key (rpc_find), and every node it asks answers with the key's whole current
    dictionary: for a per-step key, every peer's signed record, again and again. While the
    routing table is one unsplit bucket (fewer than bucket_size nodes: we know the whole DHT),
    the nearest nodes are already known, so the value goes straight to them (exactly the nodes
    hivemind would pick); larger DHTs take hivemind's crawl."""
    table = node.protocol.routing_table
    if sum(len(b.nodes_to_peer_id) for b in table.buckets) >= node.protocol.bucket_size:
        return await node.store(key, value, expiration, subkey=subkey)
    key_id = DHTID.generate(source=key)
    candidates = table.get_nearest_neighbors(key_id, node.num_replicas, exclude=node.node_id) + [(node.node_id, None)]
    candidates = sorted(candidates, key=lambda c: key_id.xor_distance(c[0]))[: node.num_replicas]
    serializer = node.protocol.serializer
    record = DHTRecord(key_id.to_bytes(), serializer.dumps(subkey), serializer.dumps(value), expiration)
    signed = node.protocol.record_validator.sign_value(record)
    stored = False
    remote = []
    for node_id, peer_id in candidates:
        if peer_id is None:
            if node.protocol.record_validator.validate(dataclasses.replace(record, value=signed)):
                stored = node.protocol.storage.store(key_id, signed, expiration, subkey=subkey) or stored
        else:
            remote.append(node.protocol.call_store(peer_id, keys=[key_id], values=[signed], expiration_time=[expiration],
                                                   subkeys=[subkey]))
    for result in await asyncio.gather(*remote, return_exceptions=True):
        stored = stored or (isinstance(result, list) and any(result))
    return stored


class AsyncPeer:
    """The peer's asyncio core. See the module docstring for what a round does."""

    def __init__(
        self,
        config: PeerConfig,
        *,
        model: nn.Module | None = None,
        loss_fn: Callable | None = None,
        paired_fn: Callable | None = None,
        batches: Iterator | None = None,
        on_step: Callable[[dict], None] | None = None,
    ) -> None:
        self.config = config
        self.model, self.loss_fn, self.paired_fn, self.batches = model, loss_fn, paired_fn, batches
        self.on_step = on_step
        self.stats = PeerStats()
        self.step = 0                # steps sealed
        self.next_sample = 0
        self.status = "syncing"
        self.digests: dict[int, str] = {}
        self.loss: float | None = None
        self.step_time = 0.0
        self._late: dict[tuple, Record] = {}
        self._inbox: dict[int, dict[bytes, Record]] = collections.defaultdict(dict)  # pushed records by step
        self._sealed_by: dict[bytes, int] = {}  # steps each peer has sealed, from its pushed records and notes
        self._target = config.steps
        self._wire_at_seal: tuple[int, int] | None = None
        self._drift_at = config.fault_corrupt_at
        self._arrived = asyncio.Event()
        self._digests_checked: set[int] = set()
        self._tasks: list[asyncio.Task] = []
        self._pending: set[asyncio.Task] = set()
        self._cache: dict[str, tuple[float, Any]] = {}
        self._log = None
        self._started = False
        self._joined = False
        self._closing = False

    # ------------------------------------------------------------------------------------ start
    async def start(self) -> None:
        cfg = self.config
        try:
            cfg.validate()
        except ValueError as exc:
            raise PeerError(str(exc)) from None
        self.workdir = Path(cfg.checkpoint_dir or tempfile.mkdtemp(prefix="seedswarm-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        if cfg.json_log:
            Path(cfg.json_log).parent.mkdir(parents=True, exist_ok=True)
            self._log = open(cfg.json_log, "a", buffering=1)
        self.identity = load_identity(cfg.identity_path or self.workdir / "identity.key")
        self.machine = self.identity.machine_id
        self._owner = RSASignatureValidator(self.identity.private_key).local_public_key
        try:
            # created on this (long-lived) thread: its process dies with this one
            self.dht = ReapedDHT(
                initial_peers=list(cfg.initial_peers), host_maddrs=list(cfg.host_maddrs),
                announce_maddrs=list(cfg.announce_maddrs) or None, identity_path=str(self.identity.path),
                record_validators=validators(self.identity), start=True, await_ready=True,
                # hivemind dials the swarm with a throwaway daemon to see if an existing identity is
                # in use; one generated a moment ago cannot be
                check_if_identity_free=not self.identity.created,
                # no background traffic of hivemind's caching: a get does not re-store what it found on
                # other nodes, and cached heartbeats (which expire in seconds) are not re-fetched on a timer
                cache_nearest=0, cache_refresh_before_expiry=0,
            )
        except Exception as exc:
            raise PeerError(f"could not start the DHT node (check --host-maddrs / --initial-peers / --identity-path): {exc}") from None
        self._started = True
        self.p2p = await self.dht.replicate_p2p()
        self.wire = WireMeter(descendants(self.dht.pid))
        self.spec = await self._resolve_spec()
        self.swarm = self.spec.swarm_id
        self._prepare_training()
        self.checkpoint_every = cfg.checkpoint_every or 4 * self.spec.digest_every
        if self.checkpoint_every % self.spec.digest_every:
            raise PeerError(f"--checkpoint-every must be a multiple of the swarm's digest_every ({self.spec.digest_every})")
        ledger_path = self.workdir / "ledger.ssl"
        if ledger_path.exists() and not cfg.resume:
            raise PeerError(f"{self.workdir} already holds a peer's state: pass --resume to continue it, or another --checkpoint-dir")
        self.ledger = LedgerFile(ledger_path, self.spec)
        self.resumed = cfg.resume
        if cfg.resume:
            await self._restore_local()
        else:
            await self._in_thread(save_checkpoint, self.workdir, self.model, 0, self.spec.model.digest or weight_digest(self.model), self.swarm)
            self.digests[0] = self.spec.model.digest
        await self.p2p.add_binary_stream_handler(checkpoint_stream(self.swarm), self._serve_checkpoint)
        await self.p2p.add_binary_stream_handler(ledger_stream(self.swarm), self._serve_ledger)
        await self.p2p.add_binary_stream_handler(push_stream(self.swarm), self._receive_push)
        await self._store(spec_key(self.swarm), encode_spec(self.spec), get_dht_time() + 600)
        self._tasks = [asyncio.create_task(self._heartbeat_loop()), asyncio.create_task(self._rescan_loop())]
        self._event("started", peer_id=str(self.identity.peer_id), swarm_id=self.swarm.hex(),
                    maddrs=[str(m) for m in self.maddrs], step=self.step)

    @property
    def maddrs(self) -> list:
        return self.dht.get_visible_maddrs()

    async def _resolve_spec(self) -> SwarmSpec:
        cfg = self.config
        ledger_path = self.workdir / "ledger.ssl"
        if cfg.resume:
            if not ledger_path.exists():
                raise PeerError(f"--resume: {self.workdir} holds no ledger to resume from")
            from ..protocol.ledger import decode_ledger

            spec = decode_ledger(ledger_path.read_bytes())[0]
            if cfg.swarm_id is not None and spec.swarm_id != cfg.swarm_id:
                raise PeerError(f"--resume: {self.workdir} belongs to swarm {spec.swarm_id_hex}, not --swarm {cfg.swarm_id.hex()}")
        elif cfg.spec is not None:
            spec = cfg.spec
        else:
            spec = await self._fetch_spec(cfg.swarm_id)
        if self.model is None:
            try:
                self.model, self.tokenizer, self.task = await self._in_thread(
                    load_base, spec, cfg.model, cfg.resolved_device(), bool(spec.model.digest))
            except DigestMismatch as exc:
                raise PeerError(str(exc)) from None
        else:
            self.tokenizer = self.task = None
            if spec.model.digest and weight_digest(self.model) != spec.model.digest:
                raise PeerError("the model passed in does not have the swarm's base weights (digest mismatch)")
        if not spec.model.digest:
            spec = spec.with_model_digest(await self._in_thread(weight_digest, self.model))
        if cfg.swarm_id is not None and spec.swarm_id != cfg.swarm_id:
            raise PeerError("the swarm spec does not hash to --swarm (fill in model.digest in the spec file)")
        return spec

    async def _fetch_spec(self, swarm: bytes) -> SwarmSpec:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = await self._get(spec_key(swarm))
            for owner, decoded in found:
                if decoded.swarm == swarm:
                    return decoded.value
            await asyncio.sleep(1.0)
        raise PeerError(f"no peer announces swarm {swarm.hex()} (is it running, and are --initial-peers right?)")

    def _prepare_training(self) -> None:
        cfg = self.config
        if self.loss_fn is None:
            task = self.task or build_task(self.spec.task, self.tokenizer)
            self.loss_fn, self.paired_fn = task.loss, getattr(task, "paired", None)
            if self.batches is None:
                if not cfg.data:
                    raise PeerError("--data is required: this peer's private JSONL training data")
                examples = read_jsonl(cfg.data)
                stream = BatchStream(examples, self.spec.batch_size, seed=cfg.data_seed)
                self.batches = (task.collate(batch) for batch in stream)
        if self.batches is None:
            raise PeerError("a peer with its own loss function needs a batch iterator")
        self.replica = Replica(self.model, self.spec, self.loss_fn, self.paired_fn)

    async def _restore_local(self) -> None:
        """--resume: latest good checkpoint + the ledger on disk, then the sample counter."""
        for step, path in reversed(list_checkpoints(self.workdir)):
            meta = checkpoint_meta(path)
            await self._in_thread(load_checkpoint, path, self.model)
            if await self._in_thread(weight_digest, self.model) == meta["digest"]:
                self.step = step
                self.digests[step] = meta["digest"]
                break
            logger.warning("checkpoint %s does not match its digest; trying an older one", path)
        else:
            raise PeerError(f"--resume: no intact checkpoint in {self.workdir}")
        self.replica.reset()
        ledger, state = self.ledger.ledger, self._read_state()
        await self._replay_steps(self.step, max(ledger.last_step + 1, state.get("step", 0)))
        self.next_sample = max(state.get("next_sample", 0), ledger.next_sample(self.machine))
        self._event("resumed", step=self.step, next_sample=self.next_sample)

    # ------------------------------------------------------------------------------------ state
    def _read_state(self) -> dict:
        try:
            return json.loads((self.workdir / "state.json").read_text())
        except (OSError, ValueError):
            return {}

    def _save_state(self) -> None:
        path = self.workdir / "state.json"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump({"step": self.step, "next_sample": self.next_sample}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    # ------------------------------------------------------------------------------------ DHT
    async def _in_thread(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(None, partial(fn, *args))

    async def _store(self, key: str, value: bytes, expiration: float) -> bool:
        try:
            return bool(await self.dht.run_coroutine(
                partial(_store_near, key=key, subkey=self._owner, value=value, expiration=expiration), return_future=True))
        except Exception as exc:  # a store that fails is retried by the next round or heartbeat
            logger.debug("store %s failed: %s", key, exc)
            return False

    async def _get_many(self, keys: list[str], latest: bool = True) -> dict[str, list]:
        """Valid seedswarm entries per key: [(owner peer id, decoded value)]."""
        try:
            raw = await self.dht.run_coroutine(partial(_get_many, keys=keys, latest=latest), return_future=True)
        except Exception as exc:
            logger.debug("get %s failed: %s", keys[:2], exc)
            return {k: [] for k in keys}
        out = {}
        for key in keys:
            out[key] = []
            for checked in decode_entries(key, raw.get(key)):
                if checked is None:
                    self._reject(f"an invalid or unsigned entry under {key}")
                else:
                    out[key].append(checked)
        return out

    async def _get(self, key: str, latest: bool = True) -> list:
        return (await self._get_many([key], latest))[key]

    async def _live(self, max_age: float = 0.0) -> dict[bytes, Heartbeat]:
        """Heartbeats of live peers (not expired), this one excluded."""
        cached = self._cache.get("live")
        if cached and time.monotonic() - cached[0] <= max_age:
            return cached[1]
        live = {owner: d.value for owner, d in await self._get(peers_key(self.swarm), latest=False) if owner != self.machine}
        self._cache["live"] = (time.monotonic(), live)
        return live

    async def _frontier(self, max_age: float | None = None) -> tuple[int, bytes | None]:
        """The step the swarm is working on (the furthest peer's, from the "sealed" notes peers
        push and from heartbeats) and that peer."""
        best, who = self.step, None
        for owner, step in self._sealed_by.items():
            if step > best:
                best, who = step, owner
        live = await self._live(self.config.heartbeat_interval if max_age is None else max_age)
        for owner, hb in live.items():
            if hb.status in ("training", "done") and hb.step > best:
                best, who = hb.step, owner
        return best, who

    async def _step_records(self, steps: list[int], latest: bool = True) -> dict[int, list[Record]]:
        found = await self._get_many([step_key(self.swarm, s) for s in steps], latest)
        return {s: [d.value for _, d in found[step_key(self.swarm, s)]] for s in steps}

    async def _heartbeat_now(self, ttl: float | None = None) -> None:
        wire = await self._in_thread(self.wire.read)
        if wire is not None:
            self.stats.wire_sent, self.stats.wire_received = wire
        ckpts = list_checkpoints(self.workdir)
        hb = Heartbeat(step=self.step, status=self.status, name=self.config.name[:64], loss=self.loss,
                       step_time=float(self.step_time), checkpoint_step=ckpts[-1][0] if ckpts else -1,
                       sent=self.stats.wire_sent or 0, received=self.stats.wire_received or 0,
                       heals=self.stats.heals, late=self.stats.late_records, **self._latest_digest())
        await self._store(peers_key(self.swarm), encode_heartbeat(self.swarm, hb), get_dht_time() + (ttl or self.config.heartbeat_ttl))

    async def _publish_digest(self, step: int, digest: str) -> None:
        await self._store(digest_key(self.swarm, step), encode_digest(self.swarm, step, digest), get_dht_time() + self.config.record_ttl)

    def _latest_digest(self) -> dict:
        if not self.digests:
            return {}
        step = max(self.digests)
        return {"digest": self.digests[step] or "", "digest_step": step}

    async def _announce(self) -> None:
        if not self.config.announce:
            return
        live = await self._live(max_age=5.0)
        ann = Announcement(name=self.spec.name, model=self.spec.model.id, task=self.spec.task.kind, step=self.step,
                           peers=1 + sum(hb.status != "leaving" for hb in live.values()))
        await self._store(DIRECTORY_KEY, encode_announcement(self.swarm, ann), get_dht_time() + 30)

    async def _heartbeat_loop(self) -> None:
        beats = 0
        while not self._closing:
            try:
                await self._heartbeat_now()
                if beats % 10 == 0:
                    await self._announce()
            except Exception:
                logger.exception("heartbeat failed")
            beats += 1
            await asyncio.sleep(self.config.heartbeat_interval)

    async def _rescan(self, steps, latest: bool = False) -> None:
        """Re-read sealed steps; records that were not there at sealing time are late."""
        steps = sorted(s for s in set(steps) if 0 <= s < self.step)
        if not steps:
            return
        for records in (await self._step_records(steps, latest)).values():
            for r in records:
                if r.machine != self.machine and r not in self.ledger.ledger:
                    self._late[(r.machine, r.first_sample)] = r

    async def _rescan_once(self) -> None:
        await self._rescan(range(self.step - self.config.rescan_window, self.step), latest=True)

    async def _rescan_loop(self) -> None:
        """Records normally arrive pushed; the DHT is the fallback. Each sealed step is re-read
        twice (2 and 6 steps after it was sealed), and the whole window every rescan_interval
        seconds when the swarm stalls, which keeps DHT reads (and bytes) per step constant."""
        last_time, last_step = time.monotonic(), self.step
        while not self._closing:
            await asyncio.sleep(0.25)
            try:
                if self.step > last_step:
                    due = [k - d for k in range(last_step + 1, self.step + 1) for d in (2, 6)]
                    last_time, last_step = time.monotonic(), self.step
                    await self._rescan(due)
                elif time.monotonic() - last_time >= self.config.rescan_interval:
                    last_time = time.monotonic()
                    await self._rescan_once()
            except Exception:
                logger.exception("rescan failed")

    # ------------------------------------------------------------------------------------ rounds
    async def train(self, steps: int | None = None) -> dict:
        """Join the swarm where it is, then train until it has sealed ``steps`` steps; returns
        the final summary."""
        target = self._target = steps or self.config.steps
        if not self._joined:
            await self._join()
            self._joined = True
        while self.step < target:
            await self._round(target)
        return await self._finish(target)

    def _round_wait(self, live: dict[bytes, Heartbeat]) -> float:
        times = [hb.step_time for hb in live.values() if hb.status == "training" and hb.step_time > 0]
        times.append(self.step_time)
        wait = 2.0 * statistics.median(times) + 0.25
        return min(max(wait, self.config.min_round_wait), self.config.max_round_wait)

    async def _round(self, target: int) -> None:
        await self._process_late()
        await self._maybe_heal()
        frontier, _ = await self._frontier()
        if frontier > self.step:
            await self._catch_up(target)
            return
        self.status = "training"
        t, n = self.step, self.spec.samples_per_step
        batches = [next(self.batches) for _ in range(n)]
        first = self.next_sample
        self.next_sample += n
        self._save_state()  # reserve the sample counters before they can reach the network
        local = await self._in_thread(self.replica.local_step, t, self.machine, first, batches)
        self.step_time = local.seconds if not self.step_time else 0.7 * self.step_time + 0.3 * local.seconds
        self.loss = float(statistics.fmean(local.losses))
        record = local.record
        frontier, _ = await self._frontier()
        if frontier > t:  # the swarm sealed t while we computed: join it where it is
            await self._catch_up(target)
            if self.step >= target:
                return
            record = dataclasses.replace(record, step=self.step)
        encoded = record.encode()
        await asyncio.gather(
            self._push(b"R" + encoded),
            self._store(step_key(self.swarm, record.step), encode_record(self.swarm, record), get_dht_time() + self.config.record_ttl),
        )
        self.stats.records_published += 1
        self.stats.gradients_published += record.n
        self.stats.payload_bytes += len(record.grads)
        self.stats.record_bytes += len(encoded)
        records = await self._collect(record)
        await self._seal(record.step, records)

    async def _collect(self, own: Record) -> list[Record]:
        """Records of own.step from the live peers working on it: pushed ones as they arrive,
        the DHT read now and then as a fallback, until all are in or the deadline passes."""
        s = own.step
        live = await self._live(max_age=self.config.heartbeat_interval)
        deadline = time.monotonic() + self._round_wait(live)
        next_poll = time.monotonic() + self.config.dht_poll_interval
        while True:
            inbox = self._inbox[s]
            waiting = [o for o, hb in live.items() if hb.status == "training" and hb.step <= s and o not in inbox
                       and self._sealed_by.get(o, 0) <= s]
            now = time.monotonic()
            if not waiting or now >= deadline:
                return [r for r in inbox.values() if r.machine != self.machine] + [own]
            if now >= next_poll:
                for r in (await self._step_records([s], latest=False))[s]:
                    inbox.setdefault(r.machine, r)
                live = await self._live(max_age=self.config.heartbeat_interval)
                next_poll = time.monotonic() + self.config.dht_poll_interval
                continue
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout=min(deadline, next_poll) - now)
            except asyncio.TimeoutError:
                pass

    async def _push(self, message: bytes) -> None:
        """Send a message straight to every live peer: b"R" + our record (the DHT copy is for
        whoever misses it), or b"S" + the number of steps we have sealed (sent only after the last
        step: while training, each record says as much)."""
        live = await self._live(max_age=self.config.heartbeat_interval)
        await asyncio.gather(*(self._push_to(o, message) for o, hb in live.items() if hb.status != "leaving"))

    async def _push_to(self, owner: bytes, message: bytes) -> None:
        try:
            _, _, writer = await asyncio.wait_for(self.p2p.call_binary_stream_handler(PeerID(owner), push_stream(self.swarm)), 2.0)
            try:
                await P2P.send_raw_data(message, writer)
            finally:
                writer.close()
        except Exception as exc:
            logger.debug("push to %s failed: %s", PeerID(owner), exc)

    async def _receive_push(self, info, reader, writer) -> None:
        """A record pushed by its author, or its author's progress. libp2p authenticates the
        stream's remote peer id, so a record must be that peer's own: nobody can push in
        another peer's name."""
        sender = info.peer_id.to_bytes()
        try:
            frame = await asyncio.wait_for(read_frame(reader, MAX_RECORD_BYTES + 1), 5.0)
            kind, body = frame[:1], frame[1:]
            if kind == b"S" and len(body) == 8:
                self._sealed_by[sender] = max(self._sealed_by.get(sender, 0), int.from_bytes(body, "little"))
                self._arrived.set()
                return
            if kind != b"R":
                raise ProtocolError("unknown push message")
            record = decode_record(body)
            if record.machine != sender:
                raise ProtocolError("pushed record of another machine")
            # a record of step t is computed on the weights after t sealed steps: it doubles as the
            # sender's "sealed t" note, so a training peer pushes no separate note per step
            self._sealed_by[sender] = max(self._sealed_by.get(sender, 0), record.step)
            if record.step >= self.step:
                self._inbox[record.step].setdefault(record.machine, record)
                self._arrived.set()
            elif record not in self.ledger.ledger:
                self._late[(record.machine, record.first_sample)] = record
        except ProtocolError as exc:
            self._reject(f"a push from {info.peer_id}: {exc}")
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError) as exc:
            logger.debug("a push from %s broke off: %r", info.peer_id, exc)
        finally:
            writer.close()

    def _reject(self, what: str) -> None:
        """Count and log input that was refused (forged, malformed, conflicting or too late)."""
        self.stats.rejected += 1
        logger.warning("rejected %s", what)

    def _admit(self, records: list[Record]) -> list[Record]:
        """Add records to the ledger (disk, one fsync); conflicting ones are dropped and counted."""
        new, rejected = self.ledger.admit(sorted(records, key=lambda r: r.order_key))
        for record, reason in rejected:
            self._reject(f"a record of step {record.step} from {PeerID(record.machine)}: {reason}")
        return new

    async def _seal(self, s: int, records: list[Record]) -> None:
        """Step s is done: every record the ledger holds for it is applied, in canonical order."""
        new = self._admit([r for r in records if r.step == s])
        sealed = self.ledger.ledger.ordered(s, s + 1)
        self.replica.apply(sealed)
        self.stats.records_applied += len(sealed)
        self._inbox.pop(s, None)
        self.step = s + 1
        self._maybe_drift()
        digest = None
        if self.step % self.spec.digest_every == 0:
            digest = await self._in_thread(self.replica.digest)
            self.digests[self.step] = digest
            await self._publish_digest(self.step, digest)
            if self.step % self.checkpoint_every == 0:
                await self._in_thread(save_checkpoint, self.workdir, self.model, self.step, digest, self.swarm)
        self._save_state()
        if self.status == "training" and self.step >= self._target:  # no next record will say so
            self._background(self._push(b"S" + self.step.to_bytes(8, "little")))
        wire = await self._in_thread(self.wire.read)
        sent_step = received_step = None
        if wire is not None:
            # since the previous seal (heartbeats also refresh stats.wire_*, so they are no baseline)
            if self._wire_at_seal is not None:
                sent_step, received_step = wire[0] - self._wire_at_seal[0], wire[1] - self._wire_at_seal[1]
            self._wire_at_seal = wire
            self.stats.wire_sent, self.stats.wire_received = wire
        self._event("step", step=s, loss=self.loss, records=len(sealed), peers=1 + len(await self._live(max_age=self.config.heartbeat_interval)),
                    digest=digest, wire_sent_step=sent_step, wire_received_step=received_step, **self._byte_stats())

    def _maybe_drift(self) -> None:
        """Chaos testing (--fault-corrupt-at N): this replica computes step N wrong, live or in a
        replay, until the swarm's digests make it heal, so its own rebuilds cannot hide the drift."""
        if self._drift_at == self.step:
            with torch.no_grad():
                self.replica.flush()
                self.replica.zo.tensors[0].param.data.view(-1)[0] += 1e-3

    async def _catch_up(self, target: int) -> None:
        """Seal the steps the swarm has sealed and we have not, from its records."""
        self.status = "syncing"
        chase = None  # a peer whose last ledger showed the swarm well ahead: it moved on while we fetched
        while True:
            frontier, who = await self._frontier()
            who = who or chase
            if who is not None and (chase is not None or min(frontier, target) - self.step > 2):
                start = self.step
                await self._merge_ledger_from(who, since=start)
                frontier = max(frontier, (await self._frontier())[0])
                chase = who if min(frontier, target) - start > 2 else None
            frontier = min(frontier, target)
            if self.step >= frontier:
                return
            recent = [s for s in range(self.step, frontier) if frontier - s <= self.config.rescan_window]
            from_dht = await self._step_records(recent) if recent else {}
            for s in range(self.step, frontier):
                records = self.ledger.ledger.ordered(s, s + 1) + from_dht.get(s, [])
                await self._seal(s, records)

    async def _fetch_ledger(self, owner: bytes, since: int) -> list[Record] | None:
        """A peer's sealed records of steps >= since, or None if it could not be fetched."""
        try:
            _, reader, writer = await self.p2p.call_binary_stream_handler(PeerID(owner), ledger_stream(self.swarm))
            try:
                return await asyncio.wait_for(receive_ledger(reader, writer, since), timeout=120)
            finally:
                writer.close()
        except Exception as exc:
            logger.warning("could not fetch the ledger from %s: %s", PeerID(owner), exc)
            return None

    async def _merge_ledger_from(self, owner: bytes, since: int) -> int:
        """Add a peer's sealed records (step >= since) to our ledger; returns how many were new."""
        records = await self._fetch_ledger(owner, since)
        if records is None:
            return 0
        if records:  # a fresher frontier than heartbeats give: the owner has sealed at least this much
            sealed = max(r.step for r in records) + 1
            self._sealed_by[owner] = max(self._sealed_by.get(owner, 0), sealed)
        return len(self._admit(records))

    async def _replay_steps(self, start: int, stop: int) -> None:
        """Apply the ledger's records of steps start..stop-1; digests (and checkpoints, which
        others may download) that the replay changes are republished / rewritten."""
        for s in range(start, stop):
            self.replica.apply(self.ledger.ledger.ordered(s, s + 1))
            self.step = s + 1
            self._maybe_drift()
            if self.step % self.spec.digest_every == 0:
                digest = await self._in_thread(self.replica.digest)
                if self.digests.get(self.step) != digest:
                    self.digests[self.step] = digest
                    await self._publish_digest(self.step, digest)
                    if self.step % self.checkpoint_every == 0:
                        await self._in_thread(save_checkpoint, self.workdir, self.model, self.step, digest, self.swarm)

    async def _rebuild(self, from_step: int, trusted: dict[int, str] | None = None) -> None:
        """Weights from the latest local checkpoint at or before ``from_step`` (whose digest
        ``trusted`` vouches for, when given) plus the ledger, up to the current step."""
        stop = self.step
        for step, path in reversed(list_checkpoints(self.workdir)):
            meta = checkpoint_meta(path)
            if step <= from_step and (trusted is None or trusted.get(step, meta["digest"]) == meta["digest"]):
                break
        else:
            raise PeerError("no checkpoint to rebuild from")
        await self._in_thread(load_checkpoint, path, self.model)
        self.replica.reset()
        self.step = step
        await self._replay_steps(step, stop)
        self.digests[self.step] = await self._in_thread(self.replica.digest)
        self.stats.rebuilds += 1

    async def _process_late(self) -> None:
        if not self._late:
            return
        late, self._late = list(self._late.values()), {}
        oldest = self.step - self.config.rescan_window
        too_old = [r for r in late if r.step < oldest]
        for r in too_old:  # bounded rebuilds: a confused or hostile peer cannot make us replay from step 0
            self._reject(f"a record of step {r.step} from {PeerID(r.machine)}: more than {self.config.rescan_window} steps late")
        new = self._admit([r for r in late if oldest <= r.step < self.step])
        if new:
            self.stats.late_records += len(new)
            self._event("late", records=len(new), first_step=min(r.step for r in new))
            await self._rebuild(min(r.step for r in new))

    async def _winner(self, step: int) -> tuple[str | None, int, list[bytes]]:
        """The swarm's digest for ``step``: the one most peers published, ties going to the
        larger digest, a rule every replica applies alike, so a split (even one-to-one)
        always has one side that heals. Returns (digest, votes, other peers holding it)."""
        votes: dict[str, list[bytes]] = collections.defaultdict(list)
        for owner, d in await self._get(digest_key(self.swarm, step)):
            if owner != self.machine:
                votes[d.value[1]].append(owner)
        if self.digests.get(step):
            votes[self.digests[step]].append(self.machine)
        if not votes:
            return None, 0, []
        digest, owners = max(votes.items(), key=lambda kv: (len(kv[1]), kv[0]))
        return digest, len(owners), [o for o in owners if o != self.machine]

    async def _maybe_heal(self) -> None:
        """Compare our digest of a settled step with the swarm's; heal if ours lost."""
        every = self.spec.digest_every
        check = (self.step - 2 * every) // every * every
        if check <= 0 or check in self._digests_checked:
            return
        self._digests_checked.add(check)
        await self._heal_if_needed(check)

    async def _heal_if_needed(self, check: int) -> bool:
        winner, votes, supporters = await self._winner(check)
        mine = self.digests.get(check)
        if winner is None or mine == winner or not supporters:
            return False
        self.stats.heals += 1
        self._event("heal", step=check, mine=mine, winner=winner, votes=votes)
        how = await self._heal(check, winner, supporters)
        self._event("healed", step=check, how=how, ok=self.digests.get(check) == winner)
        return True

    async def _heal(self, check: int, winner: str, supporters: list[bytes]) -> str:
        """Adopt a winning peer's ledger and rebuild from our latest checkpoint the swarm vouches
        for; if that does not reproduce the winning digest, download a verified checkpoint."""
        self._drift_at = None  # chaos testing: the swarm has told this replica it drifted
        for owner in supporters:
            if await self._adopt_ledger(owner):
                break
        trusted = {0: self.spec.model.digest}
        for step, _ in list_checkpoints(self.workdir):
            if step:
                trusted[step] = (await self._winner(step))[0]
        await self._rebuild(check, {k: v for k, v in trusted.items() if v})
        if self.digests.get(check) == winner:
            return "ledger"
        await self._download_checkpoint(supporters)
        return "checkpoint"

    async def _adopt_ledger(self, owner: bytes) -> bool:
        """Replace our ledger's sealed history with ``owner``'s (records of steps it has not
        sealed yet are kept)."""
        theirs = await self._fetch_ledger(owner, 0)
        if theirs is None:
            return False
        sealed = max((r.step for r in theirs), default=-1)
        ours = [r for r in self.ledger.ledger.ordered() if r.step > sealed]
        try:
            self.ledger.rewrite(theirs + ours)
        except ProtocolError as exc:
            self._reject(f"the ledger of {PeerID(owner)}: {exc}")
            return False
        return True

    async def _download_checkpoint(self, owners: list[bytes]) -> bool:
        """A checkpoint from one of ``owners`` that other peers' digests vouch for; then replay."""
        stop = max(self.step, 0)
        for owner in owners:
            dest = self.workdir / "incoming.safetensors"
            try:
                _, reader, writer = await self.p2p.call_binary_stream_handler(PeerID(owner), checkpoint_stream(self.swarm))
                try:
                    header = await asyncio.wait_for(receive_checkpoint(reader, dest), timeout=600)
                finally:
                    writer.close()
            except Exception as exc:
                logger.warning("checkpoint download from %s failed: %s", PeerID(owner), exc)
                continue
            winner, _, _ = await self._winner(header["step"])
            if header["step"] and winner != header["digest"]:
                logger.warning("checkpoint of %s at step %d is not what the swarm published; skipped", PeerID(owner), header["step"])
                continue
            await self._in_thread(load_checkpoint, dest, self.model)
            if await self._in_thread(weight_digest, self.model) != header["digest"]:
                logger.warning("checkpoint of %s does not hash to its digest; skipped", PeerID(owner))
                continue
            self.replica.reset()
            os.replace(dest, self.workdir / f"ckpt-{header['step']:08d}.safetensors")
            (self.workdir / f"ckpt-{header['step']:08d}.json").write_text(
                json.dumps({"step": header["step"], "digest": header["digest"], "swarm_id": self.swarm.hex()}))
            self.step = header["step"]
            self.digests[self.step] = header["digest"]
            await self._adopt_ledger(owner)
            await self._replay_steps(self.step, stop)
            self.digests[self.step] = await self._in_thread(self.replica.digest)
            return True
        return False

    async def _wait_for_peers(self) -> None:
        """A start barrier: wait until --min-peers peers are up, then until all of them have seen
        as much (they flip to "training"), so nobody runs the first steps alone."""
        deadline = time.monotonic() + self.config.min_peers_timeout
        while 1 + len(await self._live()) < self.config.min_peers:
            if time.monotonic() > deadline:
                raise PeerError(f"fewer than --min-peers {self.config.min_peers} peers showed up in {self.config.min_peers_timeout:.0f}s")
            await asyncio.sleep(0.5)  # our own presence is the heartbeat loop's job
        self.status = "training"
        await self._heartbeat_now()
        settle = time.monotonic() + 10 * self.config.heartbeat_interval
        while time.monotonic() < settle:
            live = await self._live()
            if all(hb.status != "syncing" or hb.step > 0 for hb in live.values()):
                break
            await asyncio.sleep(0.2)

    async def _see_swarm(self) -> None:
        """A newcomer's DHT needs a moment before it sees the others' heartbeats; a peer that
        trained meanwhile would publish records for steps the swarm sealed long ago."""
        if not self.config.initial_peers:
            return
        deadline = time.monotonic() + 2 * self.config.heartbeat_ttl
        while not await self._live() and time.monotonic() < deadline:
            await asyncio.sleep(0.5)

    async def _join(self) -> None:
        await self._see_swarm()
        if self.step == 0 and self.config.min_peers > 1:
            await self._wait_for_peers()
        frontier, who = await self._frontier()
        if frontier <= self.step:
            self.status = "training"
            return
        self.status = "syncing"
        self._event("joining", frontier=frontier, by=self.config.join_by, step=self.step)
        if self.step == 0 and not self.resumed:
            if self.config.join_by == "checkpoint":
                live = await self._live()
                servers = sorted((hb.checkpoint_step, o) for o, hb in live.items() if hb.checkpoint_step > 0)
                if not await self._download_checkpoint([o for _, o in reversed(servers)]):
                    logger.warning("no verifiable checkpoint available; joining by replay instead")
            if who is not None:
                await self._merge_ledger_from(who, since=0)
        await self._catch_up(self.config.steps)
        self._event("joined", step=self.step)

    # ------------------------------------------------------------------------------------ serve
    async def _serve_checkpoint(self, info, reader, writer) -> None:
        try:
            ckpts = list_checkpoints(self.workdir)
            if ckpts:
                await serve_checkpoint(ckpts[-1][1], checkpoint_meta(ckpts[-1][1]), writer)
        except Exception as exc:
            logger.debug("serving a checkpoint failed: %s", exc)
        finally:
            writer.close()

    async def _serve_ledger(self, info, reader, writer) -> None:
        try:
            sealed = self.step
            await serve_ledger(lambda since: self.ledger.ledger.ordered(since, sealed), reader, writer)
        except Exception as exc:
            logger.debug("serving the ledger failed: %s", exc)
        finally:
            writer.close()

    # ------------------------------------------------------------------------------------ finish
    async def _finish(self, target: int) -> dict:
        """Wait for the others to reach the target, settle late records, report."""
        self.status = "done"
        await self._heartbeat_now()
        deadline = time.monotonic() + self.config.finish_timeout
        while time.monotonic() < deadline:
            live = await self._live()
            if all(hb.step >= target or hb.status in ("done", "leaving") for hb in live.values()):
                break
            await self._process_late()
            await asyncio.sleep(0.2)
        await self._rescan_once()  # records that others sealed at the very end
        await self._process_late()
        await self._final_consensus()
        digest = self.digests[self.step]
        summary = self.summary()
        summary["digest"] = digest
        self._event("finished", **summary)
        return summary

    async def _final_consensus(self) -> None:
        """Publish the final digest, wait for the others' (until they are all in or the finish
        timeout passes), and heal if ours lost: everyone leaves with the same weights."""
        self.digests[self.step] = await self._in_thread(self.replica.digest)
        await self._publish_digest(self.step, self.digests[self.step])
        deadline = time.monotonic() + self.config.finish_timeout
        while time.monotonic() < deadline:
            live = await self._live()
            published = {o for o, _ in await self._get(digest_key(self.swarm, self.step))}
            if all(o in published for o, hb in live.items() if hb.status != "leaving"):
                break
            await asyncio.sleep(0.3)
        if await self._heal_if_needed(self.step):
            await self._publish_digest(self.step, self.digests[self.step])

    def summary(self) -> dict:
        return {"peer_id": str(self.identity.peer_id), "swarm_id": self.swarm.hex(), "step": self.step,
                "loss": self.loss, "ledger_records": len(self.ledger.ledger), **self._byte_stats(),
                **{k: v for k, v in dataclasses.asdict(self.stats).items()}}

    def _byte_stats(self) -> dict:
        s = self.stats
        grads = max(s.gradients_published, 1)
        return {"payload_bytes_per_gradient": s.payload_bytes / grads if s.gradients_published else None,
                "record_bytes_per_gradient": s.record_bytes / grads if s.gradients_published else None,
                "wire_sent": s.wire_sent, "wire_received": s.wire_received}

    async def shutdown(self, graceful: bool = True) -> None:
        if self._closing:
            return
        self._closing = True
        for task in self._tasks:
            task.cancel()
        if self._started:
            if graceful:
                try:
                    self.status = "leaving"
                    await asyncio.wait_for(self._heartbeat_now(ttl=self.config.heartbeat_interval), timeout=5)
                except Exception:
                    pass
            try:
                await asyncio.wait_for(self.p2p.shutdown(), timeout=5)
            except Exception:
                pass
            self.dht.shutdown()
        if hasattr(self, "ledger"):
            self.ledger.close()
        if self._log:
            self._log.close()

    def _background(self, coro) -> None:
        """Run a fire-and-forget coroutine, keeping a reference so it is not garbage-collected."""
        task = asyncio.create_task(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _event(self, event: str, **fields) -> None:
        entry = {"event": event, "time": round(time.time(), 3), **fields}
        if self._log:
            self._log.write(json.dumps(entry) + "\n")
        if self.on_step is not None:
            self.on_step(entry)


class Peer:
    """Synchronous facade: runs an ``AsyncPeer`` on its own event-loop thread.

    >>> with Peer(PeerConfig(spec=spec, steps=50), model=model, loss_fn=loss, batches=batches) as peer:
    ...     summary = peer.train()
    """

    def __init__(self, config: PeerConfig, **kwargs) -> None:
        self.core = AsyncPeer(config, **kwargs)
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

    def train(self, steps: int | None = None) -> dict:
        return self._call(self.core.train(steps))

    def shutdown(self) -> None:
        if self._loop.is_running():
            try:
                self._call(self.core.shutdown(), timeout=30)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(timeout=10)

    @property
    def peer_id(self) -> str:
        return str(self.core.identity.peer_id)

    @property
    def maddrs(self) -> list[str]:
        return [str(m) for m in self.core.maddrs]

    @property
    def swarm_id(self) -> str:
        return self.core.swarm.hex()

    @property
    def model(self) -> nn.Module:
        return self.core.model

    def digest(self) -> str:
        return self._call(self.core._in_thread(self.core.replica.digest))

    def __enter__(self) -> "Peer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.shutdown()
