"""The DHT adapter (peer/dht.py): the Ed25519 entry validator, and the two functions that reach
into hivemind's private API, pinned to the hivemind version they were written for."""

import dataclasses
from functools import partial

import hivemind
import pytest
from hivemind.dht.routing import DHTID
from hivemind.dht.validation import DHTRecord
from hivemind.utils import MSGPackSerializer, get_dht_time

from seedswarm.peer.dht import HIVEMIND_TESTED, Ed25519EntryValidator, SwarmDHT, _store_near, decode_found, owner_subkey
from seedswarm.peer.identity import load_identity
from seedswarm.protocol import Signer
from seedswarm.protocol.directory import MemberInfo, encode_entry, member_bucket, member_key

SWARM = bytes(range(32))
A, B = Signer(bytes([1]) * 32), Signer(bytes([2]) * 32)


def test_the_private_api_reach_is_pinned_to_the_hivemind_it_was_written_for():
    """_store_near and _get_many use node.protocol, routing_table.buckets, call_store and storage:
    private hivemind API. If this fails, re-check them against the new version, then update
    HIVEMIND_TESTED and pyproject's pin together."""
    assert hivemind.__version__ == HIVEMIND_TESTED
    from hivemind.dht.node import DHTNode
    from hivemind.dht.protocol import DHTProtocol

    assert hasattr(DHTProtocol, "call_store") and hasattr(DHTNode, "get_many")


def record(signer: Signer, value: bytes, key: str = "k", expiration: float = 1e9, subkey: bytes | None = None) -> DHTRecord:
    return DHTRecord(DHTID.generate(source=key).to_bytes(), MSGPackSerializer.dumps(subkey or owner_subkey(signer.machine)),
                     MSGPackSerializer.dumps(value), expiration)


def test_only_the_owner_can_write_its_entries():
    mine, theirs = Ed25519EntryValidator(A), Ed25519EntryValidator(B)
    rec = record(A, b"hello")
    signed = mine.sign_value(rec)
    assert signed != rec.value and mine.validate(dataclasses.replace(rec, value=signed))
    assert theirs.validate(dataclasses.replace(rec, value=signed))  # anyone can check it
    assert mine.strip_value(dataclasses.replace(rec, value=signed)) == rec.value
    # B cannot write under A's subkey: it has no signature of A's to show
    assert theirs.sign_value(rec) == rec.value and not theirs.validate(rec)
    forged = dataclasses.replace(rec, value=rec.value + signed[len(rec.value):])
    assert mine.validate(forged)  # (A's own signature of A's own value)
    for tampered in (dataclasses.replace(rec, value=MSGPackSerializer.dumps(b"other") + signed[len(rec.value):]),
                     dataclasses.replace(rec, value=signed, expiration_time=2e9),  # extended past what A signed
                     dataclasses.replace(rec, value=signed, key=DHTID.generate(source="elsewhere").to_bytes())):
        assert not mine.validate(tampered)


def test_entries_of_other_applications_are_left_alone():
    validator = Ed25519EntryValidator(A)
    rec = record(A, b"theirs", subkey=b"plain subkey")
    assert validator.validate(rec) and validator.sign_value(rec) == rec.value


@pytest.mark.slow
@pytest.mark.parametrize("bucket_size", [20, 1], ids=["direct-to-replicas", "hivemind-crawl"])
def test_an_entry_stored_by_one_node_is_read_and_verified_by_another(tmp_path, bucket_size):
    ids = [load_identity(tmp_path / f"{name}.key") for name in ("a", "b")]
    a = SwarmDHT.start(ids[0].signer, str(ids[0].path), host_maddrs=["/ip4/127.0.0.1/tcp/0"], bucket_size=bucket_size)
    b = SwarmDHT.start(ids[1].signer, str(ids[1].path), host_maddrs=["/ip4/127.0.0.1/tcp/0"], initial_peers=a.maddrs(),
                       bucket_size=bucket_size)
    try:
        info = MemberInfo(step=7, status="training", name="a")
        key = member_key(SWARM, member_bucket(ids[0].machine_id))
        stored = a.dht.run_coroutine(partial(_store_near, key=key, subkey=a.subkey,
                                             value=encode_entry("member", SWARM, info), expiration=get_dht_time() + 60))
        assert stored
        import asyncio

        members = asyncio.run(b.members(SWARM, [member_bucket(ids[0].machine_id)]))
        assert members == {ids[0].machine_id: info}
        # an entry under the wrong key (a member entry under another bucket) is refused on read
        wrong = member_key(SWARM, (member_bucket(ids[0].machine_id) + 1) % 64)
        a.dht.run_coroutine(partial(_store_near, key=wrong, subkey=a.subkey, value=encode_entry("member", SWARM, info),
                                    expiration=get_dht_time() + 60))
        found = b.dht.get(wrong, latest=True)
        entries, refused = decode_found(wrong, found)
        assert entries == [] and refused == 1
    finally:
        b.shutdown()
        a.shutdown()


async def _stored_subkeys(_dht, node, key: str) -> set:
    """The subkeys this one node keeps under ``key`` (its local storage, no network)."""
    item = node.protocol.storage.get(DHTID.generate(source=key))
    return set() if item is None else {subkey for subkey, _ in item.value.items()}


async def _node_id(_dht, node) -> tuple[DHTID, int]:
    return node.node_id, node.num_replicas


@pytest.mark.slow
def test_the_spec_and_directory_caps_hold_across_nodes_and_reads_find_every_entry(tmp_path):
    """Ten peers joined in a chain publish the spec one after another, smallest machine id
    first: each reads before it writes, so exactly SPEC_COPIES write (and say so: a store
    that reached other nodes only used to report False, hivemind answering a protobuf
    repeated field where a list was expected), no node anywhere holds more copies, and the
    key's nearest nodes (found by the same crawl as the read) hold every copy."""
    import asyncio

    from seedswarm.peer.demo import default_spec
    from seedswarm.protocol.directory import ANNOUNCERS, DIRECTORY_KEY, SPEC_COPIES, Announcement, spec_key

    idents = [load_identity(tmp_path / f"{i}.key") for i in range(10)]
    nodes: list[SwarmDHT] = []
    try:
        for ident in idents:
            nodes.append(SwarmDHT.start(ident.signer, str(ident.path), host_maddrs=["/ip4/127.0.0.1/tcp/0"],
                                        initial_peers=nodes[-1].maddrs() if nodes else ()))
        spec = default_spec()
        written = [node for node in sorted(nodes, key=lambda n: n.signer.machine)
                   if asyncio.run(node.publish_spec(spec))]
        assert len(written) == SPEC_COPIES
        stored = [n.dht.run_coroutine(partial(_stored_subkeys, key=spec_key(spec.swarm_id))) for n in nodes]
        held = set().union(*stored)
        assert len(held) == SPEC_COPIES
        # the one crawl before each write found the key's nearest nodes: each of them holds every copy
        key_id = DHTID.generate(source=spec_key(spec.swarm_id))
        ids = [n.dht.run_coroutine(_node_id) for n in nodes]  # (node id, num_replicas)
        nearest = sorted(range(len(nodes)), key=lambda i: key_id.xor_distance(ids[i][0]))[: ids[0][1]]
        assert all(stored[i] == held for i in nearest), (nearest, stored)
        assert asyncio.run(nodes[0].fetch_spec(spec.swarm_id)) == spec
        # the directory's cap holds the same way, and reads (a beam of num_replicas nodes, not
        # hivemind's 20) find every member entry and every announcement wherever they were stored
        swarm = spec.swarm_id
        ann = Announcement("test", "m", "t", 1, len(nodes))
        announced = [n for n in sorted(nodes, key=lambda n: n.signer.machine) if asyncio.run(n.announce(swarm, ann))]
        assert len(announced) == ANNOUNCERS
        for n in nodes:
            assert asyncio.run(n.register(swarm, MemberInfo(step=1, addrs=tuple(n.maddrs())[:4]), ttl=60))
        for reader in (nodes[0], nodes[-1]):
            assert set(asyncio.run(reader.members(swarm))) == {n.signer.machine for n in nodes}
            assert set(asyncio.run(reader.directory())) == {swarm}
        listed = asyncio.run(nodes[3].aentries([DIRECTORY_KEY]))[DIRECTORY_KEY]
        assert sorted(owner for owner, _ in listed) == sorted(n.signer.machine for n in announced)
    finally:
        for node in nodes:
            node.shutdown()
