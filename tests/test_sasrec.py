"""SASRec, the sequential baseline: the encoder's causal masking and its training step (the
same `gan.train_step` the ablation takes), in one process."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ganrec_dist.core.config import DiscriminatorSettings, GameSettings
from ganrec_dist.data.interactions import Sequences
from ganrec_dist.model.models import Discriminator, Generator, ModelConfig
from ganrec_dist.training import gan
from ganrec_dist.training.batches import chunk_ends, make_sequence_batch
from ganrec_dist.training.tables import GeneratorOptimizer

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
                gen,
                disc,
                None,
                opt,
                batch=batch,
                z=None,
                negatives=negatives,
                game=GameSettings(adv_weight=0.0),
            )
        assert before < 0.2
        assert _accuracy(gen, rng) > 0.9, f"sparse={sparse}"


def test_the_last_state_alone_is_the_last_of_every_state():
    torch.manual_seed(0)
    enc = Generator(ModelConfig(**{**CFG.__dict__, "heads": 2})).encoder.eval()
    history = torch.randint(0, CFG.n_items + 1, (8, CFG.history_len))
    assert torch.allclose(enc(history, torch.zeros(8)), enc.states(history)[:, -1], atol=1e-6)


def _random_sequences(rng: np.random.Generator, n_users: int, n_items: int) -> Sequences:
    lengths = rng.integers(1, 3 * CFG.history_len, n_users)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = rng.integers(0, n_items, offsets[-1]).astype(np.int32)
    return Sequences(offsets, items, n_users, n_items)


@pytest.mark.parametrize("stride", [CFG.history_len, CFG.history_len // 2, 1])
def test_chunks_cover_every_fitted_row_once_as_a_target(stride):
    rng = np.random.default_rng(0)
    seq = _random_sequences(rng, 40, CFG.n_items)
    limits = np.maximum(seq.lengths - rng.integers(0, 4, seq.n_users), 1)
    users = np.repeat(np.arange(seq.n_users), seq.lengths)
    positions = np.arange(len(seq.items)) - np.repeat(seq.offsets[:-1], seq.lengths)
    ends = chunk_ends(positions, limits, users, stride)
    batch = make_sequence_batch(
        seq,
        users=users[ends],
        ends=positions[ends],
        length=CFG.history_len,
        stride=stride,
        device="cpu",
    )
    covered = []
    for row, (u, end) in enumerate(zip(users[ends], positions[ends])):
        kept = (batch.targets[row] != CFG.n_items).numpy()
        first = end - kept.sum() + 1
        assert kept[-(end - first + 1) :].all()  # the trained targets are the window's last
        covered += [(u, p) for p in range(first, end + 1)]
        expected = seq.items[seq.offsets[u] + first : seq.offsets[u] + end + 1]
        assert np.array_equal(batch.targets[row][kept].numpy(), expected)
        # The input at a position is the item before its target (padding before the first).
        start = seq.offsets[u] + max(first - 1, 0)
        before = [CFG.n_items] * int(first == 0) + list(seq.items[start : seq.offsets[u] + end])
        assert np.array_equal(batch.history[row][kept].numpy(), before)
        # Each target has at least length - stride items before it in the window, or all.
        history_before_first = CFG.history_len - kept.sum()
        assert history_before_first >= min(CFG.history_len - stride, first)
    fitted = sorted((u, p) for u, p in zip(users, positions) if p < limits[u])
    assert sorted(covered) == fitted


def test_every_position_step_is_the_mean_of_the_one_prefix_losses():
    """One forward over a chunk gives, at each position, the loss (and gradient) of the same
    model run on the prefix ending there alone: causal, aligned with its targets, padding left
    out, averaged over the targets kept."""
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    seq = _random_sequences(rng, 6, CFG.n_items)
    users = np.arange(seq.n_users)
    ends = seq.lengths - 1 - rng.integers(0, 3, seq.n_users).clip(max=seq.lengths - 1)
    batch = make_sequence_batch(
        seq, users=users, ends=ends, length=CFG.history_len, stride=CFG.history_len, device="cpu"
    )
    gen = Generator(CFG)
    _, _, loss = gen(batch.history, batch.users, targets=batch.targets)
    grads = torch.autograd.grad(loss, list(gen.parameters()), allow_unused=True)
    pad = CFG.n_items
    losses = []
    for row in range(len(users)):
        for t in range(CFG.history_len):
            if batch.targets[row, t] == pad:
                continue
            prefix = batch.history[row].clone()
            prefix[t + 1 :] = pad  # nothing after position t
            state = gen.encoder.states(prefix[None])[0, t]
            losses.append(
                F.cross_entropy((state @ gen.catalogue().T)[None], batch.targets[row, t][None])
            )
    reference = torch.stack(losses).mean()
    ref_grads = torch.autograd.grad(reference, list(gen.parameters()), allow_unused=True)
    assert len(losses) == int((batch.targets != pad).sum()) > len(users)
    assert torch.allclose(loss, reference, atol=1e-5)
    for g, r in zip(grads, ref_grads):
        assert (g is None) == (r is None)
        if g is not None:
            assert torch.allclose(g, r, atol=1e-5)
    # A sampled softmax's logits are the full one's on the candidates, target by target.
    candidates = torch.tensor([1, 7, 3])
    some = gen(batch.history, batch.users, candidates=candidates, targets=batch.targets)[2]
    full = gen(
        batch.history, batch.users, candidates=torch.arange(CFG.n_items), targets=batch.targets
    )[2]
    assert torch.allclose(some, full[:, candidates], atol=1e-6)


def test_adversarial_sasrec_samples_around_its_own_vector_and_trains_at_every_position():
    """SASRec's noise head: at z = 0 the vector is SASRec's state (its ranking is unchanged),
    other draws move it, and an adversarial step on a chunk batch reaches the encoder."""
    torch.manual_seed(0)
    cfg = ModelConfig(**{**CFG.__dict__, "noise_head": True})
    gen, disc = Generator(cfg), Discriminator(cfg)
    history = torch.randint(0, cfg.n_items, (4, cfg.history_len))
    state = gen.encoder(history, torch.zeros(4, dtype=torch.long))
    assert torch.equal(gen.generate(state, None), state)
    assert torch.equal(gen.generate(state, torch.zeros(4, cfg.noise_dim)), state)
    assert not torch.allclose(gen.generate(state, torch.randn(4, cfg.noise_dim)), state)
    rng = np.random.default_rng(2)
    seq = _random_sequences(rng, 5, cfg.n_items)
    batch = make_sequence_batch(
        seq,
        users=np.arange(5),
        ends=seq.lengths - 1,
        length=cfg.history_len,
        stride=cfg.history_len // 2,
        device="cpu",
    )
    rows = int((batch.targets != cfg.n_items).sum())
    g_opt = torch.optim.Adam(gen.parameters(), lr=1e-3)
    d_opt = torch.optim.Adam(disc.parameters(), lr=1e-3)
    before = {n: p.detach().clone() for n, p in gen.named_parameters()}
    stats = gan.train_step(
        gen,
        disc,
        d_opt,
        g_opt,
        batch=batch,
        z=torch.randn(rows, cfg.noise_dim),
        game=GameSettings(adv_weight=0.5),
        discriminator=DiscriminatorSettings(d_mismatch=1.0, d_rows=0),
    )
    assert {"d_loss", "g_loss", "ce_loss", "d_other"} <= set(stats)
    for name in ("head.directions.weight", "encoder.blocks.0.qkv.weight"):
        assert not torch.equal(dict(gen.named_parameters())[name], before[name]), name
