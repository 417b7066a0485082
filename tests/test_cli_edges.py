"""CLI edge cases: each bad input ends in one line naming the fix, exit 2, and nothing written."""

import json
from pathlib import Path

import pytest
import timm
from safetensors.torch import save_file

from rbdc.nets.checkpoint import save_weights
from rbdc.cli import main

CI = Path(__file__).resolve().parents[1] / "configs" / "recipes" / "ci"


def refused(capsys, *args, says: str):
    assert main(list(map(str, args))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err


@pytest.fixture
def parts(tmp_path):
    return [save_weights(timm.create_model("test_rbdc_vit_w2"), tmp_path / f"p{i}.safetensors") for i in range(2)]


def foreign(path, **meta):
    save_file({"w": timm.create_model("test_rbdc_vit_w2").head.weight.detach()}, str(path), metadata=meta)
    return path


def test_checkpoint_metadata_naming_an_unknown_model(capsys, tmp_path, parts):
    arch = foreign(
        tmp_path / "arch.safetensors",
        model="no_such_model",
        arch=json.dumps({"name": "no_such_model", "factor": "1/2", "kwargs": {}}),
    )
    named = foreign(tmp_path / "named.safetensors", model="no_such_model")
    out = tmp_path / "out.safetensors"
    refused(capsys, "couple", arch, parts[0], "-o", out, says="unknown model 'no_such_model'")
    refused(capsys, "couple", named, parts[0], "-o", out, says="unknown model 'no_such_model'")
    refused(capsys, "couple", *parts, "--model", "not_a_model", "-o", out, says="--model not_a_model")
    refused(capsys, "couple", *parts, "--model", "test_rbdc_vit_w4", "-o", out, says="fit test_rbdc_vit_w4")
    assert not out.exists()


@pytest.mark.parametrize("force", [False, True])
def test_couple_output_that_is_a_directory_or_under_a_file(capsys, tmp_path, parts, force):
    target = tmp_path / "outdir"
    target.mkdir()
    extra = ["--force"] if force else []
    refused(capsys, "couple", *parts, "-o", target, *extra, says="is a directory; pass a file")
    refused(capsys, "couple", *parts, "-o", parts[0] / "x.safetensors", *extra, says="is a file, not a directory")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["outdir", "p0.safetensors", "p1.safetensors"]


def test_train_output_that_is_a_file_or_under_a_file(capsys, tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    recipe = CI / "scratch.yaml"
    refused(capsys, "train", "-c", recipe, "-o", f, says="is a file; pass a directory")
    refused(capsys, "train", "-c", recipe, "-o", f / "runs", says="is a file, not a directory")
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


@pytest.mark.parametrize("size", [0, -32])
def test_img_size_must_be_positive(capsys, size):
    refused(capsys, "flops", "test_rbdc_vit", "--img-size", size, says="--img-size must be a positive")
    refused(capsys, "plan", "test_rbdc_vit", "--img-size", size, says="--img-size must be a positive")


@pytest.mark.parametrize("k", [0, 1, -2])
def test_plan_needs_k_of_at_least_2(capsys, k):
    refused(capsys, "plan", "deit_base_patch16_224", "-k", k, says=f"must be >= 2, got {k}")
