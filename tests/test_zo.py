"""The SPSA estimator: points along the true gradient, restores weights exactly, works on real architectures."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import TEXTS, tiny_bert, tiny_causal
from seedswarm.model.digest import weight_digest
from seedswarm.model.perturb import z_reference
from seedswarm.model.tasks import PRESETS, build_task
from seedswarm.model.zo import ZerothOrder
from seedswarm.protocol.distributions import GAUSSIAN, RADEMACHER
from seedswarm.protocol.hashing import tensor_key
from seedswarm.protocol.spec import TaskRef


def z_vector(zo: ZerothOrder, seed: int) -> torch.Tensor:
    return torch.cat([z_reference(zo.dist, tensor_key(seed, t.name_id), 0, t.param.numel()) for t in zo.tensors])


def autograd_gradient(model, zo, loss_fn) -> torch.Tensor:
    model.zero_grad()
    with torch.enable_grad():
        loss_fn().backward()
    return torch.cat([(t.param.grad if t.param.grad is not None else torch.zeros_like(t.param)).reshape(-1) for t in zo.tensors])


@pytest.mark.parametrize("dist", [RADEMACHER, GAUSSIAN])
def test_averaged_spsa_estimate_points_along_the_autograd_gradient(dist):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    x, y = torch.randn(32, 8, dtype=torch.float64), torch.randint(0, 3, (32,))
    loss_fn = lambda: F.cross_entropy(model(x), y)  # noqa: E731
    zo = ZerothOrder(model, dist)
    true = autograd_gradient(model, zo, loss_fn)
    samples = 3000
    estimate = torch.zeros_like(true)
    for seed in range(samples):
        g, _, _ = zo.projected_gradient(loss_fn, seed, 1e-4)
        estimate += g * z_vector(zo, seed).double() / samples
    cosine = F.cosine_similarity(estimate, true, dim=0).item()
    # E[g z] = grad; with d=195 parameters and 3000 samples the expected cosine is ~0.97
    assert cosine > 0.9, cosine
    assert 0.8 < estimate.norm() / true.norm() < 1.25


def _transformer_cases(tokenizer):
    bert = tiny_bert()
    yield "bert label-prompts", bert, build_task(PRESETS["sentiment"], tokenizer)
    yield "gpt2 label-words", tiny_causal("gpt2"), build_task(PRESETS["sentiment-lm"], tokenizer)
    yield "gpt2 causal-lm", tiny_causal("gpt2", seed=1), build_task(TaskRef("causal-lm", {}), tokenizer)
    yield "llama label-words", tiny_causal("llama"), build_task(PRESETS["sentiment-lm"], tokenizer)


def test_projected_gradient_is_the_directional_derivative_on_transformers(tokenizer):
    """g from two perturbed forwards equals grad . z from autograd, so every tensor (embeddings
    perturbed row-sparsely, tied GPT-2 head, Llama) is perturbed with the right z."""
    for label, model, task in _transformer_cases(tokenizer):
        model = model.double()
        batch = task.collate(TEXTS)
        loss_fn = lambda: task.loss(model, batch)  # noqa: E731
        zo = ZerothOrder(model, RADEMACHER)
        grad = autograd_gradient(model, zo, loss_fn)
        for seed in (1, 2, 3):
            g, _, _ = zo.projected_gradient(loss_fn, seed, 1e-5)
            exact = torch.dot(grad, z_vector(zo, seed).double()).item()
            assert abs(g - exact) <= 1e-4 * max(1.0, abs(exact)), (label, seed, g, exact)
        assert zo._whole_forward == set(), label  # every tensor was reached through its own module


def test_lowrank_projected_gradient_is_the_directional_derivative(tokenizer):
    """spec.perturbation_rank (SPEC 5.1): 2-D tensors (embeddings row-sparsely, and in a paired
    forward) move along U V^T / sqrt(r), the others elementwise; queued updates reach the forward."""
    from seedswarm.model.lowrank import z_matrix

    model = tiny_bert().double()
    task = build_task(PRESETS["sentiment"], tokenizer)
    batch = task.collate(TEXTS)
    loss_fn = lambda: task.loss(model, batch)  # noqa: E731
    zo = ZerothOrder(model, RADEMACHER, rank=4)
    assert {t.rank for t in zo.tensors} == {0, 4}
    zo.queue_update(99, 1e-3)  # pending through the perturbed paths, then compared with a flushed copy
    twin = tiny_bert().double()
    twin_zo = ZerothOrder(twin, RADEMACHER, rank=4)
    twin_zo.queue_update(99, 1e-3)
    twin_zo.flush()
    grad = autograd_gradient(twin, twin_zo, lambda: task.loss(twin, batch))
    for seed in (1,):
        z = torch.cat([(z_matrix(tensor_key(seed, t.name_id), tuple(t.param.shape), t.rank).flatten() if t.rank
                        else z_reference(RADEMACHER, tensor_key(seed, t.name_id), 0, t.param.numel())) for t in zo.tensors])
        exact = torch.dot(grad, z.double()).item()
        for paired in (None, task.paired(model, batch)):
            g, _, _ = zo.projected_gradient(loss_fn, seed, 1e-5, paired)
            assert abs(g - exact) <= 1e-4 * max(1.0, abs(exact)), (seed, paired is not None, g, exact)
    zo.flush()
    assert weight_digest(model) == weight_digest(twin)


def test_weights_are_restored_bit_for_bit(tokenizer):
    model = tiny_bert()
    task = build_task(PRESETS["sentiment"], tokenizer)
    batch = task.collate(TEXTS)
    before = weight_digest(model)
    zo = ZerothOrder(model, RADEMACHER)
    for seed in range(5):
        zo.projected_gradient(lambda: task.loss(model, batch), seed, 1e-3)
    assert weight_digest(model) == before


def test_deferred_updates_equal_eager_updates(tokenizer):
    task = build_task(PRESETS["sentiment"], tokenizer)
    batch = task.collate(TEXTS)
    results = []
    for eager in (True, False):
        model = tiny_bert()
        zo = ZerothOrder(model, RADEMACHER, no_decay=("*bias",))
        losses = []
        for step in range(4):
            g, plus, minus = zo.projected_gradient(lambda: task.loss(model, batch), 100 + step, 1e-3)
            losses.append((plus, minus))
            zo.queue_update(100 + step, -1e-3 * g, decay=0.999)
            if eager:
                zo.flush()
        zo.flush()
        results.append((losses, weight_digest(model)))
    assert results[0] == results[1]


def test_parameters_read_outside_their_module_are_detected_and_perturbed():
    class ParentReadsChildWeight(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Linear(6, 6)
            self.head = nn.Linear(6, 2)

        def forward(self, x):
            return self.head(torch.tanh(F.linear(x, self.inner.weight, self.inner.bias)))

    torch.manual_seed(0)
    model = ParentReadsChildWeight().double()
    x, y = torch.randn(16, 6, dtype=torch.float64), torch.randint(0, 2, (16,))
    loss_fn = lambda: F.cross_entropy(model(x), y)  # noqa: E731
    zo = ZerothOrder(model, RADEMACHER)
    grad = autograd_gradient(model, zo, loss_fn)
    g, _, _ = zo.projected_gradient(loss_fn, 5, 1e-6)
    assert {t.name for t in zo.tensors if id(t) in zo._whole_forward} == {"inner.weight", "inner.bias"}
    assert abs(g - torch.dot(grad, z_vector(zo, 5).double()).item()) < 1e-4


def test_trainable_subsets_leave_frozen_tensors_alone(tokenizer):
    model = tiny_bert()
    frozen_before = {n: p.clone() for n, p in model.named_parameters() if not n.endswith("bias")}
    zo = ZerothOrder(model, RADEMACHER, trainable=("*bias",))
    assert all(t.name.endswith("bias") for t in zo.tensors)
    zo.queue_update(3, 0.5)
    zo.flush()
    assert all(torch.equal(frozen_before[n], p) for n, p in model.named_parameters() if n in frozen_before)
    with pytest.raises(ValueError, match="match no parameter"):
        ZerothOrder(model, RADEMACHER, trainable=("nothing.*",))


def test_paired_forward_gives_the_losses_of_two_perturbed_forwards(tokenizer):
    """One forward over the doubled batch (+eps half, -eps half) equals two perturbed forwards."""
    for label, model, task in _transformer_cases(tokenizer):
        batch = task.collate(TEXTS)
        zo = ZerothOrder(model, RADEMACHER)
        before = weight_digest(model)
        loss_fn = lambda: task.loss(model, batch)  # noqa: E731
        sequential = zo.projected_gradient(loss_fn, 11, 1e-3)  # also runs the owner check
        assert zo._paired_ok is None
        first = zo.projected_gradient(loss_fn, 11, 1e-3, task.paired(model, batch))  # checked against sequential
        assert zo._paired_ok is True, label
        paired = zo.projected_gradient(loss_fn, 11, 1e-3, task.paired(model, batch))
        assert first == sequential
        for a, b in zip(paired[1:], sequential[1:]):
            assert abs(a - b) < 1e-5, (label, paired, sequential)
        assert weight_digest(model) == before


def test_paired_forward_falls_back_for_unknown_modules():
    class Scaled(nn.Module):  # owns a parameter but is not known to treat rows independently
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(4))

        def forward(self, x):
            return x * self.w

    model = nn.Sequential(nn.Linear(4, 4), Scaled())
    x = torch.randn(6, 4)
    zo = ZerothOrder(model, RADEMACHER)
    from seedswarm.model.zo import PairedLoss
    calls = []
    paired = PairedLoss(lambda: calls.append(1) or (model(torch.cat([x, x]))[:6].sum(), model(torch.cat([x, x]))[6:].sum()), 6)
    zo.projected_gradient(lambda: model(x).sum(), 1, 1e-3)
    zo.projected_gradient(lambda: model(x).sum(), 1, 1e-3, paired)
    assert zo._paired_ok is False and calls == []
