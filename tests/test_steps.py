"""The non-finite guard of a training step: decided and applied on the device, never read by the host."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch

from ganray.config import debug
from ganray.state import build_state
from ganray.steps import EMA, Precision, train_step
from ganray.train_loop import _NanGuard


def _state():
    cfg = debug()
    return cfg, build_state(cfg, None, torch.device("cpu"))


def _step(cfg, st, real, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(len(real), cfg.model.latent_dim, generator=g)
    return train_step(st.G, st.D, st.opt_g, st.opt_d, [(real, None)], [z], cfg.loss, step=0,
                      prec=Precision.create("fp32", torch.device("cpu")))


def _real(cfg, seed=1):
    g = torch.Generator().manual_seed(seed)
    c, r = cfg.data.channels, cfg.data.resolution
    return torch.rand(cfg.train.batch_size_per_worker, c, r, r, generator=g) * 2 - 1


@contextlib.contextmanager
def _no_host_reads():
    """Any read of a tensor's value into Python (a host-device sync on a GPU) raises."""

    def refuse(self, *args, **kwargs):
        raise AssertionError("a tensor was read on the host during the step")

    names = ("__bool__", "item", "tolist", "__float__", "__int__", "__index__")
    saved = {n: getattr(torch.Tensor, n) for n in names}
    try:
        for n in names:
            setattr(torch.Tensor, n, refuse)
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.Tensor, n, f)


def _params(net) -> dict:
    """Weights only: BatchNorm's running statistics move in any forward (the loop puts them back)."""
    return {k: v.detach().clone() for k, v in net.named_parameters()}


def _equal(a: dict, b: dict) -> bool:
    """Deep equality of (nested) state dicts holding tensors."""
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, dict):
            if not _equal(x, y):
                return False
        elif isinstance(x, torch.Tensor):
            if not torch.equal(x, y):
                return False
        elif x != y:
            return False
    return True


def test_a_non_finite_step_changes_nothing_and_the_host_never_reads_the_decision():
    cfg, st = _state()
    for s in range(2):  # Adam has moments and a step count to protect
        _, bad = _step(cfg, st, _real(cfg, s), seed=s)
        assert not bad
    before = {"D": _params(st.D), "opt_d": copy.deepcopy(st.opt_d.state_dict()), "G": _params(st.G)}
    nan_real = _real(cfg) * float("nan")
    with _no_host_reads():
        values, bad = _step(cfg, st, nan_real)
    assert isinstance(bad, torch.Tensor) and bad.shape == () and bool(bad)
    assert torch.isnan(values["loss_d"])
    # D's update was skipped: weights, moments and Adam's step count as they were ...
    assert _equal(_params(st.D), before["D"])
    assert _equal(st.opt_d.state_dict(), before["opt_d"])
    assert all(int(s["step"]) == 2 for s in st.opt_d.state_dict()["state"].values())
    # ... while G's (through the unchanged, finite D) went ahead.
    assert not _equal(_params(st.G), before["G"])
    # A finite step afterwards updates D again.
    _, bad = _step(cfg, st, _real(cfg, 5))
    assert not bad and not _equal(_params(st.D), before["D"])


def test_a_nan_weight_skips_both_updates():
    cfg, st = _state()
    _step(cfg, st, _real(cfg, 7))  # Adam's state exists
    with torch.no_grad():
        next(st.G.parameters()).view(-1)[0] = float("nan")
    before = copy.deepcopy(st.state_dict())
    params = {"G": _params(st.G), "D": _params(st.D)}
    _, bad = _step(cfg, st, _real(cfg))
    assert bool(bad)
    for key in ("opt_g", "opt_d"):
        assert _equal(st.state_dict()[key], before[key]), key
    for key, net in (("G", st.G), ("D", st.D)):
        now = _params(net)
        assert all(torch.allclose(now[k], v, rtol=0, atol=0, equal_nan=True) for k, v in params[key].items()), key


def test_the_guard_needs_a_fused_optimiser():
    cfg, st = _state()
    st.opt_d = torch.optim.Adam(st.D.parameters(), lr=1e-4)
    with pytest.raises(TypeError, match="fused=True"):
        _step(cfg, st, _real(cfg))


def test_a_checkpoint_of_a_non_fused_optimiser_resumes_fused():
    cfg, st = _state()
    sd = st.state_dict()
    for key in ("opt_g", "opt_d"):  # as checkpoints were written before Adam was fused
        for group in sd[key]["param_groups"]:
            group.update(fused=None, foreach=None)
    _, fresh = _state()
    fresh.load_state_dict(copy.deepcopy(sd))
    assert all(g["fused"] for opt in (fresh.opt_g, fresh.opt_d) for g in opt.param_groups)
    _, bad = _step(cfg, fresh, _real(cfg) * float("nan"))
    assert bool(bad)


def test_ema_skips_on_the_device_even_when_g_holds_a_nan():
    cfg, st = _state()
    ema = EMA(st.G, half_life_kimg=0.01, rampup=None)
    with torch.no_grad():
        for p in st.G.parameters():
            p.add_(1.0)
    kept = copy.deepcopy(ema.model.state_dict())
    ema.update(st.G, 16, 16, skip=torch.tensor(False))
    moved = copy.deepcopy(ema.model.state_dict())
    assert not _equal(moved, kept)
    plain = EMA(st.G, half_life_kimg=0.01, rampup=None)
    plain.model.load_state_dict(kept)
    plain.update(st.G, 16, 16)  # no skip flag: the same update
    assert _equal(plain.model.state_dict(), moved)
    with torch.no_grad():
        next(st.G.parameters()).view(-1)[0] = float("nan")
    with _no_host_reads():
        ema.update(st.G, 16, 32, skip=torch.tensor(True))
    assert _equal(ema.model.state_dict(), moved)


def test_the_loop_guard_restores_batchnorm_statistics_and_counts_on_the_device():
    cfg, st = _state()
    guard = _NanGuard(torch.device("cpu"), st.G, st.D)
    assert any(b.is_floating_point() for b in st.D.buffers())  # the debug D has BatchNorm
    for s, real in enumerate([_real(cfg), _real(cfg) * float("nan"), _real(cfg) * float("nan"), _real(cfg, 3)]):
        before = [b.clone() for b in guard.buffers]
        with _no_host_reads():
            guard.before_step()
            _, bad = _step(cfg, st, real, seed=s)
            guard.after_step(bad)
        same = all(torch.equal(a, b) for a, b in zip(guard.buffers, before))
        assert same == bool(bad), s  # statistics put back exactly when the step was skipped
        if s == 2:
            st.nan_skips = 5
            assert guard.read(st) == (1, 2)  # one good step, a run of two skips going on
            assert st.nan_skips == 7
    assert guard.read(st) == (1, 0) and st.nan_skips == 7
    assert len(guard.buffers) == len(list(st.G.buffers())) + len(list(st.D.buffers()))
