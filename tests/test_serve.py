"""The Ray Serve application on the shared local Ray: API contract, fuzzing, failures, rollout."""

from __future__ import annotations

import concurrent.futures as cf
import csv
import dataclasses
import json
import socket
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ganrec_dist.core.config import (
    AddItemsConfig,
    PrepareConfig,
    RollbackConfig,
    ScoreConfig,
    ServeConfig,
    UpdateConfig,
    train_config,
)
from ganrec_dist.core.errors import UserError
from ganrec_dist.data.layout import DataDir, RunDir
from ganrec_dist.data.prepare import prepare
from ganrec_dist.inference.score import score
from ganrec_dist.inference.serve import start, wait_healthy
from ganrec_dist.operations.additems import add_items
from ganrec_dist.operations.update import rollback, update
from ganrec_dist.training.train import train

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


NEW_USER, NEW_ITEM = "shop-new-user", "shop-new-item"
CONTENT_ONLY_ITEM = "shop-item-with-content-only"


def _todays_partition(base, data, run):
    """A CSV of today's rows and a CSV naming the item to retire (the most popular)."""
    t0 = DataDir(data).max_timestamp
    train_rows = DataDir(data).read("train", ["user_id", "item_id"]).to_pydict()
    rows = [
        [train_rows["user_id"][i], train_rows["item_id"][i + 7], t0 + 1 + i]
        for i in range(0, 3000, 10)
    ]
    rows += [[NEW_USER, NEW_ITEM, t0 + 5000], [NEW_USER, train_rows["item_id"][0], t0 + 5001]]
    rows += [["u-other", NEW_ITEM, t0 + 5002 + j] for j in range(3)]
    today = base / "today.csv"
    with open(today, "w", newline="") as handle:
        csv.writer(handle).writerows([["user_id", "item_id", "timestamp"], *rows])
    _, popularity = RunDir(run).sequences()
    items, _ = RunDir(run).id_maps()
    retired = base / "retire.csv"
    retired.write_text(f"item_id\n{items['item_id'][int(popularity.argmax())].as_py()}\n")
    # The day's item content: today's new item, and one nobody has touched yet.
    import pyarrow as pa

    content = base / "today-items.parquet"
    pq.write_table(
        pa.table(
            {
                "item_id": [NEW_ITEM, CONTENT_ONLY_ITEM],
                "category": ["c1", "c2"],
                "embedding": pa.array([[0.5] * 16, [-0.5] * 16], pa.list_(pa.float32())),
            }
        ),
        content,
    )
    return today, retired, content


@pytest.fixture(scope="module")
def service(ray_local, tmp_path_factory):
    from ray import serve

    base = tmp_path_factory.mktemp("serve")
    data, run, run2 = base / "data", base / "run", base / "run2"
    prepare(
        PrepareConfig(
            source="synthetic",
            out=str(data),
            users=300,
            items=400,
            interactions=12_000,
            seed=3,
            item_content="synthetic",
        )
    )
    # With the content tower: add-items writes new items' rows with it.
    small = dict(refit=False, dim=16, hidden=32, history_len=10, noise_dim=4, cpus_per_worker=1)
    small.update(tower="regress", tower_epochs=2)
    train(train_config(data=str(data), out=str(run), epochs=2, **small))
    # Today's partition: later rows of some users, a new user with a new item; the most popular
    # item retired. RUN2 is warm-started from RUN on that new DATA version.
    today, retired, content = _todays_partition(base, data, run)
    daily = UpdateConfig(
        run=str(run),
        source=str(today),
        retire=str(retired),
        item_content=str(content),
        out_data=str(base / "data2"),
        out=str(run2),
        init_epochs=1,
        rollout=False,
    )
    gate = update(daily)
    port = _free_port()
    start(ServeConfig(run=str(run), port=port))
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, timeout=60)
    yield {
        "url": url,
        "data": data,
        "run": run,
        "run2": run2,
        "retired": _read_retired(base),
        "gate": gate,
        "daily": daily,
    }
    serve.shutdown()


def _read_retired(base) -> str:
    return (base / "retire.csv").read_text().split()[1]


def post(service, body, **kw):
    return requests.post(f"{service['url']}/recommend", json=body, timeout=30, **kw)


def test_known_unknown_and_cold_users(service):
    users = pq.read_table(service["data"] / "users.parquet")["user_id"].to_pylist()
    items = pq.read_table(service["data"] / "items.parquet")["item_id"].to_pylist()
    r = post(service, {"user_id": users[0], "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["fallback"] is None and len(body["items"]) == 5 and body["ignored"] == []
    assert body["model_version"].startswith("run@")
    r = post(
        service, {"user_id": "new-user", "history": [items[1], "no-such-item", items[2]], "k": 3}
    )
    body = r.json()
    assert (
        body["fallback"] == "history"
        and body["ignored"] == ["no-such-item"]
        and len(body["items"]) == 3
    )
    assert not {items[1], items[2]} & {i["item_id"] for i in body["items"]}
    body = post(
        service, {"user_id": "nobody", "history": ["unknown"], "exclude": [items[0]]}
    ).json()
    assert body["fallback"] == "popularity" and len(body["items"]) == 10
    assert items[0] not in {i["item_id"] for i in body["items"]}
    assert requests.get(f"{service['url']}/health", timeout=5).json()["status"] == "ok"
    assert "/recommend" in requests.get(f"{service['url']}/openapi.json", timeout=5).json()["paths"]


def test_online_equals_offline_score(service, tmp_path):
    out = tmp_path / "recs.parquet"
    score(ScoreConfig(data=str(service["data"]), run=str(service["run"]), out=str(out), k=8))
    offline = {}
    for row in sorted(pq.read_table(out).to_pylist(), key=lambda r: r["rank"]):
        offline.setdefault(row["user_id"], []).append(row["item_id"])
    for user in list(offline)[:25]:
        online = post(service, {"user_id": user, "k": 8}).json()
        assert [i["item_id"] for i in online["items"]] == offline[user]


def test_online_samples_equal_offline_score_with_as_many_samples(service, tmp_path):
    out = tmp_path / "recs.parquet"
    score(
        ScoreConfig(
            data=str(service["data"]), run=str(service["run"]), out=str(out), k=8, samples=4
        )
    )
    offline = {}
    for row in sorted(pq.read_table(out).to_pylist(), key=lambda r: r["rank"]):
        offline.setdefault(row["user_id"], []).append(row["item_id"])
    differs = 0
    for user in list(offline)[:25]:
        online = post(service, {"user_id": user, "k": 8, "samples": 4}).json()
        assert [i["item_id"] for i in online["items"]] == offline[user]
        one = post(service, {"user_id": user, "k": 8}).json()
        differs += [i["item_id"] for i in one["items"]] != offline[user]
    assert differs > 0  # the samples change some lists: the field is not ignored


@pytest.mark.parametrize(
    "body, field",
    [
        ({"k": 5}, "user_id"),
        ({"user_id": 7}, "user_id"),
        ({"user_id": ""}, "user_id"),
        ({"user_id": "a", "k": 0}, "k"),
        ({"user_id": "a", "k": 1001}, "k"),
        ({"user_id": "a", "k": "10"}, "k"),
        ({"user_id": "a", "history": "i1"}, "history"),
        ({"user_id": "a", "history": [1, 2]}, "history.0"),
        ({"user_id": "a", "history": ["x"] * 10_001}, "history"),
        ({"user_id": "a", "surprise": 1}, "surprise"),
        ({"user_id": "a", "samples": 0}, "samples"),
        ({"user_id": "a", "samples": 33}, "samples"),
        ({"user_id": "a", "samples": "4"}, "samples"),
        ({"user_id": "a", "samples": 2.5}, "samples"),
    ],
)
def test_invalid_bodies_are_422_naming_the_field(service, body, field):
    r = post(service, body)
    assert r.status_code == 422
    assert r.json()["detail"].startswith(field)


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b"\xff\xfe\x00", b"[]", b"null", b'{"user_id": "a", "k": 1e999}', b"A" * 100_000],
)
def test_raw_bad_bytes_are_4xx(service, raw):
    r = requests.post(
        f"{service['url']}/recommend",
        data=raw,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert 400 <= r.status_code < 500


def from_schema(schema: dict) -> st.SearchStrategy:
    """Values for an OpenAPI/JSON schema: mostly inside it, sometimes just outside its bounds."""
    if "anyOf" in schema:
        return st.one_of([from_schema(s) for s in schema["anyOf"]])
    kind = schema.get("type")
    if kind == "null":
        return st.none()
    if kind == "string":
        lo, hi = schema.get("minLength", 0), schema.get("maxLength", 300)
        return st.text(min_size=max(0, lo - 1), max_size=min(hi + 1, 300))
    if kind == "integer":
        lo, hi = schema.get("minimum", -(2**40)), schema.get("maximum", 2**40)
        return st.integers(lo - 2, hi + 2)
    if kind == "array":
        return st.lists(from_schema(schema.get("items", {})), max_size=30)
    if kind == "object":
        props = {name: from_schema(sub) for name, sub in schema.get("properties", {}).items()}
        required = set(schema.get("required", []))
        return st.fixed_dictionaries(
            {k: v for k, v in props.items() if k in required},
            optional={k: v for k, v in props.items() if k not in required},
        )
    return st.none() | st.integers() | st.text()


def test_fuzz_from_openapi_schema_never_5xx(service):
    spec = requests.get(f"{service['url']}/openapi.json", timeout=5).json()
    schema = spec["components"]["schemas"]["RecommendRequest"]
    statuses = []

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        st.one_of(
            from_schema(schema),
            st.dictionaries(
                st.text(max_size=8),
                st.recursive(
                    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda c: (
                        st.lists(c, max_size=4)
                        | st.dictionaries(st.text(max_size=5), c, max_size=4)
                    ),
                    max_leaves=10,
                ),
                max_size=5,
            ),
        )
    )
    def check(body):
        # json.dumps writes NaN/Infinity as bare tokens: the server must refuse those too.
        r = requests.post(
            f"{service['url']}/recommend",
            data=json.dumps(body).encode(),
            headers={"content-type": "application/json"},
            timeout=30,
        )
        statuses.append(r.status_code)
        assert r.status_code < 500, (body, r.text)
        if r.status_code == 200:
            assert len(r.json()["items"]) <= body.get("k", 10)

    check()
    assert 200 in statuses and 422 in statuses  # both valid and invalid bodies were tried


def _load(service, seconds: float, threads: int = 8) -> tuple[int, int, set]:
    users = pq.read_table(service["data"] / "users.parquet")["user_id"].to_pylist()
    ok = failed = 0
    versions: set = set()
    lock = threading.Lock()
    stop = time.time() + seconds

    def worker(i):
        nonlocal ok, failed
        session = requests.Session()
        n = 0
        while time.time() < stop:
            try:
                r = session.post(
                    f"{service['url']}/recommend",
                    json={"user_id": users[(i * 31 + n) % len(users)]},
                    timeout=30,
                )
                good = r.status_code == 200
                version = r.json().get("model_version") if good else None
            except requests.RequestException:
                good, version = False, None
            with lock:
                ok += good
                failed += not good
                versions.add(version)
            n += 1

    with cf.ThreadPoolExecutor(threads) as pool:
        list(pool.map(worker, range(threads)))
    return ok, failed, versions


def test_killing_a_replica_under_load_loses_at_most_one_percent(service):
    import ray
    from ray import serve

    result: dict = {}
    loader = threading.Thread(
        target=lambda: result.update(zip(("ok", "failed", "v"), _load(service, 12)))
    )
    loader.start()
    time.sleep(4)
    replicas = [
        a
        for a in ray.util.list_named_actors(all_namespaces=True)
        if "GanRecommender" in a["name"] and a["name"].startswith("SERVE_REPLICA")
    ]
    assert replicas
    ray.kill(
        ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"]), no_restart=True
    )
    loader.join()
    total = result["ok"] + result["failed"]
    print(f"\nreplica killed under load: {result['failed']} of {total} requests failed")
    assert total > 100 and result["failed"] <= 0.01 * total
    deadline = time.time() + 60
    while time.time() < deadline:
        status = serve.status().applications["ganrec"]
        if (
            status.status == "RUNNING"
            and requests.get(f"{service['url']}/health", timeout=5).status_code == 200
        ):
            break
        time.sleep(1)
    else:
        pytest.fail("the deployment did not recover")


def _newcomers(service) -> dict:
    """What the live service makes of today's user, item and retired item."""
    new_user = post(service, {"user_id": NEW_USER}).json()
    with_item = post(service, {"user_id": "x", "history": [NEW_ITEM]}).json()
    lists = [post(service, {"user_id": u}).json() for u in ("x", *_some_users(service))]
    return {
        "version": new_user["model_version"].split("@")[0],
        "user_known": new_user["fallback"] is None,
        "item_known": NEW_ITEM not in with_item.get("ignored", []),
        "retired_shown": any(i["item_id"] == service["retired"] for r in lists for i in r["items"]),
    }


def _some_users(service) -> list:
    return pq.read_table(service["data"] / "users.parquet")["user_id"].to_pylist()[:20]


def _rolled_to(service, run, version, seconds=10, action=None):
    """Roll the live app to ``run`` (or run ``action``, which does) under load: no request
    fails, both versions answer."""
    from ganrec_dist.inference.serve import rollout

    result: dict = {}
    loader = threading.Thread(
        target=lambda: result.update(zip(("ok", "failed", "v"), _load(service, seconds, 4)))
    )
    loader.start()
    time.sleep(3)
    assert (action or (lambda: rollout(str(run))))()
    loader.join()
    assert result["failed"] == 0 and result["ok"] > 20
    deadline = time.time() + 60
    while _newcomers(service)["version"] != version and time.time() < deadline:
        time.sleep(0.5)
    return {v.split("@")[0] for v in result["v"] if v}


def test_update_gates_the_warm_started_run_on_rows_newer_than_the_live_data(service):
    gate = service["gate"]
    assert gate["users"] > 10 and 0 < gate["live"] <= 1 and 0 < gate["new"] <= 1
    assert gate["passed"] == (gate["new"] >= gate["live"]) and gate["rolled_out"] is False
    # The day's items the live run did not know (one from the log, one from content only):
    # how far the new run shows them.
    reach = gate["new_items"]
    assert reach["items"] == 2 and 0 <= reach["reached_top10"] <= 1
    assert 0 <= reach["share_of_slots"] <= reach["items"] / 10
    stored = json.loads((service["run2"] / "gate.json").read_text())
    assert stored == gate
    assert (service["run2"] / "index" / "meta.json").exists()
    payload = RunDir(service["run2"]).payload()
    assert payload["parent"]["run"] == str(service["run"])
    # The day's item content: the item nobody has touched has the warm run's tower row.
    from ganrec_dist.retrieval.recommender import Recommender

    rec = Recommender(service["run2"])
    item = rec.item_index[CONTENT_ONLY_ITEM]
    assert rec.popularity[item] == 0 and payload["state"]["generated_items"] >= 1
    row = rec.embeddings[item]
    assert np.isfinite(row).all() and np.abs(row).sum() > 0


def test_rollout_to_a_warm_started_run_and_back_drops_no_request(service):
    before = _newcomers(service)
    assert before == {
        "version": "run",
        "user_known": False,
        "item_known": False,
        "retired_shown": True,  # the most popular item: the no-history fallback shows it
    }
    # The update run again with its rollout, as after a driver that died between the gate and
    # the rollout: it reuses the appended DATA and the trained run, and rolls out under load if
    # its gate passed (the gate on these tiny runs may go either way; then a plain rollout).
    from ganrec_dist.inference.serve import rollout

    model = service["run2"] / "checkpoint" / "model.pt"
    trained = model.stat().st_mtime_ns
    again = dataclasses.replace(service["daily"], rollout=True)
    passed = service["gate"]["passed"]

    def finish() -> bool:
        record = update(again)
        assert record["rolled_out"] == passed and record["new"] == service["gate"]["new"]
        return record["rolled_out"] or rollout(str(service["run2"]))

    assert _rolled_to(service, service["run2"], "run2", action=finish) == {"run", "run2"}
    assert model.stat().st_mtime_ns == trained
    after = _newcomers(service)
    assert after == {
        "version": "run2",
        "user_known": True,
        "item_known": True,
        "retired_shown": False,
    }
    assert _rolled_to(service, service["run"], "run") == {"run", "run2"}  # rolling back
    assert _newcomers(service) == before


def test_add_items_puts_new_items_live_without_training_and_drops_no_request(service, tmp_path):
    """New SKUs with content only: a new version with their generated rows, rolled out under
    load; a history naming one of them is read, not ignored; then back to the old version."""
    import pyarrow as pa

    from ganrec_dist.retrieval.recommender import Recommender

    items = pq.read_table(service["data"] / "items.parquet")
    rng = np.random.default_rng(7)
    new = [f"sku-{k}" for k in range(5)]
    content = tmp_path / "new-items.parquet"
    pq.write_table(
        pa.table(
            {
                "item_id": new,
                "category": [items["category"][k].as_py() for k in range(5)],
                "embedding": pa.array(
                    [rng.normal(size=16).astype(np.float32).tolist() for _ in new],
                    pa.list_(pa.float32()),
                ),
            }
        ),
        content,
    )
    assert post(service, {"user_id": "x", "history": [new[0]]}).json()["ignored"] == [new[0]]
    result: dict = {}
    loader = threading.Thread(
        target=lambda: result.update(zip(("ok", "failed", "v"), _load(service, 14, 4)))
    )
    loader.start()
    time.sleep(2)
    summary = add_items(
        AddItemsConfig(
            run=str(service["run"]),
            item_content=str(content),
            out_data=str(tmp_path / "data-new"),
            out=str(tmp_path / "run-new"),
        )
    )
    loader.join()
    assert summary["items_added"] == 5 and summary["rolled_out"] is True
    assert result["failed"] == 0 and result["ok"] > 20
    deadline = time.time() + 60
    while time.time() < deadline:
        body = post(service, {"user_id": "x", "history": [new[0], new[1]]}).json()
        if body["model_version"].startswith("run-new@"):
            break
        time.sleep(0.5)
    assert body["ignored"] == [] and body["fallback"] == "history"
    # Anonymous users: popular items, with the last of ten slots (explore_share 0.1) for the
    # newest untouched item.
    anonymous = post(service, {"user_id": "nobody", "k": 10}).json()
    assert anonymous["fallback"] == "popularity"
    assert [i["item_id"] for i in anonymous["items"]][-1] == new[-1]
    assert not set(new) & {i["item_id"] for i in anonymous["items"][:-1]}
    # The learned catalogue is the live run's; the new rows are finite, found by the index.
    old, grown = Recommender(service["run"]), Recommender(tmp_path / "run-new")
    n_old = old.embeddings.shape[0]
    assert np.array_equal(grown.embeddings[:n_old], old.embeddings)
    rows = grown.embeddings[n_old:]
    assert rows.shape == (5, 16) and np.isfinite(rows).all() and np.abs(rows).sum() > 0
    found, scores = grown.search(rows, [np.zeros(0, np.int64)] * 5, n_old + 5)
    for k in range(5):  # indexed with its generated row: its score is that row's own product
        at = list(found[k]).index(n_old + k)
        assert scores[k, at] == pytest.approx(float(rows[k] @ rows[k]), rel=1e-4)
    # `ganrec rollback`: the version's parent serves again, under load.
    back = RollbackConfig(run=str(tmp_path / "run-new"))
    assert _rolled_to(service, service["run"], "run", action=lambda: rollback(back)) == {
        "run",
        "run-new",
    }
    with pytest.raises(UserError, match="no parent version"):
        rollback(RollbackConfig(run=str(service["run"])))
