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

from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from ..protocol import globs
from ..protocol.hashing import tensor_id, tensor_key
from . import lowrank
from .perturb import MAX_TERMS_PER_PASS, Term, apply, perturbed_rows

#: Queued updates an embedding may hold before they are applied to all its rows in one pass.
ROW_LAZY_FLUSH = 8


@dataclass
class PairedLoss:
    """A loss that evaluates both perturbations in one forward: ``losses()`` runs the model on a
    batch doubled along dim 0 (two copies of ``half`` rows each) and returns the loss of each copy.
    Tasks provide one through ``Task.paired``."""

    losses: Callable[[], tuple[torch.Tensor, torch.Tensor]]
    half: int


class _NotPairable(Exception):
    """A module's inputs or outputs cannot be split into the two halves of a paired batch."""


#: Modules whose forward treats rows of dim 0 independently; a model whose trainable tensors
#: all live in such modules can run paired. Matched by class name (suffix for norms).
_ROW_INDEPENDENT = {"Linear", "Embedding", "LayerNorm", "Conv1D", "NonDynamicallyQuantizableLinear"}


def _row_independent(module: nn.Module) -> bool:
    name = type(module).__name__
    return name in _ROW_INDEPENDENT or name.endswith(("RMSNorm", "LayerNorm"))


def _split(value, half: int):
    if isinstance(value, torch.Tensor) and value.dim() > 0:
        rows = value.shape[0]
        if rows == 1:  # broadcast over the batch (e.g. position ids): same input for both halves
            return value, value
        if rows % 2:
            raise _NotPairable(f"input with {rows} rows cannot be split in two halves")
        return value[: rows // 2], value[rows // 2 :]
    if isinstance(value, (torch.Tensor, int, float, bool, str, type(None))):
        return value, value
    raise _NotPairable(f"cannot split an input of type {type(value).__name__}")


def _split_inputs(args, kwargs, half):
    pairs = [_split(a, half) for a in args]
    kw = {k: _split(v, half) for k, v in kwargs.items()}
    return ((tuple(p[0] for p in pairs), {k: v[0] for k, v in kw.items()}),
            (tuple(p[1] for p in pairs), {k: v[1] for k, v in kw.items()}))


def _merge_outputs(a, b, half: int):
    if isinstance(a, torch.Tensor):
        if a.dim() > 0 and a.shape[0] == 1 and half > 1:  # outputs of broadcast inputs: one row per half
            a, b = a.expand(half, *a.shape[1:]), b.expand(half, *b.shape[1:])
        return torch.cat([a, b], dim=0)
    if isinstance(a, tuple) and type(a) is tuple:
        return tuple(_merge_outputs(x, y, half) for x, y in zip(a, b))
    raise _NotPairable(f"cannot merge outputs of type {type(a).__name__}")


@dataclass(eq=False)
class TrainableTensor:
    name: str
    param: nn.Parameter
    name_id: int
    decay: bool
    pending: list[Term] = field(default_factory=list)
    rank: int = 0  # > 0: a 2-D tensor of a low-rank swarm (z = U V^T / sqrt(rank), model/lowrank.py)

    _array: tuple = (None, None)  # (data_ptr, numpy view) for the CPU kernel's hot path

    @property
    def flat(self) -> torch.Tensor:
        return self.param.data.view(-1)

    def array(self):
        """A cached numpy view of the weights (valid while the storage stays the same)."""
        ptr = self.param.data.data_ptr()
        if self._array[0] != ptr:
            self._array = (ptr, self.param.data.view(-1).numpy())
        return self._array[1]


def select_parameters(model: nn.Module, include: Sequence[str], exclude: Sequence[str] = ()) -> list[tuple[str, nn.Parameter]]:
    """Named parameters (deduplicated, in model order) matching an include glob and no exclude glob."""
    chosen = [
        (name, p) for name, p in model.named_parameters()
        if globs.matches_any(name, include) and not globs.matches_any(name, exclude)
    ]
    if not chosen:
        names = [n for n, _ in model.named_parameters()]
        raise ValueError(f"trainable patterns {list(include)} (minus {list(exclude)}) match no parameter; some names: {names[:6]}")
    return chosen


class _BufferPool:
    """Scratch buffers for perturbed copies, reused by size so a step allocates nothing.
    Each is handed out with its numpy view (None off the CPU)."""

    def __init__(self) -> None:
        self._free: dict[tuple, list[tuple]] = defaultdict(list)

    def take(self, like: torch.Tensor) -> tuple[torch.Tensor, object]:
        free = self._free[(like.numel(), like.dtype, like.device)]
        if free:
            return free.pop()
        buf = torch.empty(like.numel(), dtype=like.dtype, device=like.device)
        return buf, buf.numpy() if buf.device.type == "cpu" and buf.dtype == torch.float32 else None

    def give(self, entry: tuple) -> None:
        buf = entry[0]
        self._free[(buf.numel(), buf.dtype, buf.device)].append(entry)


class ZerothOrder:
    """Perturb, estimate and update the trainable tensors of ``model`` in place."""

    def __init__(
        self,
        model: nn.Module,
        dist: str,
        trainable: Sequence[str] = ("*",),
        frozen: Sequence[str] = (),
        no_decay: Sequence[str] = (),
        rank: int = 0,
    ) -> None:
        """``rank`` > 0: 2-D tensors are perturbed along rank-``rank`` sign matrices (spec
        ``perturbation_rank``, SPEC 5.1); other tensors along elementwise ``dist``."""
        self.model = model
        self.dist = dist
        self.tensors = [
            TrainableTensor(name, p, tensor_id(name), not globs.matches_any(name, no_decay), rank=rank if p.dim() == 2 else 0)
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
        self._paired_ok: bool | None = None  # None: not yet checked against sequential forwards
        self._plan_cache: dict | None = None
        self._pool = _BufferPool()
        from . import kernels_cpu

        self._cpu_kernels = kernels_cpu if kernels_cpu.available() else None

    @property
    def numel(self) -> int:
        return sum(t.param.numel() for t in self.tensors)

    # --- perturb ------------------------------------------------------------------------------
    def _swap_in(self, tensors: Sequence[TrainableTensor], seed: int, scale: float) -> list:
        swapped = []
        for t in tensors:
            entry = self._pool.take(t.param)
            buf, buf_array = entry
            perturb = (tensor_key(seed, t.name_id), scale)
            if t.rank:
                self._apply(t, t.pending, perturb=perturb, out=buf)
            elif self._cpu_kernels and buf_array is not None and len(t.pending) <= MAX_TERMS_PER_PASS and t.param.is_contiguous():
                self._cpu_kernels.apply_arrays(t.array(), buf_array, t.pending, self.dist, perturb)
            else:
                apply(t.flat, t.pending, self.dist, perturb=perturb, out=buf)
            t.pending.clear()
            swapped.append((t, t.param.data, entry))
            t.param.data = buf.view_as(t.param)
        return swapped

    def _swap_out(self, swapped: list) -> None:
        for t, original, entry in reversed(swapped):
            t.param.data = original
            self._pool.give(entry)

    def _perturb_rows(self, t: TrainableTensor, ids: torch.Tensor, seed: int, scale: float) -> tuple:
        """Embedding lookups read only the rows of their input ids. Those rows are brought up to
        date and perturbed on the fly and written in place for the lookup (the originals are put
        back after), so a step touches a few hundred rows instead of the whole vocabulary. Queued
        updates stay queued for the other rows and are applied densely every ROW_LAZY_FLUSH."""
        if len(t.pending) >= ROW_LAZY_FLUSH:
            self._apply(t, t.pending)
            t.pending.clear()
        rows = torch.unique(ids.reshape(-1))
        original = t.param.data[rows].clone()
        t.param.data[rows] = self._rows(t, rows, tensor_key(seed, t.name_id), scale)
        return t, rows, original

    def _apply(self, t: TrainableTensor, terms: Sequence[Term], perturb: tuple[int, float] | None = None,
               out: torch.Tensor | None = None, out2: torch.Tensor | None = None) -> None:
        """``perturb.apply`` on one tensor, low-rank or elementwise as the tensor is."""
        if t.rank:
            lowrank.apply(t.param.data, terms, t.rank, perturb=perturb, out=out, out2=out2)
        else:
            apply(t.flat, terms, self.dist, perturb=perturb, out=out, out2=out2)

    def _rows(self, t: TrainableTensor, rows: torch.Tensor, key: int, scale: float, pair: bool = False):
        """``perturb.perturbed_rows`` on one tensor (its pending terms applied on the fly)."""
        if t.rank:
            return lowrank.perturbed_rows(t.param.data, rows, key, scale, t.rank, t.pending, pair)
        return perturbed_rows(t.param.data, rows, self.dist, key, scale, t.pending, pair)

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

    def _plans(self) -> dict[nn.Module, list[TrainableTensor]]:
        """Per hooked module, the tensors its pre-hook perturbs (all but the whole-forward ones)."""
        if self._plan_cache is None:
            self._plan_cache = {}
            for module, owned in self._owned.items():
                tensors = [t for t in owned if id(t) not in self._whole_forward]
                if tensors:
                    self._plan_cache[module] = tensors
        return self._plan_cache

    @contextmanager
    def perturbed(self, seed: int, scale: float) -> Iterator[set[int]]:
        """Inside, every trainable tensor reads as theta + scale * z(seed); theta itself is untouched.

        Yields the set of ids of tensors that were actually perturbed (filled as modules run).
        """
        touched: set[int] = set()
        active: dict[nn.Module, tuple] = {}
        plans = self._plans()
        track = not self._checked

        def pre_hook(module, args):
            if module in active:  # re-entrant call: already perturbed
                return
            tensors = plans[module]
            if self._row_sparse(module, args):
                active[module] = (True, self._perturb_rows(tensors[0], args[0], seed, scale))
            else:
                active[module] = (False, self._swap_in(tensors, seed, scale))
            if track:
                touched.update(id(t) for t in tensors)

        def restore(entry):
            rows, state = entry
            if rows:
                self._restore_rows(state)
            else:
                self._swap_out(state)

        def post_hook(module, args, output):
            entry = active.pop(module, None)
            if entry is not None:
                restore(entry)

        whole = [t for t in self.tensors if id(t) in self._whole_forward]
        handles = []
        swapped_whole = []
        try:
            swapped_whole = self._swap_in(whole, seed, scale)
            touched.update(id(t) for t in whole)
            for module in plans:
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
                    self._plan_cache = None
                    with self.perturbed(seed, scale):
                        loss = float(loss_fn())
        return loss

    def projected_gradient(
        self, loss_fn: Callable[[], torch.Tensor], seed: int, eps: float, paired: PairedLoss | None = None
    ) -> tuple[float, float, float]:
        """SPSA along z(seed): returns (g, loss at +eps, loss at -eps).

        With ``paired`` (see ``PairedLoss``) both losses come from one forward over a doubled
        batch when the model allows it; otherwise from two perturbed forwards of ``loss_fn``.
        """
        if paired is not None and self._paired_ok is not False and self._checked and not self._whole_forward:
            pair = self._paired_losses(paired, seed, eps, loss_fn)
            if pair is not None:
                plus, minus = pair
                return (plus - minus) / (2 * eps), plus, minus
        plus = self.perturbed_loss(loss_fn, seed, eps)
        minus = self.perturbed_loss(loss_fn, seed, -eps)
        return (plus - minus) / (2 * eps), plus, minus

    # --- paired forward -----------------------------------------------------------------------
    def _paired_losses(self, paired: PairedLoss, seed: int, eps: float, loss_fn) -> tuple[float, float] | None:
        """Both losses from one forward, or None if this model cannot run paired (then never again).

        The first paired evaluation is checked against two ordinary perturbed forwards."""
        if self._paired_ok is None:
            unknown = sorted({type(m).__name__ for m in self._plans() if not _row_independent(m)})
            if unknown:
                self._paired_ok = False
                return None
        try:
            with torch.no_grad(), self.paired(seed, eps, paired.half):
                plus, minus = (float(v) for v in paired.losses())
        except _NotPairable:
            self._paired_ok = False
            return None
        if self._paired_ok is None:
            sequential = (self.perturbed_loss(loss_fn, seed, eps), self.perturbed_loss(loss_fn, seed, -eps))
            self._paired_ok = all(abs(a - b) <= 1e-4 * max(1.0, abs(b)) for a, b in zip((plus, minus), sequential))
            return sequential
        return plus, minus

    @contextmanager
    def paired(self, seed: int, eps: float, half: int) -> Iterator[None]:
        """Inside, the model computes a doubled batch: rows [0, half) with theta + eps z(seed) and
        rows [half, 2 half) with theta - eps z(seed).

        Each module owning trainable tensors runs twice, once per half and sign, while everything
        else (attention, activations, norms without parameters, the Python of the model) runs
        once for both; the two perturbed copies come from one read of theta."""
        replaced = []
        try:
            for module, tensors in self._plans().items():
                replaced.append((module, module.__dict__.get("forward")))
                module.forward = self._paired_forward(module, tensors, seed, eps, half)
            yield
        finally:
            for module, previous in replaced:
                if previous is None:
                    del module.forward
                else:
                    module.forward = previous

    def _paired_forward(self, module: nn.Module, tensors: list[TrainableTensor], seed: int, eps: float, half: int):
        forward = module.forward

        def paired_forward(*args, **kwargs):
            (args1, kwargs1), (args2, kwargs2) = _split_inputs(args, kwargs, half)
            if self._row_sparse(module, args):
                use_plus, use_minus, restore = self._paired_rows(tensors[0], args[0], seed, eps)
            else:
                use_plus, use_minus, restore = self._paired_swaps(tensors, seed, eps)
            try:
                use_plus()
                out_plus = forward(*args1, **kwargs1)
                use_minus()
                out_minus = forward(*args2, **kwargs2)
            finally:
                restore()
            return _merge_outputs(out_plus, out_minus, half)

        return paired_forward

    def _paired_swaps(self, tensors: list[TrainableTensor], seed: int, eps: float):
        """Both perturbed copies of each tensor from one pass; callables to swap them in and back."""
        swaps = []
        for t in tensors:
            plus, minus = self._pool.take(t.param), self._pool.take(t.param)
            self._apply(t, t.pending, perturb=(tensor_key(seed, t.name_id), eps), out=plus[0], out2=minus[0])
            t.pending.clear()
            swaps.append((t, t.param.data, plus, minus))

        def use(which: int):
            def swap_in():
                for t, _, plus, minus in swaps:
                    t.param.data = (plus, minus)[which][0].view_as(t.param)
            return swap_in

        def restore():
            for t, original, plus, minus in swaps:
                t.param.data = original
                self._pool.give(plus)
                self._pool.give(minus)

        return use(0), use(1), restore

    def _paired_rows(self, t: TrainableTensor, ids: torch.Tensor, seed: int, eps: float):
        """The row-sparse embedding path of ``_perturb_rows``, with both signs."""
        if len(t.pending) >= ROW_LAZY_FLUSH:
            self._apply(t, t.pending)
            t.pending.clear()
        rows = torch.unique(ids.reshape(-1))
        original = t.param.data[rows].clone()
        plus, minus = self._rows(t, rows, tensor_key(seed, t.name_id), eps, pair=True)

        def put(values):
            return lambda: t.param.data.__setitem__(rows, values)

        return put(plus), put(minus), put(original)

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
                    self._apply(t, t.pending)
                t.pending.clear()

    def discard_pending(self) -> None:
        """Drop queued updates (the weights are about to be replaced, e.g. by a checkpoint)."""
        for t in self.tensors:
            t.pending.clear()

    @property
    def pending(self) -> int:
        return max((len(t.pending) for t in self.tensors), default=0)
