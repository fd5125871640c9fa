"""The GPU path on the CPU (issue 19 #4): autocast dtypes, channels_last, torch.compile, batch_size="auto"."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fiberscope as fs
from conftest import TinyCNN
from fiberscope.errors import ParameterError
from fiberscope.runtime import find_batch_size
from fiberscope.validation import check_autocast, check_batch_size, check_compile, check_flags

FAST = dict(steps=5, inner_steps=2, lr=0.05, gamma=1.0)


def _query(shape=(1, 1, 8, 8)):
    return torch.rand(shape, generator=torch.Generator().manual_seed(1)) * 2 - 1


class _Recording(nn.Module):
    """A prior network / subject that records the dtype its linear layer computes in."""

    def __init__(self, dim: int, out: int):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(dim, out)
        self.seen: list[torch.dtype] = []

    def forward(self, x, t=None):
        y = self.lin(x.flatten(1))
        self.seen.append(y.dtype)
        return y.view(x.shape) if t is not None else y


class _MemoryLimited(nn.Module):
    """A prior network on a simulated device: a batch above ``limit`` samples raises CUDA's OOM."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit, self.sizes = limit, []
        torch.manual_seed(0)
        self.lin = nn.Linear(4, 4)

    def forward(self, x, t):
        self.sizes.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (simulated: {x.shape[0]} > {self.limit})")
        return self.lin(x)


def _vp_prior(net, dim=4):
    return fs.CallablePrior(net, fs.VPSchedule.linear(), "eps", state_shape=(dim,), data_range=None)


def test_autocast_runs_the_networks_in_bf16_and_keeps_the_guidance_in_fp32():
    net, phi = _Recording(4, 4), _Recording(4, 3)
    prior = _vp_prior(net)
    dtypes: list[tuple[torch.dtype, torch.dtype]] = []
    out = fs.sample_fiber(
        phi,
        torch.ones(1, 4),
        prior,
        n=2,
        method=fs.NDTM(**FAST),
        autocast="bf16",
        progress=False,
        callback=lambda i: dtypes.append((i["x"].dtype, i["cost"].dtype)),
    )
    assert set(net.seen) == {torch.bfloat16} and set(phi.seen) == {torch.bfloat16}
    assert set(dtypes) == {(torch.float32, torch.float32)}  # the state and the fiber cost stay fp32
    assert out.images.dtype == torch.float32 and out.fiber_loss.dtype == torch.float32
    assert out.config["autocast"] == "torch.bfloat16"
    assert prior.autocast_dtype is None  # reset after the run
    ref = fs.sample_fiber(phi, torch.ones(1, 4), prior, n=2, method=fs.NDTM(**FAST), progress=False)
    assert ref.config["autocast"] is None
    assert 0 < float((out.images - ref.images).abs().max()) < 0.2  # bf16 rounding, nothing more


def test_channels_last_and_compile_give_the_default_result(tiny_prior):
    q = _query()
    m = fs.NDTM(**FAST)
    x, subj = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)), TinyCNN()
    with torch.no_grad():
        eps, feats = tiny_prior.denoise(x, 500.0).eps, subj(x)
    ref = fs.sample_fiber(TinyCNN(), q, tiny_prior, n=2, method=m, progress=False)
    cl = fs.sample_fiber(subj, q, tiny_prior, n=2, method=m, channels_last=True, progress=False)
    assert cl.config["channels_last"] is True
    assert subj.conv[0].weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():  # one network call agrees to rounding; guidance amplifies rounding over steps
        assert (tiny_prior.denoise(x, 500.0).eps - eps).abs().max() < 1e-5
        assert (subj(x) - feats).abs().max() < 1e-5
    assert (cl.images - ref.images).abs().max() < 0.1
    comp = fs.sample_fiber(TinyCNN(), q, tiny_prior, n=2, method=m, compile="aot_eager", progress=False)
    assert comp.config["compile"] == "aot_eager"
    with torch.no_grad():
        assert (tiny_prior.denoise(x, 500.0).eps - eps).abs().max() < 1e-5
    assert (comp.images - cl.images).abs().max() < 0.1
    with pytest.raises(ValueError, match="compiled with backend 'aot_eager'"):
        fs.sample_fiber(TinyCNN(), q, tiny_prior, n=1, method=m, compile="eager", progress=False)


@pytest.mark.slow
def test_compile_with_inductor(tiny_prior):
    q = _query()
    m = fs.NDTM(**FAST)
    ref = fs.sample_fiber(TinyCNN(), q, tiny_prior, n=2, method=m, progress=False)
    comp = fs.sample_fiber(TinyCNN(), q, tiny_prior, n=2, method=m, compile=True, progress=False)
    assert comp.config["compile"] == "inductor"
    assert (comp.images - ref.images).abs().max() < 0.1


def test_auto_batch_size_halves_until_it_fits_a_simulated_memory_limit():
    net = _MemoryLimited(limit=3)
    prior = _vp_prior(net)
    phi = fs.load_subject(lambda x: x[:, :2])
    out = fs.sample_fiber(phi, torch.ones(1, 4), prior, n=5, method=fs.NDTM(**FAST), batch_size="auto", progress=False)
    assert out.config["batch_size"] == 2 and out.config["batch_size_requested"] == "auto"
    assert out.timings["batch_search"] > 0
    assert {8, 4, 2} <= set(net.sizes)  # 8 (the smallest power of two ≥ 5) and 4 failed
    fixed = fs.sample_fiber(phi, torch.ones(1, 4), prior, n=5, method=fs.NDTM(**FAST), batch_size=2, progress=False)
    assert torch.equal(out.images, fixed.images)
    assert out.counts == fixed.counts  # the probe steps are not counted
    # a device on which not even one sample fits: the out-of-memory error itself
    with pytest.raises(torch.OutOfMemoryError):
        fs.sample_fiber(
            phi, torch.ones(1, 4), _vp_prior(_MemoryLimited(0)), n=2, method=fs.NDTM(**FAST), batch_size="auto"
        )


def test_find_batch_size_search():
    tried: list[int] = []

    def probe(b):
        tried.append(b)
        if b > 20:
            raise torch.OutOfMemoryError("simulated")

    assert find_batch_size(probe, n=100, device=torch.device("cuda")) == 16
    assert tried == [64, 32, 16]
    assert find_batch_size(probe, n=3, device=torch.device("cpu")) == 4
    assert find_batch_size(probe, n=100, device=torch.device("cpu")) == 8  # the CPU cap
    with pytest.raises(ZeroDivisionError):  # anything but out-of-memory is not swallowed
        find_batch_size(lambda b: 1 / 0, n=4, device=torch.device("cpu"))


def test_validation_of_the_new_parameters():
    assert check_batch_size("auto") == "auto" and check_batch_size(None) is None and check_batch_size(3) == 3
    for bad in (0, True, "3", 1.5):
        with pytest.raises(ParameterError):
            check_batch_size(bad)
    assert check_autocast("bf16") is torch.bfloat16 and check_autocast(None) is None
    assert check_autocast(torch.float16) is torch.float16
    for bad in ("int8", torch.int64, 3):
        with pytest.raises(ParameterError):
            check_autocast(bad)
    assert check_compile(True) == "inductor" and check_compile(False) is None
    with pytest.raises(ParameterError, match=r"unknown torch\.compile backend"):
        check_compile("nope")
    with pytest.raises(ParameterError):
        check_compile(3)
    check_flags({"batch_size": "auto", "autocast": "bf16", "compile": "eager"}, "sample")
    with pytest.raises(ParameterError, match="--batch-size"):
        check_flags({"batch_size": 0}, "audit")


def test_api_refuses_bad_values_before_loading_models():
    for kw in ({"autocast": "int8"}, {"channels_last": 1}, {"compile": "nope"}, {"batch_size": "big"}):
        with pytest.raises(ParameterError):
            fs.sample_fiber("builtin:mnist-cnn", torch.zeros(1, 1, 28, 28), "no-such-prior-dir", **kw)


def test_cli_flags(tmp_path, capsys):
    from fiberscope.cli import main

    q = tmp_path / "q.npy"
    import numpy as np

    np.save(q, np.zeros((28, 28), np.float32))
    base = ["sample", str(q), "--subject", "builtin:mnist-cnn", "--prior", "builtin:mnist-ddpm", "--out", str(tmp_path)]
    for bad in (["--batch-size", "many"], ["--autocast", "int8"]):
        with pytest.raises(SystemExit) as e:
            main([*base, *bad])
        assert e.value.code == 2
    assert main([*base, "--compile", "nope"]) == 2
    assert "unknown torch.compile backend" in capsys.readouterr().err
