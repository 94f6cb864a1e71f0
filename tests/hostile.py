"""A stranger with a valid identity: seedswarm's own transport and DHT, crafted payloads.

Used by the multi-process attack tests. It runs on its own event-loop thread in the test
process; everything it sends goes through real libp2p streams and a real DHT."""

from __future__ import annotations

import asyncio
import tempfile
import threading
from pathlib import Path

from hivemind.p2p import P2P, PeerID
from hivemind.utils import get_dht_time

from seedswarm.peer.checkpoint import checkpoint_protocol
from seedswarm.peer.dht import SwarmDHT, owner_subkey
from seedswarm.peer.identity import load_identity
from seedswarm.peer.transport import Links
from seedswarm.protocol.canonical import pack
from seedswarm.protocol.directory import member_bucket, member_key
from seedswarm.protocol.messages import encode_message


class Hostile:
    def __init__(self, initial_peers: list[str], swarm: bytes) -> None:
        self.swarm = swarm
        self.identity = load_identity(Path(tempfile.mkdtemp(prefix="hostile-")) / "id.key")
        self.signer = self.identity.signer
        self.machine = self.signer.machine
        self.received: list = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.dht = SwarmDHT.start(self.signer, str(self.identity.path), initial_peers=initial_peers)
        self.p2p = self.call(self.dht.replicate_p2p())
        self.links = Links(self.p2p, swarm, self.machine, self.received.append)
        self.call(self.links.start())

    def call(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # --- links ------------------------------------------------------------------------------
    def link(self, peer: bytes) -> None:
        self._loop.call_soon_threadsafe(self.links.connect, peer)

    def linked(self) -> list[bytes]:
        return list(self.links.peers)

    def send(self, peer: bytes, message) -> None:
        self._loop.call_soon_threadsafe(self.links.send, peer, message)

    def send_raw(self, peer: bytes, frame: bytes, length: int | None = None) -> None:
        """A frame of our choosing on a fresh link stream (bypassing the encoder)."""

        async def go():
            try:
                _, _, writer = await self.p2p.call_binary_stream_handler(PeerID(peer), self.links.name)
                writer.write((len(frame) if length is None else length).to_bytes(P2P.HEADER_LEN, P2P.BYTEORDER) + frame)
                await writer.drain()
                await asyncio.sleep(0.5)
                writer.close()
            except Exception:
                pass

        asyncio.run_coroutine_threadsafe(go(), self._loop)

    # --- the DHT ------------------------------------------------------------------------------
    def store_member(self, payload: object, bucket: int | None = None) -> bool:
        """A properly signed member entry whose payload is whatever we like."""
        value = pack(["ss2", "member", self.swarm, payload])
        key = member_key(self.swarm, member_bucket(self.machine) if bucket is None else bucket)
        return self.call(self.dht.astore(key, value, ttl=120))

    def store_unsigned_as(self, victim: bytes, payload: object) -> bool:
        """An entry under another peer's marked subkey, without its signature."""
        value = pack(["ss2", "member", self.swarm, payload])
        key = member_key(self.swarm, member_bucket(victim))
        try:
            return bool(self.dht.dht.store(key, value, get_dht_time() + 120, subkey=owner_subkey(victim)))
        except Exception:
            return False

    # --- a checkpoint server that serves what it likes -----------------------------------------
    def serve_checkpoint(self, file: Path, step: int, digest_hex: str) -> None:
        async def handler(info, reader, writer):
            try:
                await reader.readexactly(P2P.HEADER_LEN)
                data = file.read_bytes()
                await P2P.send_raw_data(pack({"step": step, "digest": digest_hex, "size": len(data)}), writer)
                for i in range(0, len(data), 1 << 16):
                    await P2P.send_raw_data(data[i:i + (1 << 16)], writer)
                await P2P.send_raw_data(b"", writer)
            except Exception:
                pass
            finally:
                writer.close()

        self.call(self.p2p.add_binary_stream_handler(checkpoint_protocol(self.swarm), handler))

    def close(self) -> None:
        async def stop():
            await self.links.close()
            await self.p2p.shutdown()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        try:
            self.call(stop(), timeout=20)
        except Exception:
            pass
        self.dht.shutdown()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


__all__ = ["Hostile", "encode_message"]
