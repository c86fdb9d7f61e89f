"""Failures a run survives, caused for real: a sampler actor SIGKILLed mid-chunk or SIGSTOPped (hung),
a Ray Train worker SIGKILLed mid-training, the driver SIGKILLed while a student trains. Each time the
run finishes by itself (or, for the driver, on the rerun) with the bytes of an undisturbed run, and
says what it lost in metrics.jsonl. Node loss on a two-node cluster: tests/test_node_loss.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from lgd_ray.core.config import load_config
from lgd_ray.engine.store import OutputDir, load_weights

from helpers import parts_and_manifests, raylet_pid, tiny_overrides, titled


class Saboteur(threading.Thread):
    """Once `ready()` holds, send `sig` to the first process titled `title` below `root`, once."""

    def __init__(self, root: int, title: str, sig: int, ready: Callable[[], bool], timeout: float = 300):
        super().__init__(daemon=True)
        self.root, self.title, self.sig, self.ready, self.timeout = root, title, sig, ready, timeout
        self.victim: int | None = None
        self.at: float | None = None

    def run(self) -> None:
        deadline = time.time() + self.timeout
        while time.time() < deadline and self.victim is None:
            if self.ready():
                pids = titled(self.root, self.title)
                if pids:
                    os.kill(pids[0], self.sig)
                    self.victim, self.at = pids[0], time.monotonic()
                    return
            time.sleep(0.01)


def failures(out: Path) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("event") == "failure"]


def test_a_hung_and_a_killed_sampler_actor_cost_time_not_bytes(baseline, tiny_generator_dir, reference_file,
                                                              tmp_path, ray_session, capfd):
    """Stage 0: one of two sampler actors is SIGSTOPped mid-chunk (hung: alive to Ray, finishing nothing);
    after ray.chunk_timeout_s the pool kills it, Ray restarts it and retries its chunks. Stage 1 (guided,
    so the restarted actor needs θ_0 again): the other kind of loss, a SIGKILL mid-chunk. The run ends
    by itself with every part and manifest byte-identical to the one-sampler baseline."""
    from lgd_ray.engine.distill import distill

    out = tmp_path / "sabotaged"
    root = raylet_pid(ray_session)
    hang = Saboteur(root, "ray::ChunkWorker.run_chunk", signal.SIGSTOP,
                    lambda: (out / "data" / "stage-000").is_dir())
    kill = Saboteur(root, "ray::ChunkWorker.run_chunk", signal.SIGKILL,
                    lambda: (out / "checkpoints" / "stage=000" / "model.safetensors").exists())
    hang.start()
    kill.start()
    cfg = load_config(None, [*tiny_overrides(tiny_generator_dir, reference_file), "ray.samplers=2",
                             "ray.chunk_timeout_s=20"])
    t0 = time.monotonic()
    try:
        distill(cfg, str(out), progress=False)
    finally:
        if hang.victim:
            try:
                os.kill(hang.victim, signal.SIGKILL)  # never leave a stopped process behind
            except ProcessLookupError:
                pass
    wall = time.monotonic() - t0
    assert hang.victim and kill.victim, "the saboteurs found no chunk to interrupt"
    assert parts_and_manifests(out) == parts_and_manifests(Path(baseline))
    events = failures(out)
    kinds = [(e["kind"], e["stage"]) for e in events]
    assert ("sampler_actor_hung", 0) in kinds and ("sampler_actor_restarted", 1) in kinds, events
    hung = next(e for e in events if e["kind"] == "sampler_actor_hung")
    assert 1 <= len(hung["chunks"]) <= 2  # only the hung actor's chunks in flight were redone
    for e in events:
        if e["kind"] == "sampler_actor_restarted":
            assert 1 <= len(e["chunks_retried"]) <= 2 and e["new_pid"] != e["pid"]
    assert "sampler_actor_gone" not in {e["kind"] for e in events}  # no actor used up its restarts
    # 2 samplers + 1 Train worker exceed 2 CPUs: the actors were closed for training and started anew;
    # the baseline's one sampler fits beside the Train worker and lived through both stages
    def pools(folder) -> set:
        return {tuple(a["pid"] for a in e["actors"]) for e in map(json.loads, (Path(folder) / "metrics.jsonl")
                .read_text().splitlines()) if e.get("event") == "sample"}

    assert len(pools(out)) == 2 and len(pools(baseline)) == 1
    err = capfd.readouterr().err
    assert "recovered: sampler actor" in err and "ray.chunk_timeout_s" in err
    def walls(folder) -> list[float]:
        return [round(e["wall_s"], 1) for e in map(json.loads, (Path(folder) / "metrics.jsonl").read_text().splitlines())
                if e.get("event") == "sample"]

    print(f"sabotaged run {wall:.1f} s; sampling stages 0, 1: {walls(out)} s against {walls(baseline)} s "
          f"undisturbed (one sampler); a hang costs ray.chunk_timeout_s ({cfg.ray.chunk_timeout_s:g} s) plus a restart")


LONG_STUDENT = ["student.epochs=20", "ray.checkpoint_every=1"]  # a checkpoint an epoch: room to strike between


@pytest.fixture(scope="module")
def long_student(baseline, tiny_generator_dir, reference_file, tmp_path_factory):
    """θ_0 of the baseline's stage 0 trained undisturbed for 20 epochs with Ray Train (the reference
    the interrupted runs must reproduce), and the config it was trained with."""
    from lgd_ray.engine.run import resolve_run
    from lgd_ray.engine.train_job import train_with_ray

    cfg = load_config(None, [*tiny_overrides(tiny_generator_dir, reference_file), *LONG_STUDENT])
    out = tmp_path_factory.mktemp("long") / "out"
    shutil.copytree(Path(baseline) / "data", out / "data")
    run = resolve_run(cfg)
    t0 = time.monotonic()
    weights, _ = train_with_ray(cfg, OutputDir(str(out)), role="student", name="student-stage=000",
                                class_ids=run.class_ids, in_channels=run.in_channels, stages=[0], init=None,
                                seed=cfg.seed)
    return cfg, weights, time.monotonic() - t0


def registered_checkpoint(out: Path) -> bool:
    """Whether Ray Train has registered an epoch checkpoint of the run (its checkpoint manager's snapshot
    names one). A checkpoint folder alone is not enough: a worker uploads it before the controller
    takes the report, and a kill in between resumes from the one before."""
    for snapshot in (out / "_ray_train").glob("*/checkpoint_manager_snapshot.json"):
        try:
            if json.loads(snapshot.read_text()).get("latest_checkpoint_result"):
                return True
        except (OSError, ValueError):
            pass  # being written
    return False


def test_a_killed_train_worker_resumes_from_its_last_epoch_checkpoint(long_student, baseline, tmp_path,
                                                                      ray_session):
    """SIGKILL the Ray Train worker after a few epoch checkpoints: FailureConfig restarts the worker
    group, which resumes from the last checkpoint; θ_0 ends bit-identical (CPU) to the undisturbed run."""
    from lgd_ray.engine.run import resolve_run
    from lgd_ray.engine.train_job import train_with_ray

    cfg, expected, undisturbed_s = long_student
    out = tmp_path / "out"
    shutil.copytree(Path(baseline) / "data", out / "data")
    kill = Saboteur(raylet_pid(ray_session), "ray::RayTrainWorker", signal.SIGKILL, lambda: registered_checkpoint(out))
    kill.start()
    run = resolve_run(cfg)
    t0 = time.monotonic()
    weights, metrics = train_with_ray(cfg, OutputDir(str(out)), role="student", name="student-stage=000",
                                      class_ids=run.class_ids, in_channels=run.in_channels, stages=[0], init=None,
                                      seed=cfg.seed)
    assert kill.victim, "the worker finished before it could be killed"
    assert 1 <= metrics["resumed_from_epoch"] < 20
    assert all(torch.equal(expected[k], weights[k]) for k in expected)
    (event,) = failures(out)
    assert event["kind"] == "train_resumed" and event["resumed_from_epoch"] == metrics["resumed_from_epoch"]
    assert not list((out / "_ray_train").glob("*/checkpoint_*"))  # the finished run's scratch is gone
    print(f"Train worker lost: {time.monotonic() - t0 - undisturbed_s:+.1f} s against an undisturbed "
          f"{undisturbed_s:.1f} s")


@pytest.mark.slow  # 1.5 min; the default suite kills the driver mid-sampling (test_pipeline.py)
def test_a_driver_killed_while_a_student_trains_resumes_from_the_epoch_checkpoint(
        long_student, tiny_generator_dir, reference_file, tmp_path, ray_session):
    """SIGKILL the `lgd-ray distill` driver while θ_0 trains; the rerun (same config, so the same Ray Train
    run name) continues from the last epoch checkpoint, not from epoch 0, to the undisturbed θ_0."""
    from lgd_ray.engine.distill import distill

    cfg, expected, undisturbed_s = long_student
    out = tmp_path / "killed"
    overrides = [*tiny_overrides(tiny_generator_dir, reference_file), *LONG_STUDENT]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "TQDM_DISABLE": "1",
           "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "lgd_ray.cli", "distill", *overrides, "--out", str(out), "--quiet"],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None and not registered_checkpoint(out):
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert registered_checkpoint(out), "the driver never reached θ_0's training"
    assert not (out / "checkpoints" / "stage=000").exists(), "killed too late: θ_0 was already written"
    time.sleep(2)  # Ray reaps the dead driver's Train controller and workers
    killed_s = time.monotonic() - t0
    distill(cfg, str(out), progress=False)
    (event,) = [e for e in failures(out) if e["kind"] == "train_resumed"]
    student = next(e for e in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
                   if e.get("event") == "student")
    print(f"driver killed {killed_s:.1f} s in; the rerun trained θ_0 in {student['wall_s']:.1f} s "
          f"(undisturbed {undisturbed_s:.1f} s), resuming at epoch {event['resumed_from_epoch']} of 20")
    assert event["resumed_from_epoch"] >= 1  # not from epoch 0
    got = load_weights(OutputDir(str(out)), "checkpoints/stage=000/model.safetensors")
    assert all(torch.equal(expected[k], got[k]) for k in expected)
