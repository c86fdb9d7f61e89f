"""The from-scratch generator's training as one Ray task (`lgd-ray train-generator`, and the demo on a
folder): under `ray job submit` the driver runs on the head node, which the shipped clusters give no
GPU, so the training asks Ray for the GPU an evaluation task asks for (`ray.task_gpus()`) and runs
where one is. If its worker process or its node dies, Ray retries the task (`max_retries`); the
training is seeded, so the retry makes the same weights.

The task sends its steps to the driver through a small queue actor, for the driver's progress bar.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import ray
import torch
from ray.util.queue import Empty, Queue

from ..core.data import ImageSet
from ..core.progress import progress_bar
from ..core.train_generator import GeneratorTrainSettings, train_generator
from .eval_tasks import placement

RETRIES = 3  # a lost worker or node: Ray runs the whole training again (it is seeded, so same weights)
REPORT_EVERY_S = 0.5  # the task's progress messages to the driver, at most this often


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@ray.remote(max_retries=RETRIES)
def train_generator_task(data: ImageSet, settings: GeneratorTrainSettings, extra_meta: dict | None,
                         keep_last: bool, save: bool, queue: Queue | None) -> dict:
    """Trains in this worker on the device Ray gave it; returns the saved folder's files (EMA weights
    and, with `keep_last`, the last iterate's) so the driver writes them wherever --out is."""
    # Ray sets one thread per CPU it assigned; the CPU run uses them all, as in-process training did.
    torch.set_num_threads(max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))))
    attempt = os.urandom(4).hex()  # tells the driver's bar that a retry started over
    last_put = [0.0]

    def report(step: int) -> None:
        now = time.monotonic()
        if queue is not None and (now - last_put[0] > REPORT_EVERY_S or step == settings.steps):
            last_put[0] = now
            queue.put_nowait((attempt, step))

    with tempfile.TemporaryDirectory() as tmp:
        last = str(Path(tmp) / "last") if keep_last else None
        where = placement()  # kept in the generator's lgd_ray.json: a CPU-trained generator on a GPU cluster shows
        gen = train_generator(data, settings, device=where["device"], progress=False,
                              extra_meta={**(extra_meta or {}), "placement": where},
                              last_iterate_path=last, on_step=report)
        files = last_files = None
        if save:
            gen.save_pretrained(str(Path(tmp) / "ema"))
            files = _files(Path(tmp) / "ema")
            last_files = _files(Path(last)) if last else None
    return {"train": gen.info.extra["train"], "files": files, "last_files": last_files, "placement": where}


def task_cpus(gpus: float) -> float:
    """CPUs the training asks for: one beside a GPU; on CPU the cores of the largest node, up to the
    threads torch would use in-process, so a laptop's training is as fast (and as exact) as before."""
    if gpus > 0:
        return 1.0
    largest = max((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n["Alive"]), default=1.0)
    return float(max(1, min(int(largest), torch.get_num_threads())))


def run_generator_training(data: ImageSet, settings: GeneratorTrainSettings, *, gpus: float, progress: bool,
                           extra_meta: dict | None = None, keep_last: bool = False, save: bool = True,
                           on_step: Callable[[str, int], None] | None = None) -> dict:
    """Trains the generator in one Ray task holding `gpus` GPUs and waits for it, with a progress bar.
    Returns the task's dict: "train" (settings, steps done, seconds), "files" / "last_files" (the saved
    folders, relative path -> bytes), "placement" (where it ran). `on_step(attempt, step)`: the driver's
    view of the steps, for tests."""
    queue = Queue(actor_options={"num_cpus": 0}) if progress or on_step else None
    opts = {"num_cpus": task_cpus(gpus), **({"num_gpus": gpus} if gpus else {})}
    task = train_generator_task.options(**opts)
    ref = task.remote(ray.put(data), settings, extra_meta, keep_last, save, queue)
    bar, current = None, None
    if progress:

        bar = progress_bar(total=settings.steps, desc="train-generator", unit="step", file=sys.stderr)
    try:
        while True:
            ready, _ = ray.wait([ref], timeout=0.2)
            while queue is not None:
                try:
                    attempt, step = queue.get_nowait()
                except Empty:
                    break
                if on_step is not None:
                    on_step(attempt, step)
                if bar is not None:
                    if attempt != current:  # the first step, or a retry from step 0: the rate starts here
                        bar.reset(total=settings.steps)
                        current = attempt
                    bar.update(step - bar.n)  # update, not refresh: the bar keeps tqdm's mininterval
            if ready:
                return ray.get(ref)
    finally:
        if bar is not None:
            bar.close()
        if queue is not None:
            queue.shutdown()


def write_folder(files: dict[str, bytes], folder: str | Path) -> None:
    """The task's saved files into `folder` (a new or empty one), all at once: they are written beside it
    and renamed into place, so a driver killed mid-write leaves no folder that looks finished (the demo
    takes a folder with lgd_ray.json as a trained generator)."""
    folder = Path(folder)
    partial = folder.parent / f".{folder.name}.partial"
    folder.parent.mkdir(parents=True, exist_ok=True)
    if partial.exists():
        shutil.rmtree(partial)
    for name, blob in files.items():
        path = partial / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)
    if folder.exists():
        folder.rmdir()  # empty (the CLI checked --out); a non-empty one is an error, not overwritten
    os.replace(partial, folder)
