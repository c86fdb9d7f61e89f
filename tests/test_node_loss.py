"""Node loss on a two-node cluster on this machine (`ray.cluster_utils.Cluster`: a head and a worker
node, each a real raylet): the worker node, holding one of the two sampler actors, is removed in the
middle of a guided stage. Ray restarts the lost actor on the head and retries its chunks there; the run
finishes with the bytes of an undisturbed run on the same cluster.

Behind the `multinode` marker (its own Ray cluster, so its own pytest run: `python -m pytest -m multinode`).
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from lgd_ray.core.config import load_config

from helpers import parts_and_manifests, tiny_overrides, titled

pytestmark = pytest.mark.multinode


@pytest.fixture
def two_nodes():
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "object_store_memory": 200 * 2**20})
    worker = cluster.add_node(num_cpus=1, object_store_memory=200 * 2**20)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        yield cluster, worker
    finally:
        ray.shutdown()
        cluster.shutdown()  # only the processes this cluster started


def test_a_lost_node_costs_time_not_bytes(two_nodes, tiny_generator_dir, reference_file, tmp_path):
    from lgd_ray.engine.distill import distill

    cluster, worker = two_nodes
    overrides = tiny_overrides(tiny_generator_dir, reference_file)
    t0 = time.monotonic()
    distill(load_config(None, [*overrides, "ray.samplers=2"]), str(tmp_path / "undisturbed"), progress=False)
    undisturbed_s = time.monotonic() - t0

    out = tmp_path / "lost-node"
    worker_raylet = worker.all_processes["raylet"][0].process.pid
    removed: list[float] = []

    def remove_when_it_holds_a_sampler() -> None:
        deadline = time.time() + 300
        while time.time() < deadline:
            if list(out.glob("data/stage-001/part-*.parquet")) and titled(worker_raylet, "ray::ChunkWorker"):
                cluster.remove_node(worker, allow_graceful=False)
                removed.append(time.monotonic())
                return
            time.sleep(0.01)

    saboteur = threading.Thread(target=remove_when_it_holds_a_sampler, daemon=True)
    saboteur.start()
    t0 = time.monotonic()
    distill(load_config(None, [*overrides, "ray.samplers=2"]), str(out), progress=False)
    disturbed_s = time.monotonic() - t0
    saboteur.join(timeout=5)
    assert removed, "the worker node never held a sampler actor during stage 1"
    assert parts_and_manifests(out) == parts_and_manifests(tmp_path / "undisturbed")
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    lost = [e for e in events if e.get("event") == "failure"]
    assert [e["kind"] for e in lost] == ["sampler_actor_restarted"] and lost[0]["stage"] == 1, lost
    (stage1,) = [e for e in events if e.get("event") == "sample" and e["stage"] == 1]
    nodes = {a["node"] for a in stage1["actors"]}
    assert len(nodes) == 2  # SPREAD: the pool had an actor on each node
    before = next(e for e in map(json.loads, (tmp_path / "undisturbed" / "metrics.jsonl").read_text().splitlines())
                  if e.get("event") == "sample" and e["stage"] == 1)
    print(f"lost node: stage 1 took {stage1['wall_s']:.1f} s against an undisturbed {before['wall_s']:.1f} s; "
          f"the retried chunk came back {lost[0]['time'] - (time.time() - time.monotonic() + removed[0]):.1f} s "
          f"after the removal; whole runs {disturbed_s:.1f} s vs {undisturbed_s:.1f} s")
