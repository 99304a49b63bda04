"""The built-in ``unet``: the small default layout is unchanged, the DDPM CIFAR-10 layout by name."""
from __future__ import annotations

import hashlib

import pytest
import torch

from bench.errors import UserError
from bench.plugins import get_manager
from bench_nets.ddpm_unet import DDPMUNet
from bench_nets.unet import SmallUNet, unet

# Recorded on main before the knobs were added (torch.manual_seed(0), then build; forward of the
# zero_init=False build on randn(2, *shape) from a generator seeded 1 at t = [3, 500]).
SMALL_BASELINE = {
    (1, 8, 8): (368641, "9870c388a2b72d53e22e65d8d038d8e0ef40e68cc9a25fb300993ebc0b936d9e",
                -26.88930892944336, 38.309329986572266),
    (3, 32, 32): (369795, "6ecf77c3a5e4fc6fb581bfe08d54796a1c566f702dd06de2dcd5a990e53d6008",
                  -448.5404968261719, 1519.15966796875),
}
DDPM_CIFAR10_PARAMS = 35_746_307  # Ho et al. 2020 report 35.7M


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.fixture(scope="module")
def registry():
    return get_manager().registries.network


@pytest.mark.parametrize("shape", sorted(SMALL_BASELINE))
def test_default_build_is_unchanged(shape):
    count, digest, total, abs_total = SMALL_BASELINE[shape]
    torch.manual_seed(0)
    net = unet(list(shape))
    assert isinstance(net, SmallUNet)
    assert n_params(net) == count
    params = b"".join(p.detach().numpy().tobytes() for p in net.parameters())
    assert hashlib.sha256(params).hexdigest() == digest
    torch.manual_seed(0)
    net = unet(list(shape), zero_init=False)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = net(x, torch.tensor([3.0, 500.0]))
    assert y.sum().item() == pytest.approx(total, rel=1e-5)
    assert y.abs().sum().item() == pytest.approx(abs_total, rel=1e-5)


def test_registered_unet_is_the_factory(registry):
    torch.manual_seed(0)
    net = registry.create({"name": "unet", "in_shape": [1, 8, 8]})
    assert isinstance(net, SmallUNet) and n_params(net) == SMALL_BASELINE[(1, 8, 8)][0]
    net = registry.create({"name": "unet", "in_shape": [3, 32, 32], "config": "ddpm_cifar10", "base": 8,
                           "mults": [1, 2]})
    assert isinstance(net, DDPMUNet)


def test_ddpm_cifar10_param_count_and_forward(registry):
    torch.manual_seed(0)
    net = registry.create({"name": "unet", "in_shape": [3, 32, 32], "config": "ddpm_cifar10"})
    assert n_params(net) == DDPM_CIFAR10_PARAMS
    assert abs(n_params(net) - 35.7e6) / 35.7e6 < 0.01
    net.eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, 32, 32), torch.tensor([10.0]))
    assert out.shape == (1, 3, 32, 32)


@pytest.mark.parametrize("size", [32, 64])
def test_shapes_at_32_and_64(size):
    torch.manual_seed(0)
    net = unet([3, size, size], config="ddpm_cifar10", base=8, zero_init=False)
    x = torch.randn(2, 3, size, size)
    out = net(x, torch.tensor([1.0, 700.0]))
    assert out.shape == x.shape
    # the attention sits at 16x16 at both sizes: level 1 at 32x32, level 2 at 64x64
    attn_levels = [i for i, level in enumerate(net.down) if level.attn is not None]
    assert attn_levels == [1 if size == 32 else 2]


def test_a_64x64_configuration_with_attention_at_two_resolutions():
    torch.manual_seed(0)
    net = unet([3, 64, 64], config="ddpm_cifar10", base=8, mults=[1, 2, 3, 4], attn_resolutions=[16, 8])
    x = torch.randn(1, 3, 64, 64)
    assert net(x, torch.tensor([3.0])).shape == x.shape
    assert [i for i, level in enumerate(net.down) if level.attn is not None] == [2, 3]
    assert [i for i, level in enumerate(net.up) if level.attn is not None] == [0, 1]  # 8x8 and 16x16 going up


def test_class_embedding_changes_outputs():
    torch.manual_seed(0)
    net = unet([3, 32, 32], config="ddpm_cifar10", base=8, mults=[1, 2], num_classes=10, zero_init=False).eval()
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([5.0, 5.0])
    with torch.no_grad():
        a = net(x, t, y=torch.tensor([0, 0]))
        b = net(x, t, y=torch.tensor([3, 3]))
        a2 = net(x, t, y=torch.tensor([0, 0]))
        none = net(x, t)  # the unconditional call: the "no label" row
    assert torch.equal(a, a2)
    assert (a - b).abs().max() > 1e-4
    assert (none - a).abs().max() > 1e-4
    plain = unet([3, 32, 32], config="ddpm_cifar10", base=8, mults=[1, 2])
    with pytest.raises(ValueError, match="num_classes"):
        plain(x, t, y=torch.tensor([0, 1]))


def test_dropout_only_in_train_mode():
    torch.manual_seed(0)
    net = unet([3, 32, 32], config="ddpm_cifar10", base=8, mults=[1, 2], dropout=0.5, zero_init=False)
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([5.0])
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x, t), net(x, t))
    net.train()
    with torch.no_grad():
        assert not torch.equal(net(x, t), net(x, t))
    net_nodrop = unet([3, 32, 32], config="ddpm_cifar10", base=8, mults=[1, 2], dropout=0.0).train()
    with torch.no_grad():
        assert torch.equal(net_nodrop(x, t), net_nodrop(x, t))


def test_ddpm_knobs_on_the_small_layout_and_unknown_configs_are_user_errors():
    with pytest.raises(UserError, match="num_res_blocks.*config: ddpm_cifar10"):
        unet([1, 8, 8], num_res_blocks=2)
    with pytest.raises(UserError, match="unknown config 'ddpm_cifar11'"):
        unet([3, 32, 32], config="ddpm_cifar11")
