"""Shapes, ranges, parameter counts, conditioning and spectral norm of the G/D networks."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils import parametrize

from ganray.config import Config, DataConfig, ModelConfig
from ganray.models import (
    DCGANDiscriminator,
    DCGANGenerator,
    ResNetDiscriminator,
    ResNetGenerator,
    build_discriminator,
    build_generator,
    count_params,
)
from ganray.models.layers import ConditionalBatchNorm2d


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny networks: a second intra-op thread only adds contention on the shared 2-core box.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def seeded(seed: int = 0) -> None:
    torch.manual_seed(seed)


@pytest.mark.parametrize("resolution", [16, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_dcgan_shapes_and_range(resolution, channels):
    seeded()
    G = DCGANGenerator(resolution, channels, latent_dim=8, width=4)
    D = DCGANDiscriminator(resolution, channels, width=4)
    x = G(torch.randn(3, 8))
    assert x.shape == (3, channels, resolution, resolution)
    assert x.min() >= -1 and x.max() <= 1
    assert D(x).shape == (3,)


def test_resnet_shapes_and_range():
    seeded()
    G = ResNetGenerator(channels=3, latent_dim=8, width=4)
    D = ResNetDiscriminator(channels=3, width=4)
    x = G(torch.randn(2, 8))
    assert x.shape == (2, 3, 32, 32)
    assert x.min() >= -1 and x.max() <= 1
    assert D(x).shape == (2,)


def test_dcgan_param_counts_by_hand():
    # G 16px, latent 8, width 4 -> 8 x 4 x 4 -> 4 x 8 x 8 -> 1 x 16 x 16
    G = DCGANGenerator(16, 1, latent_dim=8, width=4)
    fc, fc_bn = 8 * 8 * 16, 2 * 8  # Linear without bias (BN follows), BN gain+bias
    block, block_bn = 8 * 4 * 16, 2 * 4
    to_image = 4 * 1 * 16 + 1
    assert count_params(G) == fc + fc_bn + block + block_bn + to_image
    # D 16px, width 4: 1 x 16 x 16 -> 4 x 8 x 8 -> 8 x 4 x 4 -> logit
    D = DCGANDiscriminator(16, 1, width=4)
    conv1 = 1 * 4 * 16 + 4  # no BN on the first layer, so it keeps its bias
    conv2, bn2 = 4 * 8 * 16, 2 * 8
    fc = 8 * 16 + 1
    assert count_params(D) == conv1 + conv2 + bn2 + fc


def test_known_reference_sizes():
    # pytorch/examples DCGAN at 64px RGB, ngf=ndf=64: G 3.58M, D 2.77M parameters
    assert count_params(DCGANGenerator(64, 3, 100, 64)) == pytest.approx(3.58e6, rel=0.01)
    assert count_params(DCGANDiscriminator(64, 3, 64)) == pytest.approx(2.77e6, rel=0.01)
    # SNGAN CIFAR ResNet (Miyato et al. 2018): G about 4.3M, D about 1.1M
    assert count_params(ResNetGenerator(3, 128, 64)) == pytest.approx(4.3e6, rel=0.02)
    assert count_params(ResNetDiscriminator(3, 64)) == pytest.approx(1.06e6, rel=0.02)


def test_dcgan_init():
    seeded()
    G = DCGANGenerator(32, 3, 100, 16)
    D = DCGANDiscriminator(32, 3, 16)
    assert G.blocks[0].conv.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert D.features[0].weight.std().item() == pytest.approx(0.02, rel=0.1)
    bn = G.blocks[0].norm.weight
    assert bn.mean().item() == pytest.approx(1.0, abs=0.02) and bn.std().item() < 0.05


@pytest.mark.parametrize("norm", ["batch", "none"])
@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
def test_conditional_g_depends_on_labels(arch, norm):
    seeded()
    if arch == "dcgan":
        G = DCGANGenerator(16, 1, latent_dim=8, width=4, norm=norm, num_classes=3)
    else:
        G = ResNetGenerator(1, latent_dim=8, width=4, norm=norm, num_classes=3)
    assert any(isinstance(m, ConditionalBatchNorm2d) for m in G.modules()) == (norm == "batch")
    # Class gains are near 1 at init; spread them so the test sees more than init noise.
    for m in G.modules():
        if isinstance(m, ConditionalBatchNorm2d):
            torch.nn.init.normal_(m.gain.weight, 1.0, 0.5)
    G.eval()
    z = torch.randn(4, 8)
    a = G(z, torch.zeros(4, dtype=torch.long))
    b = G(z, torch.ones(4, dtype=torch.long))
    # Relative: without BN, DCGAN's N(0, 0.02) init makes the outputs themselves tiny.
    assert (a - b).abs().max() > 1e-2 * a.abs().max()
    with pytest.raises(ValueError, match="labels"):
        G(z)


@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
def test_projection_d_depends_on_labels(arch):
    seeded()
    if arch == "dcgan":
        D = DCGANDiscriminator(16, 1, width=4, num_classes=3).eval()
        x = torch.randn(4, 1, 16, 16)
    else:
        D = ResNetDiscriminator(1, width=4, num_classes=3).eval()
        x = torch.randn(4, 1, 32, 32)
    a = D(x, torch.zeros(4, dtype=torch.long))
    b = D(x, torch.full((4,), 2))
    assert a.shape == (4,) and (a - b).abs().max() > 1e-4
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        D(x, torch.zeros(3, dtype=torch.long))


def test_unconditional_models_ignore_labels():
    seeded()
    G = DCGANGenerator(16, 1, 8, 4).eval()
    z = torch.randn(2, 8)
    torch.testing.assert_close(G(z), G(z, torch.tensor([0, 1])))


@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
def test_spectral_norm_top_singular_value_is_one(arch):
    seeded()
    if arch == "dcgan":
        D = DCGANDiscriminator(16, 1, width=4, norm="none", spectral_norm=True, num_classes=2)
        x = torch.randn(4, 1, 16, 16)
    else:
        D = ResNetDiscriminator(1, width=4, spectral_norm=True, num_classes=2)
        x = torch.randn(4, 1, 32, 32)
    labels = torch.tensor([0, 1, 0, 1])
    for _ in range(20):  # each training-mode forward runs one power iteration
        D(x, labels)
    D.eval()
    sn_modules = [m for m in D.modules() if parametrize.is_parametrized(m, "weight")]
    assert len(sn_modules) >= 4
    for m in sn_modules:
        W = m.weight.detach()
        sigma = torch.linalg.matrix_norm(W.reshape(W.shape[0], -1), ord=2)
        assert sigma.item() == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
def test_d_twice_then_one_backward(arch):
    # steps.py calls D on real, then on fake, then backpropagates once: no in-place trouble.
    seeded()
    if arch == "dcgan":
        G = DCGANGenerator(16, 1, 8, 4, num_classes=2)
        D = DCGANDiscriminator(16, 1, 4, spectral_norm=True, num_classes=2)
        real = torch.randn(4, 1, 16, 16)
    else:
        G = ResNetGenerator(1, 8, 4, num_classes=2)
        D = ResNetDiscriminator(1, 4, norm="batch", spectral_norm=True, num_classes=2)
        real = torch.randn(4, 1, 32, 32)
    labels = torch.tensor([0, 1, 1, 0])
    fake = G(torch.randn(4, 8), labels)
    loss = D(real, labels).mean() - D(fake, labels).mean()
    loss.backward()
    assert all(p.grad is not None for p in D.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in G.parameters())


@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
def test_eval_forward_is_deterministic(arch):
    seeded()
    if arch == "dcgan":
        G, D = DCGANGenerator(32, 3, 8, 4), DCGANDiscriminator(32, 3, 4, spectral_norm=True)
    else:
        G, D = ResNetGenerator(3, 8, 4), ResNetDiscriminator(3, 4)
    G.eval(), D.eval()
    z = torch.randn(3, 8)
    x = G(z)
    torch.testing.assert_close(G(z), x, rtol=0, atol=0)
    torch.testing.assert_close(D(x), D(x), rtol=0, atol=0)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="resolution"):
        DCGANGenerator(resolution=28)
    G = DCGANGenerator(16, 1, 8, 4)
    with pytest.raises(ValueError, match=r"\(N, 8\)"):
        G(torch.randn(2, 9))
    D = DCGANDiscriminator(16, 1, 4)
    with pytest.raises(ValueError, match="1 x 16 x 16"):
        D(torch.randn(2, 3, 16, 16))


def test_builders_follow_the_config():
    cfg = Config()
    cfg.data.resolution, cfg.data.channels = 16, 3
    cfg.model.latent_dim, cfg.model.g_width, cfg.model.d_width = 8, 4, 6
    G = build_generator(cfg.model, cfg.data, num_classes=None)
    D = build_discriminator(cfg.model, cfg.data, num_classes=None)
    assert isinstance(G, DCGANGenerator) and isinstance(D, DCGANDiscriminator)
    assert G(torch.randn(2, 8)).shape == (2, 3, 16, 16)
    assert D.features[0].out_channels == 6

    model = ModelConfig(arch="resnet", latent_dim=8, g_width=4, d_width=4, spectral_norm=True,
                        conditional=True)
    G = build_generator(model, DataConfig(resolution=32), num_classes=5)
    D = build_discriminator(model, DataConfig(resolution=32), num_classes=5)
    assert isinstance(G, ResNetGenerator) and G.num_classes == 5
    assert any(parametrize.is_parametrized(m) for m in D.modules())


def test_builders_reject_inconsistent_config():
    model = ModelConfig(conditional=True)
    with pytest.raises(ValueError, match="model.conditional"):
        build_generator(model, DataConfig(), num_classes=None)
    with pytest.raises(ValueError, match="model.conditional"):
        build_discriminator(model, DataConfig(), num_classes=None)
    with pytest.raises(ValueError, match="data.resolution"):
        build_generator(ModelConfig(arch="resnet"), DataConfig(resolution=64), None)
    # An unconditional model ignores the class count it is given.
    assert build_generator(ModelConfig(latent_dim=4, g_width=4), DataConfig(), 10).num_classes is None


def test_spectral_norm_state_dict_round_trip(tmp_path):
    # Checkpoints are weights_only state dicts: the u/v power-iteration buffers must travel too.
    seeded()
    D = DCGANDiscriminator(16, 1, 4, spectral_norm=True, num_classes=3)
    labels = torch.tensor([0, 2])
    for _ in range(3):
        D(torch.randn(2, 1, 16, 16), labels)
    torch.save(D.state_dict(), tmp_path / "d.pt")
    E = DCGANDiscriminator(16, 1, 4, spectral_norm=True, num_classes=3)
    E.load_state_dict(torch.load(tmp_path / "d.pt", weights_only=True))
    D.eval(), E.eval()
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(D(x, labels), E(x, labels), rtol=0, atol=0)


def test_conditional_auto_is_a_config_value():
    from ganray.config import ConfigError, load_config

    assert ModelConfig(conditional="auto").conditional == "auto"
    assert load_config(None, ["model.conditional=true"]).model.conditional is True
    with pytest.raises(ConfigError, match="model.conditional"):
        load_config(None, ["model.conditional=maybe"])
