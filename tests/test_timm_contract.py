"""timm's model contract for every registered rbdc variant, checked the way timm's tests/test_models.py checks its
own models: pretrained cfg, forward_features / forward_head shapes, reset_classifier, forward_intermediates,
features_only and loading a checkpoint through ``pretrained_cfg_overlay``."""

import math

import pytest
import timm
import torch

import rbdc
from rbdc.errors import UserError

# Registered names: the narrow variants and the suite's own bases (what couple() returns for them).
NAMES = timm.list_models(["rbdc_*", "test_rbdc_*"])
# The 224-px ones take seconds each: real weights at ImageNet sizes.
BIG = ("deit", "vit_base", "resnet18", "resnet26", "resnet50")
PARAMS = [pytest.param(n, marks=pytest.mark.slow) if any(b in n for b in BIG) else n for n in NAMES]
CFG_KEYS = (
    "num_classes",
    "input_size",
    "pool_size",
    "crop_pct",
    "interpolation",
    "mean",
    "std",
    "first_conv",
    "classifier",
)


def test_every_narrow_variant_is_listed():
    # listed now: other tests register widths on demand (e.g. rbdc_resnet34_w2) after this module was imported
    names = set(timm.list_models(["rbdc_*", "test_rbdc_*"]))
    assert set(rbdc.nets.variants.VARIANTS) <= names and len(names) > len(rbdc.nets.variants.VARIANTS)


@pytest.mark.parametrize("name", PARAMS)
def test_pretrained_cfg_is_complete_and_names_real_layers(name):
    with torch.device("meta"):
        model = timm.create_model(name)
    cfg = model.pretrained_cfg
    assert cfg["architecture"] == name
    assert all(k in cfg for k in CFG_KEYS), [k for k in CFG_KEYS if k not in cfg]
    assert not (cfg.get("url") or cfg.get("hf_hub_id")), "narrow variants have no published weights"
    keys = model.state_dict().keys()
    assert f"{cfg['first_conv']}.weight" in keys and f"{cfg['classifier']}.weight" in keys
    assert cfg["num_classes"] == model.num_classes


@pytest.mark.parametrize("name", PARAMS)
def test_forward_features_head_and_reset_classifier_match_the_cfg(name):
    model = timm.create_model(name).eval()
    cfg = model.pretrained_cfg
    x = torch.randn(1, *cfg["input_size"])
    with torch.no_grad():
        feats = model.forward_features(x)
        if cfg["pool_size"] is None:  # ViT: tokens
            assert feats.ndim == 3 and feats.shape[-1] == model.num_features
        else:
            assert feats.shape[1:] == (model.num_features, *cfg["pool_size"])
        assert model.forward_head(feats).shape == (1, cfg["num_classes"])
        assert model.forward_head(feats, pre_logits=True).shape == (1, model.head_hidden_size)
        model.reset_classifier(0)
        assert model(x).shape == (1, model.num_features)
        model.reset_classifier(7)
        assert model(x).shape == (1, 7)


@pytest.mark.parametrize("name", PARAMS)
def test_forward_intermediates_match_feature_info(name):
    model = timm.create_model(name).eval()
    size = model.pretrained_cfg["input_size"]
    info = timm.models.FeatureInfo(model.feature_info, range(len(model.feature_info)))
    with torch.no_grad():
        _, inter = model.forward_intermediates(torch.randn(1, *size))
    assert len(inter) == len(info.channels())
    for c, r, o in zip(info.channels(), info.reduction(), inter):
        assert o.shape[:2] == (1, c) and o.shape[-1] <= math.ceil(size[-1] / r) + 1
        assert not torch.isnan(o).any()


@pytest.mark.parametrize("name", PARAMS)
def test_features_only_builds_timm_feature_wrapper(name):
    model = timm.create_model(name, features_only=True).eval()
    vit = model.pretrained_cfg["first_conv"] == "patch_embed.proj"
    assert type(model).__name__ == ("FeatureGetterNet" if vit else "FeatureListNet")
    channels, reduction = model.feature_info.channels(), model.feature_info.reduction()
    if not vit:  # the usual ResNet strides: stem, then the four stages
        assert reduction == [2, 4, 8, 16, 32]
    size = model.pretrained_cfg["input_size"]
    with torch.no_grad():
        outs = model(torch.randn(1, *size))
    assert [o.shape[1] for o in outs] == channels
    assert [o.shape[-1] for o in outs] == [math.ceil(size[-1] / r) for r in reduction]


@pytest.mark.parametrize("name", ["test_rbdc_vit_w2", "test_rbdc_resnet_w4"])
def test_features_only_takes_out_indices(name):
    model = timm.create_model(name, features_only=True, out_indices=(1,))
    assert len(model.feature_info.channels()) == 1


@pytest.mark.parametrize(
    "name, base, divisor", [("test_rbdc_vit_w2", "test_rbdc_vit", 2), ("test_rbdc_resnet_w4", "test_rbdc_resnet", 4)]
)
def test_registered_variant_equals_narrow_with_the_same_seed(name, base, divisor):
    torch.manual_seed(3)
    a = timm.create_model(name).state_dict()
    torch.manual_seed(3)
    b = rbdc.narrow(base, divisor).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ["test_rbdc_vit_w2", "test_rbdc_resnet_w2", "test_rbdc_vit"])
def test_pretrained_cfg_overlay_file_loads_a_checkpoint_rbdc_wrote(name, tmp_path):
    src = timm.create_model(name).eval()
    path = rbdc.save_weights(src, tmp_path / "w.safetensors")
    torch.manual_seed(123)
    loaded = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    sd = loaded.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in src.state_dict().items())
    feats = timm.create_model(
        name, pretrained=True, features_only=True, pretrained_cfg_overlay=dict(file=str(path))
    ).eval()
    x = torch.randn(1, *src.pretrained_cfg["input_size"])
    with torch.no_grad():
        assert torch.allclose(feats(x)[-1], src.forward_intermediates(x, intermediates_only=True)[-1])


@pytest.mark.parametrize("name", ["test_rbdc_vit_w2", "test_rbdc_resnet"])
def test_pretrained_without_a_file_is_a_clear_error(name):
    with pytest.raises(UserError, match="pretrained_cfg_overlay=dict\\(file="):
        timm.create_model(name, pretrained=True)


@pytest.mark.parametrize(
    "name, base", [("test_rbdc_vit_w2", "test_rbdc_vit"), ("test_rbdc_resnet_w2", "test_rbdc_resnet")]
)
def test_coupled_variants_are_the_registered_base_with_its_contract(name, base):
    wide = rbdc.couple([timm.create_model(name), timm.create_model(name)]).eval()
    assert wide.pretrained_cfg["architecture"] == base  # so the tests above cover the coupled model too
    size = wide.pretrained_cfg["input_size"]
    with torch.no_grad():
        inter = wide.forward_intermediates(torch.randn(1, *size), intermediates_only=True)
    info = timm.models.FeatureInfo(wide.feature_info, range(len(wide.feature_info)))
    assert [o.shape[1] for o in inter] == info.channels()
