"""Links: long-lived framed libp2p streams to overlay neighbours (hivemind's P2P streams).

A link is one bidirectional libp2p stream under the protocol name ``seedswarm/2/link/<swarm
hex>``, opened by either side and kept for as long as both want it; every frame is an 8-byte
big-endian length and one message (protocol/messages.py). libp2p authenticates the remote
peer id of the stream, which is the only thing ``Received.peer`` ever says.

- At most one link per neighbour: when both sides dial at once, the stream dialed by the
  smaller machine id wins on both sides.
- Frames over ``MAX_MESSAGE_BYTES`` are refused before they are read; a frame that does not
  decode becomes a ``Malformed`` event (the core counts it against the neighbour).
- Each link has a bounded outbox drained by its own writer task: a neighbour that does not
  read is dropped, never waited for by the event loop.
- Behind NAT a link may start on a relayed connection (circuit relay v2). p2pd's DCUtR then
  tries to punch a direct one; a dial that finds only a relayed connection waits up to
  ``PUNCH_WAIT`` for it, so that the long-lived link stream opens on the direct connection
  (a stream stays on the connection it was opened on). ``paths`` says which each link took.

Checkpoints travel on their own streams (``seedswarm/2/checkpoint/<swarm hex>``, see
peer/checkpoint.py): one request, the file in chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from hivemind.p2p import P2P, PeerID

from ..protocol.errors import ProtocolError
from ..protocol.messages import MAX_MESSAGE_BYTES, Message, decode_message, encode_message
from .core.events import LinkDown, LinkUp, Malformed, Received
from .reach import BinaryMaddr

logger = logging.getLogger("seedswarm.transport")

OUTBOX_FRAMES = 4096
DIAL_TIMEOUT = 15.0
MAX_DIAL_ADDRS = 8
PUNCH_WAIT = 3.0   # seconds a dial waits for hole punching to add a direct connection to a relayed one


def _dial_error(exc: BaseException) -> str:
    """A dial failure in a few words (p2pd's message lists every address it tried)."""
    if isinstance(exc, asyncio.TimeoutError):
        return f"no answer in {DIAL_TIMEOUT:g} s"
    text = str(exc).replace("\n", " ")
    return text[:160] or type(exc).__name__


def path_of(addr: object) -> str:
    """"relay" for a stream or connection through a circuit relay, else "direct"."""
    return "relay" if "p2p-circuit" in str(addr) else "direct"


def link_protocol(swarm: bytes) -> str:
    return f"seedswarm/2/link/{swarm.hex()}"


async def read_frame(reader: asyncio.StreamReader, limit: int) -> bytes:
    """One length-prefixed frame, refusing frames over ``limit`` bytes before reading them."""
    header = await reader.readexactly(P2P.HEADER_LEN)
    length = int.from_bytes(header, P2P.BYTEORDER)
    if length > limit:
        raise ProtocolError(f"frame of {length} bytes exceeds {limit}")
    return await reader.readexactly(length)


async def write_frame(writer: asyncio.StreamWriter, frame: bytes) -> None:
    """One length-prefixed frame in one write. hivemind's ``P2P.send_raw_data`` writes the
    8-byte length and the payload separately, and p2pd often sends them as two yamux frames,
    each with its own yamux header and Noise length and tag (30 bytes): measured on loopback,
    44 bytes of transport per 158-byte frame that way, 30 in one write."""
    writer.write(len(frame).to_bytes(P2P.HEADER_LEN, P2P.BYTEORDER) + frame)
    await writer.drain()


@dataclass(eq=False)
class _Link:
    peer: bytes
    dialed_by_me: bool
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    outbox: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(OUTBOX_FRAMES))
    tasks: list[asyncio.Task] = field(default_factory=list)
    closed: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Links:
    """The node's links. ``emit(event)`` receives LinkUp / LinkDown / Received / Malformed."""

    def __init__(self, p2p: P2P, swarm: bytes, me: bytes, emit: Callable[[object], None],
                 addresses: Callable[[bytes], list[str]] | None = None,
                 on_path: Callable[[bytes, str], None] | None = None) -> None:
        self.p2p, self.swarm, self.me, self.emit = p2p, swarm, me, emit
        self.addresses = addresses  # a peer's published dial addresses (its member entry), if known
        self.on_path = on_path      # told "relay" or "direct" for each new link
        self.paths: dict[bytes, str] = {}  # how each live link travels
        self._unpunched: set[bytes] = set()  # peers a wait for hole punching did not get a direct connection to
        self.failures: dict[bytes, str] = {}  # the last dial error of each peer we could not link to
        self.name = link_protocol(swarm)
        self._links: dict[bytes, _Link] = {}
        self._dialing: set[bytes] = set()
        self._tasks: set[asyncio.Task] = set()
        self.sent_frames = 0
        self.sent_bytes = 0
        self._closing = False

    async def start(self) -> None:
        await self.p2p.add_binary_stream_handler(self.name, self._inbound)

    def connect(self, peer: bytes) -> None:
        if peer in self._links or peer in self._dialing or peer == self.me or self._closing:
            return
        self._dialing.add(peer)
        self._spawn(self._dial(peer))

    def disconnect(self, peer: bytes) -> None:
        link = self._links.get(peer)
        if link is not None:
            self._close(link, announce=False)

    def send(self, peer: bytes, message: Message) -> None:
        link = self._links.get(peer)
        if link is None or link.closed:
            return
        frame = encode_message(message)
        try:
            link.outbox.put_nowait(frame)
        except asyncio.QueueFull:
            logger.info("dropping neighbour %s: it does not read its frames", PeerID(peer))
            self._close(link, announce=True)

    @property
    def peers(self) -> list[bytes]:
        return list(self._links)

    async def close(self) -> None:
        """Flush what is queued (briefly), then close every link."""
        self._closing = True
        links = list(self._links.values())
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(link.outbox.join() for link in links)), timeout=2.0)
        for link in links:
            self._close(link, announce=False)
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await self.p2p.remove_binary_stream_handler(self.name)

    # --- internals ------------------------------------------------------------------------
    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def connect_published(self, peer: bytes) -> None:
        """Connect through the addresses the peer published (direct ones and circuits through
        its relays): a peer behind NAT is reachable only through those, and p2pd knows no
        address of it otherwise. Uses hivemind's p2p client (private API: P2P has no connect)."""
        addrs = []
        for text in (self.addresses(peer) if self.addresses else [])[:MAX_DIAL_ADDRS]:
            try:
                addrs.append(BinaryMaddr(text))
            except ValueError:  # published by a stranger: skip what does not parse
                continue
        if addrs:
            await asyncio.wait_for(self.p2p._client.connect(PeerID(peer), addrs), DIAL_TIMEOUT)

    async def connection_paths(self, peer: bytes) -> set[str]:
        """How p2pd is connected to ``peer`` now: a subset of {"relay", "direct"}."""
        target = PeerID(peer)
        return {path_of(addr) for info in await self.p2p.list_peers() if info.peer_id == target for addr in info.addrs}

    async def await_direct(self, peer: bytes, wait: float = PUNCH_WAIT) -> None:
        """While we hold only a relayed connection to ``peer``, give hole punching up to ``wait``
        seconds to add a direct one (p2pd starts DCUtR when the relayed connection is made).
        Once a wait for a peer ended without one, later dials to it do not wait: where punching
        cannot work (too few observers, a NAT that resets), re-dials stay as quick as before."""
        if peer in self._unpunched:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while (paths := await self.connection_paths(peer)) == {"relay"} and loop.time() < deadline:
            await asyncio.sleep(0.25)
        if paths == {"relay"}:
            self._unpunched.add(peer)

    async def _dial(self, peer: bytes) -> None:
        try:
            with contextlib.suppress(Exception):  # a failed connect still leaves p2pd's own addresses to try
                await self.connect_published(peer)
            with contextlib.suppress(Exception):
                await self.await_direct(peer)
            if peer in self._links:  # its own dial reached us meanwhile: one stream is enough
                return
            info, reader, writer = await asyncio.wait_for(
                self.p2p.call_binary_stream_handler(PeerID(peer), self.name), DIAL_TIMEOUT)
        except Exception as exc:
            logger.debug("could not link to %s: %r", PeerID(peer), exc)
            self.failures[peer] = _dial_error(exc)
            return
        finally:
            self._dialing.discard(peer)
        self.failures.pop(peer, None)
        link = self._register(peer, True, reader, writer, path_of(info.addr))
        if link is not None:
            await link.done.wait()

    async def _inbound(self, info, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = self._register(info.peer_id.to_bytes(), False, reader, writer, path_of(info.addr))
        if link is not None:
            await link.done.wait()  # the stream lives as long as this handler runs

    def _register(self, peer: bytes, dialed_by_me: bool, reader, writer, path: str = "direct") -> _Link | None:
        if self._closing or peer == self.me:
            writer.close()
            return None
        existing = self._links.get(peer)
        if existing is not None:
            preferred = dialed_by_me == (self.me < peer)  # the stream dialed by the smaller id wins
            if not preferred:
                writer.close()
                return None
            self._close(existing, announce=False, replaced=True)
        link = _Link(peer, dialed_by_me, reader, writer)
        self._links[peer] = link
        self.paths[peer] = path
        if self.on_path is not None:
            self.on_path(peer, path)
        link.tasks = [self._spawn(self._read_loop(link)), self._spawn(self._write_loop(link))]
        if existing is None:
            self.emit(LinkUp(peer))
        return link

    async def _read_loop(self, link: _Link) -> None:
        try:
            while True:
                frame = await read_frame(link.reader, MAX_MESSAGE_BYTES)
                try:
                    message = decode_message(frame)
                except ProtocolError as exc:
                    self.emit(Malformed(link.peer, str(exc)))
                    continue
                self.emit(Received(link.peer, message))
        except ProtocolError as exc:  # an oversized frame: the stream cannot be resynchronised
            self.emit(Malformed(link.peer, str(exc)))
        except (asyncio.IncompleteReadError, ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            self._close(link, announce=True)

    async def _write_loop(self, link: _Link) -> None:
        try:
            while True:
                frame = await link.outbox.get()
                try:
                    await write_frame(link.writer, frame)
                    self.sent_frames += 1
                    self.sent_bytes += len(frame) + P2P.HEADER_LEN
                finally:
                    link.outbox.task_done()
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            self._close(link, announce=True)

    def _close(self, link: _Link, announce: bool, replaced: bool = False) -> None:
        if link.closed:
            return
        link.closed = True
        current = asyncio.current_task()
        for task in link.tasks:
            if task is not current:
                task.cancel()
        with contextlib.suppress(Exception):
            link.writer.close()
        while not link.outbox.empty():  # nothing will drain it now
            link.outbox.get_nowait()
            link.outbox.task_done()
        link.done.set()
        if self._links.get(link.peer) is link:
            del self._links[link.peer]
            self.paths.pop(link.peer, None)
            if not replaced and not self._closing:
                self.emit(LinkDown(link.peer))
