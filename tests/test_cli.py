"""Bad input: one line naming the field and the fix, exit code 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from lgd_ray.cli import main

from helpers import assert_refused

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("args, field", [
    (["distill.lamda=0.1"], "distill.lamda"),
    (["distill.lam=-1"], "distill.lam"),
    (["distill.omega=-1"], "distill.omega"),
    (["distill.gamma=-1"], "distill.gamma"),
    (["distill.k=0"], "distill.k"),
    (["distill.stages=0"], "distill.stages"),
    (["distill.window=[3,40]"], "distill.window"),
    (["data.name=imagefolder", "data.root=does/not/exist"], "data.root"),
    (["data.classes=[0,1,11]"], "data.classes"),
    (["generator.class_map=[0,1,2,3,4,5,6,7,8,12]"], "generator.class_map"),
    (["generator.path=no/such/generator/dir"], "generator.path"),
    (["student.arch=vgg99"], "student.arch"),
    (["eval.arch=transformer"], "eval.arch"),
    (["reference.path=missing.safetensors", "distill.k=2"], "reference.path"),
    (["distill.seed_source=no/such/folder"], "distill.seed_source"),
])
def test_bad_input_exits_2_with_one_line(args, field, tmp_path, capsys, monkeypatch):
    assert_refused("distill", args, field, tmp_path, capsys, monkeypatch)


def test_overrides_after_the_options(tmp_path, capsys, monkeypatch):
    """`lgd-ray distill CONFIG --out DIR key=value` takes the override (argparse alone would refuse it);
    a stray option is still an error."""
    monkeypatch.setenv("RAY_ADDRESS", "")
    out = tmp_path / "out"
    assert main(["distill", str(ROOT / "jobs" / "demo.yaml"), "--out", str(out), "distill.k=0"]) == 2
    assert capsys.readouterr().err.startswith("lgd-ray: error: distill.k: ")
    with pytest.raises(SystemExit) as e:
        main(["distill", str(ROOT / "jobs" / "demo.yaml"), "--out", str(out), "--fast"])
    assert e.value.code == 2 and "unrecognized arguments: --fast" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["verify", str(out), "distill.k=2"])  # verify takes no overrides
    assert not out.exists()


def test_bad_config_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("distill: [1, 2\n")
    assert main(["distill", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith("lgd-ray: error: config:")
    assert main(["distill", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()


def test_every_command_has_help():
    from lgd_ray.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"demo", "distill", "evaluate", "train-generator", "train-reference", "verify", "bench"} <= set(commands)
    for name, sub in commands.items():
        assert sub.format_help().startswith("usage: lgd-ray " + name)
