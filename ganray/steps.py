"""One D update and one G update: the autograd side effects and GAN-under-DDP hygiene.

Rules these functions keep (each one a known way GANs break under data parallelism):
- D's update sees `fake.detach()`: no gradient reaches G from the D loss.
- G's update calls the *unwrapped* D with its parameters frozen, so the G backward neither
  fills D's .grad nor fires D's DDP gradient all-reduce (wasted traffic, and a stale D
  gradient would leak into the next D step).
- Losses are means over the local batch; DDP averages gradients over ranks, so W workers x
  batch b follow exactly the trajectory of 1 worker x batch W*b (no BatchNorm).
- Non-finite gradients are detected *after* the all-reduce, so every rank takes the same
  skip decision; the decision stays on the device (no host sync per step, which on a GPU
  would stall the launch queue twice a step): the optimisers are fused Adam, which skips its
  update when handed a `found_inf` flag, the mechanism GradScaler uses for fp16.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ganray import losses
from ganray.config import LossConfig
from ganray.dist import unwrap


def set_requires_grad(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


@dataclass
class Precision:
    """Autocast dtype (None: fp32) and per-network gradient scalers (fp16 only)."""

    device_type: str = "cpu"
    dtype: torch.dtype | None = None
    scaler_g: torch.amp.GradScaler | None = None
    scaler_d: torch.amp.GradScaler | None = None

    @classmethod
    def create(cls, name: str, device: torch.device) -> "Precision":
        if name == "auto":
            bf16_ok = device.type == "cuda" and torch.cuda.is_bf16_supported()
            name = "bf16" if bf16_ok else ("fp16" if device.type == "cuda" else "fp32")
        if name == "fp32":
            return cls(device.type)
        if name == "bf16":
            return cls(device.type, torch.bfloat16)
        if device.type != "cuda":
            raise ValueError("train.precision=fp16 needs a GPU; use bf16 or fp32 on CPU")
        return cls(device.type, torch.float16, torch.amp.GradScaler("cuda"), torch.amp.GradScaler("cuda"))

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


@dataclass
class StepResult:
    """Detached per-step statistics, left on the device (read at report time only).

    `skipped` is a 0-d bool tensor on the device: True when the update was skipped as
    non-finite (always False under fp16, where the gradient scaler skips and backs off itself).
    """

    values: dict[str, torch.Tensor] = field(default_factory=dict)
    skipped: torch.Tensor | None = None


def _grad_norm(module: nn.Module) -> torch.Tensor:
    # Total L2 norm of the gradients; on CUDA one fused foreach kernel instead of one per tensor.
    return torch.nn.utils.get_total_norm([p.grad for p in module.parameters() if p.grad is not None])


def _step_unless(opt: torch.optim.Optimizer, bad: torch.Tensor) -> None:
    """opt.step(), a no-op for parameters, moments and step count where `bad` is True.

    Fused Adam reads `found_inf` (a float tensor: 1.0 skips) inside its kernel; GradScaler hands
    it over the same way. A non-fused optimiser would refuse the flag, so it is checked here.
    """
    if not opt.defaults.get("fused"):
        raise TypeError(f"{type(opt).__name__} must be built with fused=True to skip non-finite steps "
                        "on the device")
    opt.found_inf = bad.float()
    try:
        opt.step()
    finally:
        del opt.found_inf


def _apply(loss: torch.Tensor, net: nn.Module, opt: torch.optim.Optimizer, scaler) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward, check the (all-reduced) gradient norm, step unless it is non-finite.

    Returns the norm and the skip flag, both 0-d tensors on the device: nothing here waits for
    the device.
    """
    opt.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        norm = _grad_norm(net)
        scaler.step(opt)  # the scaler skips non-finite steps itself and lowers its scale
        scaler.update()
        return norm, torch.zeros((), dtype=torch.bool, device=norm.device)
    loss.backward()
    norm = _grad_norm(net)
    bad = ~torch.isfinite(norm)
    _step_unless(opt, bad)
    return norm, bad


def d_step(
    G: nn.Module,
    D: nn.Module,
    opt_d: torch.optim.Optimizer,
    real: torch.Tensor,
    labels: torch.Tensor | None,
    z: torch.Tensor,
    loss_cfg: LossConfig,
    *,
    d_step_index: int,
    prec: Precision,
    augment=None,
    fake: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> StepResult:
    """(1) Update D: minimise d_loss(D(x), D(G(z))) [+ GP] [+ lazy R1]."""
    set_requires_grad(D, True)
    aug = augment or (lambda x: x)
    if fake is None:
        with torch.no_grad(), prec.autocast():
            fake = G(z, labels)
    fake = fake.detach()
    do_r1 = loss_cfg.r1_gamma > 0 and d_step_index % loss_cfg.r1_every == 0
    if do_r1:
        real = real.detach().requires_grad_(True)
    with prec.autocast():
        real_logits = D(aug(real), labels).float()
        fake_logits = D(aug(fake), labels).float()
        loss = losses.d_loss(loss_cfg.kind, real_logits, fake_logits)
    out = {"loss_d": loss.detach(), "d_real": real_logits.detach().mean(),
           "d_fake": fake_logits.detach().mean(), "r_t": torch.sign(real_logits.detach()).mean()}
    if loss_cfg.kind == "wgan-gp" and loss_cfg.gp_weight > 0:
        gp = losses.gradient_penalty(D, real.detach(), fake, labels, generator=generator)
        loss = loss + loss_cfg.gp_weight * gp
        out["gp"] = gp.detach()
    if do_r1:
        # Lazy regularisation: every k steps, scaled by k (Karras et al. 2020, sec. 3.1).
        r1 = losses.r1_penalty(real_logits, real)
        loss = loss + (loss_cfg.r1_gamma / 2) * loss_cfg.r1_every * r1
        out["r1"] = r1.detach()
    norm, skipped = _apply(loss, D, opt_d, prec.scaler_d)
    out["grad_norm_d"] = norm.detach()
    return StepResult(out, skipped)


def g_step(
    G: nn.Module,
    D: nn.Module,
    opt_g: torch.optim.Optimizer,
    labels: torch.Tensor | None,
    z: torch.Tensor,
    loss_cfg: LossConfig,
    *,
    prec: Precision,
    augment=None,
    fake: torch.Tensor | None = None,
) -> StepResult:
    """(2) Update G: minimise g_loss(D(G(z))) through the frozen, unwrapped D."""
    D_plain = unwrap(D)
    set_requires_grad(D_plain, False)
    aug = augment or (lambda x: x)
    try:
        with prec.autocast():
            if fake is None:
                fake = G(z, labels)
            logits = D_plain(aug(fake), labels).float()
            loss = losses.g_loss(loss_cfg.kind, logits)
        norm, skipped = _apply(loss, G, opt_g, prec.scaler_g)
    finally:
        set_requires_grad(D_plain, True)
    return StepResult({"loss_g": loss.detach(), "grad_norm_g": norm.detach()}, skipped)


def train_step(
    G: nn.Module,
    D: nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    reals: list[tuple[torch.Tensor, torch.Tensor | None]],
    zs: list[torch.Tensor],
    loss_cfg: LossConfig,
    *,
    step: int,
    prec: Precision,
    augment=None,
    generator: torch.Generator | None = None,
) -> tuple[dict[str, torch.Tensor], bool]:
    """One iteration: len(reals) D updates (n_critic), then one G update.

    zs holds one noise batch per D update plus one for G when there are several D updates;
    with a single D update, G's forward is shared by both updates (as in the DCGAN example).
    Returns the detached statistics and whether any update was skipped as non-finite (a 0-d
    bool tensor on the device).
    """
    d_steps = len(reals)
    fake = None
    skipped = None
    for k, (real, labels) in enumerate(reals):
        if d_steps == 1:
            with prec.autocast():
                fake = G(zs[0], labels)
        res_d = d_step(G, D, opt_d, real, labels, zs[k], loss_cfg, d_step_index=step * d_steps + k,
                       prec=prec, augment=augment, fake=fake, generator=generator)
        skipped = res_d.skipped if skipped is None else skipped | res_d.skipped
    labels = reals[-1][1]
    res_g = g_step(G, D, opt_g, labels, zs[-1], loss_cfg, prec=prec, augment=augment, fake=fake)
    return {**res_d.values, **res_g.values}, skipped | res_g.skipped


class EMA:
    """Exponential moving average of G's weights (Karras et al. 2018/2020).

    beta = 0.5 ** (images_per_step / half_life_images); the half-life ramps up with the
    images seen so far so early, poor weights are forgotten quickly.
    Parameters are identical on every rank after each DDP step, so the EMA is too; buffers
    are copied from G after BatchNorm statistics were averaged over ranks.
    """

    def __init__(self, G: nn.Module, half_life_kimg: float, rampup: float | None):
        import copy

        self.model = copy.deepcopy(unwrap(G)).eval()
        set_requires_grad(self.model, False)
        self.half_life_kimg = half_life_kimg
        self.rampup = rampup

    def beta(self, images_per_step: int, images_seen: int) -> float:
        half_life = self.half_life_kimg * 1000
        if self.rampup is not None:
            half_life = min(half_life, max(images_seen, 1) * self.rampup)
        return 0.5 ** (images_per_step / max(half_life, 1e-8))

    @torch.no_grad()
    def update(self, G: nn.Module, images_per_step: int, images_seen: int,
               skip: torch.Tensor | None = None) -> None:
        """Move the average towards G; where `skip` (a 0-d bool tensor) is True, leave it be.

        The skip is decided on the device, so a step whose update was skipped as non-finite
        (G's weights may hold the NaN that caused it) changes nothing without a host sync.
        """
        beta = self.beta(images_per_step, images_seen)
        src = [p for p in unwrap(G).parameters()]
        dst = [p for p in self.model.parameters()]
        if skip is None:
            torch._foreach_lerp_(dst, src, 1.0 - beta)
            return
        moved = torch._foreach_lerp(dst, src, 1.0 - beta)
        for d, m in zip(dst, moved):
            torch.where(skip, d, m, out=d)

    @torch.no_grad()
    def copy_buffers(self, G: nn.Module) -> None:
        for b_ema, b in zip(self.model.buffers(), unwrap(G).buffers()):
            b_ema.copy_(b)


def lr_factor(schedule: str, progress: float) -> float:
    """Multiplier on the base learning rate at `progress` in [0, 1] of the run."""
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0
