"""Weight digests: one SHA-256 over every parameter, in a device-independent canonical form.

For each parameter, sorted by name (tied parameters once, under their first name)::

    utf8(name) || 0x00 || utf8(dtype) || 0x00 || u32le ndim || u64le dims... || raw little-endian bytes
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable

import torch
from torch import nn


def tensor_bytes(t: torch.Tensor) -> memoryview:
    t = t.detach().to("cpu").contiguous()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.view(torch.int16)
    return memoryview(t.numpy()).cast("B")


def tensors_digest(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """The digest of named tensors (a model's parameters, or a checkpoint file's tensors)."""
    h = hashlib.sha256()
    for name, p in sorted(named, key=lambda item: item[0]):
        h.update(name.encode() + b"\0" + str(p.dtype).removeprefix("torch.").encode() + b"\0")
        h.update(struct.pack(f"<I{p.dim()}Q", p.dim(), *p.shape))
        h.update(tensor_bytes(p))
    return h.hexdigest()


def weight_digest(model: nn.Module) -> str:
    return tensors_digest(model.named_parameters())
