"""Scale-out on a simulated cluster: a local three-node Ray cluster (`ray.cluster_utils.Cluster`: a
head with no CPUs for the driver, three one-CPU worker nodes, small object stores) runs fmnist-batch's
job; the work spreads over the nodes, and a node removed mid-run loses nothing: every image is answered
once, with fmnist-predict's answers, the units of the lost node retried on the spare one."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import ARTIFACTS

ray = pytest.importorskip("ray", reason="fmnist-batch needs the optional ray package: pip install '.[scale]'")

from ray.cluster_utils import Cluster  # noqa: E402 - after the importorskip

from fmnist_deploy.scaleout.ray_job import JobConfig, read_answers, run_job  # noqa: E402

MODEL = ARTIFACTS / "fmnist_mlp.onnx"
STORE = 80 * 1024 * 1024  # bytes of object store per node: only unit lists and summaries travel


@pytest.fixture
def cluster():
    if ray.is_initialized():  # another module's local instance
        ray.shutdown()
    simulated = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "object_store_memory": STORE, "include_dashboard": False},
    )
    workers = [simulated.add_node(num_cpus=1, object_store_memory=STORE) for _ in range(3)]
    simulated.wait_for_nodes()
    ray.init(address=simulated.address, log_to_driver=False, configure_logging=False)
    try:
        yield simulated, workers
    finally:
        ray.shutdown()
        simulated.shutdown()


def test_work_spreads_over_nodes_and_a_node_removed_mid_run_loses_nothing(cluster, data, tmp_path: Path) -> None:
    simulated, workers = cluster
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, image in enumerate(data.test_images[:1200].numpy()):
        Image.fromarray(image).save(folder / f"{i:05d}.png")
    pids = tmp_path / "pids"
    pids.mkdir()
    output = tmp_path / "answers"
    outcome: dict = {}
    done = [0]

    def job() -> None:
        try:  # two one-CPU actors on three one-CPU nodes: on two nodes, a spare one for a restart
            config = JobConfig(model=MODEL, output=output, actors=2, batch_size=25)
            outcome["counts"] = run_job(
                config, [folder], pid_folder=pids, progress=lambda rows: done.__setitem__(0, done[0] + rows)
            )
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = exc

    thread = threading.Thread(target=job)
    thread.start()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and (len(list(pids.iterdir())) < 2 or done[0] < 200) and thread.is_alive():
        time.sleep(0.01)
    killed_at = done[0]
    victim_node = sorted(pids.iterdir())[0].read_text().split()[1]
    victim = next(node for node in workers if node.node_id == victim_node)
    simulated.remove_node(victim, allow_graceful=False)  # its raylet, its actor and its object store go
    thread.join(timeout=300)
    assert not thread.is_alive(), "the job did not finish after a node was removed"
    assert "error" not in outcome, outcome.get("error")
    counts = outcome["counts"]
    assert counts["rows"] == 1200 and counts["failed"] == 0
    assert len({p.read_text().split()[1] for p in pids.iterdir()}) >= 2  # actors ran on two nodes at least
    assert len(counts["nodes"]) >= 2 and sum(counts["nodes"].values()) == 48, counts["nodes"]
    rows = read_answers(output).to_pylist()
    result = subprocess.run(
        [sys.executable, "-m", "fmnist_deploy.runtime.cli", str(folder), "--json", "--top-k", "3"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    expected = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["input"] for r in rows] == [e["input"] for e in expected]  # each image once, in input order
    assert [(r["class"], r["top_k"]) for r in rows] == [(e["class"], e["top_k"]) for e in expected]
    if killed_at < 1200:  # the node went before the last unit: a new actor must have started elsewhere
        assert len(list(pids.iterdir())) >= 3, f"node removed after {killed_at} rows; no replacement actor"
