"""jobs/ and clusters/: every job config validates; the paper jobs follow METHOD.md; every cluster file
parses, names one Ray version with token authentication, installs the pinned torch, and is locked by
default: token auth on for every Ray process with the token from a secret (never in a file), a
NetworkPolicy around the KubeRay pods, the dashboard off the internet."""

from __future__ import annotations

import dataclasses
import posixpath
import re
import shlex
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
TOKEN_AUTH_RAY = (2, 52, 0)  # the first Ray with token authentication (RAY_AUTH_MODE=token)
RAY_PORTS = (6379, 8265, 10001)  # GCS, dashboard + job API, Ray client
OTHER_RAY_PORTS = (8076, 8080, 10002, 19999, 52365)  # object manager, metrics, worker ports, dashboard agent


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
    """rayproject/ray[-ml]:2.60.0-…, or our own image tagged …-ray2.60.0-…."""
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
    assert d.omega == 0.5 and d.k == 3
    # the FLOP cut within IGD's price (test_flops): ∇ w.r.t. x̂0 on the noisiest 9 steps of the paper's [10, 45]
    assert d.grad_space == "x0" and d.window == [37, 45]
    assert (d.ipc_seed, d.ipc_per_stage) == (10, 10)
    assert d.stages == {50: 4, 100: 9}[int(ipc)] and d.ipc_seed + d.stages * d.ipc_per_stage == int(ipc)
    # λ, γ in this engine's normalisation (λ = 1 is a step as large as ε̂): well below the paper's 15 / 50
    assert 0 < d.lam < 1 and 0 <= d.gamma < 1
    text = path.read_text()
    assert "λ = 15" in text and "γ = 50" in text and "Choosing λ" in text  # the paper's values, explained
    assert g.batch_size == "auto"  # probed per GPU actor; a fixed batch that cannot fit is refused before sampling
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


def _ray_up(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def cluster_ray_versions() -> dict[str, tuple[int, ...]]:
    """Every Ray version the cluster files and the image recipe in clusters/README.md name."""
    found = {}
    for path in RAY_UP:
        found[f"{path.name}: docker.image"] = image_ray_version(_ray_up(path)["docker"]["image"])
    for spec_name, spec in _named_cluster_specs():
        found[f"{spec_name}: rayVersion"] = _version(str(spec["rayVersion"]))
        for c in _containers(spec):
            found[f"{spec_name}: {c['name']}"] = image_ray_version(c["image"])
    for c in _submitter_containers():
        found[f"submitter: {c['name']}"] = image_ray_version(c["image"])
    m = re.search(r"FROM rayproject/ray:(\S+)", (CLUSTERS / "README.md").read_text())
    found["README: FROM"] = image_ray_version(f"rayproject/ray:{m.group(1)}")
    m = re.search(r"docker build -t (\S+)", (CLUSTERS / "README.md").read_text())
    found["README: docker build -t"] = image_ray_version(m.group(1))
    return found


def cluster_ray() -> tuple[int, ...]:
    return next(iter(cluster_ray_versions().values()))


def test_one_ray_version_everywhere_and_it_has_token_auth():
    versions = cluster_ray_versions()
    assert len(set(versions.values())) == 1, versions
    v = cluster_ray()
    assert v >= TOKEN_AUTH_RAY, f"Ray {v} has no token authentication (needs {TOKEN_AUTH_RAY})"
    assert v >= ray_pin()
    assert f"All four run Ray {'.'.join(map(str, v))}" in (CLUSTERS / "README.md").read_text()


@pytest.mark.parametrize("path", RAY_UP, ids=lambda p: p.name)
def test_ray_up_file(path):
    cfg = _ray_up(path)
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type"):
        assert cfg.get(key), key
    assert cfg["head_node_type"] in cfg["available_node_types"]
    image = cfg["docker"]["image"]
    assert image.startswith(("rayproject/ray:", "rayproject/ray-ml:")) and image.endswith("gpu")
    assert image_ray_version(image) == cluster_ray()
    workers = {k: v for k, v in cfg["available_node_types"].items() if k != cfg["head_node_type"]}
    assert workers and all(v["resources"].get("GPU", 0) >= 1 for v in workers.values())
    setup = " ".join(cfg["setup_commands"])
    assert torch_pin() in setup and "pip install -e" in setup


@pytest.mark.parametrize("path", RAY_UP, ids=lambda p: p.name)
def test_ray_up_file_passes_rays_schema(path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(_ray_up(path)))


@pytest.mark.parametrize("path", RAY_UP, ids=lambda p: p.name)
def test_ray_up_dashboard_is_loopback_only(path):
    cfg = _ray_up(path)
    head = " ".join(cfg["head_start_ray_commands"])
    assert "ray start --head" in head
    assert re.search(r"--dashboard-host[= ](127\.0\.0\.1|localhost)\b", head)
    every_command = " ".join(str(c) for key, cmds in cfg.items() if key.endswith("_commands") for c in cmds)
    assert "0.0.0.0" not in every_command
    for rule in cfg["provider"].get("security_group", {}).get("IpPermissions", []):
        assert not rule["FromPort"] <= 8265 <= rule["ToPort"], "the dashboard port is opened in the security group"
        assert all(r["CidrIp"] != "0.0.0.0/0" for r in rule.get("IpRanges", []))


def _docker_env_and_mounts(cfg: dict) -> tuple[dict[str, str], list[tuple[str, str, str]]]:
    """`-e K=V` and `-v HOST:CONTAINER[:MODE]` of the container every Ray process of the file runs in."""
    words = [w for opt in cfg["docker"]["run_options"] for w in shlex.split(opt)]
    env, mounts = {}, []
    for flag, value in zip(words, words[1:]):
        if flag in ("-e", "--env"):
            k, _, v = value.partition("=")
            env[k] = v
        elif flag in ("-v", "--volume"):
            host, container, *mode = value.split(":")
            mounts.append((host, container, mode[0] if mode else "rw"))
    return env, mounts


# the command that reads the token from the provider's secret store, and the secret it names
SECRET_READ = {
    "aws": r"aws secretsmanager get-secret-value --region \S+ --secret-id (\S+)",
    "gcp": r"gcloud secrets versions access \S+ --secret=(\S+)",
}


@pytest.mark.parametrize("path", RAY_UP, ids=lambda p: p.name)
def test_ray_up_token_auth_on_every_node_from_the_secret_store(path):
    cfg = _ray_up(path)
    # every Ray process of every node (ray start on the head and the workers, the autoscaler, job
    # drivers, `ray exec`) runs in the one container: no node type runs its own
    assert cfg["docker"].get("container_name")
    for name, node_type in cfg["available_node_types"].items():
        assert "docker" not in node_type, f"{name} overrides the container and its environment"
    starts = cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]
    assert sum("ray start" in c for c in starts) == 2
    env, mounts = _docker_env_and_mounts(cfg)
    assert env.get("RAY_AUTH_MODE") == "token"
    assert "RAY_AUTH_TOKEN" not in env, "the token itself never goes into the file"
    token_path = env.get("RAY_AUTH_TOKEN_PATH")
    assert token_path and token_path.startswith("/")
    # the token file comes from a host directory mounted read-only ...
    (host_dir,) = [h for h, c, mode in mounts if c == posixpath.dirname(token_path) and mode == "ro"]
    host_file = posixpath.join(host_dir, posixpath.basename(token_path))
    # ... that initialization_commands (on the host, before the container starts) fill from the
    # provider's secret store on every node, failing when the secret is empty
    init = " ".join(" ".join(str(c).split()) for c in cfg["initialization_commands"])
    m = re.search(SECRET_READ[cfg["provider"]["type"]] + r"[^|]* \| sudo install (.*?) /dev/stdin (\S+)", init)
    assert m, "the token is not read from the secret store at node start"
    assert m.group(3) == host_file and "-m 0400" in m.group(2)
    assert f"test -s {host_file}" in init
    secret = m.group(1)
    assert secret in (CLUSTERS / "README.md").read_text()  # the README says how to create it
    every_command = " ".join(str(c) for key, cmds in cfg.items() if key.endswith("_commands") for c in cmds)
    assert "RAY_AUTH_MODE=disabled" not in every_command and "RAY_AUTH_TOKEN=" not in every_command


def _kuberay_docs() -> dict[str, list[dict]]:
    return {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d] for p in KUBERAY}


def _named_cluster_specs() -> list[tuple[str, dict]]:
    specs = []
    for docs in _kuberay_docs().values():
        for d in docs:
            if d["kind"] == "RayCluster":
                specs.append((f"RayCluster {d['metadata']['name']}", d["spec"]))
            elif d["kind"] == "RayJob":
                specs.append((f"RayJob {d['metadata']['name']}", d["spec"]["rayClusterSpec"]))
    return specs


def _cluster_specs() -> list[dict]:
    return [spec for _, spec in _named_cluster_specs()]


def _rayjob() -> dict:
    (job,) = [d for d in _kuberay_docs()["kuberay-rayjob.yaml"] if d["kind"] == "RayJob"]
    return job


def _groups(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"], *spec["workerGroupSpecs"]]


def _containers(spec: dict) -> list[dict]:
    return [c for g in _groups(spec) for c in g["template"]["spec"]["containers"]]


def _submitter_containers() -> list[dict]:
    template = _rayjob()["spec"].get("submitterPodTemplate")
    return template["spec"]["containers"] if template else []


def test_kuberay_kinds_and_versions():
    docs = _kuberay_docs()
    kinds = {name: [d["kind"] for d in ds] for name, ds in docs.items()}
    assert sorted(kinds["kuberay-raycluster.yaml"]) == ["NetworkPolicy", "PersistentVolumeClaim", "RayCluster"]
    assert sorted(kinds["kuberay-rayjob.yaml"]) == ["NetworkPolicy", "RayJob"]
    for ds in docs.values():
        for d in ds:
            if d["kind"] in ("RayCluster", "RayJob"):
                assert d["apiVersion"] == "ray.io/v1"
            if d["kind"] == "NetworkPolicy":
                assert d["apiVersion"] == "networking.k8s.io/v1"
    specs = _cluster_specs()
    assert len(specs) == 2
    for spec in specs:
        assert _version(str(spec["rayVersion"])) == cluster_ray()
        for c in _containers(spec):
            assert image_ray_version(c["image"]) == cluster_ray()


def test_kuberay_gpu_workers_and_shared_output():
    pvcs = {d["metadata"]["name"] for d in _kuberay_docs()["kuberay-raycluster.yaml"]
            if d["kind"] == "PersistentVolumeClaim"}
    assert pvcs
    for spec in _cluster_specs():
        gpu_groups = [g for g in spec["workerGroupSpecs"]
                      if any(int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) >= 1
                             for c in g["template"]["spec"]["containers"])]
        assert gpu_groups
        for g in _groups(spec):
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


TOKEN_KEY = "auth_token"  # the Secret key KubeRay reads (RAY_AUTH_TOKEN_SECRET_KEY)


def _check_token_env(where: str, env: list[dict], secret: str) -> None:
    by_name = {}
    for e in env:
        assert e["name"] not in by_name, f"{where}: {e['name']} twice"
        by_name[e["name"]] = e
    assert by_name.get("RAY_AUTH_MODE", {}).get("value") == "token", f"{where}: RAY_AUTH_MODE is not token"
    token = by_name.get("RAY_AUTH_TOKEN")
    assert token, f"{where}: no RAY_AUTH_TOKEN"
    assert "value" not in token, f"{where}: a literal token"
    assert token["valueFrom"] == {"secretKeyRef": {"name": secret, "key": TOKEN_KEY}}, where
    assert "RAY_AUTH_TOKEN_PATH" not in by_name, f"{where}: a second token source"


def test_kuberay_token_auth_on_every_ray_container_from_one_secret():
    secrets = set()
    for spec_name, spec in _named_cluster_specs():
        # the operator puts the same Secret into the containers it adds (autoscaler, wait-gcs-ready) and
        # reads it to talk to the job API; the containers of the file name it themselves
        auth = spec.get("authOptions") or {}
        assert auth.get("mode") == "token" and auth.get("secretName"), f"{spec_name}: authOptions"
        assert not auth.get("enableK8sTokenAuth")
        secret = auth["secretName"]
        secrets.add(secret)
        for g in _groups(spec):
            for c in g["template"]["spec"]["containers"] + g["template"]["spec"].get("initContainers", []):
                _check_token_env(f"{spec_name}: {c['name']}", c.get("env", []), secret)
        for e in (spec.get("autoscalerOptions") or {}).get("env", []):
            assert not e["name"].startswith("RAY_AUTH"), f"{spec_name}: autoscaler overrides the operator's token"
    job = _rayjob()["spec"]
    assert job.get("submissionMode", "K8sJobMode") == "K8sJobMode"  # the submitter is its own pod ...
    containers = _submitter_containers()
    assert len(containers) == 1, "no submitterPodTemplate: the NetworkPolicy admits the submitter by its labels"
    _check_token_env("RayJob submitter", containers[0]["env"], job["rayClusterSpec"]["authOptions"]["secretName"])
    runtime_env = yaml.safe_load(job["runtimeEnvYAML"])
    assert not any(k.startswith("RAY_AUTH") for k in runtime_env.get("env_vars", {}))
    assert len(secrets) == 1  # one token for both manifests: the README creates one Secret
    (secret,) = secrets
    readme = (CLUSTERS / "README.md").read_text()
    assert f"kubectl create secret generic {secret} --from-literal={TOKEN_KEY}=" in readme


# a literal token: a long run of letters and digits (hex or base64), or a value given to the token
# variables / secret commands that is not a command substitution or a reference
_LITERALS = [
    re.compile(r"(?<![A-Za-z0-9])(?=[A-Za-z0-9]*[0-9])(?=[A-Za-z0-9]*[A-Za-z])[A-Za-z0-9]{24,}"),
    re.compile(r"RAY_AUTH_TOKEN(?!_PATH)\s*[=:]\s*(?![\"']?\$)(\S+)"),
    re.compile(r"auth_token\s*[=:]\s*(?![\"']?\$)(\S+)"),
    re.compile(r"--secret-string[= ](?![\"']?\$)(\S+)"),
]


def _cluster_text_files() -> list[Path]:
    return sorted(CLUSTERS.glob("*.yaml")) + [CLUSTERS / "README.md", ROOT / "README.md"]


def test_the_token_comes_from_a_secret_and_is_never_in_a_file():
    # every definition names where its token comes from ...
    for path in RAY_UP:
        cfg = _ray_up(path)
        init = " ".join(" ".join(str(c).split()) for c in cfg["initialization_commands"])
        assert re.search(SECRET_READ[cfg["provider"]["type"]], init), path.name
    for spec_name, spec in _named_cluster_specs():
        refs = [e["valueFrom"]["secretKeyRef"] for c in _containers(spec) for e in c.get("env", [])
                if e["name"] == "RAY_AUTH_TOKEN" and "valueFrom" in e]
        assert len(refs) == len(_containers(spec)), spec_name
    # ... no manifest carries a Secret, and no file a token
    for docs in _kuberay_docs().values():
        assert all(d["kind"] != "Secret" for d in docs)
    for path in _cluster_text_files():
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for pattern in _LITERALS:
                m = pattern.search(line)
                assert not m, f"{path.name}:{n}: looks like a literal token: {m.group(0)!r}"


# ---- NetworkPolicy semantics (networking.k8s.io/v1), enough to tell who may reach which port


NAMESPACE = "lgd"  # where the manifests are applied (kubectl's current namespace)
OPERATOR_NAMESPACE = "kuberay-system"  # where clusters/README.md installs the operator
OPERATOR_POD = {"app.kubernetes.io/name": "kuberay-operator", "app.kubernetes.io/instance": "kuberay-operator",
                "app.kubernetes.io/component": "kuberay-operator"}  # the Helm chart's pod labels


def _ns_labels(ns: str) -> dict:
    return {"kubernetes.io/metadata.name": ns}


def _selects(selector: dict | None, labels: dict) -> bool:
    if selector is None:
        return False
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        has, value = e["key"] in labels, labels.get(e["key"])
        ok = {"In": has and value in e.get("values", []), "NotIn": not has or value not in e.get("values", []),
              "Exists": has, "DoesNotExist": not has}[e["operator"]]
        if not ok:
            return False
    return True


def _peer_admits(peer: dict, src: dict | None) -> bool:
    """src: {"namespace", "labels"} of a pod, or None for anything outside the pod network."""
    if "ipBlock" in peer:
        return True  # an address range: taken as admitting anyone, which the tests refuse
    if src is None:
        return False
    if "namespaceSelector" in peer:
        ns_ok = _selects(peer["namespaceSelector"], _ns_labels(src["namespace"]))
    else:
        ns_ok = src["namespace"] == NAMESPACE
    return ns_ok and ("podSelector" not in peer or _selects(peer["podSelector"], src["labels"]))


def _port_admits(rule: dict, port: int) -> bool:
    if not rule.get("ports"):
        return True
    for p in rule["ports"]:
        assert p.get("protocol", "TCP") == "TCP" and isinstance(p.get("port", 0), int), p
        lo = p.get("port")
        if lo is None or lo <= port <= p.get("endPort", lo):
            return True
    return False


def _admitted(policies: list[dict], dst_labels: dict, src: dict | None, port: int) -> bool:
    selecting = [p for p in policies if _selects(p["spec"]["podSelector"], dst_labels)
                 and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])]
    if not selecting:
        return True  # a pod no policy selects takes everything
    return any(_peer_admits(peer, src) if rule.get("from") else True
               for p in selecting for rule in p["spec"].get("ingress") or []
               for peer in (rule.get("from") or [{}]) if _port_admits(rule, port))


def _pods() -> dict[str, tuple[str, dict]]:
    """Every pod the two manifests make: (its manifest, the labels KubeRay gives it plus the template's)."""
    pods = {}
    for path in KUBERAY:
        for d in _kuberay_docs()[path.name]:
            if d["kind"] not in ("RayCluster", "RayJob"):
                continue
            name = d["metadata"]["name"]
            spec = d["spec"] if d["kind"] == "RayCluster" else d["spec"]["rayClusterSpec"]
            cluster = name if d["kind"] == "RayCluster" else f"{name}-x7k2p"  # a RayJob's cluster: generated name
            for g, node_type in zip(_groups(spec), ["head"] + ["worker"] * len(spec["workerGroupSpecs"])):
                group = g.get("groupName", "headgroup")
                labels = {**(g["template"].get("metadata") or {}).get("labels", {}),
                          "ray.io/cluster": cluster, "ray.io/node-type": node_type, "ray.io/group": group,
                          "ray.io/is-ray-node": "yes", "app.kubernetes.io/name": "kuberay",
                          "app.kubernetes.io/created-by": "kuberay-operator"}
                pods[f"{d['kind']} {name} {node_type} {group}"] = (path.name, labels)
    return pods


def _submitter_pod() -> dict:
    job = _rayjob()
    labels = ((job["spec"].get("submitterPodTemplate") or {}).get("metadata") or {}).get("labels", {})
    return {**labels, "batch.kubernetes.io/job-name": job["metadata"]["name"], "job-name": job["metadata"]["name"]}


def _policies(path: Path) -> list[dict]:
    return [d for d in _kuberay_docs()[path.name] if d["kind"] == "NetworkPolicy"]


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_kuberay_network_policy_admits_ray_ports_only_from_the_same_cluster(path):
    policies = _policies(path)
    assert policies, f"{path.name} has no NetworkPolicy"
    for p in policies:  # the fields of networking.k8s.io/v1, nothing misspelt
        spec = p["spec"]
        assert set(spec) <= {"podSelector", "policyTypes", "ingress", "egress"} and spec["podSelector"]
        assert "Ingress" in spec["policyTypes"]
        for rule in spec.get("ingress", []):
            assert set(rule) <= {"from", "ports"} and rule.get("from"), "a rule that admits every source"
            for peer in rule["from"]:
                assert set(peer) <= {"podSelector", "namespaceSelector"}, peer  # no ipBlock
                for sel in peer.values():
                    assert set(sel) <= {"matchLabels", "matchExpressions"} and sel, peer
            for port in rule.get("ports", []):
                assert set(port) <= {"protocol", "port", "endPort"}, port
    pods = _pods()
    own = {n: labels for n, (manifest, labels) in pods.items() if manifest == path.name}
    others = {n: labels for n, (manifest, labels) in pods.items() if manifest != path.name}
    assert own and others
    submitter = {"namespace": NAMESPACE, "labels": _submitter_pod()}
    operator = {"namespace": OPERATOR_NAMESPACE, "labels": OPERATOR_POD}
    is_job = path.name == "kuberay-rayjob.yaml"
    for dst_name, dst in own.items():
        for port in RAY_PORTS + OTHER_RAY_PORTS:
            for src_name, src in own.items():  # the cluster's own pods reach every Ray port
                assert _admitted(policies, dst, {"namespace": NAMESPACE, "labels": src}, port), \
                    f"{src_name} -> {dst_name}:{port}"
            strangers = {
                "outside the pod network": None,
                "another pod of the namespace": {"namespace": NAMESPACE, "labels": {"app": "notebook"}},
                "a pod with the cluster's labels in another namespace": {"namespace": "other", "labels": dst},
                **{f"{n} (the other manifest)": {"namespace": NAMESPACE, "labels": lab} for n, lab in others.items()},
            }
            for src_name, src in strangers.items():
                assert not _admitted(policies, dst, src, port), f"{src_name} -> {dst_name}:{port}"
            # the two exceptions: the RayJob's submitter and the operator, on that job's API only
            for src_name, src in (("the RayJob submitter", submitter), ("the KubeRay operator", operator)):
                want = is_job and port == 8265
                assert _admitted(policies, dst, src, port) == want, f"{src_name} -> {dst_name}:{port}"


def test_kuberay_network_policy_selects_labels_every_cluster_pod_has():
    # a RayJob's cluster name is generated: its policy must select a label the templates set
    job = _rayjob()
    policies = _policies(CLUSTERS / "kuberay-rayjob.yaml")
    assert len(policies) == 1
    selector = policies[0]["spec"]["podSelector"]["matchLabels"]
    assert "ray.io/cluster" not in selector
    for g in _groups(job["spec"]["rayClusterSpec"]):
        labels = g["template"]["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in selector.items())
    (cluster_doc,) = [d for d in _kuberay_docs()["kuberay-raycluster.yaml"] if d["kind"] == "RayCluster"]
    policies = _policies(CLUSTERS / "kuberay-raycluster.yaml")
    assert len(policies) == 1
    assert policies[0]["spec"]["podSelector"]["matchLabels"] == {"ray.io/cluster": cluster_doc["metadata"]["name"]}
    # the submitter's labels are set in its template (KubeRay < 1.7 puts none on the pod)
    sub = job["spec"]["submitterPodTemplate"]["metadata"]["labels"]
    assert sub == {"ray.io/originated-from-cr-name": job["metadata"]["name"], "ray.io/originated-from-crd": "RayJob"}
    readme = (CLUSTERS / "README.md").read_text()
    assert f"--namespace {OPERATOR_NAMESPACE}" in readme  # where the policy admits the operator from


def test_rayjob_runs_the_imagenette_job():
    job = _rayjob()["spec"]
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


def test_readmes_say_how_a_client_gets_the_token():
    text = (CLUSTERS / "README.md").read_text()
    for step in ("aws secretsmanager create-secret", "aws secretsmanager get-secret-value", "gcloud secrets create",
                 "gcloud secrets versions access", "kubectl create secret generic", "kubectl get secret",
                 "export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=", "NetworkPolicy"):
        assert step in text, step
    # the token is set up before the first `ray job submit` of either way to run
    first_submit = text.index("ray job submit --address")
    assert text.index("export RAY_AUTH_MODE=token") < first_submit
    for section in text.split("\n## ")[1:]:
        if "ray job submit --address" in section:
            before = section[:section.index("ray job submit --address")]
            assert "RAY_AUTH_MODE=token" in before, section.splitlines()[0]
    main = (ROOT / "README.md").read_text()
    assert "RAY_AUTH_MODE=token" in main and "clusters/README.md" in main
