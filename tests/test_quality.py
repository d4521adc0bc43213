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
# GAN 0.1164, ablation 0.1190 (with the matching-aware D, the default since f140e9a; the plain D
# gave 0.1140). The short schedule costs the GAN ~0.024 against the default one (30 epochs with
# early stopping, then a refit on all of train: see the README's results table).
# Training is deterministic for a seed and code version on one machine (Ray Data keeps block
# order), but the adversarial run moves with the last bits of the arithmetic: on two machines of
# the same kind the default seed-0 GAN scored 0.1403 and 0.1501 on test, its ablation 0.1386 on
# both (README, "The same command on another machine"); and the same schedule gave the plain-D
# GAN 0.1196, 0.1181 and 0.1140 with three versions of the step that compute the same losses
# (the ablation 0.1190 each time). History: 0.1072 before G's weights were averaged
# (--ema_decay), 0.098-0.104 before runs were reproducible.
MEASURED_GAN_NDCG10 = 0.1164
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
    # At this schedule the GAN does not beat its ablation (-0.0026 here; the plain D gave +0.0006,
    # -0.0009 and -0.0050 with three roundings of one step, README "The same run, three times"):
    # on validation, epoch by epoch, the GAN leads its ablation on seeds 0-3 only from epoch 27
    # on, and over eight seeds of the default schedule it leads by +0.0020 on test, ahead on five
    # (README, "The matching-aware discriminator"): a margin below one seed's rounding spread.
    # So this checks that the adversarial term costs no more than that noise band; the GAN's lead
    # over its ablation is reported for the default schedule, not asserted.
    assert m["gan"] >= m["gan_ablation"] - 0.010
    assert result["models"]["gan"]["coverage@10"] > 0.05  # no collapse onto a few popular items
