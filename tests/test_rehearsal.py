"""The dress rehearsal of the ImageNet-1K paper job (`-m rehearsal`, about 15 minutes on 2 cores).

`jobs/imagenet1k_ipc50.yaml` goes through `ray job submit` to a local two-node cluster shaped like the
shipped ones: a head started with `--num-cpus=0` (the drivers run there, with no GPU), and one worker
node that declares GPUs, so every GPU request is scheduled and checked although torch sees none. The
overrides change sizes only, never code paths: a tiny DiT in the `facebook/DiT-XL-2-256` hub layout
(tiny VAE at latent scale 0.18215, learned σ, null class 1000), a generated ImageNet-layout JPEG folder
with all 1000 wnids, the job's ConvNet-6 students and its soft-label protocol with a tiny teacher (the
rehearsal's own θ*), and small IPC, epochs, steps and image size. train-reference, distill and
evaluate run end to end; then the test asserts what the real run depends on.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import ROOT, free_port, submit_job, write_hub_dit

pytestmark = pytest.mark.rehearsal

GPUS = 2  # declared on the worker node: one sampler actor and one Train worker side by side
TRAIN_PER_CLASS, VAL_PER_CLASS = 4, 1


def write_imagenet_folder(root: Path, px: int = 64) -> None:
    """root/{train,val}/<wnid>/*.JPEG for all 1000 wnids: a few low-frequency images each, class-coloured
    so that θ* can learn something."""
    from PIL import Image

    from lgd_ray.core.classes import imagenet_wnids

    rng = np.random.default_rng(0)
    for c, wnid in enumerate(imagenet_wnids()):
        base = np.array([(c * 37) % 256, (c * 91) % 256, (c * 53) % 256], dtype=np.int16)
        for split, n in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
            os.makedirs(root / split / wnid, exist_ok=True)
            for i in range(n):
                noise = rng.integers(-40, 40, (8, 8, 3))
                img = np.clip(base + noise, 0, 255).astype(np.uint8).repeat(px // 8, 0).repeat(px // 8, 1)
                Image.fromarray(img).save(root / split / wnid / f"{wnid}_{i}.JPEG", quality=90)


class TwoNodeCluster:
    """`ray start --head --num-cpus=0` plus one worker node declaring GPUs, on private ports and a private
    temp folder; stops only the processes it started."""

    def __init__(self, temp: str):
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
        self.env.pop("RAY_ADDRESS", None)
        self.temp, self.procs = temp, []
        self.gcs, self.dash = free_port(), free_port()

    def start(self) -> None:
        common = ["--block", "--disable-usage-stats"]
        self.procs.append(subprocess.Popen(
            ["ray", "start", "--head", f"--port={self.gcs}", "--num-cpus=0", "--dashboard-host=127.0.0.1",
             f"--dashboard-port={self.dash}", f"--dashboard-agent-listen-port={free_port()}",
             f"--temp-dir={self.temp}", "--include-dashboard=true", *common],
            env=self.env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        self._wait(lambda: subprocess.run(["ray", "job", "list", "--address", self.address], env=self.env,
                                          capture_output=True).returncode == 0)
        self.procs.append(subprocess.Popen(
            ["ray", "start", f"--address=127.0.0.1:{self.gcs}", "--num-cpus=2", f"--num-gpus={GPUS}",
             f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
             f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}", *common],
            env=self.env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        self._wait(lambda: '"GPU"' in self.status())

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.dash}"

    def status(self) -> str:
        code = "import json, ray; ray.init(); print(json.dumps(ray.cluster_resources()))"
        r = subprocess.run(["python", "-c", code], env={**self.env, "RAY_ADDRESS": f"127.0.0.1:{self.gcs}"},
                           capture_output=True, text=True)
        return r.stdout

    def submit(self, *args: str) -> subprocess.CompletedProcess:
        cmd = ["ray", "job", "submit", "--address", self.address, "--working-dir", str(ROOT), "--", "lgd-ray", *args]
        return submit_job(cmd, self.env, timeout=1500)

    def stop(self) -> None:
        for p in reversed(self.procs):
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    @staticmethod
    def _wait(ready, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if ready():
                return
            time.sleep(1)
        raise TimeoutError("the local cluster did not come up")


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    """Runs the three jobs once; yields their folders and the cluster's job outputs."""
    if shutil.which("ray") is None:
        pytest.skip("the ray CLI is not installed")
    base = tmp_path_factory.mktemp("rehearsal")
    write_imagenet_folder(base / "imagenet")
    write_hub_dit(base / "DiT-XL-2-256")
    ref, out = base / "reference", base / "distilled"
    sizes = [f"data.root={base / 'imagenet'}", "data.image_size=64", "data.select_fraction=0.25",
             f"generator.path={base / 'DiT-XL-2-256'}", "generator.num_steps=4", "distill.window=[1,2]",
             "distill.stages=1", "distill.ipc_seed=1", "distill.ipc_per_stage=1",
             "student.epochs=1", "student.batch_size=256", "reference.epochs=1", "reference.batch_size=256",
             "eval.epochs=1", "eval.seeds=[0]", f"eval.teacher={ref}",
             "ray.samplers=1", "ray.cpus_per_sampler=1", "ray.train_workers=1", "ray.cpus_per_train_worker=1"]
    temp = tempfile.mkdtemp(prefix="lgdreh", dir="/tmp")  # short: socket paths have a length limit
    cluster = TwoNodeCluster(temp)
    jobs, walls = {}, {}
    try:
        cluster.start()
        for name, args in (
            ("train-reference", ["train-reference", "jobs/imagenet1k_ipc50.yaml", *sizes, "reference.path=null",
                                 "--out", str(ref)]),
            ("distill", ["distill", "jobs/imagenet1k_ipc50.yaml", *sizes, f"reference.path={ref / 'model.safetensors'}",
                         "--out", str(out), "--quiet"]),
            ("evaluate", ["evaluate", str(out), "eval.epochs=1", "eval.seeds=[0]", "--quiet"]),
        ):
            t0 = time.time()
            jobs[name] = cluster.submit(*args)
            walls[name] = time.time() - t0
            assert jobs[name].returncode == 0, f"{name}:\n" + jobs[name].stdout[-3000:] + jobs[name].stderr[-2000:]
    finally:
        cluster.stop()
        shutil.rmtree(temp, ignore_errors=True)
    print("rehearsal wall seconds:", json.dumps({k: round(v) for k, v in walls.items()}))
    yield {"reference": ref, "out": out, "jobs": jobs}


def _records(out: Path, event: str) -> list[dict]:
    return [r for r in (json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()) if r.get("event") == event]


def test_every_job_ran_end_to_end(rehearsal):
    from lgd_ray.engine.store import OutputDir

    out = OutputDir(str(rehearsal["out"]))
    assert out.verify_stage(0) == [] and out.verify_stage(1) == []
    assert sum(out.manifest(s)["rows"] for s in (0, 1)) == 2000  # 1000 classes x (1 + 1)
    result = next(iter(json.loads((rehearsal["out"] / "evaluation.json").read_text())["results"].values()))
    assert result["protocol"] == "soft" and result["teacher"] == str(rehearsal["reference"]) and result["n"] == 1


def test_every_gpu_job_asked_for_a_gpu(rehearsal):
    """Sampler actors, Train workers (θ* and θ_0) and evaluation tasks each held a GPU of the worker node;
    the drivers ran on the CPU-only head."""
    ref = json.loads((rehearsal["reference"] / "metrics.json").read_text())
    assert ref["gpus"] == 1
    for record in _records(rehearsal["out"], "student"):
        assert record["gpus"] == 1
    for record in _records(rehearsal["out"], "sample"):
        assert [a["gpus"] for a in record["actors"]] == [1.0]
    evaluation = next(iter(json.loads((rehearsal["out"] / "evaluation.json").read_text())["results"].values()))
    assert evaluation["placement"]["gpus_per_task"] == [1.0]


def test_precision_was_resolved_in_the_workers(rehearsal):
    """`generator.dtype: auto` was decided by the sampler actors on their own device (torch sees no CUDA
    there: fp32 on cpu) and recorded with the run; the Train workers recorded their device too."""
    saved = json.loads((rehearsal["out"] / "config.json").read_text())
    assert saved["config"]["generator"]["dtype"] == "auto"
    assert saved["precision"] == {"device": "cpu", "dtype": "fp32"}
    samples = _records(rehearsal["out"], "sample")
    assert {(a["device"], a["dtype"]) for r in samples for a in r["actors"]} == {("cpu", "fp32")}
    assert {r["device"] for r in _records(rehearsal["out"], "student")} == {"cpu"}
    # the generator is the hub DiT, sampled as DiT does (DDPM, learned range, CFG on 3 channels)
    assert saved["config"]["generator"]["scheduler"] == "ddpm"


def test_worker_memory_stayed_bounded_and_data_streamed(rehearsal):
    """The Train workers streamed their sets (decoded per image, never the whole set in memory) and
    their peak RSS stayed under a fixed bound."""
    ref = json.loads((rehearsal["reference"] / "metrics.json").read_text())
    students = _records(rehearsal["out"], "student")
    for record in [ref, *students]:
        assert record["streamed"] and record["peak_rss_mib"] < 4096, record


def test_the_selection_split_chose_and_the_test_split_reported(rehearsal):
    """θ* trained on train less the selection split; θ's accuracy was read on the selection split."""
    ref = json.loads((rehearsal["reference"] / "metrics.json").read_text())
    assert ref["train_images"] == 1000 * (TRAIN_PER_CLASS - 1)  # one image per class held out for selection
    assert "select_acc" in ref and "val_acc" not in ref
    assert all("select_acc" in r for r in _records(rehearsal["out"], "student"))


def test_sampler_actors_lived_across_stages(rehearsal):
    """The worker node holds the sampler beside the Train worker: one actor sampled both stages."""
    samples = _records(rehearsal["out"], "sample")
    assert len(samples) == 2 and len({a["pid"] for r in samples for a in r["actors"]}) == 1
