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
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ganrec_dist.bench.common import write_json
from ganrec_dist.core.config import ServeConfig, setting
from ganrec_dist.core.logs import print_table
from ganrec_dist.data.layout import DataDir

log = logging.getLogger(__name__)

LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local users = {USERS}
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, "/recommend", nil, '{"user_id":"' .. users[n % #users + 1] .. '","k":10,"samples":{SAMPLES}}')
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %f %f %f\\n", summary.requests, e.connect + e.read + e.write + e.timeout,
    e.status, summary.duration, latency:percentile(50), latency:percentile(95), latency:percentile(99)))
end
"""


@dataclasses.dataclass
class BenchServeConfig:
    """`ganrec bench serve`: closed-loop HTTP load on Ray Serve against a bare uvicorn app."""

    run: str = setting("demo/run", "the trained RUN to serve")
    data: str = setting("demo/data", "its DATA (for user ids)")
    concurrency: str = setting("1,8,32,64", "load levels (open connections), comma-separated")
    seconds: int = setting(10, "seconds per level")
    samples: str = setting(
        "1,4", "noise draws per request (the body's samples), comma-separated: each a pass"
    )
    cooldown_s: int = setting(40, "keep tracing replicas after the load, to see them scale down")
    out: str = setting("bench/serve.json", "results JSON (and a PNG beside it)")


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


def _compute_ms(run: str, user: str, samples: int, n: int = 200) -> float:
    """In-process cost of one request's model + index work (the floor under any HTTP stack)."""
    from ganrec_dist.inference.serve import Engine, RecommendRequest

    engine = Engine(run)
    req = RecommendRequest(user_id=user, k=10, history=None, exclude=None, samples=samples)
    start = time.perf_counter()
    for _ in range(n):
        engine.answer([req])
    return (time.perf_counter() - start) / n * 1e3


def _bare(cfg: BenchServeConfig, scripts: dict[int, Path], levels: list[int]) -> dict:
    """The baseline: the same logic in one uvicorn process, no Ray."""
    from ganrec_dist.inference.serve import wait_healthy

    port = _port()
    app = "ganrec_dist.bench.bare_app:app"
    bare = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)]
        + ["--log-level", "warning"],
        env={**os.environ, "GANREC_RUN": cfg.run},
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}")
        url = f"http://127.0.0.1:{port}"
        return _load(url, scripts, levels, cfg.seconds)
    finally:
        bare.terminate()
        bare.wait(timeout=30)


def _load(
    url: str,
    scripts: dict[int, Path],
    levels: list[int],
    seconds: int,
    phase: dict | None = None,
    replicas: Callable[[], int] | None = None,
) -> dict[int, list[dict]]:
    """wrk at each level for every K in turn, ``{K: [point per level]}``. Every K at one level
    before the next: K's passes then meet the same replica count (run one K's levels after
    another's and the later K inherits the replicas the earlier load scaled up to). With
    ``replicas``, each point records the count before and after it."""
    out: dict[int, list[dict]] = {k: [] for k in scripts}
    for c in levels:
        if phase is not None:
            phase["concurrency"] = c
        for k, script in scripts.items():
            before = replicas() if replicas else None
            point = wrk(url, script, c, seconds)
            if replicas:
                point["replicas_before"], point["replicas"] = before, replicas()
            out[k].append(point)
    return out


def _same_replica_ratios(served: dict[int, list[dict]], k: int) -> list[float]:
    """K's Serve throughput over K = 1's at each level whose replica count held through both
    passes: a level where replicas came up is no comparison."""
    ratios = []
    for one, many in zip(served[1], served[k]):
        counts = {
            one["replicas_before"],
            one["replicas"],
            many["replicas_before"],
            many["replicas"],
        }
        if len(counts) == 1:
            ratios.append(many["rps"] / one["rps"])
    return ratios


def _served(
    cfg: BenchServeConfig, scripts: dict[int, Path], levels: list[int]
) -> tuple[dict, list]:
    """The Ray Serve app under the same load (each level for every K in turn), with the replica
    count after each measurement; and the replica count every 0.5 s."""

    from ganrec_dist.inference.serve import start, wait_healthy
    from ganrec_dist.inference.serve import stop as stop_app

    port = _port()
    start(ServeConfig(run=cfg.run, port=port))
    url = f"http://127.0.0.1:{port}"
    trace: list[tuple[float, int, int]] = []
    stop = threading.Event()
    phase = {"concurrency": 0}
    t0 = time.time()

    def tracer() -> None:
        while not stop.is_set():
            trace.append((time.time() - t0, _replicas(), phase["concurrency"]))
            stop.wait(0.5)

    thread = threading.Thread(target=tracer, daemon=True)
    try:
        wait_healthy(url)
        thread.start()
        results = _load(url, scripts, levels, cfg.seconds, phase=phase, replicas=_replicas)
        phase["concurrency"] = 0
        time.sleep(cfg.cooldown_s)
    finally:
        stop.set()
        thread.join()
        stop_app()
    return results, trace


def _report(cfg: BenchServeConfig, results: dict) -> None:
    for k, part in results["by_samples"].items():
        rows = []
        for b, s in zip(part["bare"], part["serve"]):
            s["ratio_vs_bare"] = s["rps"] / b["rps"]
            rows.append(
                [b["concurrency"], b["rps"], b["p50_ms"], b["p99_ms"], s["rps"], s["p50_ms"]]
                + [
                    s["p95_ms"],
                    s["p99_ms"],
                    s["errors"],
                    s["replicas"],
                    s["ratio_vs_bare"],
                ]
            )
        header = ["conc.", "bare req/s", "bare p50", "bare p99", "serve req/s", "serve p50"]
        header += ["serve p95", "serve p99", "errors", "replicas", "serve/bare"]
        print_table(
            f"serve, samples={k}: closed-loop wrk on 127.0.0.1, {cfg.seconds}s per level "
            f"(model+index {part['compute_ms']:.2f} ms/request)",
            header,
            rows,
        )
    print(
        "breakdown at concurrency 1 (ms):",
        json.dumps({k: round(v, 2) for k, v in results["breakdown_ms_at_concurrency_1"].items()}),
    )
    for k, cost in results["samples_cost"].items():
        print(
            f"samples={k} vs 1: model+index {cost['compute_ratio']:.2f}x the time; bare app "
            f"throughput {cost['bare_rps_ratio_at_max_concurrency']:.2f}x at the highest load; "
            f"serve throughput {_span(cost['serve_rps_ratios_same_replicas'])} at the levels "
            "whose replica count held"
        )


def _span(ratios: list[float]) -> str:
    if not ratios:
        return "(no level)"
    return f"{min(ratios):.2f}-{max(ratios):.2f}x"


def run(cfg: BenchServeConfig) -> dict:
    users = DataDir(cfg.data).read(DataDir.USERS)["user_id"].to_pylist()[:200]
    work = Path(tempfile.mkdtemp(prefix="ganrec-bench-serve-"))
    ids = "{" + ",".join(json.dumps(u) for u in users) + "}"
    samples = [int(k) for k in cfg.samples.split(",")]
    if 1 not in samples:
        samples = [1, *samples]  # the baseline: one search a request, in the same run
    scripts = {}
    for k in samples:
        scripts[k] = work / f"load-{k}.lua"
        scripts[k].write_text(LUA.replace("{USERS}", ids).replace("{SAMPLES}", str(k)))
    levels = [int(c) for c in cfg.concurrency.split(",")]
    compute_ms = {k: _compute_ms(cfg.run, users[0], k) for k in samples}
    try:
        bare = _bare(cfg, scripts, levels)
        served, trace = _served(cfg, scripts, levels)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    by_samples = {
        k: {"compute_ms": compute_ms[k], "bare": bare[k], "serve": served[k]} for k in samples
    }
    results: dict = {
        "run": cfg.run,
        "seconds_per_level": cfg.seconds,
        "compute_ms": compute_ms[1],
        "bare": bare[1],
        "serve": served[1],
        "by_samples": by_samples,
        "samples_cost": {
            k: {
                "compute_ratio": compute_ms[k] / compute_ms[1],
                "bare_rps_ratio_at_max_concurrency": bare[k][-1]["rps"] / bare[1][-1]["rps"],
                "serve_rps_ratios_same_replicas": _same_replica_ratios(served, k),
            }
            for k in samples
            if k != 1
        },
        "autoscaling_trace": [{"t": t, "replicas": r, "concurrency": c} for t, r, c in trace],
        "max_replicas_seen": max((r for _, r, _ in trace), default=0),
        "replicas_at_end": trace[-1][1] if trace else 0,
        "breakdown_ms_at_concurrency_1": {
            "model_and_index": compute_ms[1],
            "http_and_fastapi": max(0.0, bare[1][0]["p50_ms"] - compute_ms[1]),
            "serve_proxy_routing_batching": max(0.0, served[1][0]["p50_ms"] - bare[1][0]["p50_ms"]),
        },
    }
    _report(cfg, results)
    write_json(cfg.out, results)  # first: it creates the folder, and the numbers outlive a plot
    _plot(results, cfg.out.replace(".json", ".png"))
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
