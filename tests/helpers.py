"""Helpers shared by several test modules (fixtures live in conftest.py): tiny classifiers and data,
the overrides of a tiny distill run, and the bad-input assertion of the CLI."""

from __future__ import annotations

import os
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


def _hub_transformer_config(cfg: dict) -> dict:
    """Rewrite our DiTTransformer2DModel config the way the hub's (diffusers 0.12) one reads."""
    cfg = {k: v for k, v in cfg.items() if k != "norm_eps"}
    cfg.update({"_class_name": "Transformer2DModel", "_diffusers_version": "0.12.0.dev0",
                "cross_attention_dim": None, "num_vector_embeds": None, "only_cross_attention": False,
                "use_linear_projection": False})
    return cfg


HUB_SCHEDULER = {
    "_class_name": "DDIMScheduler", "_diffusers_version": "0.12.0.dev0", "beta_end": 0.02,
    "beta_schedule": "linear", "beta_start": 0.0001, "clip_sample": False, "num_train_timesteps": 1000,
    "prediction_type": "epsilon", "set_alpha_to_one": True, "steps_offset": 0, "trained_betas": None,
}


def write_hub_dit(root: Path, image_size: int = 16, seed: int = 0):
    """A tiny random DiT in the `facebook/DiT-XL-2-256` hub layout (hub-style configs, model_index.json
    with the 1000 ImageNet labels, no project metadata; tiny VAE at latent scale 0.18215, learned σ,
    null class 1000) at `root`; returns the in-memory generator it was written from."""
    import json
    import os

    from timm.data import ImageNetInfo

    from lgd_ray.core.generator import META_FILE, create_generator

    original = create_generator("dit-micro-vae", 1000, image_size, 3, seed=seed)
    original.save_pretrained(root)
    os.remove(root / META_FILE)  # the hub has none: classes must come from the ImageNet convention
    tf = root / "transformer" / "config.json"
    tf.write_text(json.dumps(_hub_transformer_config(json.loads(tf.read_text())), indent=2))
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(HUB_SCHEDULER, indent=2))
    info = ImageNetInfo()
    model_index = {
        "_class_name": "DiTPipeline", "_diffusers_version": "0.12.0.dev0",
        "id2label": {str(i): info.index_to_description(i) for i in range(1000)},
        "scheduler": ["diffusers", "KarrasDiffusionSchedulers"],
        "transformer": ["diffusers", "Transformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (root / "model_index.json").write_text(json.dumps(model_index, indent=2))
    return original


def free_port() -> int:
    """A TCP port free on this machine now, for a private Ray node or dashboard."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def submit_job(cmd: list[str], env: dict, timeout: float):
    """Run a `ray job submit ...` command, retried while the head's job agent is not up yet (it comes
    a little after the jobs API answers); returns the last CompletedProcess."""
    import subprocess
    import time

    for _ in range(30):
        job = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if "No available agent" not in job.stdout + job.stderr:
            return job
        time.sleep(2)
    return job


def write_class_folder(root: Path, classes: tuple[str, ...], per_split: tuple[int, int], size: int = 8) -> Path:
    """root/{train,val}/<class>/img_NNN.png, per_split images each; class c is bright in channel c, so
    a small net learns it in seconds."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in zip(("train", "val"), per_split):
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
                img[:, :, c] += 180
                Image.fromarray(img).save(root / split / name / f"img_{i:03d}.png")
    return root


def parent_pids() -> dict[int, int]:
    """pid -> parent pid of every process now (from /proc)."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    table[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    return table


def descendants(*roots: int, table: dict[int, int] | None = None) -> set[int]:
    """Every process below `roots` (a test's raylet, a test cluster's processes), so a kill never reaches
    another Ray session; `table` is a parent_pids() already taken."""
    children: dict[int, list[int]] = {}
    for pid, ppid in (parent_pids() if table is None else table).items():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    stack = list(roots)
    while stack:
        for c in children.get(stack.pop(), []):
            if c not in found:
                found.add(c)
                stack.append(c)
    return found


def raylet_pid(ray_session) -> int:
    """The raylet of this test run's private Ray session: the root below which a test may kill."""
    return ray_session._private.worker._global_node.all_processes["raylet"][0].process.pid


def titled(root: int, title: str) -> list[int]:
    """The processes below `root` whose title (Ray's `ray::Class.method`) starts with `title`."""
    pids = []
    for pid in sorted(descendants(root)):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().split(b"\0")[0].decode(errors="replace").startswith(title):
                    pids.append(pid)
        except OSError:
            pass
    return pids


def parts_and_manifests(out) -> dict[str, bytes]:
    """Every file a reader of <out>/data meets, by name; no temp file may be among them."""
    from pathlib import Path

    out = Path(out)
    files = {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "data").rglob("*")) if p.is_file()}
    assert all(n.endswith((".parquet", "_manifest.json")) for n in files), sorted(files)
    return files
