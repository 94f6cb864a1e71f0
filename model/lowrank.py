"""Low-rank perturbations (``spec.perturbation_rank = r``, SPEC section 5.1), on any device.

A 2-D trainable tensor (m x n) of a low-rank swarm is perturbed and updated along

    z = U V^T / sqrt(r)     U: m x r, V: n x r, entries +-1 from the tensor's Rademacher stream

(LOZO-style: a step explores r directions of rows and r of columns per matrix instead of all
m*n elements independently; every element still has mean 0 and variance 1, so eps and lr keep
their meaning). The matrix product needs no care to be exact: every product of factors is +-1,
so every partial sum of a row-column dot product is an integer of magnitude <= r, which float32
holds exactly whatever the summation order, blocking, split-K or TF32 input rounding of the
kernel (+-1 is exact in TF32); the scale 1/sqrt(r) is a power of two (r is a power of 4). So
z is the same float32 on every CPU and GPU, and the update arithmetic of SPEC 10.5 applies to
it unchanged: each product and sum below is a separate float32 operation (torch never fuses
two element-wise ops into a multiply-add), weights of 16 bits are rounded back after every term.

Cost per term: (m + n) * r hashed signs and an m x n x r product, then the element-wise
update; for the small r allowed (<= 64) the product is cheaper than hashing m*n signs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..protocol.distributions import RADEMACHER, lowrank_scale
from .perturb import Term, working_dtype, z_at, z_reference


def factors(key: int, shape: tuple[int, int], rank: int, device: torch.device | str = "cpu",
            rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, V) of the tensor with stream ``key`` as float32 +-1 matrices (U only at ``rows``, if given)."""
    m, n = shape
    if rows is None:
        u = z_reference(RADEMACHER, key, 0, m * rank, device).view(m, rank)
    else:
        idx = rows.to(device=device, dtype=torch.int64).unsqueeze(1) * rank + torch.arange(rank, device=device)
        u = z_at(RADEMACHER, key, idx)
    v = z_reference(RADEMACHER, key, m * rank, n * rank, device).view(n, rank)
    return u, v


def z_matrix(key: int, shape: tuple[int, int], rank: int, device: torch.device | str = "cpu",
             rows: torch.Tensor | None = None) -> torch.Tensor:
    """z of the whole m x n tensor (or of its ``rows``), float32, exact (see module docstring)."""
    u, v = factors(key, shape, rank, device, rows)
    z = u @ v.T
    return z if rank == 1 else z.mul_(lowrank_scale(rank))


def _scalar(x: float, like: torch.Tensor) -> torch.Tensor:
    """A float32 constant (SPEC: coef and decay are float32) in the working dtype of ``like``."""
    return torch.tensor(x, dtype=torch.float32).to(device=like.device, dtype=like.dtype)


def _updated(v: torch.Tensor, terms: Sequence[Term], rank: int, shape: tuple[int, int], narrow: torch.dtype | None,
             rows: torch.Tensor | None = None) -> torch.Tensor:
    """v (working dtype, written in place) after ``terms``: v = v*d, then v = v + coef*z, each rounded."""
    for t in terms:
        if t.decay != 1.0:  # x * 1.0 == x for every float: skipping it changes no bit
            v.mul_(_scalar(t.decay, v))
        v.add_(z_matrix(t.key, shape, rank, v.device, rows).to(v.dtype).mul_(_scalar(t.coef, v)))
        if narrow is not None:
            v.copy_(v.to(narrow))
    return v


def apply(weight: torch.Tensor, terms: Sequence[Term], rank: int, *, perturb: tuple[int, float] | None = None,
          out: torch.Tensor | None = None, out2: torch.Tensor | None = None) -> None:
    """``perturb.apply`` for a 2-D tensor of a low-rank swarm: ``terms`` in place, then optionally
    ``out = theta + c z(key)`` (and ``out2 = theta - c z``) for ``perturb = (key, c)``."""
    if weight.dim() != 2:
        raise ValueError(f"low-rank perturbations are for 2-D tensors, not shape {tuple(weight.shape)}")
    shape = (weight.shape[0], weight.shape[1])
    wd = working_dtype(weight.dtype)
    narrow = weight.dtype if weight.dtype in (torch.bfloat16, torch.float16) else None
    if terms:
        in_place = weight.dtype == wd and weight.is_contiguous()
        v = _updated(weight if in_place else weight.to(wd), terms, rank, shape, narrow)
        if not in_place:
            weight.copy_(v.to(weight.dtype))
    if perturb is not None:
        v = weight.to(wd)
        delta = z_matrix(perturb[0], shape, rank, weight.device).to(wd).mul_(_scalar(perturb[1], v))
        out.view_as(weight).copy_((v + delta).to(out.dtype))
        if out2 is not None:
            out2.view_as(weight).copy_((v - delta).to(out2.dtype))


def perturbed_rows(weight: torch.Tensor, rows: torch.Tensor, key: int, scale: float, rank: int,
                   terms: Sequence[Term] = (), pair: bool = False):
    """``perturb.perturbed_rows`` for a low-rank 2-D tensor (an embedding): its ``rows`` with the
    terms applied, perturbed by +scale*z (and -scale*z with ``pair``); ``weight`` is not written."""
    shape = (weight.shape[0], weight.shape[1])
    wd = working_dtype(weight.dtype)
    narrow = weight.dtype if weight.dtype in (torch.bfloat16, torch.float16) else None
    v = _updated(weight[rows].to(wd), terms, rank, shape, narrow, rows)
    delta = z_matrix(key, shape, rank, weight.device, rows).to(wd).mul_(_scalar(scale, v))
    if pair:
        return (v + delta).to(weight.dtype), (v - delta).to(weight.dtype)
    return (v + delta).to(weight.dtype)
