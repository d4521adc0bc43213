"""The serve benchmark's baseline: the same recommend logic in a plain FastAPI app (one uvicorn
process, no Ray). Run with GANREC_RUN=RUN uvicorn ganrec_dist.bench.bare_app:app."""

import os

from fastapi import FastAPI

from ganrec_dist.inference.serve import Engine, RecommendRequest, RecommendResponse

app = FastAPI()
engine = Engine(os.environ["GANREC_RUN"])


@app.post("/recommend", response_model=RecommendResponse)
def recommend(body: RecommendRequest) -> dict:
    return engine.answer([body])[0]


@app.get("/health")
def health() -> dict:
    return {"status": "ok"}
