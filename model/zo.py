"""The SPSA (MeZO) estimator on a live model, with exact restore and deferred updates.

MeZO's trainer has four functions: perturb, forward, step, update. They map here to

- ``perturbed(seed, scale)``  - a context in which the model computes with theta + scale*z(seed);
- ``projected_gradient``      - two perturbed forwards: g = (L(theta+eps z) - L(theta-eps z)) / 2 eps;
- ``queue_update``            - theta <- theta*decay + coef*z(seed), deferred until theta is next read;
- ``flush``                   - materialise deferred updates (before eval, digests, saving).

Two departures from MeZO make the estimator exact and cheaper:

1. The stored weights are never perturbed in place. A forward pre-hook on each module that
   owns trainable tensors writes theta + scale*z into a scratch buffer and points the
   parameter at it for that module's forward only; the post-hook points it back. Restoring
   is a pointer swap, so theta comes back bit for bit (MeZO's +eps, -2eps, +eps walk does not),
   and the extra memory is one module's tensors. Perturbations are generated twice per step.
2. Updates are queued per tensor and applied by the next pre-hook in the same memory pass
   that writes the perturbed copy (update and perturbation fused, as ZO2 does), so a
   training step costs two passes over the weights instead of MeZO's four regenerations.

A tensor whose owning module is never called (a parameter read directly by a parent) is
detected on the first perturbed forward, which is then recomputed with that tensor
swapped for the whole forward instead.
"""

from __future__ import annotations

import fnmatch
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from ..protocol.hashing import tensor_id, tensor_key
from .perturb import Term, apply, perturbed_rows

#: Queued updates an embedding may hold before they are applied to all its rows in one pass.
ROW_LAZY_FLUSH = 8


@dataclass(eq=False)
class TrainableTensor:
    name: str
    param: nn.Parameter
    name_id: int
    decay: bool
    pending: list[Term] = field(default_factory=list)

    @property
    def flat(self) -> torch.Tensor:
        return self.param.data.view(-1)


def select_parameters(model: nn.Module, include: Sequence[str], exclude: Sequence[str] = ()) -> list[tuple[str, nn.Parameter]]:
    """Named parameters (deduplicated, in model order) matching an include glob and no exclude glob."""
    chosen = [
        (name, p) for name, p in model.named_parameters()
        if any(fnmatch.fnmatchcase(name, pat) for pat in include) and not any(fnmatch.fnmatchcase(name, pat) for pat in exclude)
    ]
    if not chosen:
        names = [n for n, _ in model.named_parameters()]
        raise ValueError(f"trainable patterns {list(include)} (minus {list(exclude)}) match no parameter; some names: {names[:6]}")
    return chosen


class _BufferPool:
    """Scratch buffers for perturbed copies, reused by size so a step allocates nothing."""

    def __init__(self) -> None:
        self._free: dict[tuple, list[torch.Tensor]] = defaultdict(list)

    def take(self, like: torch.Tensor) -> torch.Tensor:
        key = (like.numel(), like.dtype, like.device)
        return self._free[key].pop() if self._free[key] else torch.empty(like.numel(), dtype=like.dtype, device=like.device)

    def give(self, buf: torch.Tensor) -> None:
        self._free[(buf.numel(), buf.dtype, buf.device)].append(buf)


class ZerothOrder:
    """Perturb, estimate and update the trainable tensors of ``model`` in place."""

    def __init__(
        self,
        model: nn.Module,
        dist: str,
        trainable: Sequence[str] = ("*",),
        frozen: Sequence[str] = (),
        no_decay: Sequence[str] = (),
    ) -> None:
        self.model = model
        self.dist = dist
        self.tensors = [
            TrainableTensor(name, p, tensor_id(name), not any(fnmatch.fnmatchcase(name, pat) for pat in no_decay))
            for name, p in select_parameters(model, trainable, frozen)
        ]
        by_param = {id(t.param): t for t in self.tensors}
        self._owned: dict[nn.Module, list[TrainableTensor]] = {}
        for module in model.modules():
            own = [by_param[id(p)] for p in module._parameters.values() if p is not None and id(p) in by_param]
            if own:
                self._owned[module] = own
        self._whole_forward: set[int] = set()  # ids of tensors perturbed for the whole forward
        self._checked = False
        self._pool = _BufferPool()

    @property
    def numel(self) -> int:
        return sum(t.param.numel() for t in self.tensors)

    # --- perturb ------------------------------------------------------------------------------
    def _swap_in(self, tensors: Sequence[TrainableTensor], seed: int, scale: float) -> list:
        swapped = []
        for t in tensors:
            buf = self._pool.take(t.param)
            apply(t.flat, t.pending, self.dist, perturb=(tensor_key(seed, t.name_id), scale), out=buf)
            t.pending.clear()
            swapped.append((t, t.param.data, buf))
            t.param.data = buf.view_as(t.param)
        return swapped

    def _swap_out(self, swapped: list) -> None:
        for t, original, buf in reversed(swapped):
            t.param.data = original
            self._pool.give(buf)

    def _perturb_rows(self, t: TrainableTensor, ids: torch.Tensor, seed: int, scale: float) -> tuple:
        """Embedding lookups read only the rows of their input ids. Those rows are brought up to
        date and perturbed on the fly and written in place for the lookup (the originals are put
        back after), so a step touches a few hundred rows instead of the whole vocabulary. Queued
        updates stay queued for the other rows and are applied densely every ROW_LAZY_FLUSH."""
        if len(t.pending) >= ROW_LAZY_FLUSH:
            apply(t.flat, t.pending, self.dist)
            t.pending.clear()
        rows = torch.unique(ids.reshape(-1))
        original = t.param.data[rows].clone()
        t.param.data[rows] = perturbed_rows(t.param.data, rows, self.dist, tensor_key(seed, t.name_id), scale, t.pending)
        return t, rows, original

    @staticmethod
    def _restore_rows(restore: tuple) -> None:
        t, rows, original = restore
        t.param.data[rows] = original

    @staticmethod
    def _row_sparse(module: nn.Module, args: tuple) -> bool:
        return (
            type(module) is nn.Embedding and module.max_norm is None and len(args) == 1
            and isinstance(args[0], torch.Tensor) and not args[0].is_floating_point()
        )

    @contextmanager
    def perturbed(self, seed: int, scale: float) -> Iterator[set[int]]:
        """Inside, every trainable tensor reads as theta + scale * z(seed); theta itself is untouched.

        Yields the set of ids of tensors that were actually perturbed (filled as modules run).
        """
        touched: set[int] = set()
        active: dict[nn.Module, list] = {}

        def pre_hook(module, args):
            if module in active:  # re-entrant call: already perturbed
                return
            tensors = [t for t in self._owned[module] if id(t) not in self._whole_forward]
            if tensors and self._row_sparse(module, args):
                active[module] = ("rows", self._perturb_rows(tensors[0], args[0], seed, scale))
            else:
                active[module] = ("swap", self._swap_in(tensors, seed, scale))
            touched.update(id(t) for t in tensors)

        def restore(entry):
            how, state = entry
            if how == "rows":
                self._restore_rows(state)
            else:
                self._swap_out(state)

        def post_hook(module, args, output):
            if module in active:
                restore(active.pop(module))

        whole = [t for t in self.tensors if id(t) in self._whole_forward]
        handles = []
        swapped_whole = []
        try:
            swapped_whole = self._swap_in(whole, seed, scale)
            touched.update(id(t) for t in whole)
            for module in self._owned:
                handles.append(module.register_forward_pre_hook(pre_hook))
                handles.append(module.register_forward_hook(post_hook, always_call=True))
            yield touched
        finally:
            for h in handles:
                h.remove()
            for entry in active.values():
                restore(entry)
            self._swap_out(swapped_whole)

    # --- forward & step -----------------------------------------------------------------------
    def perturbed_loss(self, loss_fn: Callable[[], torch.Tensor], seed: int, scale: float) -> float:
        with torch.no_grad():
            with self.perturbed(seed, scale) as touched:
                loss = float(loss_fn())
            if not self._checked:
                self._checked = True
                missed = {id(t) for t in self.tensors} - touched
                if missed:  # some tensors are read outside their module's forward: redo
                    self._whole_forward = missed
                    with self.perturbed(seed, scale):
                        loss = float(loss_fn())
        return loss

    def projected_gradient(self, loss_fn: Callable[[], torch.Tensor], seed: int, eps: float) -> tuple[float, float, float]:
        """SPSA along z(seed): returns (g, loss at +eps, loss at -eps)."""
        plus = self.perturbed_loss(loss_fn, seed, eps)
        minus = self.perturbed_loss(loss_fn, seed, -eps)
        return (plus - minus) / (2 * eps), plus, minus

    # --- update -------------------------------------------------------------------------------
    def queue_update(self, seed: int, coef: float, decay: float = 1.0) -> None:
        """theta <- theta*decay + coef*z(seed) for every trainable tensor (decay only where it applies)."""
        for t in self.tensors:
            t.pending.append(Term(tensor_key(seed, t.name_id), coef, decay if t.decay else 1.0))

    def flush(self) -> None:
        """Apply every queued update now."""
        for t in self.tensors:
            if t.pending:
                with torch.no_grad():
                    apply(t.flat, t.pending, self.dist)
                t.pending.clear()

    @property
    def pending(self) -> int:
        return max((len(t.pending) for t in self.tensors), default=0)
