"""SASRec, the sequential baseline: the encoder's causal masking and its training step (the
same `gan.train_step` the ablation takes), in one process."""

import torch

from ganrec_dist import gan
from ganrec_dist.models import Discriminator, Generator, ModelConfig
from ganrec_dist.tables import GeneratorOptimizer

CFG = ModelConfig(
    n_items=30, n_users=5, dim=16, history_len=6, dropout=0.0, encoder="sasrec", blocks=2
)


def test_a_position_never_sees_a_later_item():
    torch.manual_seed(0)
    enc = Generator(CFG).encoder.eval()
    history = torch.randint(0, CFG.n_items, (8, CFG.history_len))
    for t in range(CFG.history_len):
        changed = history.clone()
        changed[:, t] = (changed[:, t] + 1) % CFG.n_items
        before, after = enc.states(history), enc.states(changed)
        assert torch.equal(before[:, :t], after[:, :t])  # earlier positions: bit for bit
        assert not torch.allclose(before[:, t:], after[:, t:])  # from t on, it is read


def test_padding_is_not_read_and_an_empty_history_is_finite():
    torch.manual_seed(0)
    gen = Generator(CFG).eval()
    pad = CFG.n_items
    short = torch.tensor([[pad, pad, pad, 4, 5, 6]])
    # Padding is not read: the padded history's last state is that of the three items alone
    # (positions are counted from the end, so the items sit at the same positions in both).
    state = gen.encoder(short, torch.tensor([0]))
    alone = gen.encoder(torch.tensor([[4, 5, 6]]), torch.tensor([0]))
    assert torch.allclose(state, alone, atol=1e-6)
    empty = gen(torch.full((1, CFG.history_len), pad), torch.tensor([0]))[1]
    assert torch.isfinite(empty).all()
    # The user id is not an input: an unknown user with a history is a known one.
    assert torch.equal(gen(short, torch.tensor([CFG.n_users]))[1], gen(short, torch.tensor([2]))[1])
    # Full softmax and sampled: the same scores for the same items.
    full = gen(short, torch.tensor([0]))[2]
    some = gen(short, torch.tensor([0]), candidates=torch.tensor([1, 7]))[2]
    assert torch.allclose(full[:, [1, 7]], some)


def _next_item_batch(rng: torch.Generator, b: int, n: int, length: int):
    """Sequences that count up by 1 (mod n) from a random start: the next item is the last + 1."""
    start = torch.randint(0, n, (b, 1), generator=rng)
    seq = (start + torch.arange(length + 1)) % n
    return gan.Batch(seq[:, :-1], torch.zeros(b, dtype=torch.long), seq[:, -1])


def _accuracy(gen: Generator, rng: torch.Generator) -> float:
    gen.eval()
    batch = _next_item_batch(rng, 512, CFG.n_items, CFG.history_len)
    with torch.no_grad():
        logits = gen(batch.history, batch.users, candidates=torch.arange(CFG.n_items))[2]
    gen.train()
    return float((logits.argmax(1) == batch.targets).float().mean())


def test_sasrec_learns_a_tiny_sequence_task_full_and_sampled():
    for sparse in (False, True):
        torch.manual_seed(0)
        cfg = ModelConfig(**{**CFG.__dict__, "sparse": sparse})
        gen, disc = Generator(cfg), Discriminator(cfg)
        rng = torch.Generator().manual_seed(1)
        before = _accuracy(gen, rng)
        opt = (
            GeneratorOptimizer(gen, lr=5e-3, weight_decay=0.0)
            if sparse
            else torch.optim.Adam(gen.parameters(), lr=5e-3)
        )
        for _ in range(300):
            batch = _next_item_batch(rng, 64, cfg.n_items, cfg.history_len)
            negatives = (
                gan.Negatives(torch.randint(0, cfg.n_items, (12,), generator=rng), None)
                if sparse
                else None
            )
            gan.train_step(
                gen, disc, None, opt, batch=batch, z=None, adv_weight=0.0, negatives=negatives
            )
        assert before < 0.2
        assert _accuracy(gen, rng) > 0.9, f"sparse={sparse}"


def test_the_last_state_alone_is_the_last_of_every_state():
    torch.manual_seed(0)
    enc = Generator(ModelConfig(**{**CFG.__dict__, "heads": 2})).encoder.eval()
    history = torch.randint(0, CFG.n_items + 1, (8, CFG.history_len))
    assert torch.allclose(enc(history, torch.zeros(8)), enc.states(history)[:, -1], atol=1e-6)
