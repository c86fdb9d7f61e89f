"""jobs/ and clusters/: every job config validates; the paper jobs follow METHOD.md; every cluster file
parses, names the pinned Ray, installs the pinned torch, and keeps the dashboard off the internet."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import tomllib
import yaml

from lgd_ray.core.config import load_config
from lgd_ray.core.evaluate import soft_label_settings

ROOT = Path(__file__).resolve().parent.parent
JOBS = sorted(p for p in (ROOT / "jobs").glob("*.yaml") if not p.stem.startswith("sweep_"))  # sweeps: test_sweep.py
PAPER_JOBS = [p for p in JOBS if p.stem != "demo"]
CLUSTERS = ROOT / "clusters"
RAY_UP = [CLUSTERS / "aws-gpu.yaml", CLUSTERS / "gcp-gpu.yaml"]
KUBERAY = [CLUSTERS / "kuberay-raycluster.yaml", CLUSTERS / "kuberay-rayjob.yaml"]
EVAL_NETS = {"convnet6", "resnetap10", "resnet18"}


def _version(text: str) -> tuple[int, ...]:
    parts = tuple(int(x) for x in text.split("."))
    return parts + (0,) * (3 - len(parts))


def ray_pin() -> tuple[int, ...]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = next(d for d in deps if re.match(r"ray(\[|>|=|$)", d))
    return _version(re.search(r">=\s*([\d.]+)", spec).group(1))


def torch_pin() -> str:
    m = re.search(r"pip install (torch==[\d.]+ torchvision==[\d.]+)", (ROOT / "README.md").read_text())
    assert m, "the README no longer pins torch in its install step"
    return m.group(1)


def image_ray_version(image: str) -> tuple[int, ...]:
    """rayproject/ray[-ml]:2.51.0-…, or our own image tagged …-ray2.51.0-…."""
    m = re.match(r"rayproject/ray(?:-ml)?:(\d+\.\d+\.\d+)", image) or re.search(r"-ray(\d+\.\d+\.\d+)-", image)
    assert m, f"cannot tell the Ray version of image {image!r}"
    return _version(m.group(1))


# --------------------------------------------------------------------------- jobs


def test_there_are_the_paper_jobs():
    assert {p.name for p in PAPER_JOBS} == {"imagenette_ipc50.yaml", "imagenette_ipc100.yaml", "imagewoof_ipc50.yaml",
                                            "imagewoof_ipc100.yaml", "imagenet1k_ipc50.yaml"}


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_job_loads_and_validates(path):
    load_config(path)  # validation included; data roots are placeholders, so never resolve_run here


@pytest.mark.parametrize("path", PAPER_JOBS, ids=lambda p: p.name)
def test_paper_job_follows_method(path):
    cfg = load_config(path)
    preset, ipc = re.fullmatch(r"(imagenette|imagewoof|imagenet1k)_ipc(\d+)", path.stem).groups()
    g, d = cfg.generator, cfg.distill
    assert (g.path, g.scheduler, g.num_steps, g.cfg_scale) == ("facebook/DiT-XL-2-256", "ddpm", 50, 4.0)
    assert d.window == [10, 45] and d.omega == 0.5 and d.k == 3
    assert (d.ipc_seed, d.ipc_per_stage) == (10, 10)
    assert d.stages == {50: 4, 100: 9}[int(ipc)] and d.ipc_seed + d.stages * d.ipc_per_stage == int(ipc)
    # λ, γ in this engine's normalisation (λ = 1 is a step as large as ε̂): well below the paper's 15 / 50
    assert 0 < d.lam < 1 and 0 <= d.gamma < 1
    text = path.read_text()
    assert "λ = 15" in text and "γ = 50" in text and "Choosing λ" in text  # the paper's values, explained
    assert g.batch_size == d.chunk_size * d.k  # one chunk's candidates per denoiser batch
    assert (cfg.data.name, cfg.data.classes, cfg.data.image_size) == ("imagefolder", preset, 224)
    assert cfg.data.root and cfg.data.root.startswith("/mnt/")
    assert cfg.reference.arch == "convnet6"
    assert cfg.reference.path == f"/mnt/shared/lgd/reference/{preset}/model.safetensors"
    assert cfg.eval.arch in EVAL_NETS and cfg.eval.augment == "imagenet" and cfg.eval.cutmix > 0
    assert cfg.ray.gpus_per_sampler == 1 and cfg.ray.gpus_per_train_worker >= 1 and cfg.ray.train_workers >= 1


@pytest.mark.parametrize("path", [p for p in PAPER_JOBS if "imagenet1k" not in p.stem], ids=lambda p: p.name)
def test_subset_jobs_use_the_hard_label_protocol(path):
    e = load_config(path).eval
    assert e.epochs is None  # the field's epochs by IPC
    assert (e.optimizer, e.lr, e.weight_decay, e.schedule, e.batch_size) == ("sgd", 0.01, 5e-4, "multistep", 64)
    assert len(e.seeds) >= 3


def test_imagenet1k_eval_section_is_the_soft_label_protocol():
    path = ROOT / "jobs" / "imagenet1k_ipc50.yaml"
    e = load_config(path).eval
    want = soft_label_settings()
    for f in ("arch", "epochs", "batch_size", "lr", "optimizer", "weight_decay", "schedule", "augment", "cutmix",
              "protocol", "temperature"):
        assert getattr(e, f) == getattr(want, f), f
    assert e.teacher.startswith("timm:resnet18")  # the ImageNet-pretrained BatchNorm ResNet-18
    text = path.read_text()
    assert "soft" in text.lower() and "T = 20" in text and "eval.teacher" in text


def test_same_data_set_jobs_share_their_reference():
    for preset in ("imagenette", "imagewoof"):
        a, b = (load_config(ROOT / "jobs" / f"{preset}_ipc{n}.yaml").reference for n in (50, 100))
        assert dataclasses.asdict(a) == dataclasses.asdict(b)


def test_jobs_readme_has_the_submit_commands():
    text = (ROOT / "jobs" / "README.md").read_text()
    for p in PAPER_JOBS:
        assert p.name in text
    for cmd in ("lgd-ray train-reference jobs/", "lgd-ray distill jobs/", "lgd-ray evaluate ", "ray job submit",
                "--working-dir .", "reference.path=null"):
        assert cmd in text, cmd


# --------------------------------------------------------------------------- clusters


def test_every_cluster_file_parses():
    files = sorted(CLUSTERS.glob("*.yaml"))
    assert set(files) == set(RAY_UP + KUBERAY)
    for f in files:
        docs = [d for d in yaml.safe_load_all(f.read_text()) if d is not None]
        assert docs and all(isinstance(d, dict) for d in docs), f.name


@pytest.mark.parametrize("path", RAY_UP, ids=lambda p: p.name)
def test_ray_up_file(path):
    cfg = yaml.safe_load(path.read_text())
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type"):
        assert cfg.get(key), key
    assert cfg["head_node_type"] in cfg["available_node_types"]
    image = cfg["docker"]["image"]
    assert image.startswith(("rayproject/ray:", "rayproject/ray-ml:")) and image.endswith("gpu")
    assert image_ray_version(image) == ray_pin()
    workers = {k: v for k, v in cfg["available_node_types"].items() if k != cfg["head_node_type"]}
    assert workers and all(v["resources"].get("GPU", 0) >= 1 for v in workers.values())
    setup = " ".join(cfg["setup_commands"])
    assert torch_pin() in setup and "pip install -e" in setup


@pytest.mark.parametrize("path", RAY_UP, ids=lambda p: p.name)
def test_ray_up_file_passes_rays_schema(path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(yaml.safe_load(path.read_text())))


@pytest.mark.parametrize("path", RAY_UP, ids=lambda p: p.name)
def test_ray_up_dashboard_is_loopback_only(path):
    cfg = yaml.safe_load(path.read_text())
    head = " ".join(cfg["head_start_ray_commands"])
    assert "ray start --head" in head
    assert re.search(r"--dashboard-host[= ](127\.0\.0\.1|localhost)\b", head)
    every_command = " ".join(str(c) for key, cmds in cfg.items() if key.endswith("_commands") for c in cmds)
    assert "0.0.0.0" not in every_command
    for rule in cfg["provider"].get("security_group", {}).get("IpPermissions", []):
        assert not rule["FromPort"] <= 8265 <= rule["ToPort"], "the dashboard port is opened in the security group"
        assert all(r["CidrIp"] != "0.0.0.0/0" for r in rule.get("IpRanges", []))


def _kuberay_docs() -> dict[str, list[dict]]:
    return {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d] for p in KUBERAY}


def _cluster_specs() -> list[dict]:
    specs = []
    for docs in _kuberay_docs().values():
        for d in docs:
            if d["kind"] == "RayCluster":
                specs.append(d["spec"])
            elif d["kind"] == "RayJob":
                specs.append(d["spec"]["rayClusterSpec"])
    return specs


def _containers(spec: dict) -> list[dict]:
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_kuberay_kinds_and_versions():
    docs = _kuberay_docs()
    kinds = {name: [d["kind"] for d in ds] for name, ds in docs.items()}
    assert "RayCluster" in kinds["kuberay-raycluster.yaml"] and kinds["kuberay-rayjob.yaml"] == ["RayJob"]
    for ds in docs.values():
        for d in ds:
            if d["kind"] in ("RayCluster", "RayJob"):
                assert d["apiVersion"] == "ray.io/v1"
    specs = _cluster_specs()
    assert len(specs) == 2
    for spec in specs:
        assert _version(str(spec["rayVersion"])) == ray_pin()
        for c in _containers(spec):
            assert image_ray_version(c["image"]) == ray_pin()


def test_kuberay_gpu_workers_and_shared_output():
    pvcs = {d["metadata"]["name"] for d in _kuberay_docs()["kuberay-raycluster.yaml"]
            if d["kind"] == "PersistentVolumeClaim"}
    assert pvcs
    for spec in _cluster_specs():
        gpu_groups = [g for g in spec["workerGroupSpecs"]
                      if any(int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) >= 1
                             for c in g["template"]["spec"]["containers"])]
        assert gpu_groups
        for g in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            claims = {v["persistentVolumeClaim"]["claimName"] for v in g["template"]["spec"]["volumes"]
                      if "persistentVolumeClaim" in v}
            assert claims and claims <= pvcs
            for c in g["template"]["spec"]["containers"]:
                assert any(m["mountPath"] == "/mnt/shared" for m in c["volumeMounts"])


def test_kuberay_dashboard_not_public():
    for name, docs in _kuberay_docs().items():
        for d in docs:
            assert d["kind"] != "Ingress", name
            if d["kind"] == "Service":
                assert d["spec"].get("type", "ClusterIP") == "ClusterIP", name
    for spec in _cluster_specs():
        assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"
    for path in KUBERAY:
        assert "LoadBalancer" not in path.read_text().replace("never LoadBalancer", "")


def test_rayjob_runs_the_imagenette_job():
    job = _kuberay_docs()["kuberay-rayjob.yaml"][0]["spec"]
    assert job["entrypoint"].startswith("lgd-ray distill jobs/imagenette_ipc50.yaml --out ")
    assert (ROOT / job["entrypoint"].split()[2]).is_file()
    assert job["shutdownAfterJobFinishes"] is True
    runtime_env = yaml.safe_load(job["runtimeEnvYAML"])
    assert runtime_env["working_dir"] == "/home/ray/lgd_ray"


def test_clusters_readme_covers_the_lifecycle():
    text = (CLUSTERS / "README.md").read_text()
    for step in ("ray up", "ray dashboard", "ray job submit", "ray job logs -f", "ray down", "kubectl apply",
                 "kubectl port-forward", "kubectl delete", "FROM rayproject/ray:", torch_pin()):
        assert step in text, step
    m = re.search(r"FROM rayproject/ray:(\S+)", text)
    assert image_ray_version(f"rayproject/ray:{m.group(1)}") == ray_pin()
