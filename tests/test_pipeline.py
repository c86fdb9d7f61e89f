"""The LGD loop on Ray: determinism across actor counts, resume, refusal, corruption, kill-and-rerun."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from lgd_ray.core.config import load_config
from lgd_ray.core.errors import UserError
from lgd_ray.engine.store import OutputDir

from helpers import tiny_overrides


def rows(out: str) -> dict[tuple[int, int, int], bytes]:
    """(stage, label, slot) -> PNG bytes, failing on duplicates."""
    found: dict = {}
    for part in sorted(Path(out).glob("data/stage-*/part-*.parquet")):
        t = pq.read_table(part, columns=["stage", "label", "slot", "image"]).to_pylist()
        for r in t:
            key = (r["stage"], r["label"], r["slot"])
            assert key not in found, f"duplicated {key}"
            found[key] = r["image"]["bytes"]
    return found


def expected_keys() -> set[tuple[int, int, int]]:
    return {(s, c, 0) for s in (0, 1) for c in range(10)}


# `baseline` (conftest.py): the finished output of the tiny run, shared with the export and card tests


def test_output_layout(baseline):
    out = OutputDir(baseline)
    assert set(rows(baseline)) == expected_keys()
    assert out.verify_stage(0) == [] and out.verify_stage(1) == []
    for rel in ("config.yaml", "config.json", "checkpoints/stage=000/model.safetensors", "preview/stage=000.png",
                "preview/stage=001.png"):
        assert out.exists(rel), rel
    t = out.read_rows([1])
    assert set(t.column("num_candidates").to_pylist()) == {2}
    assert all(c in (0, 1) for c in t.column("candidate").to_pylist())
    assert out.manifest(1)["inputs"]["student"] is not None


# Two sampler actors write the one-sampler baseline's bytes, whole part files and manifests: asserted by
# test_failures.py::test_a_hung_and_a_killed_sampler_actor_cost_time_not_bytes, which runs two actors and
# disturbs both.


def test_rerun_resumes_and_other_config_is_refused(baseline, tiny_generator_dir, reference_file, tmp_path):
    from lgd_ray.engine.distill import distill

    out = str(tmp_path / "copy")
    shutil.copytree(baseline, out)
    before = {p: p.stat().st_mtime_ns for p in Path(out).glob("data/stage-*/*.parquet")}
    cfg = load_config(None, tiny_overrides(tiny_generator_dir, reference_file))
    assert distill(cfg, out, progress=False)["resumed"]
    assert {p: p.stat().st_mtime_ns for p in Path(out).glob("data/stage-*/*.parquet")} == before
    other = load_config(None, tiny_overrides(tiny_generator_dir, reference_file) + ["distill.lam=0.5"])
    with pytest.raises(UserError) as e:
        distill(other, out, progress=False)
    assert e.value.field == "out" and "--overwrite" in str(e.value)
    assert {p: p.stat().st_mtime_ns for p in Path(out).glob("data/stage-*/*.parquet")} == before


def test_corrupt_part_is_reported_and_regenerated(baseline, tiny_generator_dir, reference_file, tmp_path):
    from lgd_ray.engine.distill import distill

    out = str(tmp_path / "corrupt")
    shutil.copytree(baseline, out)
    part = Path(out) / "data" / "stage-001" / "part-00002.parquet"
    part.write_bytes(b"not a parquet file")
    problems = OutputDir(out).verify_stage(1)
    assert problems and "part-00002" in problems[0]
    distill(load_config(None, tiny_overrides(tiny_generator_dir, reference_file)), out, progress=False)
    assert OutputDir(out).verify_stage(1) == []
    assert rows(out) == rows(baseline)


def test_killed_run_reruns_to_the_same_bytes(baseline, tiny_generator_dir, reference_file, tmp_path, ray_session):
    from lgd_ray.engine.distill import distill

    out = tmp_path / "killed"
    overrides = tiny_overrides(tiny_generator_dir, reference_file)
    # join this test session's cluster explicitly (no discovery of whatever else runs on the machine)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "TQDM_DISABLE": "1",
           "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    proc = subprocess.Popen([sys.executable, "-m", "lgd_ray.cli", "distill", *overrides, "--out", str(out), "--quiet"],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if list(out.glob("data/stage-001/part-*.parquet")):
                break
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert list(out.glob("data/stage-001/part-*.parquet")), "the run never reached stage 1"
    assert not (out / "data" / "stage-001" / "_manifest.json").exists(), "killed too late to test a partial stage"
    distill(load_config(None, overrides), str(out), progress=False)
    got = rows(str(out))
    assert set(got) == expected_keys()
    assert got == rows(baseline)


def test_verify_and_evaluate_commands(baseline, tmp_path, capsys):
    from lgd_ray.cli import main

    assert main(["verify", baseline]) == 0
    assert "2 stages, 20 rows, 0 problems" in capsys.readouterr().out
    out = tmp_path / "eval"
    assert main(["evaluate", baseline, "eval.epochs=2", "eval.seeds=[0,1]", "eval.arch=convnet2-w8",
                 "--out", str(out), "--quiet"]) == 0
    import json

    result = next(iter(json.loads((out / "evaluation.json").read_text())["results"].values()))
    assert result["n"] == 2 and result["images"] == 20 and 0 <= result["final_acc_mean"] <= 1
    broken = tmp_path / "broken"
    shutil.copytree(baseline, broken)
    (broken / "data" / "stage-000" / "part-00000.parquet").write_bytes(b"x")
    assert main(["verify", str(broken)]) == 1
    assert "part-00000.parquet" in capsys.readouterr().out


def test_seed_increment_from_a_parquet_source(baseline, tiny_generator_dir, reference_file, tmp_path):
    from lgd_ray.engine.distill import distill

    out = str(tmp_path / "seeded")
    source = str(Path(baseline) / "data" / "stage-000")  # a user's Parquet set: here, another run's seed increment
    cfg = load_config(None, tiny_overrides(tiny_generator_dir, reference_file) + [f"distill.seed_source={source}"])
    distill(cfg, out, progress=False)
    got, want = rows(out), rows(baseline)
    assert set(got) == expected_keys()
    assert {k: v for k, v in got.items() if k[0] == 0} == {k: v for k, v in want.items() if k[0] == 0}
    seeded = OutputDir(out).read_rows([0], columns=["seed", "latent"])
    assert set(seeded.column("seed").to_pylist()) == {-1}  # copied, not sampled


def test_student_accuracy_is_read_on_the_selection_split(baseline):
    """θ_0's recorded accuracy (what ASHA and best.yaml choose by) is its accuracy on the selection split
    carved from train, recomputed here from the saved weights: not the test split the final table reads."""
    from safetensors.torch import load_file

    from lgd_ray.core.data import load_part
    from lgd_ray.core.students import build_student
    from lgd_ray.core.train import evaluate_accuracy

    cfg = load_config(None, [])
    classes = [str(i) for i in range(10)]
    record = next(json.loads(line) for line in (Path(baseline) / "metrics.jsonl").read_text().splitlines()
                  if json.loads(line).get("event") == "student")
    assert "val_acc" not in record and record["stage"] == 0
    net = build_student("convnet2-w8", 10, 8, 1)
    net.load_state_dict(load_file(str(Path(baseline) / "checkpoints" / "stage=000" / "model.safetensors")))
    net.eval()
    select_acc, select_loss = evaluate_accuracy(net, load_part(cfg.data, "select", classes))
    test_acc, _ = evaluate_accuracy(net, load_part(cfg.data, "test", classes))
    assert record["select_acc"] == pytest.approx(select_acc, abs=1e-6)
    assert record["select_loss"] == pytest.approx(select_loss, rel=1e-5)
    assert select_acc != test_acc  # the two splits differ (360 vs ~144 images): the check can tell them apart


def test_precision_is_recorded_and_a_resume_on_other_hardware_is_refused(baseline, tiny_generator_dir,
                                                                         reference_file, tmp_path):
    """`generator.dtype: auto` is resolved by the sampler actors on their device (fp32 here, on CPU) and
    recorded with the run; rerunning on hardware that resolves otherwise would mix bf16 and fp32 parts
    under one config hash, so it is refused before a part is written."""
    from lgd_ray.engine.distill import distill

    expected = {"device": "cpu", "dtype": "fp32"}
    assert json.loads((Path(baseline) / "config.json").read_text())["precision"] == expected
    assert OutputDir(baseline).manifest(1)["inputs"]["precision"] == expected
    run = tmp_path / "moved"
    shutil.copytree(baseline, run)
    saved = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**saved, "precision": {"device": "cuda", "dtype": "bf16"}}))
    (run / "data" / "stage-001" / "_manifest.json").unlink()
    first = sorted((run / "data" / "stage-001").glob("part-*.parquet"))[0]
    first.unlink()
    before = {p: p.read_bytes() for p in (run / "data" / "stage-001").iterdir()}
    with pytest.raises(UserError, match="generator.dtype") as e:
        distill(load_config(None, tiny_overrides(tiny_generator_dir, reference_file)), str(run), progress=False)
    assert "bf16 on cuda" in str(e.value) and "fp32 on cpu" in str(e.value)
    assert {p: p.read_bytes() for p in (run / "data" / "stage-001").iterdir()} == before and not first.exists()


def test_evaluation_tasks_ask_for_the_gpus_configured(baseline, tmp_path):
    """On a cluster with (declared) GPUs, `ray.gpus_per_task` gives every evaluate, redundancy and cartography
    task a GPU: the reports record what Ray assigned to each task. Its own Ray instance, one declared GPU."""
    run = tmp_path / "run"
    shutil.copytree(baseline, run)
    code = f"""
import json, ray
ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False,
         object_store_memory=128 * 1024 * 1024, configure_logging=False)
from lgd_ray.cli import main
run = {str(run)!r}
assert main(["evaluate", run, "eval.epochs=1", "eval.seeds=[0]", "ray.gpus_per_task=1", "--quiet"]) == 0
assert main(["redundancy", run, "--epochs", "1", "--seeds", "0", "--gpus-per-task", "1", "--quiet"]) == 0
assert main(["cartography", run, "--epochs", "1", "--gpus-per-task", "0.5", "--quiet"]) == 0
"""
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "RAY_ADDRESS": ""}, timeout=600)
    evaluation = next(iter(json.loads((run / "evaluation.json").read_text())["results"].values()))
    assert evaluation["placement"] == {"devices": ["cpu"], "gpus_per_task": [1.0]}  # torch sees none; Ray gave one
    assert json.loads((run / "redundancy.json").read_text())["placement"]["gpus_per_task"] == [1.0]
    assert json.loads((run / "cartography.json").read_text())["placement"]["gpus_per_task"] == [0.5]


def test_gpus_per_task_follows_the_train_workers_by_default():
    assert load_config(None, []).ray.task_gpus() == 0.0
    assert load_config(None, ["ray.gpus_per_train_worker=1"]).ray.task_gpus() == 1.0
    assert load_config(None, ["ray.gpus_per_train_worker=1", "ray.gpus_per_task=0"]).ray.task_gpus() == 0.0
    with pytest.raises(UserError, match="ray.gpus_per_task"):
        load_config(None, ["ray.gpus_per_task=-1"])


def test_samplers_live_across_stages_when_the_cluster_holds_training_beside_them():
    from lgd_ray.engine.distill import samplers_fit_beside_training

    paper = load_config(None, ["ray.samplers=64", "ray.gpus_per_sampler=1", "ray.train_workers=8",
                               "ray.gpus_per_train_worker=1"])
    assert samplers_fit_beside_training(paper, {"CPU": 8 * 96.0, "GPU": 72.0})
    assert not samplers_fit_beside_training(paper, {"CPU": 8 * 96.0, "GPU": 64.0})  # training needs their GPUs
    laptop = load_config(None, ["ray.samplers=2"])  # half a CPU each: 2 × 0.5 + 1 Train worker fit 2 CPUs
    assert samplers_fit_beside_training(laptop, {"CPU": 2.0})
    whole = load_config(None, ["ray.samplers=2", "ray.cpus_per_sampler=1"])
    assert not samplers_fit_beside_training(whole, {"CPU": 2.0})
    assert samplers_fit_beside_training(load_config(None, ["ray.samplers=1"]), {"CPU": 2.0})
    # what is free decides at each stage: a cluster whose other jobs hold CPUs cannot also train
    from lgd_ray.engine.distill import training_fits

    one = load_config(None, ["ray.samplers=1"])
    assert training_fits(one, {"CPU": 1.0}) and not training_fits(one, {"CPU": 0.98})  # 2 sweep heads hold 0.02
    assert not training_fits(paper, {"CPU": 700.0, "GPU": 7.0}) and training_fits(paper, {"CPU": 700.0, "GPU": 8.0})
