"""The generator's training as a Ray task: the weights of in-process training to the bit, the GPU it
asks for, a worker SIGKILLed mid-training retried by Ray to the same weights, and a progress bar that
keeps a log readable."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys

import torch

import lgd_ray.core.train_generator as tg
from lgd_ray.core.generator import load_generator
from lgd_ray.core.progress import progress_bar
from lgd_ray.engine.generator_job import run_generator_training, write_folder

from helpers import quadrant_set, raylet_pid, titled, write_class_folder

SETTINGS = tg.GeneratorTrainSettings(arch="unet-micro", steps=60, batch_size=8, ema=0.9, seed=3)


def _weights(folder) -> dict[str, torch.Tensor]:
    return load_generator(str(folder)).denoiser.state_dict()


def test_a_ray_task_trains_the_weights_in_process_training_makes(ray_session, tmp_path):
    data = quadrant_set(6, seed=0)
    here = tg.train_generator(data, SETTINGS, progress=False).denoiser.state_dict()
    steps: list[int] = []
    done = run_generator_training(data, SETTINGS, gpus=0, progress=False, keep_last=True,
                                  on_step=lambda attempt, step: steps.append(step))
    write_folder(done["files"], tmp_path / "ema")
    write_folder(done["last_files"], tmp_path / "last")
    there = _weights(tmp_path / "ema")
    assert here.keys() == there.keys() and all(torch.equal(here[k], there[k]) for k in here)
    assert any(not torch.equal(here[k], v) for k, v in _weights(tmp_path / "last").items())  # the raw iterate
    assert steps == sorted(steps) and steps[-1] == SETTINGS.steps  # the driver saw the steps, the last included
    meta = json.loads((tmp_path / "ema" / "lgd_ray.json").read_text())
    assert meta["placement"]["device"] == "cpu" and meta["placement"]["gpus"] == 0.0
    assert meta["train"]["steps_done"] == SETTINGS.steps
    assert not list(tmp_path.glob(".*partial"))  # written beside, then renamed into place


def test_a_training_worker_killed_midway_is_retried_to_the_same_weights(ray_session, tmp_path):
    data = quadrant_set(6, seed=0)
    settings = tg.GeneratorTrainSettings(**{**SETTINGS.__dict__, "steps": 400})
    root = raylet_pid(ray_session)
    attempts: dict[str, list[int]] = {}
    killed: list[int] = []

    def kill_the_first_attempt(attempt: str, step: int) -> None:
        attempts.setdefault(attempt, []).append(step)
        if not killed and step < settings.steps:
            (pid,) = titled(root, "ray::train_generator_task")
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    done = run_generator_training(data, settings, gpus=0, progress=False, on_step=kill_the_first_attempt)
    assert killed and len(attempts) == 2, attempts  # the killed attempt and Ray's retry
    first, retry = attempts.values()
    assert first[-1] < settings.steps and retry[-1] == settings.steps
    write_folder(done["files"], tmp_path / "retried")
    undisturbed = tg.train_generator(data, settings, progress=False).denoiser.state_dict()
    retried = _weights(tmp_path / "retried")
    assert all(torch.equal(undisturbed[k], retried[k]) for k in undisturbed)


def test_train_generator_asks_ray_for_the_gpu_configured(tmp_path):
    """Its own Ray instance with one declared GPU: torch sees none, Ray assigns it, the generator records it.
    Its stderr is a pipe, as under `ray job submit`: the bar draws a frame on start and on close, not
    one per step."""
    root = write_class_folder(tmp_path / "data", ("n01440764", "n02102040"), (6, 2))
    out = tmp_path / "gen"
    code = f"""
import ray
ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False,
         object_store_memory=128 * 1024 * 1024, configure_logging=False)
from lgd_ray.cli import main
assert main(["train-generator", "data.name=imagefolder", "data.root={root}", "ray.gpus_per_task=1",
             "--arch", "unet-micro", "--steps", "20", "--batch-size", "4", "--out", {str(out)!r}]) == 0
"""
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}  # the suite silences bars; this test reads one
    got = subprocess.run([sys.executable, "-c", code], env={**env, "RAY_ADDRESS": ""}, timeout=600, check=False,
                         capture_output=True, text=True)
    assert got.returncode == 0, got.stderr[-2000:]
    assert "20 steps on cpu, 1 GPU" in got.stdout
    frames = [f for f in got.stderr.replace("\n", "\r").split("\r") if f.startswith("train-generator:")]
    assert len(frames) <= 4 and "20/20" in frames[-1], frames
    assert json.loads((out / "lgd_ray.json").read_text())["placement"] == {"device": "cpu", "gpus": 1.0, "cpus": 1.0}


def test_a_bar_into_a_log_draws_a_frame_every_30_s_and_on_a_terminal_as_tqdm_does():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    log_bar = progress_bar(range(3), file=io.StringIO(), disable=False)
    term_bar = progress_bar(range(3), file=Terminal(), disable=False)
    assert (log_bar.mininterval, log_bar.maxinterval, term_bar.mininterval, term_bar.maxinterval) == (30, 30, 0.1, 10)
    log_bar.close()
    term_bar.close()
