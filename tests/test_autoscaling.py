"""`lgd-ray tune` on an autoscaling cluster that starts with no worker nodes (the shipped clusters do).

Ray's fake autoscaler (provider `fake_multinode`, what `ray.cluster_utils.AutoscalingCluster` starts)
adds real raylets on this machine as worker nodes when demand is pending. `AutoscalingCluster.start()`
and `.shutdown()` run `ray stop --force`, which would kill every Ray process on the machine (other
test runs included), so this module starts the same cluster itself: the same config and environment,
its own GCS port and temp folder, every process it starts marked by an environment variable, and only
those are killed at the end.

The head has no CPU, like the shipped clusters' heads; the one worker type declares logical GPUs (torch
sees none, Ray still schedules them), so the trials' sampler actors and Ray Train workers request GPUs
the cluster does not have at start. Without `max_concurrent` the sweep is refused at start (one line,
exit 2); with `max_concurrent: 2` both trials start, the autoscaler adds GPU nodes, and the sweep
completes with the two trials in flight together.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import yaml

from helpers import ROOT, descendants, free_port, parent_pids, tiny_overrides

pytestmark = pytest.mark.multinode

MARK = "LGD_RAY_TEST_CLUSTER"  # set in the environment of every process this module starts
WORKER = {"CPU": 2, "GPU": 1, "object_store_memory": 200 * 1024 * 1024}
GPU_OVERRIDES = ["ray.samplers=1", "ray.gpus_per_sampler=1", "ray.gpus_per_train_worker=1"]
SWEEP = {"space": {"distill.lam": {"loguniform": [0.05, 0.5]}, "distill.omega": {"uniform": [0.0, 1.0]}},
         "num_samples": 2, "seed": 1}


def _marked(pid: int, token: str) -> bool:
    try:
        return f"{MARK}={token}".encode() in Path("/proc", str(pid), "environ").read_bytes().split(b"\0")
    except OSError:  # gone, or not ours to read
        return False


def _ours(token: str, known: set[int] = frozenset()) -> set[int]:
    """This cluster's processes: those whose environment carries the token, plus all their descendants.
    The descendants matter: Ray's agents and workers rename themselves (setproctitle), which can overwrite
    the environment that /proc shows, so they are found through their raylet while it is alive."""
    table = parent_pids()
    roots = {p for p in table if p != os.getpid() and (p in known or _marked(p, token))}
    return (roots | descendants(*roots, table=table)) - {os.getpid()}


def _signal(pids: set[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _kill_ours(token: str) -> list[int]:
    """Freeze this cluster's process tree (SIGSTOP, so nothing in it starts or orphans a child while it is
    collected), then SIGKILL it; returns any of its processes still running afterwards."""
    killed: set[int] = set()
    for _ in range(5):
        group = _ours(token) - killed
        if not group:
            break
        while True:
            _signal(group, signal.SIGSTOP)
            more = _ours(token, group) - killed
            if more <= group:
                break
            group |= more
        for pid in sorted(group):  # what was killed, for the record (pytest -s shows it)
            try:
                name = Path("/proc", str(pid), "cmdline").read_bytes().replace(b"\0", b" ")[:90].decode(errors="replace")
            except OSError:
                name = "?"
            print(f"test cluster: killing {pid} {name}")
        _signal(group, signal.SIGKILL)
        killed |= group
        time.sleep(1.0)
    deadline = time.time() + 10
    while time.time() < deadline and _alive(killed | _ours(token)):
        time.sleep(0.2)
    return _alive(killed | _ours(token))


def _alive(pids: set[int]) -> list[int]:
    out = []
    for pid in sorted(pids):
        try:
            state = Path("/proc", str(pid), "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":  # a zombie has exited; its parent reaps it
            out.append(pid)
    return out


def autoscaling_config(gcs_address: str, worker: dict, max_workers: int) -> dict:
    """The cluster config AutoscalingCluster builds from Ray's fake_multi_node/example.yaml (the file is
    not in every Ray wheel), with the provider pointed at this cluster's GCS instead of port 6379."""
    return {
        "cluster_name": "fake_multinode",
        "max_workers": max_workers,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": gcs_address},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0, "GPU": 0}, "node_config": {}, "max_workers": 0},
            "ray.worker.gpu": {"resources": dict(worker), "node_config": {}, "min_workers": 0,
                               "max_workers": max_workers},
        },
        "head_node_type": "ray.head.default",
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 10,  # the nodes it added stay until the test has looked at them
        "auth": {}, "docker": {}, "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [],
    }


class FakeAutoscalingCluster:
    def __init__(self, root: str, gcs_address: str, env: dict, token: str):
        self.root, self.address, self.env, self.token = root, gcs_address, env, token

    def nodes(self) -> dict:
        """Alive nodes and total resources, asked by a separate driver (this process may hold a Ray session)."""
        code = ("import json, ray; ray.init(configure_logging=False, log_to_driver=False); "
                "alive = [n for n in ray.nodes() if n['Alive']]; "
                "print(json.dumps({'alive': len(alive), 'resources': ray.cluster_resources()}))")
        p = subprocess.run([sys.executable, "-c", code], env={**self.env, "RAY_ADDRESS": self.address},
                           capture_output=True, text=True, timeout=120, check=False)
        assert p.returncode == 0, p.stderr[-2000:]
        return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.fixture
def autoscaling_cluster():
    """A head with no CPU and no GPU, and a worker type {CPU: 2, GPU: 1} the autoscaler may add twice."""
    token = uuid.uuid4().hex
    root = tempfile.mkdtemp(prefix="lgd-as-")  # short: Ray's socket paths live under it
    from ray._private import services

    port = free_port()
    address = f"{services.get_node_ip_address()}:{port}"
    config = Path(root, "autoscaling.json")
    config.write_text(json.dumps(autoscaling_config(address, WORKER, max_workers=2)))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update({MARK: token, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
                "RAY_AUTH_MODE": "disabled", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
                "RAY_AIR_NEW_OUTPUT": "0", "TQDM_DISABLE": "1", "RAY_USAGE_STATS_ENABLED": "0"})
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", f"--autoscaling-config={config}",
           f"--port={port}", f"--temp-dir={Path(root, 'ray')}", "--num-cpus=0", "--num-gpus=0",
           f"--object-store-memory={200 * 1024 * 1024}", "--include-dashboard=false",
           f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
           "--disable-usage-stats"]
    try:
        started = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, check=False)
        assert started.returncode == 0, f"ray start failed: {started.stdout[-2000:]}{started.stderr[-2000:]}"
        yield FakeAutoscalingCluster(root, address, env, token)
    finally:
        left = _kill_ours(token)
        logs = Path(root, "ray", "session_latest", "logs", "monitor.log")
        if logs.is_file():
            print("autoscaler log tail:\n" + "\n".join(logs.read_text(errors="replace").splitlines()[-40:]))
        shutil.rmtree(root, ignore_errors=True)
        assert not left, f"processes of the test cluster still alive: {left}"


def _tune(cluster: FakeAutoscalingCluster, sweep_file: Path, out: Path, overrides: list[str],
          timeout: int) -> subprocess.CompletedProcess:
    """`lgd-ray tune` as a driver attached to the cluster (what `ray job submit` runs on the head)."""
    return subprocess.run([sys.executable, "-m", "lgd_ray.cli", "tune", str(sweep_file), "--out", str(out), "--quiet",
                           *overrides], env={**cluster.env, "RAY_ADDRESS": cluster.address}, cwd=str(ROOT),
                          capture_output=True, text=True, timeout=timeout, check=False)


def _span(trial: Path) -> tuple[float, float]:
    times = sorted(p.stat().st_mtime for p in trial.rglob("*") if p.is_file())
    return times[0], times[-1]


@pytest.mark.timeout(1800)
def test_sweep_on_an_autoscaling_cluster_that_starts_empty(autoscaling_cluster, tiny_generator_dir, reference_file,
                                                          tmp_path):
    cluster = autoscaling_cluster
    overrides = tiny_overrides(tiny_generator_dir, reference_file) + GPU_OVERRIDES
    at_start = cluster.nodes()
    assert at_start["alive"] == 1 and at_start["resources"].get("CPU", 0) == 0
    assert at_start["resources"].get("GPU", 0) == 0

    # counted from today's cluster (a head with nothing to run trials on), the sweep is refused at start
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(SWEEP))
    refused = _tune(cluster, plain, tmp_path / "refused", overrides, timeout=300)
    err = refused.stderr.strip()
    assert refused.returncode == 2, err[-3000:]
    assert err.count("\n") == 0 and err.startswith("lgd-ray: error: ") and "max_concurrent" in err, err
    assert cluster.nodes()["alive"] == 1  # nothing was asked of the autoscaler

    # with the cap in the sweep file both trials start, and their requests make the autoscaler add GPU nodes
    capped = tmp_path / "capped.yaml"
    capped.write_text(yaml.safe_dump({**SWEEP, "max_concurrent": 2}))
    out = tmp_path / "out"
    t0 = time.time()
    done = _tune(cluster, capped, out, overrides, timeout=1500)
    wall = time.time() - t0
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    print(f"sweep on the autoscaling cluster: {wall:.0f} s")

    with open(out / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    errors = [p.read_text().strip().splitlines()[-1] for p in (out / "tune").rglob("error.txt")]
    assert len(rows) == 2 and {r["status"] for r in rows} <= {"completed", "early-stopped"}, errors
    assert "completed" in {r["status"] for r in rows}
    assert (out / "best.yaml").is_file()
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["ray"]["gpus_per_sampler"] == 1 and best["ray"]["gpus_per_train_worker"] == 1

    after = cluster.nodes()
    assert after["alive"] > at_start["alive"], after  # the autoscaler added worker nodes
    assert after["resources"].get("GPU", 0) >= 1 and after["resources"].get("CPU", 0) >= WORKER["CPU"], after
    assert after["alive"] <= 3  # head + at most max_workers

    # both trials were in flight together: the cap came from the file (2), not from a count of the cluster
    (a_start, a_end), (b_start, b_end) = (_span(out / "trials" / r["trial_id"]) for r in rows)
    assert a_start < b_end and b_start < a_end, "the two trials ran one after the other"
