"""Item content: typed columns parsed, quarantined and encoded (``data.content``), through
prepare and append."""

from __future__ import annotations

import csv
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ganrec_dist.core.config import PrepareConfig
from ganrec_dist.core.errors import UserError
from ganrec_dist.data import content
from ganrec_dist.data.append import prepare_or_append as prepare
from ganrec_dist.data.layout import DataDir


def _csv(path, header, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def test_a_spec_names_each_column_type_and_refuses_what_it_cannot_read():
    features = content.parse_spec("genres:multi:|,year:numeric,title:text,c:categorical,e:vector")
    assert [(f.name, f.type, f.sep) for f in features] == [
        ("genres", "multi", "|"),
        ("year", "numeric", ""),
        ("title", "text", ""),
        ("c", "categorical", ""),
        ("e", "vector", ""),
    ]
    assert content.parse_spec("tags:multi:semicolon")[0].sep == ";"
    for bad, says in [
        ("genres:multi:||", "separator"),
        ("genres:multi:pipes", "separator"),
        ("year:number", "type one of"),
        ("year:numeric:|", "only multi"),
        ("a:text,a:numeric", "named twice"),
    ]:
        with pytest.raises(UserError, match=says):
            content.parse_spec(bad)


def test_types_are_inferred_by_the_documented_rule():
    sample = pa.table(
        {
            "item_id": ["a", "b", "c"],
            "emb": [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]],
            "img_0": [1.0, 2.0, 3.0],
            "img_1": [1.0, 2.0, 3.0],
            "price": [1.5, 2.5, None],
            "year": ["1999", "2001", ""],  # CSV: numbers as text
            "genres": ["Action|Drama", "Drama", "Comedy|Drama"],
            "title": ["The Big Sleep", "A Night at the Opera", "Up"],
            "brand": ["acme", "globex", "acme"],
        }
    )
    found = {f.name: f.type for f in content.infer(sample)}
    assert found == {
        "img": "vector",
        "emb": "vector",
        "price": "numeric",
        "year": "numeric",
        "genres": "multi",
        "title": "text",
        "brand": "categorical",
    }


def test_bad_rows_are_quarantined_with_a_reason_and_the_rest_kept():
    features = content.parse_spec("year:numeric,emb:vector")
    for f in features:
        f.columns = [f.name]
    table = pa.table(
        {
            "item_id": ["a", "b", "c", "a", None, "e", "f"],
            "year": ["1990", "soon", "2000", "1991", "1992", "", "inf"],
            "emb": ["1 2", "1 2", "1 2 3", "1 2", "1 2", "3 4", "1 2"],
        }
    )
    checked = content.check_batch(table, features, set())
    assert checked.kept["item_id"].to_pylist() == ["a", "e"]
    assert checked.kept["year"].to_pylist() == [1990.0, None]  # empty: missing, not bad
    reasons = {table["item_id"][i].as_py(): why for i, _, why in checked.rejected}
    assert reasons["b"] == "content: bad numeric year"
    assert reasons["c"] == "content: bad vector emb (width 3, expected 2)"
    assert reasons[None] == "content: missing item_id"
    assert reasons["f"] == "content: bad numeric year"
    assert [why for _, row, why in checked.rejected if row["year"] == "1991"] == [
        "content: duplicate item_id"
    ]
    assert len(checked.rejected) + checked.kept.num_rows == table.num_rows


def test_unseen_categories_land_in_hash_buckets_and_equal_values_get_equal_ids():
    f = content.Feature("brand", "categorical", vocab=["acme", "globex"])
    lookup = {"acme": 1, "globex": 2}
    ids = content.encode_ids(f, ["acme", None, "initech", "initech", "globex"], lookup)[:, 0]
    assert ids[0] == 1 and ids[1] == 0 and ids[4] == 2
    assert ids[2] == ids[3] and 3 <= ids[2] < f.ids
    text = content.Feature("title", "text")
    a, b = content.encode_ids(text, ["The Big Sleep", "the big  SLEEP!"], {})
    assert (a == b).all() and (a > 0).sum() == 3 and a.max() < text.ids


@pytest.mark.integration
def test_prepare_and_append_bring_content_into_the_catalogue(ray_local, tmp_path):
    log = _csv(
        tmp_path / "log.csv",
        ["user_id", "item_id", "timestamp"],
        [[f"u{u}", f"i{(u + t) % 6}", 100 + t] for u in range(12) for t in range(5)],
    )
    items = _csv(
        tmp_path / "items.csv",
        ["item_id", "brand", "genres", "price", "emb"],
        [
            ["i0", "acme", "a|b", "1.0", "[1, 0]"],
            ["i1", "acme", "b", "2.0", "[0, 1]"],
            ["i2", "globex", "", "", "[1, 1]"],
            ["i3", "acme", "a", "x", "[1, 0]"],  # bad numeric: quarantined, i3 has no content
            ["i9", "globex", "c", "3.0", "[0.5, 0.5]"],  # no interaction: joins the catalogue
            ["i9", "acme", "c", "3.0", "[0.5, 0.5]"],  # a duplicate
        ],
    )
    data = tmp_path / "data"
    manifest = prepare(
        PrepareConfig(
            source=log,
            out=str(data),
            item_content=items,
            item_features="brand:categorical,genres:multi:|,price:numeric,emb:vector",
        )
    )
    described = manifest["content"]
    assert manifest["items"] == 7  # i0..i5 from the log, i9 from the content file
    assert (described["rows_in"], described["rows_kept"], described["rows_rejected"]) == (6, 4, 2)
    assert described["rejected_by_reason"] == {
        "content: bad numeric price": 1,
        "content: duplicate item_id": 1,
    }
    assert (described["items_with_content"], described["items_without_content"]) == (4, 3)
    rejected = pq.read_table(data / "rejected").to_pylist()
    assert {(r["item_id"], r["reason"]) for r in rejected} == {
        ("i3", "content: bad numeric price"),
        ("i9", "content: duplicate item_id"),
    }
    assert json.loads(rejected[0]["raw"])["item_id"] in {"i3", "i9"}  # the original row
    dd = DataDir(data)
    ids = dd.read(DataDir.ITEMS)["item_id"].to_pylist()
    c = dd.content()
    got = c.batch(np.arange(len(ids)))
    has = dict(zip(ids, got["has_content"]))
    assert has == {"i0": 1, "i1": 1, "i2": 1, "i3": 0, "i4": 0, "i5": 0, "i9": 1}
    i2, i9 = ids.index("i2"), ids.index("i9")
    assert got["numeric_missing"][i2, 0] and not got["numeric_missing"][i9, 0]
    assert np.allclose(got["vector_emb"][i9], [0.5, 0.5])
    assert (got["ids_genres"][i2] == 0).all()  # an empty multi value: no ids
    brand = next(f for f in c.features if f.name == "brand")
    assert brand.vocab == ["acme", "globex"]

    # A later partition: a new item with an unseen brand, an update of a known item.
    day = _csv(tmp_path / "day.csv", ["user_id", "item_id", "timestamp"], [["u1", "i7", 900]])
    more = _csv(
        tmp_path / "more.csv",
        ["item_id", "brand", "genres", "price", "emb"],
        [["i7", "initech", "a", "5.0", "[2, 2]"], ["i0", "globex", "a", "1.0", "[1, 0]"]],
    )
    v2 = prepare(PrepareConfig(source=day, append_to=str(data), item_content=more))
    assert v2["items"] == 8 and v2["content"]["items_with_content"] == 5
    dd2 = DataDir(v2_path := tmp_path / "data.v2")
    assert v2_path.exists()
    ids2 = dd2.read(DataDir.ITEMS)["item_id"].to_pylist()
    assert ids2[:7] == ids  # old ids keep their index
    got2 = dd2.content().batch(np.arange(len(ids2)))
    i7, i0 = ids2.index("i7"), ids2.index("i0")
    assert got2["ids_brand"][i7, 0] >= 1 + len(brand.vocab)  # unseen: a hash bucket
    assert got2["ids_brand"][i0, 0] == 2  # updated to globex, the vocabulary's second
    assert (got2["vector_emb"][i2] == got["vector_emb"][i2]).all()  # carried over
    # The first prepare's normalisation: price 5.0 against the mean of 1, 2 and 3.
    price = next(f for f in dd2.content().features if f.name == "price")
    assert got2["numeric"][i7, 0] == pytest.approx((5.0 - 2.0) / price.std, rel=1e-5)


@pytest.mark.integration
def test_embedded_and_synthetic_sources_carry_content(movielens_data, ray_local, tmp_path):
    m = DataDir(movielens_data[0]).manifest["content"]
    assert {f["name"]: f["type"] for f in m["features"]} == {
        "genres": "multi",
        "year": "numeric",
        "title": "text",
    }
    assert m["items_without_content"] == 0
    out = {}
    for noise in (0.0, 1.0):
        path = tmp_path / f"syn{noise}"
        prepare(
            PrepareConfig(
                source="synthetic",
                users=50,
                items=400,
                interactions=800,
                item_content="synthetic",
                feature_noise=noise,
                out=str(path),
            )
        )
        dd = DataDir(path)
        assert dd.manifest["items"] == 400  # the whole catalogue, touched or not
        ids = np.array([int(i[1:]) for i in dd.read(DataDir.ITEMS)["item_id"].to_pylist()])
        out[noise] = (ids, dd.content().batch(np.arange(len(ids))))
    clusters = dd.manifest["source_params"]["clusters"]
    ids, exact = out[0.0]
    same = (ids[:, None] % clusters) == (ids[None, :] % clusters)
    v = exact["vector_embedding"]
    gap = np.abs(v[:, None] - v[None, :]).max(axis=2)
    assert (gap[same] < 1e-6).all() and (gap[~same] > 1e-3).all()  # noise 0: the centre
    ids, noisy = out[1.0]
    v = noisy["vector_embedding"]
    unit = v / np.linalg.norm(v, axis=1, keepdims=True)
    cos = unit @ unit.T
    same = (ids[:, None] % clusters) == (ids[None, :] % clusters)
    off = ~np.eye(len(ids), dtype=bool)
    # noise 1: an item's vector says nothing of its cluster (within a stated tolerance)
    assert abs(cos[same & off].mean() - cos[~same].mean()) < 0.05


def _encoded(tmp_path, rows):
    """A content file staged and encoded without Ray: the arrays of its items, in file order."""
    path = _csv(tmp_path / "c.csv", ["item_id", "brand", "tags", "price", "title", "emb"], rows)
    spec = "brand:categorical,tags:multi:|,price:numeric,title:text,emb:vector"
    staged = content.stage(path, "csv", spec, tmp_path / "st", reject=lambda *a: None)
    catalogue = pa.array(sorted(r[0] for r in rows))
    described = content.encode(staged, catalogue, tmp_path / "enc")
    encoded = content.Content(tmp_path / "enc", described)
    order = [catalogue.to_pylist().index(r[0]) for r in rows]
    return described, encoded.batch(np.array(order))


def test_the_blend_moves_from_the_generated_to_the_learned_row_with_interactions():
    from ganrec_dist.training.tower import blend

    learned, generated = np.ones((3, 2), np.float32), np.full((3, 2), 4.0, np.float32)
    rows = blend(learned, generated, np.array([1, 3, 1000]), m=3.0, scale=0.5)
    # w = c / (c + 3): 1/4, 1/2, ~1; the generated part scaled by 0.5 (= 2.0)
    assert np.allclose(rows[:, 0], [0.25 + 0.75 * 2.0, 0.5 + 0.5 * 2.0, 1.0], atol=1e-2)


def test_the_tower_is_a_pure_module_with_a_shape_and_gradients(tmp_path):
    import torch

    from ganrec_dist.model.content import ContentTower, inputs

    rows = [
        ["a", "acme", "x|y", "1.5", "Red Shoe", "[1, 0, 0]"],
        ["b", "acme", "x|y", "1.5", "Red Shoe", "[1, 0, 0]"],  # the same content as a
        ["c", "globex", "", "", "", ""],  # every value missing
        ["d", "initech", "z", "9", "blue hat", "[0, 1, 0]"],
    ]
    described, arrays = _encoded(tmp_path, rows)
    torch.manual_seed(0)
    tower = ContentTower(described["features"], dim=8)
    out = tower(inputs(arrays))
    assert out.shape == (4, 8) and torch.isfinite(out).all()
    assert torch.equal(out[0], out[1])  # identical content, identical embedding
    assert not torch.allclose(out[0], out[3])
    out.pow(2).sum().backward()
    grads = {n: p.grad for n, p in tower.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["bags.brand.weight"][0].abs().sum() == 0  # the padding id learns nothing
    assert grads["mlp.0.weight"].abs().sum() > 0


def _planted(tmp_path, noise):
    """A catalogue of 300 items in 6 clusters with content drawn at ``noise``; learned rows and
    user vectors that are the clusters' directions; users' pairs in their cluster."""
    from ganrec_dist.data import sources

    layout = {"items": 300, "clusters": 6}
    path = tmp_path / f"items-{noise}.parquet"
    sources.synthetic_content(layout, seed=1, noise=noise, path=path)
    staged = content.stage(
        str(path),
        "parquet",
        sources.SYNTHETIC_CONTENT,
        tmp_path / f"st{noise}",
        reject=lambda *a: None,
    )
    ids = np.arange(300)
    catalogue = pa.array([f"i{k}" for k in ids])
    described = content.encode(staged, catalogue, tmp_path / f"enc{noise}")
    rng = np.random.default_rng(0)
    directions = np.linalg.qr(rng.normal(size=(8, 6)))[0].T  # 6 orthonormal directions
    rows = (directions[ids % 6] + 0.05 * rng.normal(size=(300, 8))).astype(np.float32)
    users = np.arange(120)
    vectors = directions[users % 6].astype(np.float32) * 3
    pairs_u = np.repeat(users, 10)
    pairs_i = np.array(
        [rng.choice(np.flatnonzero((ids % 6 == u % 6) & (ids < 240)), 10) for u in users]
    ).ravel()
    return (
        content.Content(tmp_path / f"enc{noise}", described),
        described,
        rows,
        vectors,
        (pairs_u, pairs_i),
        directions,
    )


@pytest.mark.parametrize("objective", ["regress", "gar"])
def test_the_tower_learns_cold_items_from_informative_content_and_nothing_from_noise(
    tmp_path, objective
):
    from ganrec_dist.model.content import ContentTower
    from ganrec_dist.training import tower

    share = {}
    for noise in (0.1, 1.0):
        encoded, described, rows, vectors, pairs, directions = _planted(tmp_path, noise)
        net = ContentTower(described["features"], dim=8)
        losses = tower.fit(
            net,
            encoded,
            pairs=pairs,
            user_vectors=vectors,
            item_rows=rows,
            settings=tower.TowerSettings(objective=objective, epochs=15, batch=64),
        )
        cold = np.arange(240, 300)  # never in a pair: items the tower has not seen
        generated = tower.generate(net, encoded, cold)
        assert np.isfinite(generated).all() and losses[-1] < losses[0]
        share[noise] = float(np.mean((generated @ directions.T).argmax(1) == cold % 6))
    # Informative content: a cold item lands in its cluster's direction; content that says
    # nothing: no better than a guess among 6 (1/6), within a tolerance of 0.15.
    assert share[0.1] >= 0.9, share
    assert share[1.0] <= 1 / 6 + 0.15, share


@pytest.mark.integration
def test_training_writes_generated_rows_that_the_retrieval_path_finds(ray_local, tmp_path):
    import torch

    from ganrec_dist.core.config import train_config
    from ganrec_dist.data.layout import RunDir
    from ganrec_dist.model.content import ContentTower
    from ganrec_dist.retrieval.recommender import Recommender
    from ganrec_dist.training import tower
    from ganrec_dist.training.train import train

    rng = np.random.default_rng(0)
    log = _csv(
        tmp_path / "log.csv",
        ["user_id", "item_id", "timestamp"],
        [[f"u{u}", f"i{int(rng.integers(0, 8))}", t + 1] for u in range(60) for t in range(8)]
        + [[f"u{u}", "rare", 0] for u in range(2)],  # in between: two (first, train) rows
    )
    items = _csv(
        tmp_path / "items.csv",
        ["item_id", "brand", "emb"],
        [[f"i{k}", f"b{k % 3}", f"[{k % 3}, {k % 2}, 1]"] for k in range(8)]
        + [["new", "b1", "[1, 1, 1]"]]  # in no interaction: reachable only through content
        + [["rare", "b0", "[0, 1, 1]"]],
    )
    data = tmp_path / "data"
    prepare(PrepareConfig(source=log, out=str(data), item_content=items))
    run = tmp_path / "run"
    settings = dict(dim=8, hidden=16, history_len=5, noise_dim=4, epochs=1, refit=False)
    settings.update(cold_item_blend=3.0)
    train(train_config(data=str(data), out=str(run), tower="regress", tower_epochs=2, **settings))
    payload = RunDir(run).payload()
    assert payload["state"]["phase"] == "done" and payload["state"]["generated_items"] == 1
    assert payload["state"]["blended_items"] == 1  # "rare": its row blended with the tower's
    assert [h["phase"] for h in payload["state"]["history"]] == ["search", "tower", "tower"]
    ids = DataDir(data).read(DataDir.ITEMS)["item_id"].to_pylist()
    new = ids.index("new")
    rec = Recommender(run)
    row = rec.embeddings[new]
    assert np.isfinite(row).all() and np.abs(row).sum() > 0
    # The row is the tower's vector for its content, scaled: rebuilt from the checkpoint.
    net = ContentTower(DataDir(data).manifest["content"]["features"], dim=8)
    net.load_state_dict(payload["tower"])
    expected = tower.generate(net, DataDir(data).content(), np.array([new]))[0] * 0.5
    assert np.allclose(row, expected, atol=1e-5)
    # The index holds it with its generated row (every item ranked: it is among them, with
    # its own score), and as a history item it moves the user's vector (the encoder reads the
    # same table).
    everything = rec.model_config.n_items
    found, scores = rec.search(row[None, :], [np.zeros(0, np.int64)], everything)
    assert new in found[0]
    assert scores[0, list(found[0]).index(new)] == pytest.approx(float(row @ row), rel=1e-4)
    pad = rec.model_config.n_items
    plain = np.full((1, 5), pad)
    with_new = plain.copy()
    with_new[0, -1] = new
    unknown = np.array([rec.model_config.n_users])
    assert not np.allclose(rec.vectors(plain, unknown), rec.vectors(with_new, unknown))
    assert torch.isfinite(torch.as_tensor(rec.vectors(with_new, unknown))).all()
    # A worker killed in the tower's second epoch resumes into the uninterrupted run.
    broken = tmp_path / "broken"
    train(
        train_config(
            data=str(data),
            out=str(broken),
            tower="regress",
            tower_epochs=2,
            fail_at_epoch=2,
            fail_phase="tower",
            max_failures=1,
            **settings,
        )
    )
    assert (broken / RunDir.FAULT_MARKER).exists()
    again = RunDir(broken).payload()
    losses = [[h.get("tower_loss"), h.get("ce_loss")] for h in again["state"]["history"]]
    assert losses == [[h.get("tower_loss"), h.get("ce_loss")] for h in payload["state"]["history"]]
    assert np.array_equal(Recommender(broken).embeddings, rec.embeddings)
    # add-items, no training: an item with the content of "new" gets the row training wrote for
    # "new" (identical content, identical embedding), and a history reads both alike; learned
    # rows stay as they were; known items in the file update their content, not their rows.
    from ganrec_dist.core.config import AddItemsConfig
    from ganrec_dist.operations.additems import add_items

    more = _csv(
        tmp_path / "more.csv",
        ["item_id", "brand", "emb"],
        [["twin", "b1", "[1, 1, 1]"], ["other", "b2", "[0, 0, 1]"], ["i0", "b2", "[2, 2, 2]"]],
    )
    summary = add_items(AddItemsConfig(run=str(run), item_content=more, rollout=False))
    assert summary["items_added"] == 2 and summary["run"].endswith("run.v2")
    grown = Recommender(summary["run"])
    assert list(grown.item_ids[everything:]) == ["other", "twin"]  # new ids: sorted, after the old
    assert np.array_equal(grown.embeddings[:everything], rec.embeddings)
    assert np.allclose(grown.embeddings[everything + 1], row, atol=1e-6)
    twin = np.full((1, 5), everything + 2)  # the grown model's padding id
    twin[0, -1] = everything + 1
    assert np.allclose(grown.vectors(twin, unknown), rec.vectors(with_new, unknown), atol=1e-5)
    assert (
        json.loads((tmp_path / "data.v2" / "manifest.json").read_text())["train_rows"]
        == (DataDir(data).manifest["train_rows"])
    )
    with pytest.raises(UserError, match="no item the run does not already know"):
        known = _csv(tmp_path / "known.csv", ["item_id", "brand", "emb"], [["i1", "b0", "[0,0,0]"]])
        add_items(AddItemsConfig(run=summary["run"], item_content=known, rollout=False))
    with pytest.raises(UserError, match="needs item content"):
        no_content = tmp_path / "plain"
        prepare(PrepareConfig(source=log, out=str(no_content)))
        train(train_config(data=str(no_content), out=str(tmp_path / "r2"), tower="gar"))
