import pytest
import timm
import torch

import rbdc
from rbdc.nets.models import describe
from rbdc.nets.variants import widen_name


def shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("divisor, twin", [(2, "deit_small_patch16_224"), (4, "deit_tiny_patch16_224")])
def test_narrow_deit_base_has_the_dims_of_the_smaller_deit(divisor, twin):
    with torch.device("meta"):
        assert shapes(rbdc.narrow("deit_base_patch16_224", divisor)) == shapes(timm.create_model(twin))


def test_narrow_vit_keeps_head_dim_and_depth():
    m = rbdc.narrow("deit_base_patch16_224", 4)
    attn = m.blocks[0].attn
    assert (m.embed_dim, attn.num_heads, attn.head_dim, len(m.blocks)) == (192, 3, 64, 12)


@pytest.mark.parametrize(
    "name, divisor", [("deit_small_patch16_224", 4), ("deit_base_patch16_224", 8), ("test_rbdc_resnet", 3)]
)
def test_narrow_refuses_widths_that_do_not_divide(name, divisor):
    with pytest.raises(ValueError, match="not divisible"):
        rbdc.narrow(name, divisor)


def test_narrow_resnet50_divides_every_width_and_the_stem():
    with torch.device("meta"):
        full, quarter = timm.create_model("resnet50"), rbdc.narrow("resnet50", 4)
    assert quarter.conv1.out_channels == 16 and quarter.bn1.num_features == 16
    for name, p in full.state_dict().items():
        expected = list(p.shape)
        if p.ndim >= 1 and not name.startswith("fc."):
            expected[0] //= 4  # outputs of every layer but the classifier
        if p.ndim >= 2 and name != "conv1.weight":
            expected[1] //= 4  # inputs of every layer but the stem, which reads RGB
        assert list(quarter.state_dict()[name].shape) == expected, name


def test_narrow_basicblock_resnet_needs_no_spurious_projection():
    with torch.device("meta"):
        full, half = timm.create_model("resnet18"), rbdc.narrow("resnet18", 2)
    assert full.layer1[0].downsample is None and half.layer1[0].downsample is None
    with torch.device("meta"):
        assert shapes(half).keys() == shapes(full).keys()


def test_registered_variants_build_through_timm():
    for name in ["rbdc_resnet50_w2", "rbdc_deit_base_patch16_224_w4", "test_rbdc_vit_w2", "test_rbdc_resnet_w4"]:
        with torch.device("meta"):
            m = timm.create_model(name)
        assert describe(m)["family"] in ("vit", "resnet")
    out = timm.create_model("test_rbdc_resnet_w4")(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 10)


def test_widen_name_walks_the_variant_ladder():
    from fractions import Fraction

    assert widen_name("rbdc_resnet50_w4", Fraction(2)) == "rbdc_resnet50_w2"
    assert widen_name("rbdc_resnet50_w2", Fraction(2)) == "resnet50"
    assert widen_name("test_rbdc_vit_w4", Fraction(4)) == "test_rbdc_vit"
