"""Checkpoints on disk and over libp2p streams.

A checkpoint is ``ckpt-<step>.safetensors`` (every parameter, as ``named_parameters()``
names them) plus ``ckpt-<step>.json`` ({step, digest, swarm_id}); both are written to a
temporary name and renamed, so a crash never leaves a half checkpoint under a real name.
``step`` is the number of steps sealed, i.e. the weights after steps 0..step-1.

Streams (hivemind P2P binary streams, frames as hivemind's ``send_raw_data``):

- ``seedswarm.checkpoint/1/<swarm>``: the server sends a msgpack header {step, digest, size}
  then the safetensors file in 64 KiB frames, then an empty frame. The client checks the
  size and then the weight digest before it uses anything.
- ``seedswarm.ledger/1/<swarm>``: the client sends msgpack {since}; the server sends the
  encoded records with step >= since, one per frame, then an empty frame.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path

import msgpack
import torch
from hivemind.p2p import P2P
from safetensors.torch import load_file, save_file
from torch import nn

from ..protocol.errors import ProtocolError
from ..protocol.records import MAX_RECORD_BYTES, decode_record

_NAME = re.compile(r"ckpt-(\d{8})\.safetensors$")
CHUNK = 1 << 16
MAX_CHECKPOINT_BYTES = 64 << 30
KEEP = 3


def checkpoint_stream(swarm: bytes) -> str:
    return f"seedswarm.checkpoint/1/{swarm.hex()}"


def ledger_stream(swarm: bytes) -> str:
    return f"seedswarm.ledger/1/{swarm.hex()}"


def push_stream(swarm: bytes) -> str:
    """A peer pushes its record for a step to each live peer: one frame, the encoded record."""
    return f"seedswarm.push/1/{swarm.hex()}"


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().to("cpu").contiguous() for name, p in model.named_parameters()}


def save_checkpoint(folder: str | os.PathLike, model: nn.Module, step: int, digest: str, swarm_id: bytes) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"ckpt-{step:08d}.safetensors"
    tmp = path.with_suffix(".tmp")
    save_file(_tensors(model), str(tmp), metadata={"step": str(step), "digest": digest, "swarm_id": swarm_id.hex()})
    os.replace(tmp, path)
    meta = path.with_suffix(".json")
    tmp = meta.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"step": step, "digest": digest, "swarm_id": swarm_id.hex()}))
    os.replace(tmp, meta)
    for step, old in list_checkpoints(folder)[:-KEEP]:
        if step:  # the base weights (step 0) stay: every rebuild can start from them
            old.unlink(missing_ok=True)
            old.with_suffix(".json").unlink(missing_ok=True)
    return path


def list_checkpoints(folder: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of complete checkpoints, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _NAME.match(path.name)
        if match and path.with_suffix(".json").exists():
            found.append((int(match.group(1)), path))
    return sorted(found)


def checkpoint_meta(path: Path) -> dict:
    return json.loads(path.with_suffix(".json").read_text())


def load_checkpoint(path: str | os.PathLike, model: nn.Module) -> None:
    """Copy a checkpoint's tensors into ``model`` (names and shapes must match exactly)."""
    tensors = load_file(str(path))
    params = dict(model.named_parameters())
    if set(tensors) != set(params):
        raise ProtocolError(f"checkpoint {path} does not have this model's parameters")
    with torch.no_grad():
        for name, p in params.items():
            if tensors[name].shape != p.shape or tensors[name].dtype != p.dtype:
                raise ProtocolError(f"checkpoint tensor {name} has the wrong shape or dtype")
            p.copy_(tensors[name])


# --- streams ------------------------------------------------------------------------------------
async def read_frame(reader: asyncio.StreamReader, limit: int) -> bytes:
    """One length-prefixed frame (hivemind's framing), refusing frames over ``limit`` bytes
    before reading them, so a hostile peer cannot make us allocate what it announces."""
    header = await reader.readexactly(P2P.HEADER_LEN)
    length = int.from_bytes(header, P2P.BYTEORDER)
    if length > limit:
        raise ProtocolError(f"stream frame of {length} bytes exceeds {limit}")
    return await reader.readexactly(length)


async def serve_checkpoint(path: Path, meta: dict, writer: asyncio.StreamWriter) -> None:
    size = path.stat().st_size
    await P2P.send_raw_data(msgpack.packb({"step": meta["step"], "digest": meta["digest"], "size": size}), writer)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            await P2P.send_raw_data(chunk, writer)
    await P2P.send_raw_data(b"", writer)


async def receive_checkpoint(reader: asyncio.StreamReader, dest: Path) -> dict:
    """Write a streamed checkpoint to ``dest``; returns its header. Raises ProtocolError on a bad stream."""
    header = msgpack.unpackb(await read_frame(reader, 4096), raw=False)
    if not (isinstance(header, dict) and type(header.get("step")) is int and isinstance(header.get("digest"), str)
            and type(header.get("size")) is int and 0 < header["size"] <= MAX_CHECKPOINT_BYTES):
        raise ProtocolError("bad checkpoint header")
    received = 0
    tmp = dest.with_suffix(".part")
    with open(tmp, "wb") as f:
        while chunk := await read_frame(reader, CHUNK):
            received += len(chunk)
            if received > header["size"]:
                raise ProtocolError("checkpoint stream longer than announced")
            f.write(chunk)
    if received != header["size"]:
        raise ProtocolError("checkpoint stream shorter than announced")
    os.replace(tmp, dest)
    return header


async def serve_ledger(records_since, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    request = msgpack.unpackb(await read_frame(reader, 256), raw=False)
    since = request.get("since", 0) if isinstance(request, dict) else 0
    since = since if type(since) is int and since >= 0 else 0
    for record in records_since(since):
        await P2P.send_raw_data(record.encode(), writer)
    await P2P.send_raw_data(b"", writer)


async def receive_ledger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, since: int, limit: int = 10_000_000):
    await P2P.send_raw_data(msgpack.packb({"since": since}), writer)
    records = []
    while frame := await read_frame(reader, MAX_RECORD_BYTES):
        if len(records) >= limit:
            raise ProtocolError("ledger stream has too many records")
        records.append(decode_record(frame))
    return records
