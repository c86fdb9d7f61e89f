"""`generator.batch_size: auto`: the arithmetic from measured bytes to a batch, the config, the CPU fallback."""

from __future__ import annotations

import pytest
import torch

from lgd_ray.core.batching import (
    CPU_BATCH_SIZE,
    _probe_batch,
    auto_batch_size,
    max_batch,
    probe_step_bytes,
)
from lgd_ray.core.config import load_config
from lgd_ray.core.errors import UserError
from lgd_ray.core.generator import create_generator
from lgd_ray.core.sampler import SampleSettings
from lgd_ray.core.students import build_student
from lgd_ray.engine.distill import stage_settings

GIB = 2**30


def test_largest_batch_that_fits_in_whole_slots():
    # 80 GiB free, 10% kept back = 72 GiB; 4 GiB fixed; 1 GiB per image -> 68 images fit -> 66 = 22 slots of 3
    assert max_batch(80 * GIB, 4 * GIB, GIB, k=3, cap=10**6) == 66
    assert max_batch(80 * GIB, 4 * GIB, GIB, k=1, cap=10**6) == 68
    assert max_batch(80 * GIB, 4 * GIB, GIB, k=3, cap=24) == 24  # never more than a chunk
    assert max_batch(80 * GIB, 4 * GIB, GIB, k=3, cap=10**6, safety_fraction=0.0) == 75


def test_when_not_even_one_slot_fits():
    assert max_batch(10 * GIB, 7 * GIB, GIB, k=3, cap=24, safety_fraction=0.0) == 3
    assert max_batch(10 * GIB, 8 * GIB, GIB, k=3, cap=24, safety_fraction=0.0) == 2  # fewer than κ, still runs
    assert max_batch(10 * GIB, 12 * GIB, GIB, k=3, cap=24) == 1


def test_free_per_image_and_bad_arguments():
    assert max_batch(GIB, 0, 0, k=3, cap=24) == 24
    with pytest.raises(ValueError):
        max_batch(GIB, 0, 1, k=0, cap=24)


def test_auto_in_the_config_and_on_cpu(tiny_generator_dir):
    cfg = load_config(None, ["generator.batch_size=auto", "distill.k=3", "distill.chunk_size=4"])
    s = stage_settings(cfg, 1)
    assert s.auto_batch and s.batch_size == CPU_BATCH_SIZE
    assert not stage_settings(load_config(None, ["generator.batch_size=24"]), 1).auto_batch
    for bad in ("big", 0, True):
        with pytest.raises(UserError, match="generator.batch_size"):
            load_config(None, [f"generator.batch_size={bad}"])
    gen = create_generator("unet-micro", 10, 8, 1)
    assert auto_batch_size(gen, s, cap=12) == 12  # CPU: the fallback, capped at a chunk
    assert auto_batch_size(gen, s, cap=200) == CPU_BATCH_SIZE


@pytest.mark.gpu
def test_probe_extrapolates_the_measured_peak():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    gen = create_generator("dit-micro-vae", 10, 16, 3).to("cuda")
    gen.set_scheduler("ddim", 2)
    nets = [build_student("convnet2-w8", 10, 16, 3, seed=i).cuda().eval().requires_grad_(False) for i in (1, 2)]
    s = SampleSettings(num_steps=2, lam=0.1, k=2, window=(0, 1), student_size=16, autocast=True, cfg_scale=2.0)
    fixed, per_image = probe_step_bytes(gen, s, *nets, batches=(2, 4))
    assert per_image > 0
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    _probe_batch(gen, s, *nets, 16)
    torch.cuda.synchronize()
    measured = torch.cuda.max_memory_allocated() - base
    assert measured == pytest.approx(fixed + 16 * per_image, rel=0.25)  # linear extrapolation holds
    assert auto_batch_size(gen, s, 10**4, *nets) % s.k == 0


def test_worker_resolves_auto_to_at_most_a_chunk(tiny_generator_dir, tmp_path):
    from lgd_ray.engine.sampler_actors import ChunkWorker
    from lgd_ray.engine.store import StageParams

    cfg = load_config(None, [f"generator.path={tiny_generator_dir}", "generator.batch_size=auto", "distill.k=3",
                             "distill.chunk_size=4"])
    state = build_student(cfg.reference.arch, 10, 8, 1, seed=2).state_dict()
    worker = ChunkWorker(cfg.to_dict(), str(tmp_path), state, 10, 1)
    s = stage_settings(cfg, 1)
    params = StageParams([str(i) for i in range(10)], list(range(10)), s.k, s.lam, s.omega, s.gamma)
    worker.set_stage(s, params, state, None)
    assert worker.settings.batch_size == 12 and not worker.settings.auto_batch  # CPU: 64, capped at 4 slots x 3


def test_the_worker_decides_precision_on_its_own_device(tiny_generator_dir, tmp_path, monkeypatch):
    """A CPU-only driver (a cluster's head) says nothing about `auto`: a GPU actor resolves bf16, a CPU one
    fp32, and the worker's settings follow its own resolution, whatever the driver's torch sees."""
    from lgd_ray.engine.sampler_actors import ChunkWorker, resolve_precision
    from lgd_ray.engine.store import StageParams

    assert resolve_precision("auto", torch.device("cuda")) == {"device": "cuda", "dtype": "bf16"}
    assert resolve_precision("auto", torch.device("cpu")) == {"device": "cpu", "dtype": "fp32"}
    assert resolve_precision("bf16", torch.device("cpu"))["dtype"] == "bf16"
    assert resolve_precision("fp32", torch.device("cuda"))["dtype"] == "fp32"
    cfg = load_config(None, [f"generator.path={tiny_generator_dir}", "ray.gpus_per_sampler=1"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the driver believes it has a GPU ...
    s = stage_settings(cfg, 1)
    assert not s.autocast  # ... and still does not decide `auto`
    monkeypatch.undo()
    state = build_student(cfg.reference.arch, 10, 8, 1, seed=2).state_dict()
    worker = ChunkWorker(cfg.to_dict(), str(tmp_path), state, 10, 1)  # no CUDA here: the worker runs on CPU
    worker.set_stage(s, StageParams([str(i) for i in range(10)], list(range(10)), s.k, s.lam, s.omega, s.gamma),
                     state, None)
    assert worker.placement()["dtype"] == "fp32" and not worker.settings.autocast
    bf16 = load_config(None, [f"generator.path={tiny_generator_dir}", "generator.dtype=bf16"])
    assert stage_settings(bf16, 1).autocast


def test_a_fixed_batch_that_cannot_fit_is_refused_with_the_batch_that_would():
    from lgd_ray.core.batching import check_fixed_batch

    # DiT-XL/2 + sd-vae-ft-mse in bf16 (README): 948 MiB fixed, 1,718 MiB per image; an A100-40GB has ~39 GiB free
    mib = 2**20
    check_fixed_batch(12, 39 * GIB, 948 * mib, 1718 * mib, k=3, cap=24)  # 12 images fit
    with pytest.raises(UserError, match=r"generator.batch_size: 24 images need about 41.\d GiB .*at most 18"):
        check_fixed_batch(24, 39 * GIB, 948 * mib, 1718 * mib, k=3, cap=24)


def test_a_user_error_inside_an_actor_reaches_the_driver_as_one_line(ray_session):
    import ray

    from lgd_ray.engine.sampler_actors import user_errors

    @ray.remote
    def refuse():
        raise UserError("generator.batch_size", "too large", "use auto")

    with pytest.raises(UserError) as e:
        user_errors(lambda: ray.get(refuse.remote()))
    assert str(e.value) == "generator.batch_size: too large (use auto)"
