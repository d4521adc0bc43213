"""Where do G's adversarial samples point, and does D help rank? (an experiment, not a test)

    python docs/experiments/probe_samples.py DATA RUN

RUN must come from ``ganrec train --data DATA --out RUN --refit false``: its model was fitted
without the validation split, which this scores (validation NDCG@10, full ranking, train items
excluded). Prints the inference vector G(u, z = 0), single samples G(u, z) at several noise
scales (with their cosine to G(u, 0)), the mean of K samples, and the top-100 of G(u, 0)
re-ranked by inner product + alpha * D(u, i). Then whether D uses the user: the AUC of D on
(u, one of u's validation items) against (u, another validation user's item), and against
(u, G(u, z)) and (u, a uniformly drawn catalogue item).
"""

import sys

import numpy as np
import torch
from scipy.stats import rankdata

from ganrec_dist.core.config import IndexConfig
from ganrec_dist.data.interactions import held_out, validation_limits
from ganrec_dist.data.layout import DataDir, RunDir
from ganrec_dist.model.models import Discriminator, ModelConfig, generator_from_state
from ganrec_dist.retrieval.metrics import ranking_metrics
from ganrec_dist.retrieval.recommender import Recommender
from ganrec_dist.training.validation import validation_users


def main(data: str, run: str) -> None:
    torch.set_num_threads(2)
    payload = RunDir(run).payload()
    if payload["train_config"]["optim"]["refit"]:
        sys.exit(f"{run}: trained with a refit on the validation split; use --refit false")
    mcfg = ModelConfig(**payload["model_config"])
    gen = generator_from_state(payload["model_config"], payload["generator"])
    disc = Discriminator(mcfg)
    disc.load_state_dict(payload["discriminator"])
    disc.eval()
    seq = DataDir(data).sequences()
    limits = validation_limits(seq, payload["train_config"]["dataset"]["val_fraction"])
    truth = held_out(seq, limits)
    users = validation_users(seq, limits)
    catalogue = gen.catalogue().detach()
    rec = Recommender.over(gen, seq, index_cfg=IndexConfig(kind="flat"))
    seen = [seq.items[seq.offsets[u] : seq.offsets[u] + limits[u]] for u in users]

    def top(vectors: torch.Tensor, k: int = 10) -> np.ndarray:
        recs = np.full((seq.n_users, k), -1, dtype=np.int64)
        recs[users], _ = rec.search(vectors.numpy(), seen, k)
        return recs

    def ndcg(recs: np.ndarray) -> float:
        return ranking_metrics(recs[:, :10], truth, [10])["ndcg@10"]

    noise = torch.Generator().manual_seed(123)
    with torch.no_grad():
        history = torch.as_tensor(seq.window(users, limits[users], mcfg.history_len))
        state = gen.encoder(history, torch.as_tensor(users.astype(np.int64)))
        v0 = gen.generate(state, None)
        print(f"G(u, 0): {ndcg(top(v0)):.4f}")
        for scale in (0.1, 0.3, 0.5, 1.0):
            z = scale * torch.randn(len(users), mcfg.noise_dim, generator=noise)
            vz = gen.generate(state, z)
            cos = torch.nn.functional.cosine_similarity(vz, v0).mean()
            print(f"one sample, z ~ N(0, {scale}^2): {ndcg(top(vz)):.4f}, cos {cos:.2f}")
        for k in (8, 64):
            zs = torch.randn(k, len(users), mcfg.noise_dim, generator=noise)
            mean = torch.stack([gen.generate(state, z) for z in zs]).mean(0)
            print(f"mean of {k} samples: {ndcg(top(mean)):.4f}")
        candidates = torch.as_tensor(top(v0, 100)[users])  # [users, 100]
        inner = (v0[:, None, :] * catalogue[candidates]).sum(-1)
        flat = candidates.reshape(-1)
        d_logit = disc(state.repeat_interleave(100, 0), catalogue[flat]).reshape(candidates.shape)
        for alpha in (0.1, 0.3, 1.0, None):
            score = d_logit if alpha is None else inner + alpha * d_logit
            recs = np.full((seq.n_users, 10), -1, dtype=np.int64)
            recs[users] = torch.gather(candidates, 1, score.argsort(1, descending=True)[:, :10])
            label = "D alone" if alpha is None else f"inner + {alpha} * D"
            print(f"top-100 re-ranked by {label}: {ndcg(recs):.4f}")
        rng = np.random.default_rng(0)
        own = torch.as_tensor([rng.choice(truth[u].indices) for u in users])
        real = disc(state, catalogue[own]).numpy()
        other = disc(state, catalogue[own[rng.permutation(len(users))]]).numpy()
        z = torch.randn(len(users), mcfg.noise_dim, generator=noise)
        fake = disc(state, gen.generate(state, z)).numpy()
        uniform = disc(state, catalogue[rng.integers(0, mcfg.n_items, len(users))]).numpy()
        print(
            f"D's AUC, (u, u's item) against (u, another user's item): {auc(real, other):.3f}; "
            f"against G(u, z): {auc(real, fake):.3f}; against a uniform item: {auc(real, uniform):.3f}"
        )


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counted half (Mann-Whitney)."""
    ranks = rankdata(np.concatenate([positive, negative]))  # ties get their mean rank
    n, m = len(positive), len(negative)
    return float((ranks[:n].sum() - n * (n + 1) / 2) / (n * m))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
