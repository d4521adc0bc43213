"""Model quality on the embedded MovieLens sample within CI's time: the default search (its 8
epochs) without the refit, the full evaluation protocol, the ablation in the same table.

The level below was measured with exactly this configuration on the 2-CPU machine
(`python -m pytest tests/test_quality.py -s` prints the table); a drop beyond the tolerance fails
CI. The full protocol's results, and the spread between seeds and between machines that sets the
tolerance, are in docs/results.md.
"""

import pytest

from ganrec_dist.core.config import EvaluateConfig, train_config
from ganrec_dist.evaluation.evaluate import evaluate
from ganrec_dist.training.train import train

pytestmark = [pytest.mark.quality, pytest.mark.integration]

# Measured with this schedule (seed 0, AMD EPYC, docs/results.md *The quality test's level*): GAN
# 0.1448. One seed's GAN moves with the last bits of the arithmetic alone: by ±0.005 between
# runs that round differently, by up to 0.01 between an Intel and an AMD host (the default run of
# seed 0: 0.1403 and 0.1501); the tolerance is a little above the larger.
MEASURED_GAN_NDCG10 = 0.1448
TOLERANCE = 0.015


def test_gan_quality_on_movielens(movielens_data, tmp_path):
    data, _ = movielens_data
    run = tmp_path / "run"
    train(train_config(data=str(data), out=str(run), refit=False))
    result = evaluate(
        EvaluateConfig(
            data=str(data),
            run=str(run),
            ease_lambdas="400",
            als_regs="1.0",
            als_iterations=10,
        )
    )
    m = {name: v["ndcg@10"] for name, v in result["models"].items()}
    print("\nNDCG@10:", {k: round(v, 4) for k, v in m.items()})
    assert m["gan"] > 1.15 * m["popularity"]
    assert abs(m["gan"] - MEASURED_GAN_NDCG10) <= TOLERANCE
    # The GAN's lead over its ablation is smaller than its seed-to-seed spread (docs/results.md):
    # it is reported, not asserted. This checks the adversarial term costs no more than that band.
    assert m["gan"] >= m["gan_ablation"] - 0.010
    assert result["models"]["gan"]["coverage@10"] > 0.05  # no collapse onto a few popular items
