"""seedswarm's DHT store (peer/node.py `_store_near`): signed values sent straight to the
nearest replicas while the routing table knows the whole DHT, hivemind's crawling store
beyond one k-bucket. Either way another node reads a value it verifies as the owner's."""

from functools import partial

import pytest
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.routing import DHTID
from hivemind.utils import get_dht_time

from seedswarm.peer.dhtschema import Heartbeat, decode_entry, encode_heartbeat, peers_key, validators
from seedswarm.peer.identity import load_identity
from seedswarm.peer.node import _get_many, _store_near
from seedswarm.peer.process import ReapedDHT

pytestmark = pytest.mark.slow
SWARM = bytes(range(32))


async def _held_locally(dht, node, key):
    """Runs in the DHT process: does this node itself hold a replica of the key?"""
    return node.protocol.storage.get(DHTID.generate(source=key)) is not None


@pytest.mark.parametrize("bucket_size", [20, 1], ids=["direct-to-replicas", "hivemind-crawl"])
def test_a_stored_heartbeat_reaches_another_node_signed_by_its_owner(tmp_path, bucket_size):
    ids = [load_identity(tmp_path / f"{name}.key") for name in ("a", "b")]
    a = ReapedDHT(host_maddrs=["/ip4/127.0.0.1/tcp/0"], identity_path=str(ids[0].path), record_validators=validators(ids[0]),
                  bucket_size=bucket_size, start=True)
    b = ReapedDHT(initial_peers=a.get_visible_maddrs(), host_maddrs=["/ip4/127.0.0.1/tcp/0"], identity_path=str(ids[1].path),
                  record_validators=validators(ids[1]), bucket_size=bucket_size, start=True)
    try:
        key = peers_key(SWARM)
        owner = RSASignatureValidator(ids[0].private_key).local_public_key
        value = encode_heartbeat(SWARM, Heartbeat(step=7, status="training", name="a"))
        stored = a.run_coroutine(partial(_store_near, key=key, subkey=owner, value=value, expiration=get_dht_time() + 60))
        assert stored
        assert b.run_coroutine(partial(_held_locally, key=key))  # b validated a's signature and kept a replica
        found = b.run_coroutine(partial(_get_many, keys=[key], latest=True))[key]
        entries = [decode_entry(key, subkey, item.value) for subkey, item in found.value.items()]
        assert [(o, d.value.step, d.value.name) for o, d in entries] == [(ids[0].machine_id, 7, "a")]
    finally:
        b.shutdown()
        a.shutdown()
