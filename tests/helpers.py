"""Helpers shared by several test modules (fixtures live in conftest.py): tiny classifiers and data,
the overrides of a tiny distill run, and the bad-input assertion of the CLI."""

from __future__ import annotations

from pathlib import Path

import torch

from lgd_ray.cli import main

ROOT = Path(__file__).resolve().parent.parent


def tiny_classifier(seed: int, num_classes: int = 10, channels: int = 1) -> torch.nn.Module:
    from lgd_ray.core.students import build_student

    torch.manual_seed(seed)
    return build_student("convnet2-w8", num_classes, 8, channels).eval().requires_grad_(False)


def quadrant_set(n_per_class: int, seed: int, size: int = 8):
    """4 classes, each a bright quadrant on noise: linearly separable, learnable in seconds."""
    from lgd_ray.core.data import ImageSet

    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(4).repeat_interleave(n_per_class)
    images = torch.rand(len(labels), 1, size, size, generator=g) * 0.4
    h = size // 2
    for i, y in enumerate(labels.tolist()):
        r, c = divmod(y, 2)
        images[i, 0, r * h:(r + 1) * h, c * h:(c + 1) * h] += 0.6
    return ImageSet((images * 255).round().to(torch.uint8), labels, ["a", "b", "c", "d"])


def tiny_overrides(generator_dir: str, reference: str) -> list[str]:
    return [f"generator.path={generator_dir}", "generator.num_steps=4", "generator.batch_size=4",
            "student.arch=convnet2-w8", "student.epochs=2", "reference.arch=convnet2-w8", f"reference.path={reference}",
            "distill.stages=1", "distill.ipc_seed=1", "distill.ipc_per_stage=1", "distill.k=2", "distill.lam=0.2",
            "distill.gamma=0.1", "distill.window=[0,3]", "distill.chunk_size=2", "ray.samplers=1"]


def assert_refused(command: str, args: list[str], field: str, tmp_path, capsys, monkeypatch) -> None:
    """`lgd-ray COMMAND jobs/demo.yaml ARGS --out DIR` exits 2 with one line naming `field` and the fix
    (in brackets), before anything is written."""
    monkeypatch.setenv("RAY_ADDRESS", "")
    out = tmp_path / "out"
    code = main([command, str(ROOT / "jobs" / "demo.yaml"), *args, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and err.startswith(f"lgd-ray: error: {field}: ")
    assert "(" in err  # the fix, in brackets
    assert not out.exists()
