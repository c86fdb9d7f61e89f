"""`lgd-ray bench`: what a guided step costs, and what the Ray sampler pool costs, measured in one run.

Every figure compares like with like inside one process tree: the same ChunkWorker class runs
in-process and as 1 or 2 actors, on the same chunks, with one torch thread per worker.
Report ratios from one run; absolute times mean something only on the machine that made them.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..core.config import Config
from ..core.generator import create_generator
from ..core.sampler import SampleSettings, denoise, sample_items
from ..core.students import build_student
from ..core.work import chunk, stage_items
from ..engine.store import OutputDir


@dataclass
class BenchSpec:
    arch: str = "unet-tiny"  # generator architecture (random weights), e.g. dit-xl-2-256 on a GPU
    image_size: int = 8
    channels: int = 1
    num_classes: int = 10
    student: str = "convnet2-w32"
    steps: int = 25
    window: tuple[int, int] = (5, 20)
    k: int = 3
    slots: int = 40  # work items per throughput run (x k candidates)
    chunk_size: int = 4
    batch_size: int = 12
    repeats: int = 3
    cfg_scale: float = 1.0  # DiT-XL/2 runs use 4.0: two denoiser passes per step
    per_image_slots: int = 10  # slots for the full-sampling cost per kept image
    student_size: int | None = None  # side the students score at (the jobs: 224 for 256 px samples)

    @property
    def student_px(self) -> int:
        return self.student_size or self.image_size


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def step_costs(spec: BenchSpec, device: torch.device) -> dict:
    """Seconds per denoising step, unguided (no autograd) vs guided (forward with grad + one backward)."""
    gen = create_generator(spec.arch, spec.num_classes, spec.image_size, spec.channels).to(device)
    gen.set_scheduler("ddim", spec.steps)
    student = build_student(spec.student, spec.num_classes, spec.student_px, spec.channels, seed=1).to(device).eval().requires_grad_(False)
    reference = build_student(spec.student, spec.num_classes, spec.student_px, spec.channels, seed=2).to(device).eval().requires_grad_(False)
    n = spec.batch_size
    seeds, labels = list(range(n)), torch.arange(n) % spec.num_classes
    one = dict(num_steps=1, k=1, batch_size=n, student_size=spec.student_px, autocast=device.type == "cuda",
               cfg_scale=spec.cfg_scale)
    gen.scheduler.set_timesteps(1)  # a single step at the noisiest timestep
    plain = SampleSettings(**one, window=(0, 0), lam=0.0)
    guided = SampleSettings(**one, window=(0, 0), lam=0.1)
    t_plain, mem_plain = _timed_mem(lambda: denoise(gen, seeds, labels, labels, plain), spec.repeats, device)
    t_guided, mem_guided = _timed_mem(lambda: denoise(gen, seeds, labels, labels, guided, student, reference),
                                      spec.repeats, device)
    with FlopCounterMode(display=False) as counter:
        denoise(gen, seeds, labels, labels, plain)
    flops = counter.get_total_flops()
    out = {"batch": n, "unguided_step_s": t_plain, "guided_step_s": t_guided, "guided_over_unguided": t_guided / t_plain,
           "unguided_step_flops": flops, "unguided_tflops_per_s": flops / t_plain / 1e12}
    if device.type == "cuda":
        out["unguided_peak_memory_gib"], out["guided_peak_memory_gib"] = mem_plain, mem_guided
        peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in torch.cuda.get_device_name()), None)
        if peak:
            out["unguided_fraction_of_bf16_peak"] = out["unguided_tflops_per_s"] / peak
    out["per_image"] = per_image_costs(gen, student, reference, spec, device)
    return out


# Dense bf16 tensor-core peaks (TFLOP/s) of the GPUs the jobs target, for "fraction of peak".
BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0}


def _timed_mem(fn, repeats: int, device: torch.device) -> tuple[float, float | None]:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = _timed(fn, repeats)
    return t, torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None


def per_image_costs(gen, student, reference, spec: BenchSpec, device: torch.device) -> dict:
    """Seconds per kept image of whole sampling runs: unguided (the DiT baseline), LGD κ=1, LGD κ=k."""
    gen.set_scheduler("ddim", spec.steps)
    items = stage_items(1, spec.num_classes, 1)[: spec.per_image_slots]
    common = dict(num_steps=spec.steps, window=spec.window, batch_size=spec.batch_size,
                  student_size=spec.student_px, autocast=device.type == "cuda", cfg_scale=spec.cfg_scale)
    runs = {"unguided": SampleSettings(**common, k=1, lam=0.0), "lgd_k1": SampleSettings(**common, k=1, lam=0.1),
            f"lgd_k{spec.k}": SampleSettings(**common, k=spec.k, lam=0.1)}
    classes = list(range(spec.num_classes))
    out = {}
    for name, s in runs.items():
        t = _timed(lambda: sample_items(gen, items, s, classes, student=student, reference=reference), 1)
        out[f"{name}_s_per_image"] = t / len(items)
    for name in runs:
        out[f"{name}_over_unguided"] = out[f"{name}_s_per_image"] / out["unguided_s_per_image"]
    return out


def throughput(spec: BenchSpec, device: torch.device, actors: list[int]) -> dict:
    """Images/s of guided κ-candidate sampling: in-process, then with each actor count."""
    from ..engine.distill import (  # the settings a real run would use
        stage_params,
        stage_settings,
    )
    from ..engine.run import RunInfo
    from ..engine.sampler_actors import ChunkWorker, SamplerPool

    tmp = tempfile.mkdtemp(prefix="lgd-bench-")
    gen_dir = f"{tmp}/generator"
    create_generator(spec.arch, spec.num_classes, spec.image_size, spec.channels).save_pretrained(gen_dir)
    cfg = Config()
    cfg.generator.path, cfg.generator.num_steps, cfg.generator.batch_size = gen_dir, spec.steps, spec.batch_size
    cfg.student.arch = cfg.reference.arch = spec.student
    cfg.distill.k, cfg.distill.window, cfg.distill.chunk_size = spec.k, list(spec.window), spec.chunk_size
    cfg.data.image_size = spec.student_px
    cfg.ray.gpus_per_sampler = 1.0 if device.type == "cuda" else 0.0
    ref_state = build_student(spec.student, spec.num_classes, spec.student_px, spec.channels, seed=2).state_dict()
    stu_state = build_student(spec.student, spec.num_classes, spec.student_px, spec.channels, seed=1).state_dict()
    chunks = dict(enumerate(chunk(stage_items(1, spec.num_classes, spec.slots // spec.num_classes), spec.chunk_size)))
    settings = stage_settings(cfg, 1)
    run = RunInfo([str(i) for i in range(spec.num_classes)], list(range(spec.num_classes)), spec.channels)
    params = stage_params(cfg, run, settings)
    images = sum(len(c) for c in chunks.values()) * spec.k
    result = {"images": images, "chunks": len(chunks)}

    threads = None if device.type == "cuda" else 1
    worker = ChunkWorker(cfg.to_dict(), f"{tmp}/inproc", ref_state, spec.num_classes, spec.channels, threads)
    worker.set_stage(settings, params, stu_state, None)
    worker.run_chunk(1, 0, chunks[0])  # warm-up
    t = time.perf_counter()
    for idx, items in chunks.items():
        worker.run_chunk(1, idx, items)
    result["in_process_images_per_s"] = images / (time.perf_counter() - t)

    for n in actors:
        pool = SamplerPool(cfg.to_dict(), f"{tmp}/actors{n}", ref_state, spec.num_classes, spec.channels,
                           samplers=n, cpus=1, gpus=cfg.ray.gpus_per_sampler / max(n, 1) if device.type == "cuda" else 0)
        pool.run_stage(1, {0: chunks[0]}, settings, params, stu_state, None)  # actors built and warm
        t = time.perf_counter()
        pool.run_stage(1, chunks, settings, params, stu_state, None)
        result[f"actors_{n}_images_per_s"] = images / (time.perf_counter() - t)
        pool.shutdown()
    if 1 in actors:
        result["pool_overhead_vs_in_process"] = 1 - result["actors_1_images_per_s"] / result["in_process_images_per_s"]
    if 1 in actors and 2 in actors:
        result["scaling_2_over_1"] = result["actors_2_images_per_s"] / result["actors_1_images_per_s"]
    shutil.rmtree(tmp, ignore_errors=True)
    return result


def run_bench(spec: BenchSpec, out: str | None, actors: list[int]) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(1)  # one thread, like each 1-CPU actor
    report = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "spec": spec.__dict__,
              "step": step_costs(spec, device), "throughput": throughput(spec, device, actors)}
    if out:
        OutputDir(out).write_text("bench.json", json.dumps(report, indent=1, default=str))
    return report


def format_report(r: dict) -> str:
    s, t = r["step"], r["throughput"]
    lines = [f"device: {r['device']}; generator {r['spec']['arch']}, κ={r['spec']['k']}, window {r['spec']['window']}",
             f"guided step / unguided step: {s['guided_over_unguided']:.2f}x  "
             f"({s['guided_step_s'] * 1e3:.1f} ms vs {s['unguided_step_s'] * 1e3:.1f} ms, batch {s['batch']})",
             f"unguided step: {s['unguided_tflops_per_s']:.4f} TFLOP/s achieved"
             + (f" = {100 * s['unguided_fraction_of_bf16_peak']:.0f}% of bf16 peak (target >= 40%)" if "unguided_fraction_of_bf16_peak" in s else ""),
             "per kept image, whole sampling run: " + ", ".join(
                 f"{k.removesuffix('_over_unguided')} {v:.2f}x" for k, v in s["per_image"].items() if k.endswith("_over_unguided"))
             + " of unguided (target: full LGD <= 8x)",
             f"sampler throughput ({t['images']} images): in-process {t['in_process_images_per_s']:.1f} img/s"]
    if "guided_peak_memory_gib" in s:
        lines.insert(2, f"peak memory: unguided {s['unguided_peak_memory_gib']:.1f} GiB, guided {s['guided_peak_memory_gib']:.1f} GiB")
    for key, val in t.items():
        if key.startswith("actors_"):
            lines.append(f"  {key.split('_')[1]} actor(s): {val:.1f} img/s")
    if "pool_overhead_vs_in_process" in t:
        lines.append(f"Ray pool overhead vs in-process (1 actor): {100 * t['pool_overhead_vs_in_process']:.1f}%  (target <= 5%)")
    if "scaling_2_over_1" in t:
        lines.append(f"2 actors / 1 actor: {t['scaling_2_over_1']:.2f}x  (target >= 1.7x on 2 cores)")
    return "\n".join(lines)
