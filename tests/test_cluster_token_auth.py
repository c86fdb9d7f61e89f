"""Ray's token authentication with the variable names clusters/ uses, on a real two-node Ray cluster.

The head starts as a `ray up` node does (clusters/aws-gpu.yaml: RAY_AUTH_MODE + RAY_AUTH_TOKEN_PATH),
a worker joins as a KubeRay pod does (RAY_AUTH_MODE + RAY_AUTH_TOKEN, kuberay-*.yaml), and clients
without the token, with another one, or without RAY_AUTH_MODE are refused, while `ray job submit` as
clusters/README.md sets it up runs a driver that sees both nodes. Slow (a minute or more on 2 cores):
`python -m pytest -m slow tests/test_cluster_token_auth.py`.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from helpers import free_port, submit_job

ROOT = Path(__file__).resolve().parent.parent
CLUSTERS = ROOT / "clusters"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("ray") is None, reason="the ray CLI is not installed")]


def ray_up_auth_env() -> dict[str, str]:
    """The `-e` variables of clusters/aws-gpu.yaml's container that name RAY_AUTH_*."""
    cfg = yaml.safe_load((CLUSTERS / "aws-gpu.yaml").read_text())
    words = [w for opt in cfg["docker"]["run_options"] for w in shlex.split(opt)]
    pairs = [v.partition("=") for f, v in zip(words, words[1:]) if f == "-e"]
    return {k: v for k, _, v in pairs if k.startswith("RAY_AUTH")}


def kuberay_auth_env() -> dict[str, str]:
    """The RAY_AUTH_* variables of the RayCluster's worker container: literal values and Secret references."""
    docs = [d for d in yaml.safe_load_all((CLUSTERS / "kuberay-raycluster.yaml").read_text()) if d]
    (cluster,) = [d for d in docs if d["kind"] == "RayCluster"]
    env = cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["env"]
    return {e["name"]: e.get("value", "<secret>") for e in env if e["name"].startswith("RAY_AUTH")}


def _stop(proc: subprocess.Popen) -> None:
    """Stop one `ray start --block` we started, and its process group only."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def test_token_auth_with_the_cluster_files_variable_names(tmp_path):
    ray_up_env, kuberay_env = ray_up_auth_env(), kuberay_auth_env()
    assert set(ray_up_env) == {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"} and ray_up_env["RAY_AUTH_MODE"] == "token"
    assert kuberay_env == {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "<secret>"}

    token = secrets.token_hex(32)  # made here, as `openssl rand -hex 32` in clusters/README.md
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")  # Ray reads the first line and strips it
    token_file.chmod(0o400)
    home = tmp_path / "home"  # no ~/.ray/auth_token of this machine is read or written
    home.mkdir()
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    base.update(HOME=str(home))
    head_env = {**base, **ray_up_env, "RAY_AUTH_TOKEN_PATH": str(token_file)}  # as on a `ray up` node
    worker_env = {**base, "RAY_AUTH_MODE": kuberay_env["RAY_AUTH_MODE"], "RAY_AUTH_TOKEN": token}  # a KubeRay pod

    gcs, dash, agent, worker_agent = free_port(), free_port(), free_port(), free_port()
    # a short private temp dir (socket paths have a length limit)
    temp = tempfile.mkdtemp(prefix="lgdauth", dir="/tmp")
    common = [f"--temp-dir={temp}", "--num-cpus=1", "--object-store-memory=100000000", "--disable-usage-stats",
              "--block"]
    head = subprocess.Popen(
        ["ray", "start", "--head", f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         f"--dashboard-agent-listen-port={agent}", "--include-dashboard=true", *common],
        env=head_env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = None
    address = f"http://127.0.0.1:{dash}"

    def job_list(env: dict) -> subprocess.CompletedProcess:
        return subprocess.run(["ray", "job", "list", "--address", address], env=env, capture_output=True,
                              text=True, timeout=120)

    try:
        deadline = time.time() + 180
        while time.time() < deadline:  # the jobs API, with the head's own token
            if job_list(head_env).returncode == 0:
                break
            time.sleep(1)
        else:
            pytest.fail("the head's job API did not come up")
        worker = subprocess.Popen(
            ["ray", "start", f"--address=127.0.0.1:{gcs}", f"--dashboard-agent-listen-port={worker_agent}", *common],
            env=worker_env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        refused = {
            "no token": ({**base}, "Unauthorized"),
            "RAY_AUTH_MODE=token but no token": ({**base, "RAY_AUTH_MODE": "token"},
                                                 "couldn't find an authentication token"),
            "another token": ({**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)},
                              "Invalid authentication token"),
            "the token without RAY_AUTH_MODE": ({**base, "RAY_AUTH_TOKEN": token}, "Unauthorized"),
        }
        for what, (env, message) in refused.items():
            r = job_list(env)
            assert r.returncode != 0, what
            assert message.lower() in (r.stdout + r.stderr).lower(), f"{what}: {r.stderr[-800:]}"
        assert job_list(worker_env).returncode == 0  # RAY_AUTH_TOKEN, as the KubeRay submitter has it

        # the client as clusters/README.md sets it up: RAY_AUTH_MODE=token + RAY_AUTH_TOKEN_PATH
        client_env = {**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)}
        driver = ("import ray, time; ray.init(); t = time.time()\n"
                  "while sum(n['Alive'] for n in ray.nodes()) < 2 and time.time() - t < 120: time.sleep(1)\n"
                  "print('alive nodes:', sum(n['Alive'] for n in ray.nodes()))")
        submit = ["ray", "job", "submit", "--address", address, "--", "python", "-c", driver]
        job = submit_job(submit, client_env, timeout=300)
        assert job.returncode == 0, job.stdout[-2000:] + job.stderr[-2000:]
        # the driver (started by the cluster, not given the token by us) reached the GCS, and the
        # worker that joined with RAY_AUTH_TOKEN is alive in it
        assert "alive nodes: 2" in job.stdout, job.stdout[-2000:]
    finally:
        if worker is not None:
            _stop(worker)
        _stop(head)
        shutil.rmtree(temp, ignore_errors=True)
    assert not (home / ".ray" / "auth_token").exists()  # nothing fell back to the default token file
