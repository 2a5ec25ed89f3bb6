"""Two Ray nodes on 127.0.0.1 (a head plus a second node carrying a custom resource), writing to
a real S3 API server: `jobs.curate --model-resource` pins every model actor to the second node
and its outputs equal a one-node run; `jobs.train --workers 2` puts a worker on each node and
resumes from the checkpoint in object storage. Plus: workers that disagree on the resume step
fail with a clear error instead of hanging in DDP."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from curate import schema as S
from curate.io import storage
from jobs.demo import SAMPLES, make_samples
from tests.raycluster import REPO, ray_env

pytestmark = [
    pytest.mark.ray,
    pytest.mark.slow,
]

BUCKET = "tubelet-nodes"
RESOURCE = "model_node"


@pytest.fixture(scope="module")
def cluster(s3_server, tmp_path_factory):
    raw = tmp_path_factory.mktemp("raw2")
    make_samples(raw, size=(128, 72))
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {**s3_server.env, "PYTHONPATH": ray_env()["PYTHONPATH"], "HF_HUB_OFFLINE": "1"}.items():
            mp.setenv(k, v)  # inherited by both nodes' raylets and workers
        s3_server.make_bucket(BUCKET)
        names = sorted(SAMPLES)[:2]  # two videos keep the runs short
        for n in names:
            s3_server.upload_dir(raw, f"s3://{BUCKET}/raw", n)
        c, second = _start_cluster()
        try:
            c.local_address = "127.0.0.1:" + c.address.rsplit(":", 1)[1]  # the GCS listens on loopback only
            yield c, second, f"s3://{BUCKET}/raw"
        finally:
            c.shutdown()


def _start_cluster():
    from ray.cluster_utils import Cluster

    for attempt in range(3):  # Ray waits a fixed 30 s for a raylet: retry on an overloaded machine
        c = Cluster()
        try:
            c.add_node(num_cpus=2, node_ip_address="127.0.0.1", include_dashboard=False)
            second = c.add_node(num_cpus=2, node_ip_address="127.0.0.1", resources={RESOURCE: 1})
            c.wait_for_nodes()
            return c, second
        except Exception as e:
            c.shutdown()
            if "timed out during startup" not in str(e) or attempt == 2:
                raise
    raise AssertionError("unreachable")


def run(module: str, *args: str, address: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **ray_env()}
    env.pop("RAY_ADDRESS", None)
    if address:
        env["RAY_ADDRESS"] = address
        # important: ray.init rewrites a 127.0.0.1 address to the machine's external IP (to be
        # reachable from other hosts), but this Cluster's GCS listens on 127.0.0.1 only, so the
        # driver hung in GcsClient start-up. This Ray switch makes the node IP the loopback one.
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    for _ in range(3):  # retried only when Ray itself failed to start (overloaded machine)
        r = subprocess.run(
            [sys.executable, "-m", module, *args],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if "timed out during startup" not in r.stderr:
            break
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return r


def _actors(c, name: str) -> list[dict]:
    return [a for a in c.global_state.actor_table(None).values() if name in a["ActorClassName"]]


def test_model_stages_pinned_to_the_second_node_match_a_one_node_run(cluster):
    c, second, raw = cluster
    two, one = f"s3://{BUCKET}/two-nodes", f"s3://{BUCKET}/one-node"
    run(
        "jobs.curate",
        "--input",
        raw,
        "--output",
        two,
        "--preset",
        "smoke",
        "--no-report",
        "--model-resource",
        RESOURCE,
        address=c.local_address,
    )
    stage_actors = _actors(c, "_StageActor")
    assert len(stage_actors) >= 3  # score, caption, encode pools
    assert {a["Address"]["NodeID"] for a in stage_actors} == {second.node_id}
    run("jobs.curate", "--input", raw, "--output", one, "--preset", "smoke", "--no-report")  # local Ray
    for sub in ("scored", "captions"):
        a, b = (
            storage.read_parts(storage.join(o, sub), S.CLIP_SCHEMA).sort_by(S.CLIP_ID) for o in (two, one)
        )
        cols = [S.CLIP_ID, S.SOURCE_URI, S.START_FRAME, S.END_FRAME, S.KEPT, S.DROP_REASON, S.CAPTION]
        assert a.num_rows == b.num_rows > 0 and a.select(cols).equals(b.select(cols)), sub
    sa, sb = (
        pd.read_parquet(storage.join(o, "latents"), storage_options=storage.storage_options(o))
        .sort_values(S.CLIP_ID)
        .reset_index(drop=True)
        for o in (two, one)
    )
    assert len(sa) == len(sb) > 0 and sa[S.CLIP_ID].tolist() == sb[S.CLIP_ID].tolist()
    for x, y, dt in zip(sa[S.LATENT], sb[S.LATENT], sa[S.LATENT_DTYPE]):  # the same latents, clip by clip
        np.testing.assert_allclose(np.frombuffer(x, dt), np.frombuffer(y, dt), atol=1e-3)


def test_train_two_workers_on_two_nodes_resumes_from_object_storage(cluster):
    c, _, _ = cluster
    one = f"s3://{BUCKET}/one-node"  # written by the test above
    if not storage.exists(storage.join(one, "latents", ".manifest.json")):
        pytest.skip("needs the one-node run's shards")
    shards, runs = storage.join(one, "latents"), f"s3://{BUCKET}/runs/ddp"
    args = [
        "--input",
        shards,
        "--output",
        runs,
        "--workers",
        "2",
        "--batch-size",
        "4",
        "--ckpt-every",
        "2",
        "--device",
        "cpu",
    ]
    run("jobs.train", *args, "--steps", "2", address=c.local_address)
    workers = _actors(c, "RayTrainWorker")
    assert len({a["Address"]["NodeID"] for a in workers}) == 2  # one worker per node
    run("jobs.train", *args, "--steps", "4", address=c.local_address)
    state = storage.read_json(storage.join(runs, "checkpoints", "step-0000004", "state.json"))
    assert state["step"] == 4 and state["resumed_from"] == 2  # every rank started from the stored step 2
    rows = storage.read_bytes(storage.join(runs, "loss.csv")).decode().strip().splitlines()
    assert rows[-1].startswith("4,")
