"""`ganrec bench serve`: closed-loop HTTP load (wrk) on 127.0.0.1 against the Ray Serve app and,
in the same run, the same logic in a bare uvicorn process; the autoscaling trace as a PNG."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from ganrec_dist.bench.common import print_table, write_json

log = logging.getLogger(__name__)

LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local users = {USERS}
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, "/recommend", nil, '{"user_id":"' .. users[n % #users + 1] .. '","k":10}')
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %f %f %f\\n", summary.requests, e.connect + e.read + e.write + e.timeout,
    e.status, summary.duration, latency:percentile(50), latency:percentile(95), latency:percentile(99)))
end
"""


@dataclasses.dataclass
class BenchServeConfig:
    run: str = "demo/run"
    data: str = "demo/data"
    concurrency: str = "1,8,32,64"
    seconds: int = 10
    cooldown_s: int = 40  # keep tracing replicas after the load to show them scale down
    out: str = "bench/serve.json"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wrk(url: str, script: Path, concurrency: int, seconds: int) -> dict:
    if not shutil.which("wrk"):
        raise RuntimeError("wrk is needed (apt-get install wrk)")
    cmd = [
        "wrk",
        "-t",
        str(min(concurrency, 2)),
        "-c",
        str(concurrency),
        "-d",
        f"{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
    ]
    text = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    m = re.search(r"RESULT (\d+) (\d+) (\d+) (\d+) ([\d.]+) ([\d.]+) ([\d.]+)", text)
    if not m:
        raise RuntimeError(f"could not parse wrk output: {text[-500:]}")
    n, socket_errors, status_errors, duration_us, p50, p95, p99 = m.groups()
    return {
        "concurrency": concurrency,
        "requests": int(n),
        "errors": int(socket_errors) + int(status_errors),
        "rps": int(n) / (int(duration_us) / 1e6),
        "p50_ms": float(p50) / 1e3,
        "p95_ms": float(p95) / 1e3,
        "p99_ms": float(p99) / 1e3,
    }


def _replicas() -> int:
    import ray

    return sum(
        1
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith("SERVE_REPLICA") and "GanRecommender" in a["name"]
    )


def run(cfg: BenchServeConfig) -> dict:
    from ray import serve

    from ganrec_dist.serve import Engine, RecommendRequest, ServeConfig, start, wait_healthy

    users = pq.read_table(Path(cfg.data) / "users.parquet")["user_id"].to_pylist()[:200]
    work = Path(tempfile.mkdtemp(prefix="ganrec-bench-serve-"))
    script = work / "load.lua"
    script.write_text(LUA.replace("{USERS}", "{" + ",".join(json.dumps(u) for u in users) + "}"))
    levels = [int(c) for c in cfg.concurrency.split(",")]
    # In-process cost of one request's model + index work (the floor under any HTTP stack).
    engine = Engine(cfg.run)
    req = RecommendRequest(user_id=users[0], k=10, history=None, exclude=None)
    start_t = time.perf_counter()
    for _ in range(200):
        engine.answer([req])
    compute_ms = (time.perf_counter() - start_t) / 200 * 1e3
    results: dict = {
        "run": cfg.run,
        "seconds_per_level": cfg.seconds,
        "compute_ms": compute_ms,
        "bare": [],
        "serve": [],
    }

    port = _port()
    bare = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "ganrec_dist.bench.bare_app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env={**os.environ, "GANREC_RUN": cfg.run},
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}")
        for c in levels:
            results["bare"].append(wrk(f"http://127.0.0.1:{port}", script, c, cfg.seconds))
    finally:
        bare.terminate()
        bare.wait(timeout=30)

    port = _port()
    start(ServeConfig(run=cfg.run, port=port))
    url = f"http://127.0.0.1:{port}"
    trace: list[tuple[float, int, int]] = []
    stop = threading.Event()
    phase = {"concurrency": 0}
    t0 = time.time()

    def tracer():
        while not stop.is_set():
            trace.append((time.time() - t0, _replicas(), phase["concurrency"]))
            stop.wait(0.5)

    thread = threading.Thread(target=tracer, daemon=True)
    try:
        wait_healthy(url)
        thread.start()
        for c in levels:
            phase["concurrency"] = c
            results["serve"].append(wrk(url, script, c, cfg.seconds))
        phase["concurrency"] = 0
        time.sleep(cfg.cooldown_s)
    finally:
        stop.set()
        thread.join()
        serve.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    results["autoscaling_trace"] = [{"t": t, "replicas": r, "concurrency": c} for t, r, c in trace]
    results["max_replicas_seen"] = max((r for _, r, _ in trace), default=0)
    results["replicas_at_end"] = trace[-1][1] if trace else 0
    rows = []
    for b, s in zip(results["bare"], results["serve"]):
        ratio = s["rps"] / b["rps"]
        s["ratio_vs_bare"] = ratio
        rows.append(
            [
                b["concurrency"],
                b["rps"],
                b["p50_ms"],
                b["p99_ms"],
                s["rps"],
                s["p50_ms"],
                s["p95_ms"],
                s["p99_ms"],
                s["errors"],
                ratio,
            ]
        )
    c1b, c1s = results["bare"][0], results["serve"][0]
    results["breakdown_ms_at_concurrency_1"] = {
        "model_and_index": compute_ms,
        "http_and_fastapi": max(0.0, c1b["p50_ms"] - compute_ms),
        "serve_proxy_routing_batching": max(0.0, c1s["p50_ms"] - c1b["p50_ms"]),
    }
    print_table(
        f"serve: closed-loop wrk on 127.0.0.1, {cfg.seconds}s per level (model+index {compute_ms:.2f} ms/request)",
        [
            "conc.",
            "bare req/s",
            "bare p50",
            "bare p99",
            "serve req/s",
            "serve p50",
            "serve p95",
            "serve p99",
            "errors",
            "serve/bare",
        ],
        rows,
    )
    print(
        "breakdown at concurrency 1 (ms):",
        json.dumps({k: round(v, 2) for k, v in results["breakdown_ms_at_concurrency_1"].items()}),
    )
    _plot(results, cfg.out.replace(".json", ".png"))
    write_json(cfg.out, results)
    return results


def _plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trace = results["autoscaling_trace"]
    fig, ax = plt.subplots(figsize=(8, 4))
    t = np.array([p["t"] for p in trace])
    ax.step(t, [p["replicas"] for p in trace], where="post", label="replicas")
    ax2 = ax.twinx()
    ax2.step(
        t,
        [p["concurrency"] for p in trace],
        where="post",
        color="tab:orange",
        alpha=0.6,
        label="load concurrency",
    )
    ax.set_xlabel("seconds")
    ax.set_ylabel("replicas")
    ax2.set_ylabel("concurrent connections")
    ax.set_title("Ray Serve autoscaling under load")
    fig.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
