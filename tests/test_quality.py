"""Model quality on the embedded MovieLens sample within CI's time: the default search (its 8
epochs) without the refit, the full evaluation protocol, the ablation in the same table. The GAN
and its ablation train side by side, one torch thread each.

The level below was measured with exactly this configuration on the 2-CPU machine
(`python -m pytest tests/test_quality.py -s` prints the table); a drop beyond the tolerance fails
CI. The full protocol's results, and the spread between seeds and between machines that sets the
tolerance, are in docs/results.md.
"""

import pytest

from ganrec_dist.core.config import EvaluateConfig, train_config
from ganrec_dist.data.layout import RunDir
from ganrec_dist.evaluation.companions import ABLATION, companion_config
from ganrec_dist.evaluation.evaluate import evaluate

pytestmark = [pytest.mark.quality, pytest.mark.integration]

# Measured with this schedule, one thread (seed 0, AMD EPYC, docs/results.md *The quality
# test's level*): GAN 0.1438. One seed's GAN moves with the last bits of the arithmetic alone: by
# ±0.005 between runs that round differently, by up to 0.01 between an Intel and an AMD host (the
# default run of seed 0: 0.1403 and 0.1501); the tolerance is a little above the larger.
MEASURED_GAN_NDCG10 = 0.1438
TOLERANCE = 0.015


def test_gan_quality_on_movielens(movielens_data, side_by_side, tmp_path):
    data, _ = movielens_data
    run = tmp_path / "run"
    gan = train_config(data=str(data), out=str(run), refit=False, threads=1, cpus_per_worker=0.5)
    cfg = EvaluateConfig(
        data=str(data), run=str(run), ease_lambdas="400", als_regs="1.0", als_iterations=10
    )
    # The ablation as `evaluate` trains it, trained beside the GAN instead of after it; the
    # evaluation below must reuse it.
    runs = RunDir(str(run))
    ablation = companion_config(
        gan, run=runs, target=runs.ablation(), label="ablation", cfg=cfg, **ABLATION
    )
    side_by_side(gan, ablation)
    result = evaluate(cfg)
    assert not result["companions"]["gan_ablation"]["trained"], "the ablation was trained again"
    m = {name: v["ndcg@10"] for name, v in result["models"].items()}
    print("\nNDCG@10:", {k: round(v, 4) for k, v in m.items()})
    assert m["gan"] > 1.15 * m["popularity"]
    assert abs(m["gan"] - MEASURED_GAN_NDCG10) <= TOLERANCE
    # The GAN's lead over its ablation is smaller than its seed-to-seed spread (docs/results.md):
    # it is reported, not asserted. This checks the adversarial term costs no more than that band.
    assert m["gan"] >= m["gan_ablation"] - 0.010
    assert result["models"]["gan"]["coverage@10"] > 0.05  # no collapse onto a few popular items
