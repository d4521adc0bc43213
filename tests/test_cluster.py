"""Cluster operation: the manifests, and a real multi-node Ray cluster on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import ray
import requests
import yaml

from ganrec_dist.core.config import PrepareConfig
from ganrec_dist.data.layout import DataDir
from ganrec_dist.data.prepare import prepare
from ganrec_dist.operations.cluster import (
    CLUSTER_RUNTIME_ENV,
    EXCLUDES,
    dump_manifest,
    rayservice_manifest,
    serve_config_for_cluster,
)

ROOT = Path(__file__).resolve().parent.parent
KUBERAY = ROOT / "cluster" / "kuberay"


def _images(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "image":
                yield v
            else:
                yield from _images(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _images(v)


def test_a_submitted_job_carries_every_module_and_no_data():
    """`ganrec submit` uploads the checkout less EXCLUDES, matched as Ray matches them
    (gitignore patterns, relative to the checkout): the package's own data/ and bench/ stay."""
    from pathspec import PathSpec

    excluded = PathSpec.from_lines("gitwildmatch", EXCLUDES).match_file
    modules = [p.relative_to(ROOT).as_posix() for p in (ROOT / "ganrec_dist").rglob("*.py")]
    assert modules and not [m for m in modules if excluded(m)]
    assert excluded("data/manifest.json") and excluded("runs/r/checkpoint/model.pt")


def test_manifests_match_the_installed_ray_version():
    pinned = re.search(
        r'"ray\[train,data,serve\]>=([\d.]+),<', (ROOT / "pyproject.toml").read_text()
    ).group(1)
    assert ray.__version__.startswith(pinned.rsplit(".", 1)[0])
    docs = {p.name: yaml.safe_load(p.read_text()) for p in KUBERAY.glob("*.yaml")}
    assert set(docs) == {
        "raycluster.yaml",
        "rayjob.yaml",
        "rayjob-update.yaml",
        "raycronjob-update.yaml",
        "rayservice.yaml",
    }
    # The schedule creates the update's RayJob: the same spec, the day's files in its entrypoint.
    cron = docs.pop("raycronjob-update.yaml")
    assert cron["kind"] == "RayCronJob" and len(cron["spec"]["schedule"].split()) == 5
    template = dict(cron["spec"]["jobTemplate"])
    assert "--item_content" in template.pop("entrypoint")
    job_spec = dict(docs["rayjob-update.yaml"]["spec"])
    job_spec.pop("entrypoint")
    assert template == job_spec
    update = docs.pop("rayjob-update.yaml")  # runs on the serving cluster: it has no spec of one
    assert update["kind"] == "RayJob" and "jobs/update.py" in update["spec"]["entrypoint"]
    assert (
        update["spec"]["clusterSelector"]["ray.io/cluster"]
        == docs["raycluster.yaml"]["metadata"]["name"]
    )
    assert yaml.safe_load(update["spec"]["runtimeEnvYAML"]) == CLUSTER_RUNTIME_ENV
    assert (ROOT / "jobs" / "update.py").exists()
    for name, doc in docs.items():
        assert doc["apiVersion"] == "ray.io/v1", name
        spec = (
            doc["spec"].get("rayClusterSpec") or doc["spec"].get("rayClusterConfig") or doc["spec"]
        )
        assert spec["rayVersion"] == ray.__version__, name
        images = list(_images(doc))
        assert images and all(i.startswith(f"rayproject/ray:{ray.__version__}-") for i in images), (
            name
        )
    cluster = docs["raycluster.yaml"]
    assert cluster["kind"] == "RayCluster" and cluster["spec"]["enableInTreeAutoscaling"] is True
    gpu = [g for g in cluster["spec"]["workerGroupSpecs"] if "nvidia.com/gpu" in str(g)]
    assert gpu and gpu[0]["maxReplicas"] > gpu[0]["minReplicas"]
    job = docs["rayjob.yaml"]
    assert job["kind"] == "RayJob" and "jobs/pipeline.py" in job["spec"]["entrypoint"]
    assert (ROOT / "jobs" / "pipeline.py").exists()


def test_rayservice_is_generated_from_the_serve_config():
    service = yaml.safe_load((KUBERAY / "rayservice.yaml").read_text())
    assert service["kind"] == "RayService"
    assert yaml.safe_load(service["spec"]["serveConfigV2"]) == serve_config_for_cluster(
        ROOT / "serving" / "config.yaml"
    )
    regenerated = dump_manifest(
        rayservice_manifest(
            ROOT / "serving" / "config.yaml",
            f"rayproject/ray:{ray.__version__}-py311",
            ray.__version__,
        )
    )
    assert yaml.safe_load(regenerated) == service


def test_the_job_and_the_service_bring_the_project_to_a_stock_image():
    """The stock rayproject/ray image has neither the repository nor torch/faiss: the RayJob and
    every Serve application on the cluster get the same runtime environment that brings them."""
    job = yaml.safe_load((KUBERAY / "rayjob.yaml").read_text())
    assert yaml.safe_load(job["spec"]["runtimeEnvYAML"]) == CLUSTER_RUNTIME_ENV
    service = yaml.safe_load((KUBERAY / "rayservice.yaml").read_text())
    apps = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]
    assert apps and all(app["runtime_env"] == CLUSTER_RUNTIME_ENV for app in apps)
    # serving/ (the import path's package) and ganrec_dist/ both come with the working directory.
    module = apps[0]["import_path"].split(":")[0].replace(".", "/") + ".py"
    assert (ROOT / module).exists() and CLUSTER_RUNTIME_ENV["working_dir"].endswith(".zip")


def test_serve_config_states_the_deployment_defaults():
    from ganrec_dist.inference.serve import DEPLOYMENT_OPTIONS

    config = yaml.safe_load((ROOT / "serving" / "config.yaml").read_text())
    deployment = config["applications"][0]["deployments"][0]
    assert deployment["name"] == "GanRecommender"
    assert {k: deployment[k] for k in DEPLOYMENT_OPTIONS} == DEPLOYMENT_OPTIONS


def test_launcher_config_has_cpu_and_gpu_nodes():
    config = yaml.safe_load((ROOT / "cluster" / "launcher" / "aws.yaml").read_text())
    types = config["available_node_types"]
    assert config["provider"]["type"] == "aws" and "gpu_worker" in types and "cpu_worker" in types
    assert ray.__version__ in config["docker"]["image"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_partition(data, path):
    """Later rows for some of DATA's users and a new user: a day's partition."""
    t0 = data.max_timestamp
    rows = data.read("train", ["user_id", "item_id"]).to_pydict()
    lines = ["user_id,item_id,timestamp"]
    lines += [
        f"{rows['user_id'][i]},{rows['item_id'][i + 3]},{t0 + 1 + i}" for i in range(0, 2000, 10)
    ]
    lines += [f"day-user,{rows['item_id'][j]},{t0 + 9000 + j}" for j in range(5)]
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.integration
def test_jobs_training_across_nodes_and_serve_on_a_local_cluster(ray_local, tmp_path):
    # Ray's socket paths must stay under 107 bytes: keep the cluster's directory short.
    cluster_dir = Path(tempfile.mkdtemp(prefix="grc-", dir="/tmp"))
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_USAGE_STATS_ENABLED": "0",
        "GANREC_CLUSTER_DIR": str(cluster_dir),
        "GANREC_RAY_PORT": str(_free_port()),
        "GANREC_DASHBOARD_PORT": str(_free_port()),
        "RAY": str(Path(sys.executable).with_name("ray")),
    }
    env.pop("RAY_ADDRESS", None)
    up = subprocess.run(
        [str(ROOT / "cluster/local/up.sh"), "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    pids = (
        [int(p) for p in (cluster_dir / "pids").read_text().split()]
        if (cluster_dir / "pids").exists()
        else []
    )
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        dashboard = (cluster_dir / "dashboard").read_text().strip()
        data, run = tmp_path / "data", tmp_path / "run"
        ganrec = [sys.executable, "-m", "ganrec_dist", "submit", "--address", dashboard, "--"]
        # DATA is prepared here, on the test session's Ray: the update job below runs the same
        # ingest and id-map tasks as a Ray job on this cluster (its append).
        prepare(
            PrepareConfig(
                source="synthetic", users=300, items=200, interactions=8000, out=str(data)
            )
        )
        fit = subprocess.run(
            ganrec
            + [
                "train",
                f"--data={data}",
                f"--out={run}",
                "--workers=2",
                "--cpus_per_worker=1",
                "--epochs=2",
                "--refit=false",
                "--dim=16",
                "--hidden=32",
                "--history_len=10",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert fit.returncode == 0 and "SUCCEEDED" in fit.stdout, (
            fit.stdout[-3000:] + fit.stderr[-2000:]
        )
        meta = json.loads((run / "checkpoint" / "meta.json").read_text())
        assert meta["final"] and len(meta["nodes"]) == 2
        assert len(set(meta["nodes"])) == 2, "the two training workers ran on one node"

        # The daily update as a Ray job: today's partition appended, a warm start across the
        # two nodes, gated and indexed (no live app on this cluster: nothing rolled out).
        _write_partition(DataDir(data), tmp_path / "today.csv")
        updated = subprocess.run(
            ganrec
            + [
                "update",
                f"--run={run}",
                f"--source={tmp_path / 'today.csv'}",
                "--init_epochs=1",
                "--rollout=false",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        record = tmp_path / "run.v2" / "gate.json"
        assert record.exists(), updated.stdout[-3000:] + updated.stderr[-2000:]
        gate = json.loads(record.read_text())
        # A gate that holds the new run back exits 3: the job is then FAILED, by design (the
        # gate on these tiny runs may go either way).
        held_back = "held back" in updated.stdout and "FAILED" in updated.stdout
        assert (
            (updated.returncode == 0 and "SUCCEEDED" in updated.stdout)
            if gate["passed"]
            else (updated.returncode != 0 and held_back)
        ), updated.stdout[-3000:] + updated.stderr[-2000:]
        assert gate["users"] > 0 and gate["data"] == str(tmp_path / "data.v2")
        warm = json.loads((tmp_path / "run.v2" / "checkpoint" / "meta.json").read_text())
        assert warm["parent"]["run"] == str(run) and len(set(warm["nodes"])) == 2
        assert (tmp_path / "run.v2" / "index" / "meta.json").exists()

        # A sweep as a Ray job: its Tune trial trains across the two nodes too, and compare
        # reads the trial's run (paired with itself: a difference of exactly zero).
        sweep_file = tmp_path / "sweep.yaml"
        sweep_file.write_text(
            f"name: cluster\nout: {tmp_path / 'sweep'}\ndata: {data}\nseeds: [3]\n"
            "train: {epochs: 1, refit: false, dim: 16, hidden: 32, history_len: 10, workers: 2,"
            " cpus_per_worker: 1}\n"
        )
        swept = subprocess.run(
            ganrec + ["sweep", "--config", str(sweep_file)],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert swept.returncode == 0 and "SUCCEEDED" in swept.stdout, (
            swept.stdout[-3000:] + swept.stderr[-2000:]
        )
        trial_run = tmp_path / "sweep" / "runs" / "default-seed3"
        trial_meta = json.loads((trial_run / "checkpoint" / "meta.json").read_text())
        assert len(set(trial_meta["nodes"])) == 2
        compared = subprocess.run(
            [
                sys.executable,
                "-m",
                "ganrec_dist",
                "compare",
                str(trial_run),
                "--against",
                str(trial_run),
                "--out",
                str(tmp_path / "compare.json"),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert compared.returncode == 0, compared.stderr[-2000:]
        assert json.loads((tmp_path / "compare.json").read_text())["difference"] == 0.0

        config = yaml.safe_load((ROOT / "serving" / "config.yaml").read_text())
        port = _free_port()
        config["http_options"]["port"] = port
        app = config["applications"][0]
        app["args"]["run"] = str(run)
        app["deployments"][0]["user_config"]["run"] = str(run)
        app["runtime_env"] = {"env_vars": {"PYTHONPATH": str(ROOT)}}
        (tmp_path / "serve.yaml").write_text(yaml.safe_dump(config))
        deploy = subprocess.run(
            [
                str(Path(sys.executable).with_name("serve")),
                "deploy",
                str(tmp_path / "serve.yaml"),
                "--address",
                dashboard,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        deadline, answer = time.time() + 120, None
        while time.time() < deadline:
            try:
                r = requests.post(
                    f"http://127.0.0.1:{port}/recommend", json={"user_id": "u1", "k": 3}, timeout=5
                )
                if r.status_code == 200:
                    answer = r.json()
                    break
            except requests.RequestException:
                pass
            time.sleep(1)
        assert (
            answer is not None
            and len(answer["items"]) == 3
            and answer["model_version"].startswith("run@")
        )
    finally:
        tree = []
        for pid in pids:
            try:
                proc = psutil.Process(pid)
                tree += [proc] + proc.children(recursive=True)
            except psutil.NoSuchProcess:
                pass
        down = subprocess.run(
            [str(ROOT / "cluster/local/down.sh")],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    shutil.rmtree(cluster_dir, ignore_errors=True)
    assert down.returncode == 0, down.stderr
    assert pids, "up.sh recorded no processes"
    gone, alive = psutil.wait_procs(tree, timeout=30)
    assert not alive, f"left running: {[p.pid for p in alive]}"
    # Nothing that up.sh started may outlive down.sh, recorded or not (the autoscaler's monitor
    # once escaped the record): every process of this cluster names its directory.
    stray = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if str(cluster_dir) in " ".join(p.info["cmdline"] or [])
    ]
    assert not stray, f"processes of the cluster left running: {stray}"
