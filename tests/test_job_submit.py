"""The cluster path: `ray start --head`, then `ray job submit -- lgd-ray distill jobs/demo.yaml`."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from helpers import free_port, submit_job

ROOT = Path(__file__).resolve().parent.parent


def jobs_api_answers(address: str) -> bool:
    """The head's job API lists jobs (what `ray job list` asks, without starting a CLI process per try)."""
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # a local head: never a proxy
    try:
        with direct.open(f"{address}/api/jobs/", timeout=5) as r:
            return r.status == 200
    except OSError:  # refused, reset, or an HTTP error while the dashboard starts
        return False


@pytest.mark.skipif(shutil.which("ray") is None, reason="the ray CLI is not installed")
def test_job_submit_runs_the_demo_config(tmp_path, tiny_generator_dir):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")
    # no drain on SIGTERM (Ray waits up to 30 s for the node to go idle, for Serve replicas): the head
    # stops at once when the test ends
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
    gcs, dash, agent = free_port(), free_port(), free_port()
    # A short private temp dir (socket paths have a length limit): the head's address file stays
    # there, so later `ray.init()` calls on this machine never try to join this short-lived cluster.
    temp = tempfile.mkdtemp(prefix="lgdray", dir="/tmp")
    head = subprocess.Popen(
        ["ray", "start", "--head", "--block", f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         # its own agent port: another Ray instance on this machine (the test session's) holds the default
         f"--dashboard-agent-listen-port={agent}", f"--temp-dir={temp}", "--num-cpus=2", "--include-dashboard=true", "--disable-usage-stats"],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = tmp_path / "out"
    try:
        address = f"http://127.0.0.1:{dash}"
        deadline = time.time() + 90
        while time.time() < deadline and not jobs_api_answers(address):  # wait for the jobs API
            time.sleep(0.5)
        overrides = [f"generator.path={tiny_generator_dir}", "generator.num_steps=3", "distill.window=[0,2]",
                     "distill.stages=1", "distill.ipc_seed=1", "distill.ipc_per_stage=1", "student.epochs=1",
                     "reference.epochs=1", "distill.chunk_size=5",
                     # one sampler actor fits beside the Train worker on the 2-CPU head: it lives through
                     # both stages instead of being started twice (pool restarts: test_pipeline.py)
                     "ray.samplers=1"]
        submit = ["ray", "job", "submit", "--address", address, "--working-dir", str(ROOT), "--",
                  "lgd-ray", "distill", "jobs/demo.yaml", *overrides, "--out", str(out), "--quiet"]
        job = submit_job(submit, env, timeout=400)
        assert job.returncode == 0, job.stdout[-2000:] + job.stderr[-2000:]
        assert "succeeded" in job.stdout
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)
    assert (out / "data" / "stage-001" / "_manifest.json").exists()
    assert (out / "reference" / "model.safetensors").exists()
