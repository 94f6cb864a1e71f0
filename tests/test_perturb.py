"""Perturbations: fast paths equal the reference bit for bit; z depends only on (key, index)."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from seedswarm.model import kernels_cpu
from seedswarm.model.perturb import MAX_TERMS_PER_PASS, Term, apply, apply_reference, perturbed_rows, z_reference
from seedswarm.protocol.distributions import GAUSSIAN, RADEMACHER, z_value

DISTS = [RADEMACHER, GAUSSIAN]


def terms(n, salt=0):
    return [Term(key=(0x9E3779B97F4A7C15 * (k + 1 + salt)) % 2**64, coef=1e-3 * (k + 1) * (-1) ** k, decay=1.0 - 1e-4 * (k % 3))
            for k in range(n)]


@pytest.mark.parametrize("dist", DISTS)
def test_reference_z_matches_pure_python(dist):
    key = 0xDEADBEEF12345678
    assert z_reference(dist, key, 60, 200).tolist() == [z_value(dist, key, i) for i in range(60, 260)]


@pytest.mark.parametrize("dist", DISTS)
@pytest.mark.parametrize("n,offset,nterms", [(1, 0, 1), (63, 1, 2), (64, 64, 3), (1000, 37, 5), (70_001, 129, 2),
                                              (4096 * 3 + 5, 4093, MAX_TERMS_PER_PASS + 3)])
def test_numba_kernel_is_bit_identical_to_reference(dist, n, offset, nterms):
    assert kernels_cpu.available()
    torch.manual_seed(n)
    x = torch.randn(n)
    a, ao, ao2 = x.clone(), torch.empty(n), torch.empty(n)
    b, bo, bo2 = x.clone(), torch.empty(n), torch.empty(n)
    apply_reference(a, terms(nterms), dist, perturb=(99, 1e-3), out=ao, offset=offset, out2=ao2)
    apply(b, terms(nterms), dist, perturb=(99, 1e-3), out=bo, offset=offset, out2=bo2)
    assert torch.equal(a, b) and torch.equal(ao, bo) and torch.equal(ao2, bo2)
    assert not torch.equal(a, x)
    c, co = x.clone(), torch.empty(n)  # the minus copy is exactly the copy perturbed by -c
    apply(c, terms(nterms), dist, perturb=(99, -1e-3), out=co, offset=offset)
    assert torch.equal(co, bo2)


@pytest.mark.parametrize("dist", DISTS)
def test_same_seed_same_z_whatever_the_chunking_or_order(dist):
    torch.manual_seed(0)
    x = torch.randn(20_000)
    whole = x.clone()
    apply(whole, terms(3), dist)
    cuts = [0, 1, 63, 64, 65, 4095, 4097, 12_345, 20_000]
    pieces = list(zip(cuts, cuts[1:]))
    for order in (pieces, pieces[::-1]):
        chunked = x.clone()
        for lo, hi in order:
            apply(chunked[lo:hi], terms(3), dist, offset=lo)
        assert torch.equal(whole, chunked)


@pytest.mark.parametrize("dist", DISTS)
def test_weight_dtypes_are_widened_and_rounded_back(dist):
    torch.manual_seed(1)
    for dtype in (torch.bfloat16, torch.float16):
        x = torch.randn(300).to(dtype)
        out = torch.empty_like(x)
        y = x.clone()
        apply(y, terms(2), dist, perturb=(5, 0.05), out=out)
        v = x.float()
        for t in terms(2):
            v = v * torch.tensor(t.decay, dtype=torch.float32)
            v = v + z_reference(dist, t.key, 0, 300) * torch.tensor(t.coef, dtype=torch.float32)
            v = v.to(dtype).float()  # rounded back after every term
        assert y.dtype == dtype and torch.equal(y, v.to(dtype))
        assert torch.equal(out, (v + z_reference(dist, 5, 0, 300) * torch.tensor(0.05)).to(dtype))
        # so how terms are batched (each replica's own flush schedule) does not matter
        one_by_one = x.clone()
        for t in terms(2):
            apply(one_by_one, [t], dist)
        assert torch.equal(one_by_one, y)


@pytest.mark.parametrize("dist", DISTS)
@pytest.mark.parametrize("width", [24, 64, 100])
@pytest.mark.parametrize("nterms", [0, 3])
def test_perturbed_rows_equal_the_dense_update_and_perturbation(dist, width, nterms):
    torch.manual_seed(2)
    w = torch.randn(50, width)
    before = w.clone()
    dense, updated = torch.empty(w.numel()), w.view(-1).clone()
    apply(updated, terms(nterms), dist, perturb=(77, 1e-2), out=dense)
    rows = torch.tensor([0, 3, 49, 7])
    fast = perturbed_rows(w, rows, dist, 77, 1e-2, terms(nterms))
    reference = perturbed_rows(w.double(), rows, dist, 77, 1e-2, terms(nterms))  # float64: the torch path
    assert torch.equal(fast, dense.view(50, width)[rows])
    assert torch.allclose(reference.float(), fast, rtol=0, atol=1e-6)
    assert torch.equal(w, before)  # the weight itself is not written


@pytest.mark.parametrize("dist", DISTS)
def test_distribution_moments(dist):
    z = z_reference(dist, 12345, 0, 400_000).double()
    assert abs(z.mean()) < 0.01 and abs(z.var() - 1) < 0.01
    if dist == GAUSSIAN:
        assert 2.9 < ((z**4).mean()) < 3.1  # kurtosis of a normal
    else:
        assert set(z.unique().tolist()) == {-1.0, 1.0}


TRITON_CHECK = textwrap.dedent("""
    import torch
    from seedswarm.model import kernels_cuda
    from seedswarm.model.perturb import Term, apply_reference
    assert kernels_cuda.available()
    terms = [Term(key=(1 << 63) + 17 * k, coef=1e-2 * (k + 1) * (-1) ** k, decay=1.0 - 1e-3 * k) for k in range(3)]
    for dist in ("rademacher", "gaussian"):
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            torch.manual_seed(0)
            x = torch.randn(3000).to(dtype)
            a, ao, b, bo = x.clone(), torch.empty_like(x), x.clone(), torch.empty_like(x)
            ao2, bo2 = torch.empty_like(x), torch.empty_like(x)
            apply_reference(a, terms, dist, perturb=(99, 1e-2), out=ao, offset=37, out2=ao2)
            kernels_cuda.apply(b, terms, dist, (99, 1e-2), bo, 37, bo2)
            assert torch.equal(a, b) and torch.equal(ao, bo) and torch.equal(ao2, bo2), (dist, dtype)
    print("TRITON-EXACT")
""")


def test_triton_kernel_is_bit_identical_to_reference_in_the_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", TRITON_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "TRITON-EXACT" in proc.stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dist", DISTS)
def test_cuda_matches_cpu_bit_for_bit(dist):
    torch.manual_seed(3)
    x = torch.randn(1_000_003)
    cpu, cpu_out = x.clone(), torch.empty_like(x)
    apply(cpu, terms(4), dist, perturb=(7, 1e-3), out=cpu_out, offset=11)
    gpu, gpu_out = x.cuda(), torch.empty(x.numel(), device="cuda")
    apply(gpu, terms(4), dist, perturb=(7, 1e-3), out=gpu_out, offset=11)
    assert torch.equal(cpu, gpu.cpu()) and torch.equal(cpu_out, gpu_out.cpu())
