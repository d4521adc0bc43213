"""Online inference: a Ray Serve application with a FastAPI ingress (the HTTP API in the README).

One deployment holds the generator, the index and the known users' histories, and answers
``POST /recommend``. Concurrent requests are batched (``@serve.batch``) so G and the index see
batches. ``user_config`` carries the run to serve, so a new model version rolls out by
reconfiguring the deployment in place, without dropping requests.
"""

import logging
import threading
import time
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr
from ray import serve

from ganrec_dist.core.config import ServeConfig
from ganrec_dist.data.layout import RunDir
from ganrec_dist.inference import shared
from ganrec_dist.model.sampling import MAX_SAMPLES
from ganrec_dist.retrieval.recommender import Recommender

log = logging.getLogger(__name__)

MAX_K = 1000
MAX_LIST = 10_000  # longest history/exclude list accepted; longer bodies are refused with 422

ItemId = Annotated[StrictStr, Field(min_length=1, max_length=256)]


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: Annotated[StrictStr, Field(min_length=1, max_length=256)]
    k: StrictInt = Field(10, ge=1, le=MAX_K)
    history: list[ItemId] | None = Field(None, max_length=MAX_LIST)
    exclude: list[ItemId] | None = Field(None, max_length=MAX_LIST)
    # Noise draws merged into the list (`ganrec_dist.model.sampling`); None: the run's own setting.
    samples: StrictInt | None = Field(None, ge=1, le=MAX_SAMPLES)


class ScoredItem(BaseModel):
    item_id: str
    score: float


class RecommendResponse(BaseModel):
    user_id: str
    items: list[ScoredItem]
    model_version: str
    fallback: str | None
    ignored: list[str]


api = FastAPI(title="ganrec-dist", version="1", description="GAN-based generative item recommender")


@api.exception_handler(RequestValidationError)
async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with one message naming the field (FastAPI's default lists raw pydantic errors)."""
    errors = exc.errors()
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
    field = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    return JSONResponse(
        status_code=422,
        content={
            "detail": f"{field}: {first.get('msg', 'invalid')}",
            "errors": [
                {
                    "field": ".".join(str(p) for p in e.get("loc", ()) if p != "body"),
                    "message": e.get("msg", ""),
                }
                for e in errors[:20]
            ],
        },
    )


@api.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error")
    return JSONResponse(
        status_code=503, content={"detail": f"service unavailable: {type(exc).__name__}"}
    )


class Engine:
    """The recommend logic without Ray: shared by the Serve deployment and the bare baseline.
    ``parts``: the run's arrays from the object store (:mod:`ganrec_dist.inference.shared`), or
    None to load a copy of its own."""

    def __init__(self, run: str, parts: Any = None) -> None:
        self.rec = Recommender(run, parts=parts)
        self.run = run

    def answer(self, requests: list[RecommendRequest]) -> list[dict]:
        rec = self.rec
        n_users, pad, L = rec.model_config.n_users, rec.model_config.n_items, rec.history_len
        out: list[dict | None] = [None] * len(requests)
        model_rows, histories, users, excludes = [], [], [], []
        for i, req in enumerate(requests):
            ignored = [h for h in (req.history or []) if h not in rec.item_index]
            extra = np.asarray(
                [rec.item_index[h] for h in (req.history or []) if h in rec.item_index], np.int64
            )
            exclude = np.asarray(
                [rec.item_index[e] for e in (req.exclude or []) if e in rec.item_index], np.int64
            )
            user = rec.user_index.get(req.user_id)
            base = rec.seen(user) if user is not None else np.zeros(0, np.int64)
            sequence = np.concatenate([base, extra]).astype(np.int64)
            if user is None and len(sequence) == 0:
                items, scores = rec.popular_items(req.k, exclude)
                out[i] = self._response(req, items, scores, fallback="popularity", ignored=ignored)
                continue
            window = sequence[-L:]
            histories.append(np.concatenate([np.full(L - len(window), pad), window]))
            users.append(user if user is not None else n_users)
            excludes.append(np.unique(np.concatenate([sequence, exclude])))
            model_rows.append((i, ignored, None if user is not None else "history"))
        # One model call per number of samples among the batch's requests.
        groups: dict[int, list[int]] = {}
        for row, (i, _, _) in enumerate(model_rows):
            groups.setdefault(requests[i].samples or rec.samples, []).append(row)
        for samples, rows in groups.items():
            k = max(requests[model_rows[r][0]].k for r in rows)
            items, scores = rec.recommend(
                np.stack([histories[r] for r in rows]),
                np.asarray([users[r] for r in rows]),
                [excludes[r] for r in rows],
                k,
                samples=samples,
            )
            for at, r in enumerate(rows):
                i, ignored, fallback = model_rows[r]
                kk = requests[i].k
                valid = items[at, :kk] >= 0
                out[i] = self._response(
                    requests[i],
                    items[at, :kk][valid],
                    scores[at, :kk][valid],
                    fallback=fallback,
                    ignored=ignored,
                )
        return out  # type: ignore[return-value]

    def _response(
        self, req: RecommendRequest, items: Any, scores: Any, *, fallback: str | None, ignored: list
    ) -> dict:
        return {
            "user_id": req.user_id,
            "items": [
                {"item_id": str(self.rec.item_ids[i]), "score": float(s)}
                for i, s in zip(items, scores)
            ],
            "model_version": self.rec.version,
            "fallback": fallback,
            "ignored": ignored,
        }


# The deployment's defaults; serving/config.yaml states the same values (a test checks it).
DEPLOYMENT_OPTIONS: dict[str, Any] = {
    "max_ongoing_requests": 64,
    "autoscaling_config": {
        "min_replicas": 1,
        "max_replicas": 2,
        "target_ongoing_requests": 16,
        "upscale_delay_s": 3,
        "downscale_delay_s": 20,
    },
    "ray_actor_options": {"num_cpus": 0.5},
}


@serve.deployment(name="GanRecommender", health_check_period_s=5, **DEPLOYMENT_OPTIONS)
@serve.ingress(api)
class GanRecommender:
    def __init__(
        self, run: str, max_batch_size: int = 32, batch_wait_timeout_s: float = 0.002
    ) -> None:
        self.engine = Engine(run, parts=shared.parts(run))  # one copy per node, not per replica
        self.args = [run, max_batch_size, batch_wait_timeout_s]
        self.lock = threading.Lock()
        self.recommend_batch.set_max_batch_size(max_batch_size)  # type: ignore[attr-defined]
        self.recommend_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)  # type: ignore[attr-defined]

    def reconfigure(self, config: dict) -> None:
        """``user_config: {run: PATH}`` switches the model in place (a rollout)."""
        run = config.get("run")
        if run and run != self.engine.run:
            # Load fully before swapping: requests keep flowing meanwhile.
            engine = Engine(run, parts=shared.parts(run))
            with self.lock:
                self.engine = engine
            log.info("now serving %s", engine.rec.version)

    def check_health(self) -> None:
        rec = self.engine.rec
        probe = np.full((1, rec.history_len), rec.model_config.n_items)
        items, _ = rec.recommend(
            probe, np.asarray([rec.model_config.n_users]), [np.zeros(0, np.int64)], 1
        )
        if items[0, 0] < 0:
            raise RuntimeError("model or index is not usable")

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def recommend_batch(self, requests: list[RecommendRequest]) -> list[dict]:
        with self.lock:
            engine = self.engine
        return engine.answer(requests)

    @api.post("/recommend", response_model=RecommendResponse)
    async def recommend(self, body: RecommendRequest) -> dict:
        return await self.recommend_batch(body)

    def init_args(self) -> list:
        """The arguments this replica was constructed with (a rollout redeploys with them)."""
        return self.args

    @api.get("/health")
    async def health(self) -> dict:
        self.check_health()
        return {"status": "ok", "model_version": self.engine.rec.version}


def app_builder(args: dict) -> serve.Application:
    """``serve run``/``serve deploy`` entry: ``args: {run: PATH, max_batch_size: N}``."""
    return GanRecommender.bind(  # type: ignore[attr-defined]
        args["run"],
        int(args.get("max_batch_size", 32)),
        float(args.get("batch_wait_timeout_s", 0.002)),
    )


def start(cfg: ServeConfig):
    """Deploy on the connected Ray; return the handle (the app keeps running)."""
    from ganrec_dist.core.raycluster import ensure_ray

    checked = RunDir.open(cfg.run)  # fail fast on a bad run directory, before Ray
    checked.meta()
    checked.id_maps()
    ensure_ray(cfg.address)
    _quiet_serve_logger()
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    handle = serve.run(
        app_builder({"run": cfg.run, "max_batch_size": cfg.max_batch_size}),
        name="ganrec",
        route_prefix="/",
    )
    return handle


def rollout(run: str, app: str = "ganrec", address: str = "") -> bool:
    """Point the live Serve app ``app`` at ``run``: its replicas load it and swap in place
    (``GanRecommender.reconfigure``), dropping no request. False when no such app is running.

    The app is redeployed with its own arguments and only ``user_config`` changed, which Serve
    applies to the running replicas without replacing them."""
    from ganrec_dist.core.raycluster import ensure_ray

    RunDir.open(run).meta()  # a bad run fails here, before the live app is touched
    ensure_ray(address)
    _quiet_serve_logger()
    status = serve.status().applications.get(app)
    if status is None or status.status != "RUNNING":
        log.warning("rollout: no running Serve app %r; nothing rolled out", app)
        return False
    args = serve.get_app_handle(app).init_args.remote().result(timeout_s=30)
    serve.run(
        GanRecommender.options(user_config={"run": run}).bind(*args),  # type: ignore[attr-defined]
        name=app,
        route_prefix="/",
        blocking=False,
    )
    log.info("rollout: %s now serves %s", app, run)
    return True


def _quiet_serve_logger() -> None:
    """Serve sets its driver-side logger to INFO when it is imported: its start-up notices are
    Ray's, not this command's."""
    from ganrec_dist.core.logs import verbose

    logging.getLogger("ray.serve").setLevel(logging.DEBUG if verbose() else logging.WARNING)


def wait_healthy(url: str, timeout: float = 90) -> None:
    """Poll ``url``/health until it answers 200; raise if it does not within ``timeout`` s."""
    import requests

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if requests.get(url + "/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not become healthy within {timeout:.0f}s")


def serve_command(cfg: ServeConfig) -> dict:
    start(cfg)
    print(
        f"serving {cfg.run} on http://{cfg.host}:{cfg.port} (POST /recommend, GET /health, /docs); Ctrl-C stops"
    )
    try:
        deadline = time.time() + cfg.duration_s if cfg.duration_s > 0 else None
        while deadline is None or time.time() < deadline:
            time.sleep(0.5)
    finally:
        stop()
    return {}


def stop() -> None:
    """Shut the app down and free the run's shared arrays."""
    serve.shutdown()
    shared.release()
