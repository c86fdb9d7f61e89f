"""Bad input: one line naming the field and the fix, exit code 2, nothing written."""

from __future__ import annotations

import os
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
    (["data.image_size=0"], "data.image_size"),
    (["generator.cfg_scale=-1"], "generator.cfg_scale"),
])
def test_bad_input_exits_2_with_one_line(args, field, tmp_path, capsys, monkeypatch):
    assert_refused("distill", args, field, tmp_path, capsys, monkeypatch)


@pytest.mark.parametrize("args", [["--random-draws", "10"], ["--generation-seeds", "0,1", "--random-draws", "0"]])
def test_random_draws_need_a_multi_seed_demo(args, tmp_path, capsys, monkeypatch):
    assert_refused("demo", args, "--random-draws", tmp_path, capsys, monkeypatch)


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


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if the command gets as far as starting Ray."""
    import lgd_ray.engine.run

    class RayStarted(Exception):
        pass

    def refuse():
        raise RayStarted("the command started Ray")

    monkeypatch.setenv("RAY_ADDRESS", "")
    monkeypatch.setattr(lgd_ray.engine.run, "init_ray", refuse)
    return RayStarted


def _refused(argv: list[str], field: str, capsys) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and err.startswith(f"lgd-ray: error: {field}: ") and "(" in err, err
    return err


def test_config_file_not_utf8(tmp_path, capsys, no_ray):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("# r\u00e9glages\ndistill:\n  k: 2\n".encode("latin-1"))
    err = _refused(["distill", str(bad), "--out", str(tmp_path / "o")], "config", capsys)
    assert str(bad) in err and "UTF-8" in err
    assert not (tmp_path / "o").exists()


def test_out_that_cannot_be_a_folder(tmp_path, capsys, no_ray):
    """--out naming a file, or a path under a file: refused before Ray starts, the file untouched."""
    demo = str(ROOT / "jobs" / "demo.yaml")
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    assert "is a file" in _refused(["distill", demo, "--out", str(f)], "--out", capsys)
    assert "cannot create" in _refused(["distill", demo, "--out", str(f / "run")], "--out", capsys)
    assert "cannot create" in _refused(["train-reference", demo, "--out", str(f / "ref")], "--out", capsys)
    assert f.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes through directory permissions")
def test_out_in_a_read_only_folder(tmp_path, capsys, no_ray):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert "not writable" in _refused(["distill", str(ROOT / "jobs" / "demo.yaml"), "--out", str(locked / "run")],
                                          "--out", capsys)
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def test_unreachable_bucket_is_refused_before_ray(capsys, monkeypatch, no_ray):
    """An s3:// --out whose endpoint does not answer: one line naming --out, fast (few retries, short
    timeouts), and no network needed: the endpoint is a closed port of this machine."""
    import time

    from helpers import free_port

    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_EC2_METADATA_DISABLED": "true",
                       "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}.items():
        monkeypatch.setenv(key, value)
    uri = f"s3://some-bucket/runs/x?endpoint_override=127.0.0.1:{free_port()}&scheme=http"
    t0 = time.perf_counter()
    err = _refused(["distill", str(ROOT / "jobs" / "demo.yaml"), "--out", uri], "--out", capsys)
    assert "cannot reach" in err and "credentials" in err
    assert time.perf_counter() - t0 < 30
    assert "names no bucket" in _refused(["distill", "--out", "s3://"], "--out", capsys)


def test_distill_states_its_size_before_it_starts(tmp_path, capsys, no_ray):
    """An absurd κ is said in one plan line (images × candidates × steps = image-steps) before sampling;
    the counts are apps/cost.py's per-stage plan."""
    out = tmp_path / "out"
    with pytest.raises(no_ray):
        main(["distill", str(ROOT / "jobs" / "demo.yaml"), "distill.k=100000000", "--out", str(out)])
    err = capsys.readouterr().err
    assert ("plan: (20 seed images + 4 stages × 20 images × 100,000,000 candidates) × 25 steps = "
            "200,000,000,500 image-steps (128,000,000,000 guided) for 100 images, in 15 chunks over 2 samplers") in err
    assert not out.exists()


def test_train_generator_refuses_bad_settings_and_a_full_folder_before_ray(tmp_path, capsys, no_ray):
    """Its training runs as a Ray task, whose errors would not be one line: every check comes first."""
    out = tmp_path / "gen"
    assert "must be >= 3" in _refused(["train-generator", "--steps", "2", "--out", str(out)],
                                      "train-generator --steps", capsys)
    assert "[0, 1)" in _refused(["train-generator", "--ema", "1", "--out", str(out)], "train-generator --ema", capsys)
    assert not out.exists()
    out.mkdir()
    (out / "mine.txt").write_text("mine")
    assert "not empty" in _refused(["train-generator", "--steps", "3", "--out", str(out)], "--out", capsys)
    last = tmp_path / "last"
    last.mkdir()
    (last / "x").write_text("x")
    assert "not empty" in _refused(["train-generator", "--out", str(tmp_path / "new"), "--last-iterate", str(last)],
                                   "--last-iterate", capsys)
    assert (out / "mine.txt").read_text() == "mine" and not (tmp_path / "new").exists()
