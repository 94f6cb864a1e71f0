"""Checkpoints on disk and over libp2p streams.

A checkpoint is ``ckpt-<step>.safetensors`` (every parameter, as ``named_parameters()`` names
them; metadata: step, digest, swarm id) plus ``ckpt-<step>.json``; both are written to a
temporary name, fsynced and renamed, so a crash or a full disk never leaves a half file under
a real name, and a failed write removes its temporary file. ``step`` is the number of steps
sealed. Reading never trusts a file: ``load_checkpoint`` checks names, shapes and dtypes, and
the caller checks the weight digest, falling back to an older checkpoint.

Stream ``seedswarm/2/checkpoint/<swarm hex>``: the client sends msgpack ``{"step": k}`` (or
``{"offset": o, "step": k}`` to continue a transfer that was cut: relayed connections end
after 128 KiB); the server answers a header ``{"step", "digest", "size"}`` (or ``{"error"}``),
then the file from byte ``o`` in frames of at most 64 KiB, then an empty frame. The client
writes to a temporary file, checks the size, and the caller checks the digest before anything
is used.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from pathlib import Path

import torch
from hivemind.p2p import P2P
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..model.digest import tensors_digest
from ..protocol.canonical import pack, unpack_canonical
from ..protocol.errors import ProtocolError
from ..protocol.ledger import DiskWriteError, write_atomically
from .transport import read_frame

_NAME = re.compile(r"ckpt-(\d{8})\.safetensors$")
CHUNK = 1 << 16
MAX_CHECKPOINT_BYTES = 64 << 30
KEEP = 3


#: checkpoints served recently -> when (monotonic): rotation keeps them for PIN_SECONDS, so a
#: newcomer downloading in parts (through a relay) is not cut off by the next checkpoint
_SERVED: dict[Path, float] = {}
PIN_SECONDS = 600.0


def _pinned(path: Path) -> bool:
    served = _SERVED.get(Path(path).resolve())
    return served is not None and time.monotonic() - served < PIN_SECONDS


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used (missing, truncated, corrupt, wrong model)."""


def checkpoint_protocol(swarm: bytes) -> str:
    return f"seedswarm/2/checkpoint/{swarm.hex()}"


def checkpoint_path(folder: Path, step: int) -> Path:
    return Path(folder) / f"ckpt-{step:08d}.safetensors"


def save_checkpoint(folder: str | os.PathLike, model: nn.Module, step: int, digest: str, swarm_id: bytes,
                    keep: int = KEEP) -> Path:
    """Write a checkpoint atomically; older ones beyond ``keep`` go (step 0, the base, stays).
    Raises DiskWriteError (nothing half-written left behind) when the disk refuses."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(folder, step)
    tmp = path.with_name(path.name + ".tmp")
    tensors = {name: p.detach().to("cpu").contiguous() for name, p in model.named_parameters()}
    try:
        save_file(tensors, str(tmp), metadata={"step": str(step), "digest": digest, "swarm_id": swarm_id.hex()})
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, SafetensorError) as exc:
        tmp.unlink(missing_ok=True)
        raise DiskWriteError(getattr(exc, "errno", None) or 28, f"cannot write checkpoint {path}: {exc}") from None
    write_atomically(path.with_suffix(".json"),
                     json.dumps({"step": step, "digest": digest, "swarm_id": swarm_id.hex()}).encode())
    for old_step, old in list_checkpoints(folder)[:-keep]:
        if old_step and not _pinned(old):
            old.unlink(missing_ok=True)
            old.with_suffix(".json").unlink(missing_ok=True)
    return path


def list_checkpoints(folder: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of checkpoints with both files present, oldest first (not yet verified)."""
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
    """The checkpoint's {step, digest, swarm_id}; CheckpointError if unreadable or malformed."""
    try:
        meta = json.loads(Path(path).with_suffix(".json").read_text())
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: JSON nested too deep
        raise CheckpointError(f"{path.with_suffix('.json')}: unreadable ({exc})") from None
    if not (isinstance(meta, dict) and type(meta.get("step")) is int and isinstance(meta.get("digest"), str)
            and len(meta["digest"]) == 64 and isinstance(meta.get("swarm_id"), str)):
        raise CheckpointError(f"{path.with_suffix('.json')}: not a checkpoint description")
    return meta


def read_checkpoint(path: str | os.PathLike, model: nn.Module) -> tuple[dict[str, torch.Tensor], str]:
    """A checkpoint's tensors, checked against ``model``'s parameters (names, shapes, dtypes),
    and their weight digest; the model is not touched. CheckpointError for a truncated,
    corrupt or foreign file."""
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: cannot be read as safetensors ({exc})") from None
    params = dict(model.named_parameters())
    if set(tensors) != set(params):
        raise CheckpointError(f"{path} does not hold this model's parameters")
    for name, p in params.items():
        if tensors[name].shape != p.shape or tensors[name].dtype != p.dtype:
            raise CheckpointError(f"{path}: tensor {name} has the wrong shape or dtype")
    return tensors, tensors_digest(tensors.items())


def load_checkpoint(path: str | os.PathLike, model: nn.Module, digest: str | None = None) -> str:
    """Copy a checkpoint's tensors into ``model`` if they hash to ``digest`` (when given);
    returns their digest. CheckpointError otherwise, with the model unchanged."""
    tensors, found = read_checkpoint(path, model)
    if digest is not None and found != digest:
        raise CheckpointError(f"{path}: its weights do not hash to the expected digest")
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(tensors[name])
    return found


# --- streams ------------------------------------------------------------------------------------
async def serve_checkpoint(folder: Path, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    request = unpack_canonical(await read_frame(reader, 64), 64, "checkpoint request")
    if type(request) is not dict or not set(request) <= {"step", "offset"} or "step" not in request:
        raise ProtocolError("bad checkpoint request")
    step, offset = request["step"], request.get("offset", 0)
    if type(step) is not int or step < 0 or type(offset) is not int or offset < 0 or ("offset" in request and not offset):
        raise ProtocolError("bad checkpoint request")
    path = checkpoint_path(folder, step)
    try:
        meta = checkpoint_meta(path)
        size = path.stat().st_size
    except (CheckpointError, OSError):
        await P2P.send_raw_data(pack({"error": f"no checkpoint of step {step}"}), writer)
        return
    _SERVED[path.resolve()] = time.monotonic()
    if offset >= size:
        await P2P.send_raw_data(pack({"error": f"offset {offset} is past the checkpoint's {size} bytes"}), writer)
        return
    await P2P.send_raw_data(pack({"step": meta["step"], "digest": meta["digest"], "size": size}), writer)
    with open(path, "rb") as f:
        f.seek(offset)
        while chunk := f.read(CHUNK):
            await P2P.send_raw_data(chunk, writer)
    await P2P.send_raw_data(b"", writer)


def part_path(dest: Path) -> Path:
    """Where a download to ``dest`` keeps what has arrived so far."""
    return dest.with_name(dest.name + ".part")


class TransferCut(ProtocolError):
    """The stream ended early; ``received`` bytes of the file are in the ``.part`` file, and a
    new request with that offset continues (a relayed connection carries at most 128 KiB)."""

    def __init__(self, message: str, header: dict, received: int) -> None:
        super().__init__(message)
        self.header, self.received = header, received


async def receive_checkpoint(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, step: int, dest: Path,
                             resume: dict | None = None) -> dict:
    """Ask for the checkpoint of ``step``, write it to ``dest``; returns its header. ProtocolError
    for a refused or malformed transfer (the partial file is removed); TransferCut for a stream
    that ended early (the partial file is kept: pass ``resume=`` its header to continue)."""
    tmp = part_path(dest)
    offset = tmp.stat().st_size if resume is not None and tmp.exists() else 0
    await P2P.send_raw_data(pack({"step": step, "offset": offset} if offset else {"step": step}), writer)
    header = unpack_canonical(await read_frame(reader, 4096), 4096, "checkpoint header")
    if type(header) is dict and set(header) == {"error"}:
        raise ProtocolError(f"the peer has no checkpoint of step {step}")
    if not (type(header) is dict and set(header) == {"step", "digest", "size"} and header["step"] == step
            and isinstance(header["digest"], str) and type(header["size"]) is int
            and 0 < header["size"] <= MAX_CHECKPOINT_BYTES):
        raise ProtocolError("bad checkpoint header")
    if offset and header != resume:  # another file than the one we have the start of
        tmp.unlink(missing_ok=True)
        raise ProtocolError("the checkpoint changed between two parts of the transfer")
    received = offset
    try:
        with open(tmp, "ab" if offset else "wb") as f:
            try:
                while chunk := await read_frame(reader, CHUNK):
                    received += len(chunk)
                    if received > header["size"]:
                        raise ProtocolError("checkpoint stream longer than announced")
                    f.write(chunk)
            except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
                f.flush()
                raise TransferCut(f"the stream ended after {received} of {header['size']} bytes ({exc})",
                                  header, received) from None
        if received != header["size"]:
            raise ProtocolError("checkpoint stream shorter than announced")
        os.replace(tmp, dest)
    except TransferCut:
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return header
