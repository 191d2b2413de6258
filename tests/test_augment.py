"""DiffAugment ops and the ADA probability controller."""

from __future__ import annotations

import pytest
import torch

from ganray.augment import AdaptiveAugment, cutout, diff_augment, translation

ALL = "color,translation,cutout"


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n: int = 6, c: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, c, size, size, generator=gen(seed)) * 2 - 1


@pytest.mark.parametrize("policy", ["", "color", "translation", "cutout", ALL])
def test_shape_and_dtype_preserved(policy):
    x = images()
    y = diff_augment(x, policy, generator=gen(1))
    assert y.shape == x.shape and y.dtype == x.dtype


def test_gradient_flows_through_every_op():
    x = images().requires_grad_(True)
    w = torch.randn(x.shape, generator=gen(3))
    (diff_augment(x, ALL, generator=gen(1)) * w).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # Without color's image means, pixels cut out or shifted off the canvas get no gradient.
    x.grad = None
    (diff_augment(x, "translation,cutout", generator=gen(1)) * w).sum().backward()
    assert (x.grad == 0).any() and (x.grad != 0).any()


def test_p_zero_is_identity():
    x = images()
    assert torch.equal(diff_augment(x, ALL, p=0.0, generator=gen(1)), x)
    assert torch.equal(diff_augment(x, "", generator=gen(1)), x)


def test_same_seed_same_output_other_seed_differs():
    x = images()
    a = diff_augment(x, ALL, p=0.5, generator=gen(7))
    b = diff_augment(x, ALL, p=0.5, generator=gen(7))
    c = diff_augment(x, ALL, p=0.5, generator=gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, x)


def test_translation_is_a_zero_padded_shift():
    x = images(n=4, c=2, size=16)
    y = translation(x, 1.0, gen(5))
    s = 2  # 16 / 8
    for i in range(4):
        padded = torch.nn.functional.pad(x[i], [s, s, s, s])
        matches = [
            (dy, dx)
            for dy in range(-s, s + 1)
            for dx in range(-s, s + 1)
            if torch.equal(y[i], padded[:, s - dy : s - dy + 16, s - dx : s - dx + 16])
        ]
        assert len(matches) == 1


def test_cutout_greys_one_square_of_half_size():
    x = torch.ones(32, 1, 16, 16)
    y = cutout(x, 1.0, gen(2))
    holes = y[:, 0] == 0  # N x H x W
    for hole in holes:
        rows, cols = hole.any(dim=1), hole.any(dim=0)
        assert 0 < rows.sum() <= 8 and 0 < cols.sum() <= 8
        assert hole.sum() == rows.sum() * cols.sum()  # a rectangle, clipped at the edges
    assert (holes.flatten(1).sum(1) == 64).any()  # some squares land fully inside


def test_color_on_grayscale_keeps_range_sane():
    x = images(n=64, c=1)
    y = diff_augment(x, "color", generator=gen(4))
    shift = (y - x).mean(dim=(1, 2, 3))
    assert shift.abs().max() < 1.5 and shift.std() > 0.05  # brightness U[-0.5, 0.5) and contrast


def test_p_is_per_image():
    x = torch.ones(400, 1, 8, 8)
    y = diff_augment(x, "cutout", p=0.3, generator=gen(9))
    frac = (y.flatten(1) == 0).any(dim=1).float().mean().item()
    assert 0.22 < frac < 0.38


def test_bad_arguments():
    with pytest.raises(ValueError, match="augment.policy"):
        diff_augment(images(), "color,flip")
    with pytest.raises(ValueError, match="p must be"):
        diff_augment(images(), "color", p=1.5)
    with pytest.raises(ValueError, match="N x C x H x W"):
        diff_augment(torch.zeros(3, 8, 8), "color")


def test_ada_moves_p_with_r_t():
    ada = AdaptiveAugment(target=0.6, speed_kimg=100.0)
    assert ada.update(0.9, 1000) == pytest.approx(0.01)  # 1 kimg at speed 100 kimg
    assert ada.update(0.9, 4000) == pytest.approx(0.05)
    assert ada.update(0.2, 2000) == pytest.approx(0.03)
    assert ada.update(0.6, 5000) == pytest.approx(0.03)  # on target: no move
    assert ada.update(0.1, 10**6) == 0.0  # clamped
    assert ada.update(1.0, 10**7) == 1.0
    assert ada.update(float("nan"), 1000) == 1.0


def test_ada_state_round_trip():
    ada = AdaptiveAugment(0.6, 50.0)
    ada.update(0.8, 2500)
    other = AdaptiveAugment(0.6, 50.0)
    other.load_state_dict(ada.state_dict())
    assert other.p == ada.p == pytest.approx(0.05)
    with pytest.raises(ValueError, match="'p'"):
        other.load_state_dict({})
    with pytest.raises(ValueError, match="ada_target"):
        AdaptiveAugment(target=1.5)
