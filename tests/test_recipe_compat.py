"""Old recipes keep their meaning: every recipe under configs/recipes, every run of every study under
configs/studies and every committed run's recipe.yaml under reports/ resolves to the settings it resolved to when
tests/data/resolved_recipes.json was recorded (before the recipe became typed, with protocol-owned keys), on the keys
that existed then; mixturegrowth's own growth.norm keeps the meaning rbdc.norm had for it.

An entry whose inputs (the recipe files, bases and overrides) changed since is not compared: the record is about the
code that resolves them. ``python tests/test_recipe_compat.py`` records it again (on purpose only)."""

import hashlib
import json
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
RECORD = REPO / "tests" / "data" / "resolved_recipes.json"
QUICKSTART = REPO / "rbdc" / "quickstart_recipes"  # package data, recipes all the same


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _flat(node: dict, keys: list[str], prefix: str = "") -> dict:
    out = {}
    for k, v in node.items():
        if isinstance(v, dict) and f"{prefix}{k}" not in keys:
            out.update(_flat(v, keys, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _settings(recipe, keys: list[str]) -> dict:
    """The resolved recipe as dotted keys, restricted to ``keys`` (those of the record)."""
    values = recipe.to_dict() if hasattr(recipe, "to_dict") else recipe  # older code resolved to a mapping
    return {k: v for k, v in _flat(values, keys).items() if k in keys}


def _entries():
    """``(path, inputs, [(resolved recipe thunk)])`` of every recipe, study and committed run manifest."""
    from rbdc import recipe as recipes
    from rbdc.studies.spec import load_study

    for path in sorted((REPO / "configs" / "recipes").rglob("*.yaml")) + sorted(QUICKSTART.glob("*.yaml")):
        yield path, recipes._read(path), [lambda p=path: recipes.resolve(p)]
    for path in sorted((REPO / "configs" / "studies").glob("*.yaml")):
        try:
            runs = load_study(path).runs
        except Exception:  # a detection study: not a study of recipes
            continue
        inputs = [(recipes._read(Path(r.recipe)), r.overrides, r.seed, r.name) for r in runs]
        yield (
            path,
            inputs,
            [lambda r=r: recipes.resolve(r.recipe, list(r.overrides), seed=r.seed, name=r.name) for r in runs],
        )
    for path in sorted((REPO / "reports").rglob("recipe.yaml")):
        yield path, recipes._read(path), [lambda p=path: recipes.resolve(p)]


def _resolved(thunks, keys: list[str]) -> list | None:
    from rbdc.errors import UserError

    try:
        return [_settings(t(), keys) for t in thunks]
    except UserError:  # e.g. a base recipe that names no model
        return None


def record() -> None:
    from rbdc import recipe as recipes

    keys = list(recipes.SCHEMA)
    rows = {}
    for path, inputs, thunks in _entries():
        settings = _resolved(thunks, keys)
        if settings is not None:
            rows[str(path.relative_to(REPO))] = [_digest(inputs), _digest(settings)]
    lines = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in sorted(rows.items())]
    RECORD.write_text(f'{{"keys": {json.dumps(keys)},\n "entries": {{\n' + ",\n".join(lines) + "\n}}\n")
    print(f"recorded {len(rows)} entries in {RECORD}")


@pytest.mark.slow  # ~80 s: some 900 recipes resolved, studies planned
def test_every_recipe_study_run_and_committed_manifest_resolves_as_recorded():
    saved = json.loads(RECORD.read_text())
    keys, entries = saved["keys"], saved["entries"]
    compared, differ, mixturegrowth = 0, [], []
    for path, inputs, thunks in _entries():
        name = str(path.relative_to(REPO))
        if name not in entries or entries[name][0] != _digest(inputs):
            continue  # added or edited since the record
        compared += 1
        resolved = [t() for t in thunks]
        if _digest([_settings(r, keys) for r in resolved]) != entries[name][1]:
            differ.append(name)
        mixturegrowth += [r for r in resolved if r.protocol == "mixturegrowth"]
    assert not differ, f"these resolve to other settings than recorded: {differ}"
    assert compared >= 250, f"only {compared} of {len(entries)} recorded entries were compared"
    # before growth.norm existed, mixturegrowth grew with rbdc.norm: every existing recipe keeps that norm
    assert mixturegrowth and all(r.growth.norm == r.rbdc.norm for r in mixturegrowth)


@pytest.mark.parametrize(
    "sets, norm",
    [
        ([], "plain"),
        (["rbdc.norm=grouped"], "grouped"),  # a recipe from before growth.norm existed
        (["rbdc.norm=grouped", "growth.norm=plain"], "plain"),  # its own key wins
        (["growth.norm=grouped"], "grouped"),
    ],
)
def test_mixturegrowth_reads_its_own_norm_key_and_an_old_recipes_rbdc_norm(sets, norm, tmp_path):
    from rbdc import recipe as recipes

    ci = REPO / "configs" / "recipes" / "ci" / "mixturegrowth.yaml"
    rec = recipes.resolve(ci, sets)
    assert rec.growth.norm == norm
    again = tmp_path / "recipe.yaml"  # what a run directory stores resolves to the same recipe
    again.write_text(recipes.dump(rec))
    assert recipes.resolve(again) == rec
    old = rec.to_dict()  # a run directory written before growth.norm existed: rbdc.norm was mixturegrowth's
    del old["growth"]["norm"]
    again.write_text(yaml.safe_dump(old, sort_keys=True))
    assert recipes.resolve(again).growth.norm == rec.rbdc.norm


def test_mixturegrowth_grows_with_its_own_norm_not_rbdcs(monkeypatch):
    from types import SimpleNamespace

    from rbdc import protocols
    from rbdc import recipe as recipes
    from rbdc.protocols import mixturegrowth

    seen = {}  # the protocol module's own names: it imports them at its top
    monkeypatch.setattr(mixturegrowth, "load_weights", lambda path: ({}, {}))
    monkeypatch.setattr(mixturegrowth, "_member", lambda ctx, seed: SimpleNamespace(load_state_dict=lambda sd: None))
    monkeypatch.setattr(mixturegrowth, "mixture_grow", lambda a, b, **kw: seen.update(kw) or "grown")
    rec = recipes.resolve(REPO / "configs" / "recipes" / "ci" / "mixturegrowth.yaml", ["growth.norm=grouped"])
    ctx = SimpleNamespace(recipe=rec, stage=lambda sid: SimpleNamespace(seed=0), log=lambda *a, **k: None)
    stage = protocols.Stage("L1", "wide", 1, 0, 1e-3, level=1, parents=["L0.0", "L0.1"])
    built = protocols.get("mixturegrowth").grow(stage, [Path("a"), Path("b")], ctx)
    assert built.model == "grown" and (seen["norm"], rec.rbdc.norm) == ("grouped", "plain")


def test_a_scratch_recipe_is_untouched_by_rbdc_norm():
    from rbdc import recipe as recipes

    rec = recipes.resolve(REPO / "configs" / "recipes" / "ci" / "scratch.yaml", ["rbdc.norm=grouped"])
    assert (rec.rbdc.norm, rec.growth.norm) == ("grouped", "plain")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    record()
