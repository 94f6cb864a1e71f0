"""The DHT adapter: hivemind's DHT for rendezvous, member status and the swarm directory.

Only this module (with peer/transport.py) knows hivemind. It gives the node:

- ``SwarmDHT.start(...)``: a hivemind DHT node (its p2pd shares our Ed25519 identity) whose
  validators include ``Ed25519EntryValidator``: an entry under a subkey marked
  ``[ss2:<machine hex>]`` must carry that machine's Ed25519 signature over the DHT key, the
  subkey, the value and its expiration, so nobody can write, replace or extend another
  peer's entry (like hivemind's RSASignatureValidator, with 64-byte signatures);
- ``store`` / ``entries``: signed seedswarm entries (protocol/directory.py) in and validated
  entries out, each checked to sit under the only key it may sit under;
- ``members`` (discovery), ``register`` (bounded member buckets), ``publish_spec``,
  ``fetch_spec`` and ``announce``.

A few functions run inside hivemind's DHT process and reach into its private API
(``node.protocol``, the routing table, ``call_store``, ``call_find``, ``traverse_dht``):
``_get_many``, ``_store_near``, ``_store_at``, ``_crawl`` and ``_store_few_here``.
tests/test_dht_adapter.py pins them to the hivemind version in pyproject.toml.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from functools import partial

from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.routing import DHTID
from hivemind.dht.validation import DHTRecord, RecordValidatorBase
from hivemind.utils import MSGPackSerializer, get_dht_time

from ..protocol.directory import (ANNOUNCERS, BUCKET_CAP, DIRECTORY_KEY, MEMBER_BUCKETS, SPEC_COPIES, Announcement, Entry,
                                  MemberInfo, decode_entry, encode_entry, entry_key, few_enough, member_bucket, member_key,
                                  spec_key)
from ..protocol.errors import ProtocolError
from ..protocol.identity import DHT_DOMAIN, SIGNATURE_BYTES, Signer, check_machine_id, verify_by
from ..protocol.spec import SwarmSpec
from .process import ReapedDHT

logger = logging.getLogger("seedswarm.dht")

HIVEMIND_TESTED = "1.1.12"
_MARKER = re.compile(rb"\[ss2:([0-9a-f]{76})\]")
_SIG_OPEN, _SIG_CLOSE = b"[ss2sig:", b"]"
_SIG_LEN = len(_SIG_OPEN) + SIGNATURE_BYTES + len(_SIG_CLOSE)


def owner_subkey(machine: bytes) -> bytes:
    return b"[ss2:" + machine.hex().encode() + b"]"


class Ed25519EntryValidator(RecordValidatorBase):
    """Protects subkeys marked ``[ss2:<machine hex>]``: only that machine may write them.

    A protected value ends with ``[ss2sig:<64-byte signature>]``, the owner's signature of
    ``DHT_DOMAIN || msgpack((key, subkey, value without signature, expiration))``."""

    def __init__(self, signer: Signer | None = None) -> None:
        self._signer = signer

    @staticmethod
    def _owner(record: DHTRecord) -> bytes | None:
        found = _MARKER.findall(record.subkey or b"") + _MARKER.findall(record.key)
        if not found:
            return None
        if len(set(found)) > 1:
            raise ProtocolError("two different owners")
        return check_machine_id(bytes.fromhex(found[0].decode()))

    @staticmethod
    def _message(record: DHTRecord) -> bytes:
        return DHT_DOMAIN + MSGPackSerializer.dumps(dataclasses.astuple(record))

    def validate(self, record: DHTRecord) -> bool:
        try:
            owner = self._owner(record)
            if owner is None:
                return True  # not a protected seedswarm entry
            value = record.value
            if len(value) < _SIG_LEN or not value.endswith(_SIG_CLOSE) or value[-_SIG_LEN:][:len(_SIG_OPEN)] != _SIG_OPEN:
                return False
            signature = value[-_SIG_LEN + len(_SIG_OPEN):-len(_SIG_CLOSE)]
            verify_by(owner, self._message(dataclasses.replace(record, value=value[:-_SIG_LEN])), signature)
            return True
        except (ProtocolError, ValueError):
            return False

    def sign_value(self, record: DHTRecord) -> bytes:
        if self._signer is None or owner_subkey(self._signer.machine) not in (record.subkey or b""):
            return record.value
        return record.value + _SIG_OPEN + self._signer.sign(self._message(record)) + _SIG_CLOSE

    def strip_value(self, record: DHTRecord) -> bytes:
        value = record.value
        if len(value) >= _SIG_LEN and value.endswith(_SIG_CLOSE) and value[-_SIG_LEN:][:len(_SIG_OPEN)] == _SIG_OPEN:
            return value[:-_SIG_LEN]
        return value

    @property
    def priority(self) -> int:
        return 10  # before anything that deserializes values

    def merge_with(self, other: RecordValidatorBase) -> bool:
        return isinstance(other, Ed25519EntryValidator)


def validators(signer: Signer | None) -> list[RecordValidatorBase]:
    """Ours, plus hivemind's RSA validator so that entries of other applications sharing the
    DHT keep their protection on our nodes too."""
    return [Ed25519EntryValidator(signer), RSASignatureValidator()]


# --- inside the DHT process (hivemind private API) -----------------------------------------------
async def _get_many(dht, node, keys, latest):
    """One traversal for several keys. ``latest``: merge every replica's subkeys; otherwise
    stop at the first live copy (often this node's own: no network at all)."""
    return await node.get_many(keys, sufficient_expiration_time=float("inf") if latest else None,
                               beam_size=node.num_replicas)


async def _store_near(dht, node, key, subkey, value, expiration):
    """Store one signed subkey value. hivemind's store first crawls toward the key, and every
    node it asks answers with the key's whole dictionary; while the routing table is one
    unsplit bucket (we know the whole DHT) the nearest nodes are already known, so the value
    goes straight to them (the nodes hivemind would pick); larger DHTs take hivemind's crawl.
    (Keys whose writers decide by what a read found take ``_store_few_here``.)"""
    table = node.protocol.routing_table
    if sum(len(b.nodes_to_peer_id) for b in table.buckets) >= node.protocol.bucket_size:
        return await node.store(key, value, expiration, subkey=subkey)
    key_id = DHTID.generate(source=key)
    return await _store_at(node, key_id, table.get_nearest_neighbors(key_id, node.num_replicas, exclude=node.node_id),
                           subkey, value, expiration)


async def _store_at(node, key_id, candidates, subkey, value, expiration) -> bool:
    """Sign and store at the ``node.num_replicas`` nearest of ``candidates`` ((node id, peer
    id) pairs) and this node; True if any of them stored it."""
    candidates = sorted([*candidates, (node.node_id, None)], key=lambda c: key_id.xor_distance(c[0]))[: node.num_replicas]
    serializer = node.protocol.serializer
    record = DHTRecord(key_id.to_bytes(), serializer.dumps(subkey), serializer.dumps(value), expiration)
    signed = node.protocol.record_validator.sign_value(record)
    stored, remote = False, []
    for node_id, peer_id in candidates:
        if peer_id is None:
            if node.protocol.record_validator.validate(dataclasses.replace(record, value=signed)):
                stored = node.protocol.storage.store(key_id, signed, expiration, subkey=subkey) or stored
        else:
            remote.append(node.protocol.call_store(peer_id, keys=[key_id], values=[signed], expiration_time=[expiration],
                                                   subkeys=[subkey]))
    for result in await asyncio.gather(*remote, return_exceptions=True):
        # call_store answers a protobuf repeated field of bools (not a list), or None when unanswered
        stored = stored or (result is not None and not isinstance(result, BaseException) and any(result))
    return stored


async def _crawl(node, key_id):
    """One crawl toward ``key_id`` as hivemind's ``get(latest=True)`` does it: every subkey
    the visited nodes hold, merged (the found value, as ``get`` returns it), and the nodes
    nearest the key that answered, as (node id, peer id) pairs (where hivemind's store
    would put a value)."""
    from hivemind.dht.node import _SearchState
    from hivemind.dht.traverse import traverse_dht

    state = _SearchState(key_id, float("inf"), serializer=node.protocol.serializer,
                         record_validator=node.protocol.record_validator)
    state.add_candidate(node.protocol.storage.get(key_id), source_node_id=node.node_id)
    peer_of = dict(node.protocol.routing_table.get_nearest_neighbors(key_id, node.protocol.bucket_size,
                                                                     exclude=node.node_id))
    nearest: list = []

    async def get_neighbors(peer, queries):
        response = await node._call_find_with_blacklist(peer_of[peer], list(queries))
        if not response:
            return {query: ([], False) for query in queries}
        out = {}
        for query, (found, peers) in response.items():
            peer_of.update(peers)
            state.add_candidate(found, source_node_id=peer)
            out[query] = tuple(peers), False
        return out

    async def found_callback(query, nearest_nodes, _visited):
        nearest.extend(nearest_nodes)

    await traverse_dht(queries=[key_id], initial_nodes=list(peer_of), beam_size=node.num_replicas,
                       num_workers=node.num_workers, queries_per_call=1, get_neighbors=get_neighbors,
                       visited_nodes={key_id: {node.node_id}}, found_callback=found_callback)
    state.finish_search()
    return state.future.result(), [(n, peer_of[n]) for n in nearest if n in peer_of]


async def _store_few_here(dht, node, key, subkey, value, expiration, machine, cap, kind, swarm):
    """``SwarmDHT._store_few`` inside the DHT process: one crawl finds both the entries
    present (for ``few_enough``) and the nodes to write to, where a read and then hivemind's
    store would crawl twice (each node asked answers with the key's whole dictionary: for
    the spec key, kilobytes). Returns (stored, entries refused)."""
    key_id = DHTID.generate(source=key)
    found, nearest = await _crawl(node, key_id)
    entries, refused = decode_found(key, found)
    present = [owner for owner, entry in entries if entry.kind == kind and entry.swarm == swarm]
    if not few_enough(machine, present, cap):
        return False, refused
    return await _store_at(node, key_id, nearest, subkey, value, expiration), refused


# --- the adapter ---------------------------------------------------------------------------------
def decode_found(key: str, found) -> tuple[list[tuple[bytes, Entry]], int]:
    """hivemind's get result for ``key`` -> ([(owner machine, entry)], entries refused).

    Only entries under an owner's marked subkey, valid, and under the key they name count."""
    out, refused = [], 0
    if found is None or not isinstance(getattr(found, "value", None), dict):
        return out, refused
    for subkey, item in found.value.items():
        try:
            match = _MARKER.fullmatch(subkey) if isinstance(subkey, bytes) else None
            if match is None:
                continue  # not a seedswarm entry (another application's, or unprotected junk)
            owner = check_machine_id(bytes.fromhex(match.group(1).decode()))
            entry = decode_entry(item.value)
            if entry_key(entry, owner) != key:
                raise ProtocolError("entry under a key it does not name")
            out.append((owner, entry))
        except ProtocolError as exc:
            refused += 1
            logger.debug("refused a DHT entry under %s: %s", key, exc)
    return out, refused


class SwarmDHT:
    """A hivemind DHT node and seedswarm's entries in it (coroutines: call them from any
    event loop; hivemind runs the work in its DHT process)."""

    def __init__(self, dht: ReapedDHT, signer: Signer) -> None:
        self.dht = dht
        self.signer = signer
        self.subkey = owner_subkey(signer.machine)
        self.refused = 0

    @classmethod
    def start(cls, signer: Signer, identity_path: str, *, initial_peers=(), host_maddrs=(), announce_maddrs=(),
              client_mode: bool = False, relays: tuple[str, ...] = (), **kwargs) -> "SwarmDHT":
        """``relays``: we are behind NAT (peer/reach.py): run the DHT as a client (nobody can
        dial us to ask) and reserve a circuit-relay slot on each of these at once (p2pd's
        static relays; its relay discovery would wait minutes for four candidates).
        Without: a public node, which (like every p2pd here) also serves as a relay."""
        p2p_options = dict(use_relay=True)
        if relays:
            client_mode = True
            # auto_nat on: in p2pd (-autonat) it also turns on DCUtR hole punching. A peer that
            # receives a relayed connection then punches a direct TCP connection through both
            # NATs, and new streams (links) take it. It starts only once four peers on distinct
            # public IPs have seen this peer at the same address (go-libp2p's identify
            # ActivationThresh); before that, and where the NAT maps ports per destination,
            # everything stays relayed as before. See docs/NETWORK.md.
            p2p_options.update(use_auto_relay=True, trusted_relays=list(relays), force_reachability="private",
                               auto_nat=True)
        dht = ReapedDHT(initial_peers=list(initial_peers), host_maddrs=list(host_maddrs) or None,
                        announce_maddrs=list(announce_maddrs) or None, identity_path=identity_path,
                        record_validators=validators(signer), start=True, await_ready=True, client_mode=client_mode,
                        # hivemind checks whether the identity is in use by dialing with an RSA-only helper
                        check_if_identity_free=False,
                        # no background traffic of hivemind's caching: a get does not re-store what it found
                        cache_nearest=0, cache_refresh_before_expiry=0,
                        p2pd_args=("-relayDiscovery=false",) if relays else (), **p2p_options, **kwargs)
        return cls(dht, signer)

    @property
    def pid(self) -> int:
        return self.dht.pid

    def maddrs(self) -> list[str]:
        return [str(m) for m in self.dht.get_visible_maddrs()]

    async def replicate_p2p(self):
        return await self.dht.replicate_p2p()

    def shutdown(self) -> None:
        self.dht.shutdown()

    # --- entries ---------------------------------------------------------------------------
    async def astore(self, key: str, value: bytes, ttl: float) -> bool:
        try:
            return bool(await self.dht.run_coroutine(
                partial(_store_near, key=key, subkey=self.subkey, value=value, expiration=get_dht_time() + ttl),
                return_future=True))
        except Exception as exc:  # a failed store is retried by the next refresh
            logger.debug("DHT store %s failed: %s", key, exc)
            return False

    async def aentries(self, keys: list[str], latest: bool = True) -> dict[str, list[tuple[bytes, Entry]]]:
        """Validated entries per key; a failed read finds nothing (see _read)."""
        try:
            return await self._read(keys, latest)
        except Exception as exc:
            logger.debug("DHT get failed: %s", exc)
            return {k: [] for k in keys}

    async def _read(self, keys: list[str], latest: bool) -> dict[str, list[tuple[bytes, Entry]]]:
        """Validated entries per key; raises where the DHT read failed."""
        raw = await self.dht.run_coroutine(partial(_get_many, keys=keys, latest=latest), return_future=True)
        out = {}
        for key in keys:
            out[key], refused = decode_found(key, raw.get(key))
            self.refused += refused
        return out

    # --- swarm-level operations -----------------------------------------------------------
    async def _store_few(self, key: str, value: bytes, ttl: float, cap: int, kind: str, swarm: bytes) -> bool:
        """Our entry under a key every member could write, only where ``few_enough`` allows
        (entries of ``kind`` for ``swarm``, ours included, count toward the cap). The read
        merges every replica's subkeys (the first live copy is often our own node's, which
        holds little more than our own entry); a read that failed writes nothing (a busy DHT
        would otherwise look empty to every peer at once): the next refresh retries."""
        try:
            stored, refused = await self.dht.run_coroutine(
                partial(_store_few_here, key=key, subkey=self.subkey, value=value, expiration=get_dht_time() + ttl,
                        machine=self.signer.machine, cap=cap, kind=kind, swarm=swarm),
                return_future=True)
        except Exception as exc:
            logger.debug("DHT read-then-write of %s failed: %s", key, exc)
            return False
        self.refused += refused
        return bool(stored)

    async def publish_spec(self, spec: SwarmSpec, ttl: float = 900.0) -> bool:
        """Keep the spec findable by id: at most SPEC_COPIES peers hold a copy (few_enough)."""
        swarm = spec.swarm_id
        return await self._store_few(spec_key(swarm), encode_entry("spec", swarm, spec), ttl, SPEC_COPIES, "spec", swarm)

    async def fetch_spec(self, swarm: bytes) -> SwarmSpec | None:
        for _, entry in (await self.aentries([spec_key(swarm)]))[spec_key(swarm)]:
            if entry.kind == "spec" and entry.swarm == swarm:
                return entry.value
        return None

    async def members(self, swarm: bytes, buckets: list[int] | None = None) -> dict[bytes, MemberInfo]:
        """Live member entries of the given buckets (all by default)."""
        keys = [member_key(swarm, b) for b in (range(MEMBER_BUCKETS) if buckets is None else buckets)]
        found = await self.aentries(keys)
        return {owner: e.value for key in keys for owner, e in found[key] if e.kind == "member" and e.swarm == swarm}

    async def register(self, swarm: bytes, info: MemberInfo, ttl: float, force: bool = False) -> bool:
        """Put our member entry in our bucket, unless the bucket is full (then peer exchange
        over links still makes us known): no DHT value grows with the swarm."""
        key = member_key(swarm, member_bucket(self.signer.machine))
        if not force:
            present = [o for o, e in (await self.aentries([key], latest=False))[key] if o != self.signer.machine]
            if len(present) >= BUCKET_CAP:
                return False
        return await self.astore(key, encode_entry("member", swarm, info), ttl)

    async def announce(self, swarm: bytes, ann: Announcement, ttl: float = 150.0) -> bool:
        """Announce the swarm in the directory every swarm shares: at most ANNOUNCERS peers per swarm."""
        return await self._store_few(DIRECTORY_KEY, encode_entry("swarm", swarm, ann), ttl, ANNOUNCERS, "swarm", swarm)

    async def directory(self) -> dict[bytes, Announcement]:
        found = (await self.aentries([DIRECTORY_KEY]))[DIRECTORY_KEY]
        out: dict[bytes, Announcement] = {}
        for _, entry in found:
            if entry.kind == "swarm":
                best = out.get(entry.swarm)
                if best is None or (entry.value.step, entry.value.peers) > (best.step, best.peers):
                    out[entry.swarm] = entry.value
        return out
