"""The benchmark's bookkeeping (its figures are read from `lgd-ray bench`, never asserted as timings)."""

from __future__ import annotations

import torch

from lgd_ray.apps.bench import BenchSpec, format_report, step_costs


def test_step_costs_report_what_the_plan_reads():
    spec = BenchSpec(arch="unet-micro", steps=4, window=(0, 3), k=2, batch_size=4, repeats=1, per_image_slots=2)
    s = step_costs(spec, torch.device("cpu"))
    assert s["batch"] == 4 and s["unguided_step_s"] > 0 and s["guided_step_s"] > 0
    assert s["unguided_step_flops"] > 0  # counted, not assumed
    assert set(s["per_image"]) >= {"unguided_s_per_image", "lgd_k1_s_per_image", "lgd_k2_s_per_image",
                                   "lgd_k2_over_unguided"}
    assert s["per_image"]["unguided_over_unguided"] == 1.0
    report = {"device": "cpu", "spec": spec.__dict__, "step": s,
              "throughput": {"images": 8, "in_process_images_per_s": 1.0, "actors_1_images_per_s": 1.0}}
    assert "guided step / unguided step" in format_report(report)


def test_memory_bench_reports_every_variant(tmp_path):
    from lgd_ray.apps.activation_bench import MemorySpec, run_memory_bench

    r = run_memory_bench(MemorySpec(repeats=1), str(tmp_path))
    assert set(r["runs"]) == {"fp32", "fp32_vae_ckpt", "bf16", "bf16_vae_ckpt"}
    for run in r["runs"].values():
        assert run["per_image"]["vae_decoder"] > 0 and run["h100_80gb_derived_max_batch"] >= 1
    assert r["runs"]["bf16_vae_ckpt"]["recompute_per_image"] > 0  # the largest block, rematerialised
    assert {"decoder_overhead", "memory_factor", "pays"} <= set(r["vae_checkpointing"])
    assert "derived max batch" in (tmp_path / "memory.md").read_text()
