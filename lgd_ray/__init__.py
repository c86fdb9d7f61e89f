"""lgd_ray: Learnability-Guided Diffusion dataset distillation on Ray.

Four layers, imported in one direction only (a test checks): `cli` → `apps` / `tune` → `engine` → `core`.

- `core/`: pure torch (generator, guidance, students, training, evaluation); never imports ray.
- `engine/`: schedules the core on Ray (sampler actors, Ray Train, evaluation tasks) and moves weights
  and files (the output store, its previews).
- `tune/`: the Ray Tune sweep: its spec, the trainable, its results.
- `apps/`: the commands built on the engine: demo, bench, activation bench, cost plan, report.
"""

__version__ = "0.1.0"
