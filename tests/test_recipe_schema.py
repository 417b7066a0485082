"""The recipe schema (rbdc.recipe.SCHEMA) is the one declaration of every key: defaults, types, ranges, meaning."""

from pathlib import Path

import pytest

from rbdc import cli
from rbdc import recipe as recipes
from rbdc.errors import UserError

CI = Path(__file__).resolve().parents[1] / "configs" / "recipes" / "ci"


def test_the_defaults_are_the_schema_nested_and_each_passes_its_own_check():
    flat = {}

    def walk(node, prefix=""):
        for k, v in node.items():
            if isinstance(v, dict) and f"{prefix}{k}" not in recipes.FREE_FORM:
                walk(v, f"{prefix}{k}.")
            else:
                flat[f"{prefix}{k}"] = v

    walk(recipes.DEFAULTS)
    assert flat == {k: key.default for k, key in recipes.SCHEMA.items()}
    for k, key in recipes.SCHEMA.items():
        if key.default is not None or None in key.types:
            recipes._check_value(k, key.default, key.types, key.allowed)


def test_a_resolved_recipe_has_exactly_the_schema_keys():
    rec = recipes.resolve(CI / "rbdc.yaml").to_dict()
    nested = {f"{k}.{sub}" for k, v in rec.items() if isinstance(v, dict) and k not in recipes.FREE_FORM for sub in v}
    top = {k for k, v in rec.items() if not isinstance(v, dict) or k in recipes.FREE_FORM}
    assert nested | top == set(recipes.SCHEMA)


@pytest.mark.parametrize(
    "override, message",
    [
        ("amp=fp16", "recipe key amp: must be one of auto, bf16, fp32"),
        ("channels_last=always", "recipe key channels_last: must be one of auto, true, false"),  # as YAML spells them
        ("rbdc.schedule=contine", "recipe key rbdc.schedule: must be one of restart, continue"),
        ("rbdc.ratio_type=flop", "recipe key rbdc.ratio_type: must be one of epochs, flops"),
        ("data.source=imagenett", "recipe key data.source: must be one of imagenet, imagefolder, imagenette"),
        ("growth.grow_span=[0.1, 2]", "growth.grow_span entries: must be >= 0 and <= 1"),
        ("rbdc.depht=2", "unknown recipe key rbdc.'depht'"),
    ],
)
def test_every_nested_key_is_checked_when_the_recipe_resolves(override, message):
    with pytest.raises(UserError, match=message.replace(".", r"\.").replace("[", r"\[")):
        recipes.resolve(CI / "scratch.yaml", [override])


def test_rbdc_keys_lists_every_key_with_its_default(capsys):
    assert cli.main(["keys"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(recipes.SCHEMA)
    row = next(ln for ln in lines if ln.startswith("rbdc.norm "))
    assert row.split()[1:4] == ['"plain"', "plain", "|"]
    row = next(ln for ln in lines if ln.startswith("channels_last "))
    assert row.split()[1:6] == ['"auto"', "auto", "|", "true", "|"]
    assert cli.main(["keys", "rbdc."]) == 0
    assert {ln.split()[0] for ln in capsys.readouterr().out.splitlines()} == {k for k in recipes.SCHEMA if "rbdc." in k}
    assert cli.main(["keys", "nothing-like-this"]) == 2
    assert "no recipe key contains 'nothing-like-this'" in capsys.readouterr().err
