"""Losses against hand-computed values; R1 and WGAN-GP against analytic gradients."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ganray.losses import KINDS, d_accuracy, d_loss, g_loss, gradient_penalty, r1_penalty

LOG2 = math.log(2.0)


def sp(v: float) -> float:  # softplus, written independently of torch
    return math.log1p(math.exp(v))


REAL = torch.tensor([2.0, -1.0])
FAKE = torch.tensor([0.5, -3.0])


@pytest.mark.parametrize(
    "kind, d_zero, g_zero",
    [
        ("nonsaturating", 2 * LOG2, LOG2),  # -log(1/2) twice; -log(1/2)
        ("minimax", 2 * LOG2, -LOG2),  # log(1 - 1/2)
        ("hinge", 2.0, 0.0),  # relu(1) + relu(1); -0
        ("wgan-gp", 0.0, 0.0),
        ("lsgan", 0.5, 0.5),  # 0.5 * (0 - 1)^2 + 0.5 * 0^2; 0.5 * (0 - 1)^2
    ],
)
def test_zero_logits(kind, d_zero, g_zero):
    z = torch.zeros(5)
    assert d_loss(kind, z, z).item() == pytest.approx(d_zero, abs=1e-6)
    assert g_loss(kind, z).item() == pytest.approx(g_zero, abs=1e-6)


@pytest.mark.parametrize(
    "kind, d_want, g_want",
    [
        ("nonsaturating", (sp(-2) + sp(1)) / 2 + (sp(0.5) + sp(-3)) / 2, (sp(-0.5) + sp(3)) / 2),
        ("minimax", (sp(-2) + sp(1)) / 2 + (sp(0.5) + sp(-3)) / 2, -(sp(0.5) + sp(-3)) / 2),
        ("hinge", (0 + 2) / 2 + (1.5 + 0) / 2, (-0.5 + 3) / 2),
        ("wgan-gp", (0.5 - 3) / 2 - (2 - 1) / 2, (-0.5 + 3) / 2),
        ("lsgan", 0.5 * (1 + 4) / 2 + 0.5 * (0.25 + 9) / 2, 0.5 * (0.25 + 16) / 2),
    ],
)
def test_hand_computed_values(kind, d_want, g_want):
    assert d_loss(kind, REAL, FAKE).item() == pytest.approx(d_want, rel=1e-6)
    assert g_loss(kind, FAKE).item() == pytest.approx(g_want, rel=1e-6)


def test_real_and_fake_batches_may_differ_in_size():
    got = d_loss("hinge", torch.tensor([0.0]), torch.tensor([0.0, -2.0, -2.0]))
    assert got.item() == pytest.approx(1.0 + 1.0 / 3)


@pytest.mark.parametrize("kind", KINDS)
def test_g_loss_pushes_fake_logits_up(kind):
    f = torch.tensor([-0.5, 0.2], requires_grad=True)
    g_loss(kind, f).backward()
    assert (f.grad < 0).all()  # descending the loss raises D(G(z))


def test_minimax_saturates_where_nonsaturating_does_not():
    # Goodfellow et al. 2014: when D confidently rejects fakes, log(1 - D(G(z))) has no gradient.
    f1 = torch.tensor([-10.0], requires_grad=True)
    f2 = torch.tensor([-10.0], requires_grad=True)
    g_loss("minimax", f1).backward()
    g_loss("nonsaturating", f2).backward()
    assert abs(f1.grad.item()) < 1e-4
    assert abs(f2.grad.item()) > 0.99


def test_unknown_kind_names_the_key():
    with pytest.raises(ValueError, match="loss.kind"):
        d_loss("wasserstein", REAL, FAKE)
    with pytest.raises(ValueError, match="loss.kind"):
        g_loss("bce", FAKE)


class LinearD(nn.Module):
    """D(x) = <w, x> + b: grad_x D = w for every image, so the penalties are known exactly."""

    def __init__(self, numel: int, w_norm: float):
        super().__init__()
        self.fc = nn.Linear(numel, 1)
        with torch.no_grad():
            self.fc.weight.normal_()
            self.fc.weight.mul_(w_norm / self.fc.weight.norm())
        self.seen_labels = None

    def forward(self, x, labels=None):
        self.seen_labels = labels
        return self.fc(x.flatten(1)).squeeze(1)


def test_r1_equals_squared_weight_norm_and_backprops():
    D = LinearD(2 * 3 * 3, w_norm=1.7)
    real = torch.randn(4, 2, 3, 3).requires_grad_(True)
    r1 = r1_penalty(D(real), real)
    assert r1.item() == pytest.approx(1.7**2, rel=1e-5)
    r1.backward()  # create_graph=True: d||w||^2/dw = 2w
    torch.testing.assert_close(D.fc.weight.grad, 2 * D.fc.weight.detach())


def test_r1_needs_real_requiring_grad():
    D = LinearD(4, 1.0)
    real = torch.randn(2, 1, 2, 2)
    with pytest.raises(ValueError, match="requires_grad"):
        r1_penalty(D(real), real)


def test_r1_on_quadratic_d():
    # D(x) = sum(x^2): grad = 2x, ||grad||^2 = 4 ||x||^2
    real = torch.randn(3, 1, 4, 4).requires_grad_(True)
    logits = real.square().flatten(1).sum(1)
    want = (4 * real.detach().square().flatten(1).sum(1)).mean()
    torch.testing.assert_close(r1_penalty(logits, real), want)


@pytest.mark.parametrize("w_norm", [0.25, 1.0, 3.0])
def test_gradient_penalty_on_linear_d(w_norm):
    D = LinearD(3 * 4 * 4, w_norm)
    real, fake = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    gp = gradient_penalty(D, real, fake, generator=torch.Generator().manual_seed(0))
    assert gp.item() == pytest.approx((w_norm - 1) ** 2, abs=1e-5)
    gp.backward()  # d(||w|| - 1)^2/dw = 2 (||w|| - 1) w / ||w||
    w = D.fc.weight.detach()
    torch.testing.assert_close(D.fc.weight.grad, 2 * (w_norm - 1) * w / w_norm, atol=1e-5, rtol=1e-4)


def test_gradient_penalty_is_reproducible_and_passes_labels():
    # D(x) = sum(x^2) / 2 has grad x: the penalty depends on where the interpolates fall.
    class QuadD(nn.Module):
        def forward(self, x, labels=None):
            self.labels = labels
            return 0.5 * x.square().flatten(1).sum(1)

    D = QuadD()
    real, fake = torch.randn(8, 1, 4, 4), torch.randn(8, 1, 4, 4)
    labels = torch.arange(8)
    a = gradient_penalty(D, real, fake, labels, generator=torch.Generator().manual_seed(1))
    b = gradient_penalty(D, real, fake, labels, generator=torch.Generator().manual_seed(1))
    c = gradient_penalty(D, real, fake, labels, generator=torch.Generator().manual_seed(2))
    assert a.item() == b.item()
    assert a.item() != c.item()
    assert D.labels is labels


def test_gradient_penalty_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="differ"):
        gradient_penalty(LinearD(4, 1.0), torch.zeros(2, 1, 2, 2), torch.zeros(3, 1, 2, 2))


def test_d_accuracy():
    acc = d_accuracy(torch.tensor([1.0, -1.0, 2.0, 3.0]), torch.tensor([-1.0, -2.0]))
    assert acc.item() == pytest.approx(0.5 * (3 / 4 + 1.0))
    # lsgan targets are 0 and 1, so its decision threshold is 0.5
    acc = d_accuracy(torch.tensor([0.6, 0.4]), torch.tensor([0.4, 0.6]), threshold=0.5)
    assert acc.item() == pytest.approx(0.5)
