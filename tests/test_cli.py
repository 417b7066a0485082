import subprocess
import sys

import pytest
import timm

from rbdc.nets.checkpoint import load_model, save_weights
from rbdc.cli import main


def test_every_subcommand_has_help(capsys):
    # a separate process: `python -m rbdc.cli` itself (its __main__) is what is checked
    out = subprocess.run([sys.executable, "-m", "rbdc.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "couple" in out.stdout
    for cmd in ("flops", "plan", "couple"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0 and "usage" in capsys.readouterr().out, cmd


def test_flops_and_plan_print_tables(capsys):
    assert main(["flops", "deit_base_patch16_224"]) == 0
    assert "17.564 GMACs" in capsys.readouterr().out
    assert main(["plan", "deit_base_patch16_224", "--depth", "2"]) == 0
    out = capsys.readouterr().out
    assert "rbdc_deit_base_patch16_224_w4" in out and "deit_base_patch16_224" in out


def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys):
    a = save_weights(timm.create_model("test_rbdc_vit_w2"), tmp_path / "a.safetensors")
    b = save_weights(timm.create_model("test_rbdc_vit_w4"), tmp_path / "b.safetensors")
    out = tmp_path / "out.safetensors"
    cases = [
        ("flops", "no_such_model"),
        ("couple", str(a), str(tmp_path / "missing.safetensors"), "-o", str(out)),
        ("couple", str(a), str(b), "-o", str(out)),
        ("plan", "resnet50x", "--depth", "1"),
    ]
    for args in cases:
        rc, err = main(list(args)), capsys.readouterr().err
        assert rc == 2, (args, err)
        assert len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_couple_cli_writes_the_coupled_checkpoint(tmp_path):
    parts = [timm.create_model("test_rbdc_resnet_w4") for _ in range(2)]
    paths = [save_weights(m, tmp_path / f"p{i}.safetensors") for i, m in enumerate(parts)]
    out = tmp_path / "wide.safetensors"
    assert main(["couple", *map(str, paths), "-o", str(out)]) == 0
    wide = load_model(out)
    assert type(wide) is type(timm.create_model("test_rbdc_resnet_w2"))
    assert main(["couple", *map(str, paths), "-o", str(out)]) == 2  # refuses to overwrite without --force
