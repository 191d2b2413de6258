"""GAN losses and regularisers as pure functions of logits.

Nothing here calls backward or steps an optimiser; steps.py owns the autograd side effects.
Every loss is a mean over the batch (real and fake batches are averaged separately, so they
may differ in size). D(x) below is a logit, sigmoid(D(x)) the probability "real".
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

KINDS = ("nonsaturating", "minimax", "hinge", "wgan-gp", "lsgan")


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown loss.kind {kind!r}; choose from {', '.join(KINDS)}")


def d_loss(kind: str, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Discriminator loss (to minimise). For wgan-gp the penalty is added by the caller."""
    _check_kind(kind)
    r, f = real_logits.float(), fake_logits.float()
    if kind in ("nonsaturating", "minimax"):
        # -log sigmoid(D(x)) - log(1 - sigmoid(D(G(z)))) = softplus(-D(x)) + softplus(D(G(z)))
        return F.softplus(-r).mean() + F.softplus(f).mean()
    if kind == "hinge":
        # relu(1 - D(x)) + relu(1 + D(G(z)))  (Lim & Ye 2017; Miyato et al. 2018)
        return F.relu(1 - r).mean() + F.relu(1 + f).mean()
    if kind == "wgan-gp":
        # D(G(z)) - D(x): the critic maximises the Wasserstein estimate (Arjovsky et al. 2017)
        return f.mean() - r.mean()
    # lsgan (Mao et al. 2017), a=0 fake, b=1 real: 0.5 (D(x) - 1)^2 + 0.5 D(G(z))^2
    return 0.5 * (r - 1).square().mean() + 0.5 * f.square().mean()


def g_loss(kind: str, fake_logits: Tensor) -> Tensor:
    """Generator loss (to minimise) on D's logits for generated images."""
    _check_kind(kind)
    f = fake_logits.float()
    if kind == "nonsaturating":
        # -log sigmoid(D(G(z))) = softplus(-D(G(z)))  (Goodfellow et al. 2014, the practical G loss)
        return F.softplus(-f).mean()
    if kind == "minimax":
        # log(1 - sigmoid(D(G(z)))) = -softplus(D(G(z))); saturates when D wins
        return -F.softplus(f).mean()
    if kind in ("hinge", "wgan-gp"):
        # -D(G(z))
        return -f.mean()
    # lsgan, c=1: 0.5 (D(G(z)) - 1)^2
    return 0.5 * (f - 1).square().mean()


def r1_penalty(real_logits: Tensor, real: Tensor) -> Tensor:
    """E ||grad_x D(x)||^2 on real images (Mescheder et al. 2018); the caller scales by gamma/2.

    ``real`` must have had ``requires_grad_(True)`` before D saw it. The graph is kept
    (create_graph=True) so the penalty can be backpropagated into D's weights.
    """
    if not real.requires_grad:
        raise ValueError("r1_penalty: `real` must require grad before D(real) is computed "
                         "(call real.requires_grad_(True) first)")
    (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)  # N x C x H x W
    return grad.float().square().flatten(1).sum(dim=1).mean()


def gradient_penalty(
    D: Callable[..., Tensor],
    real: Tensor,
    fake: Tensor,
    labels: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """WGAN-GP (Gulrajani et al. 2017): E (||grad_x D(x_hat)||_2 - 1)^2 on random interpolates.

    x_hat = a * real + (1 - a) * fake with a ~ U[0, 1] per image, drawn from ``generator``
    (on its own device, then moved) so the penalty is reproducible. The caller multiplies by
    loss.gp_weight. Gulrajani et al. advise against BatchNorm in D with this penalty.
    """
    if real.shape != fake.shape:
        raise ValueError(f"gradient_penalty: real {tuple(real.shape)} and fake {tuple(fake.shape)} differ")
    N = real.shape[0]
    a_device = generator.device if generator is not None else real.device
    a = torch.rand(N, 1, 1, 1, generator=generator, device=a_device).to(real.device, real.dtype)
    x_hat = (a * real.detach() + (1 - a) * fake.detach()).requires_grad_(True)  # N x C x H x W
    logits = D(x_hat, labels) if labels is not None else D(x_hat)
    (grad,) = torch.autograd.grad(logits.sum(), x_hat, create_graph=True)
    # The epsilon keeps the norm differentiable at a zero gradient.
    norm = (grad.float().square().flatten(1).sum(dim=1) + 1e-12).sqrt()  # N
    return (norm - 1).square().mean()


def d_accuracy(real_logits: Tensor, fake_logits: Tensor, threshold: float = 0.0) -> Tensor:
    """Fraction of images D classifies correctly, averaging the real and fake halves.

    threshold: 0 for logit-based losses; use 0.5 for lsgan (targets 0 and 1).
    """
    real_ok = (real_logits.detach() > threshold).float().mean()
    fake_ok = (fake_logits.detach() < threshold).float().mean()
    return 0.5 * (real_ok + fake_ok)
