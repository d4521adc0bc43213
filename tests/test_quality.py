"""Model quality on the embedded MovieLens sample, within CI's time: a shorter schedule than the
default (10 epochs, no refit), the full evaluation protocol, the ablation in the same table.

The levels below were measured with exactly this configuration on the 2-CPU machine
(`python -m pytest tests/test_quality.py -s` prints them); a drop beyond the tolerance fails CI.
The full default training and its table are in the README (`ganrec demo` reproduces them).
"""

import pytest

from ganrec_dist.config import EvaluateConfig, TrainConfig
from ganrec_dist.evaluate import evaluate
from ganrec_dist.train import train

pytestmark = [pytest.mark.quality, pytest.mark.integration]

# Measured with this schedule (10 epochs, no refit): popularity 0.0857, EASE 0.1415, ALS 0.1228,
# GAN 0.1072, ablation 0.1098. The short schedule costs the GAN ~0.02 against the default one
# (refit on all of train: GAN 0.128, ablation 0.136, ALS 0.125, EASE 0.141 in the README).
# Training is deterministic for a seed (Ray Data keeps block order); before that was enforced,
# repeated runs of this test gave GAN 0.098-0.104 and ablation 0.105-0.111.
MEASURED_GAN_NDCG10 = 0.1072
TOLERANCE = 0.012


def test_gan_quality_on_movielens(movielens_data, tmp_path):
    data, _ = movielens_data
    run = tmp_path / "run"
    train(TrainConfig(data=str(data), out=str(run), epochs=10, patience=10, refit=False))
    result = evaluate(
        EvaluateConfig(
            data=str(data), run=str(run), ease_lambdas="400", als_regs="1.0", als_iterations=10
        )
    )
    m = {name: v["ndcg@10"] for name, v in result["models"].items()}
    print("\nNDCG@10:", {k: round(v, 4) for k, v in m.items()})
    assert m["gan"] > 1.15 * m["popularity"]
    assert abs(m["gan"] - MEASURED_GAN_NDCG10) <= TOLERANCE
    # The adversarial term does not beat the ablation on this data (see the README); this guards
    # against it falling further behind.
    assert m["gan"] >= m["gan_ablation"] - TOLERANCE
    assert result["models"]["gan"]["coverage@10"] > 0.05  # no collapse onto a few popular items
