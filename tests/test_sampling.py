"""Several samples per user: the noise draws, the merge of K lists, the diagnostics, MMR and the
frontier (unit tier: no Ray, no training)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from ganrec_dist.core.config import GameSettings
from ganrec_dist.evaluation import diversity
from ganrec_dist.model import sampling
from ganrec_dist.model.models import Discriminator, Generator, ModelConfig
from ganrec_dist.model.sampling import SamplingTerms
from ganrec_dist.training import gan


def test_noise_is_keyed_by_seed_and_user_not_by_batch_position():
    users = np.array([4, 0, 7, 2])
    histories = np.zeros((4, 3), np.int64)
    z = sampling.noise(5, sampling.keys(users, histories, 10), 3, 8)
    assert z.shape == (4, 3, 8) and not z[:, 0].any()  # sample 0 is z = 0
    order = np.array([2, 0, 3, 1])
    again = sampling.noise(5, sampling.keys(users[order], histories[order], 10), 3, 8)
    assert np.array_equal(again, z[order])
    alone = sampling.noise(5, sampling.keys(users[:1], histories[:1], 10), 3, 8)
    assert np.array_equal(alone, z[:1])
    other_seed = sampling.noise(6, sampling.keys(users, histories, 10), 3, 8)
    assert not np.allclose(other_seed[:, 1:], z[:, 1:])
    assert not np.allclose(z[0, 1:], z[1, 1:])  # users draw differently


def test_unknown_users_are_keyed_by_their_history():
    histories = np.array([[9, 1, 2], [9, 1, 2], [9, 2, 1]])
    unknown = np.array([10, -1, 10])  # n_users and negative both mean unknown
    key = sampling.keys(unknown, histories, 10)
    assert key[0] == key[1] != key[2]
    known = sampling.keys(np.array([3, 3]), histories[:2][::-1], 10)
    assert known[0] == known[1]  # a known user's key ignores the history


def test_noise_is_standard_normal():
    z = sampling.noise(0, np.arange(4000, dtype=np.uint64), 3, 16)[:, 1:]
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1.0) < 0.02


def test_round_robin_merge_takes_each_samples_next_item_in_turn():
    items = np.array([[[1, 2, 3], [2, 4, 5]]])
    scores = np.array([[[0.9, 0.8, 0.7], [0.95, 0.6, 0.5]]])
    merged, merged_scores = sampling.merge(items, scores, 3, "round_robin")
    assert merged.tolist() == [[1, 2, 4]]
    assert merged_scores[0].tolist() == pytest.approx([0.9, 0.95, 0.6])


def test_max_merge_ranks_items_by_their_best_score_over_samples():
    items = np.array([[[1, 2, 3], [2, 4, 5]]])
    scores = np.array([[[0.9, 0.8, 0.7], [0.95, 0.6, 0.5]]])
    merged, merged_scores = sampling.merge(items, scores, 4, "max")
    assert merged.tolist() == [[2, 1, 3, 4]]
    assert merged_scores[0].tolist() == pytest.approx([0.95, 0.9, 0.7, 0.6])


@pytest.mark.parametrize("rule", sampling.MERGES)
def test_merge_returns_exactly_k_distinct_items_when_the_samples_have_them(rule):
    rng = np.random.default_rng(0)
    b, n_samples, k = 50, 4, 10
    items = np.stack(
        [[rng.choice(30, k, replace=False) for _ in range(n_samples)] for _ in range(b)]
    )
    scores = -np.sort(rng.random((b, n_samples, k)), axis=2)
    merged, _ = sampling.merge(items, scores, k, rule)
    assert merged.shape == (b, k) and (merged >= 0).all()
    assert all(len(set(row)) == k for row in merged)
    assert all(set(row) <= set(items[i].ravel()) for i, row in enumerate(merged))
    # A row whose samples found fewer than k distinct items is padded with -1, never repeated.
    short = np.array([[[1, 2, -1], [2, 1, -1]]])
    out, out_scores = sampling.merge(short, np.where(short >= 0, 1.0, -np.inf), 3, rule)
    assert sorted(out[0, :2].tolist()) == [1, 2] and out[0, 2] == -1 and out_scores[0, 2] == -np.inf


def test_one_sample_merge_is_the_list_itself():
    items = np.array([[[5, 3, 8]], [[1, -1, -1]]])
    scores = np.array([[[3.0, 2.0, 1.0]], [[1.0, -np.inf, -np.inf]]])
    merged, merged_scores = sampling.merge(items, scores, 3)
    assert np.array_equal(merged, items[:, 0]) and np.array_equal(merged_scores, scores[:, 0])


def test_diagnostics_tell_inert_samples_from_different_ones():
    same = np.repeat(np.array([[[1.0, 2.0, 0.0]]]), 3, axis=1)
    assert sampling.pairwise_cosine(same) == pytest.approx(1.0)
    orthogonal = np.eye(3)[None]
    assert sampling.pairwise_cosine(orthogonal) == pytest.approx(0.0)
    lists = np.array([[[1, 2, 3], [3, 2, 9]]])
    assert sampling.list_overlap(lists, 3) == pytest.approx(2 / 3)
    assert sampling.list_overlap(np.array([[[1, 2], [1, 2]]]), 2) == 1.0


def test_mmr_trades_relevance_for_novelty_on_a_known_case():
    # Items 0 and 1 are the same item for similarity; 2 is unrelated; relevance 1 > 0.9 > 0.5.
    relevance = np.array([1.0, 0.9, 0.5])
    similarity = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert diversity.mmr(relevance, similarity, 1.0, 2).tolist() == [0, 1]  # relevance only
    # lam 0.5: after item 0, item 1 scores 0.45 - 0.5 < item 2's 0.25 - 0.
    assert diversity.mmr(relevance, similarity, 0.5, 2).tolist() == [0, 2]
    assert diversity.mmr(relevance, similarity, 0.5, 5).tolist() == [0, 2, 1]


def test_rerank_uses_train_cooccurrence_similarity():
    # Items 0 and 1 always bought together, item 2 by others.
    train = sp.csr_matrix(np.array([[1, 1, 0], [1, 1, 0], [0, 0, 1]], np.float32))
    vectors = diversity.item_vectors(train)
    lists = diversity.rerank(np.array([[0, 1, 2]]), vectors, (1.0, 0.3), k=2)
    assert lists[1.0].tolist() == [[0, 1]] and lists[0.3].tolist() == [[0, 2]]


def test_diversity_at_interpolates_the_curves_upper_envelope():
    curve = [
        {"ndcg@10": 0.30, "diversity@10": 0.50},
        {"ndcg@10": 0.20, "diversity@10": 0.70},
        {"ndcg@10": 0.25, "diversity@10": 0.55},  # dominated by (0.20, 0.70)? no: higher NDCG
        {"ndcg@10": 0.10, "diversity@10": 0.65},  # dominated by (0.20, 0.70)
    ]
    assert diversity.diversity_at(curve, 0.30) == pytest.approx(0.50)
    assert diversity.diversity_at(curve, 0.275) == pytest.approx(0.525)
    assert diversity.diversity_at(curve, 0.20) == pytest.approx(0.70)
    assert diversity.diversity_at(curve, 0.15) == pytest.approx(0.70)  # envelope, not 0.675
    assert diversity.diversity_at(curve, 0.05) == pytest.approx(0.70)
    assert diversity.diversity_at(curve, 0.31) is None
    verdict = diversity.verdict(
        {"ndcg@10": 0.275, "diversity@10": 0.60},
        {"mmr": curve, "low": [{"ndcg@10": 0.1, "diversity@10": 0.9}]},
    )
    assert verdict["mmr"]["beats"] and verdict["mmr"]["curve_diversity_at_ndcg"] == pytest.approx(
        0.525
    )
    assert verdict["low"]["curve_diversity_at_ndcg"] is None and not verdict["low"]["beats"]
    # Less accurate than every re-ranked list: outside the swept range, no verdict either way.
    below = diversity.verdict({"ndcg@10": 0.05, "diversity@10": 0.99}, {"mmr": curve})
    assert below["mmr"]["beats"] is None and below["mmr"]["curve_diversity_at_ndcg"] is None


def _batch(n_items: int, b: int = 12, length: int = 5) -> gan.Batch:
    g = torch.Generator().manual_seed(0)
    return gan.Batch(
        history=torch.randint(0, n_items, (b, length), generator=g),
        users=torch.randint(0, 20, (b,), generator=g),
        targets=torch.randint(0, n_items, (b,), generator=g),
    )


@pytest.mark.parametrize("negatives", [None, "sampled"])
def test_best_of_k_loss_is_each_rows_lowest_cross_entropy_over_its_samples(negatives):
    torch.manual_seed(0)
    cfg = ModelConfig(n_items=50, n_users=20, dim=8, hidden=16, history_len=5, noise_dim=4)
    gen = Generator(cfg).eval()
    batch = _batch(50)
    draws = torch.randn(len(batch.targets), 3, 4)
    shared = gan.Negatives(torch.arange(50)) if negatives else None
    forward = gan.g_forward(
        gen,
        batch,
        torch.zeros(12, 4),
        adv_weight=0.0,
        negatives=shared,
        sampling=SamplingTerms(draws, best_of=4),
    )
    # The reference: every sample's full-softmax cross-entropy (with every item a uniform
    # negative the sampled softmax is the full one), the lowest per row.
    state = gen.encoder(batch.history, batch.users)
    zs = torch.cat([torch.zeros(12, 1, 4), draws], dim=1)
    per = torch.stack(
        [
            torch.nn.functional.cross_entropy(
                gen.generate(state, zs[:, j]) @ gen.catalogue().T, batch.targets, reduction="none"
            )
            for j in range(4)
        ],
        dim=1,
    )
    assert forward.rank_loss is not None
    assert float(forward.rank_loss) == pytest.approx(float(per.min(dim=1).values.mean()), rel=1e-5)
    assert float(forward.rank_loss) <= float(forward.ce) + 1e-6
    assert float(forward.ce) == pytest.approx(float(per[:, 0].mean()), rel=1e-5)
    forward.rank_loss.backward()
    assert gen.head[0].weight.grad is not None and gen.head[0].weight.grad.abs().sum() > 0


def test_mode_seeking_term_pushes_samples_apart():
    torch.manual_seed(0)
    cfg = ModelConfig(n_items=50, n_users=20, dim=8, hidden=16, history_len=5, noise_dim=4)
    gen, disc = Generator(cfg), Discriminator(cfg)
    batch = _batch(50)
    opt = torch.optim.Adam(gen.parameters(), lr=1e-2)
    d_opt = torch.optim.Adam(disc.parameters(), lr=1e-3)
    ratios = []
    for _ in range(30):
        stats = gan.train_step(
            gen,
            disc,
            d_opt,
            opt,
            batch=batch,
            z=torch.randn(12, 4),
            sampling=SamplingTerms(torch.randn(12, 2, 4), mode_seeking=5.0),
            game=GameSettings(adv_weight=0.0),
        )
        ratios.append(stats["mode_seeking_ratio"])
    assert np.mean(ratios[-5:]) > 2 * np.mean(ratios[:5])
