"""The protocol registry: a protocol is one class registered from one file; recipes, runs and reports take it."""

import csv
from pathlib import Path

import pytest

from rbdc import recipe as recipes
from rbdc import report
from rbdc.runs import train
from rbdc.nets.checkpoint import load_model
from rbdc.errors import UserError
from rbdc.protocols import Built, Protocol, Stage, base, names, register

CI = Path(__file__).resolve().parents[1] / "configs" / "recipes" / "ci"


@pytest.fixture
def twostep(monkeypatch):
    """A new protocol, as a new file would add it: the target trained in two stages, the second from the first."""
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))

    @register
    class TwoStep(Protocol):
        name = "twostep"
        color = "#123456"

        def plan(self, recipe, data):
            half = data.steps_for(recipe.epochs / 2)
            return [
                Stage(
                    sid,
                    recipe.model,
                    half,
                    recipe.seed + i,
                    data.lr,
                    parents=["A"] if i else [],
                    flops_per_image=base.target_fpi(recipe, 1, data.num_classes),
                )
                for i, sid in enumerate("AB")
            ]

        def grow(self, stage, parents, ctx):
            return Built(load_model(parents[0]))

    return TwoStep


def test_the_registry_holds_every_protocol_in_the_report_order():
    assert names() == ("scratch", "rbdc", "net2net", "gradmax", "mixturegrowth", "diffusionblocks", "hypercloning")


def test_a_protocol_registered_twice_is_refused(twostep):
    with pytest.raises(ValueError, match="registered twice"):
        register(twostep)


def test_an_unknown_protocol_is_refused_naming_the_registered_ones(twostep):
    with pytest.raises(UserError, match="unknown protocol 'nope'; choose one of scratch, rbdc, .*twostep"):
        recipes.resolve(CI / "scratch.yaml", protocol="nope")


def test_a_new_protocol_trains_and_reports_with_no_change_elsewhere(twostep, tmp_path):
    res = train.run_recipe(
        str(CI / "scratch.yaml"),
        str(tmp_path),
        log=lambda *a, **k: None,
        protocol="twostep",
        epochs=2,
        name="ci/twostep",
    )
    assert res["protocol"] == "twostep" and [s["stage"] for s in res["stages"]] == ["A", "B"]
    rows = list(csv.DictReader((tmp_path / "ci" / "twostep" / "seed0" / "summary.csv").open()))
    last_a = [r for r in rows if r["stage"] == "A"][-1]
    grown = next(r for r in rows if r["stage"] == "B" and r["epoch"] == "-1")
    assert grown["eval_top1"] == last_a["eval_top1"] and grown["eval_loss"] == last_a["eval_loss"]  # B starts at A
    assert names()[-1] == "twostep" and report.protocol_colors(["twostep", "other"])["twostep"] == "#123456"


def test_each_protocol_owns_the_keys_it_declares_and_those_of_the_sections_it_plans_with():
    from rbdc import protocols

    own = {name: {k for k in recipes.SCHEMA if p.owns_key(k)} for name, p in protocols.registry().items()}
    common = {k for k in recipes.SCHEMA if not k.startswith(("rbdc.", "growth."))}
    assert own["scratch"] == common
    assert own["rbdc"] == common | {k for k in recipes.SCHEMA if k.startswith("rbdc.")}
    assert own["net2net"] - own["rbdc"] == {"growth.mode", "growth.noise_std"}
    assert own["mixturegrowth"] - own["rbdc"] == {"growth.coefs", "growth.noise", "growth.num_templates", "growth.norm"}
    assert own["hypercloning"] - own["rbdc"] == {"growth.snr_db"}
    assert own["gradmax"] - common == {"growth.start_factor", "growth.grow_steps", "growth.grow_span", "growth.scale"}
    assert set().union(*own.values()) == set(recipes.SCHEMA)  # every key means something to some protocol


def test_a_protocols_keys_are_typed_fields_of_the_resolved_recipe():
    rec = recipes.resolve(CI / "gradmax.yaml", ["growth.grow_steps=3"])
    assert rec.growth.grow_steps == 3 and rec.rbdc.depth == recipes.SCHEMA["rbdc.depth"].default
    assert rec.to_dict()["growth"]["grow_steps"] == 3 and recipes.Recipe.from_dict(rec.to_dict()) == rec
