"""Models and the adversarial steps in one process: no Ray."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ganrec_dist.core.config import DiscriminatorSettings, GameSettings, TrainConfig
from ganrec_dist.model.models import Discriminator, Generator, ModelConfig, catalogue_cross_entropy
from ganrec_dist.training import gan
from ganrec_dist.training.building import optimisers

CFG = ModelConfig(n_items=40, n_users=10, dim=8, hidden=16, history_len=5, noise_dim=4, dropout=0.0)


def _batch(b=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    history = torch.randint(0, CFG.n_items + 1, (b, CFG.history_len), generator=g)
    history[0] = CFG.n_items  # an empty history
    return gan.Batch(
        history,
        torch.randint(0, CFG.n_users + 1, (b,), generator=g),
        torch.randint(0, CFG.n_items, (b,), generator=g),
    )


def test_shapes_and_deterministic_inference():
    torch.manual_seed(0)
    gen, disc = Generator(CFG), Discriminator(CFG)
    batch = _batch()
    state, vector, logits = gen(batch.history, batch.users)
    assert (
        state.shape == (12, CFG.hidden)
        and vector.shape == (12, CFG.dim)
        and logits.shape == (12, CFG.n_items)
    )
    assert torch.isfinite(logits).all()  # the empty history row too
    assert disc(state, vector).shape == (12,)
    _, again, _ = gen(batch.history, batch.users)
    assert torch.equal(vector, again)  # z = None is the noise's mean: deterministic
    z = torch.randn(12, CFG.noise_dim)
    assert not torch.equal(gen(batch.history, batch.users, z)[1], vector)
    candidates = torch.tensor([3, 5, 7])
    assert gen(batch.history, batch.users, candidates=candidates)[2].shape == (12, 3)


def test_unknown_users_are_encoded_from_history_alone():
    torch.manual_seed(0)
    gen = Generator(CFG)
    history = torch.tensor([[CFG.n_items, 1, 2, 3, 4]])
    unknown = gen(history, torch.tensor([CFG.n_users]))[1]
    negative = gen(history, torch.tensor([-1]))[1]
    assert torch.equal(unknown, negative)
    other_history = gen(torch.tensor([[5, 6, 7, 8, 9]]), torch.tensor([CFG.n_users]))[1]
    assert not torch.allclose(unknown, other_history)


def test_gradients_reach_both_models():
    torch.manual_seed(0)
    gen, disc = Generator(CFG), Discriminator(CFG)
    g_opt, d_opt = (
        torch.optim.SGD(gen.parameters(), lr=0.0),
        torch.optim.SGD(disc.parameters(), lr=0.0),
    )
    batch = _batch()
    z = torch.randn(12, CFG.noise_dim)
    gan.d_step(gen, disc, d_opt, batch, z=z)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in disc.parameters())
    assert all(p.grad is None for p in gen.parameters())  # the D-step leaves G alone
    gan.g_step(gen, disc, g_opt, batch, z=z, adv_weight=1.0)
    assert gen.head[0].weight.grad.abs().sum() > 0
    # The catalogue rows (history encoder and softmax targets) learn; the padding row does not.
    assert gen.encoder.items.weight.grad[: CFG.n_items].abs().sum() > 0
    assert gen.encoder.items.weight.grad[CFG.n_items].abs().sum() == 0
    assert all(p.requires_grad for p in disc.parameters())  # restored after the G-step


def test_adversarial_gradient_is_zero_in_the_ablation():
    torch.manual_seed(0)
    gen, disc = Generator(CFG), Discriminator(CFG)
    batch, z = _batch(), torch.randn(12, CFG.noise_dim)
    grads = {}
    for w in (0.0, 1.0):
        gen.zero_grad()
        gan.g_step(gen, disc, torch.optim.SGD(gen.parameters(), lr=0.0), batch, z=z, adv_weight=w)
        grads[w] = gen.head[2].weight.grad.clone()
    assert not torch.allclose(grads[0.0], grads[1.0])


def test_discriminator_learns_real_from_shuffled_pairs():
    """Toy data: user u's real item is u itself. D must tell (u, E[u]) from (u, E[other])."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        n_items=10, n_users=10, dim=8, hidden=16, history_len=2, noise_dim=2, dropout=0.0
    )
    gen, disc = Generator(cfg), Discriminator(cfg)
    opt = torch.optim.Adam(disc.parameters(), lr=1e-2)
    users = torch.arange(10).repeat(20)
    history = torch.full((200, 2), cfg.n_items)
    with torch.no_grad():
        state = gen.encoder(history, users)
    real = gen.catalogue()[users].detach()
    fake = gen.catalogue()[(users + 1 + torch.randint(0, 9, (200,))) % 10].detach()
    for _ in range(800):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            disc(state, real), torch.ones(200)
        ) + torch.nn.functional.binary_cross_entropy_with_logits(
            disc(state, fake), torch.zeros(200)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        accuracy = (
            (disc(state, real) > 0).float().mean() + (disc(state, fake) < 0).float().mean()
        ) / 2
    assert accuracy > 0.95


def test_g_step_raises_d_of_fake():
    torch.manual_seed(0)
    gen, disc = Generator(CFG), Discriminator(CFG)
    batch, z = _batch(b=64), torch.randn(64, CFG.noise_dim)
    d_opt = torch.optim.Adam(disc.parameters(), lr=1e-2)
    for _ in range(30):  # a D that has learned to reject G's current output
        gan.d_step(gen, disc, d_opt, batch, z=z)

    def d_fake():
        with torch.no_grad():
            state = gen.encoder(batch.history, batch.users)
            return torch.sigmoid(disc(state, gen.generate(state, z))).mean().item()

    before = d_fake()
    g_opt = torch.optim.Adam(gen.parameters(), lr=1e-2)
    for _ in range(20):
        gan.g_step(gen, disc, g_opt, batch, z=z, adv_weight=1.0)
    assert d_fake() > before + 0.05


@pytest.mark.parametrize("adv", [0.0, 0.5])
def test_sampled_softmax_step_runs(adv):
    torch.manual_seed(0)
    gen, disc = Generator(CFG), Discriminator(CFG)
    stats = gan.g_step(
        gen,
        disc,
        torch.optim.Adam(gen.parameters()),
        _batch(),
        z=torch.randn(12, CFG.noise_dim),
        adv_weight=adv,
        negatives=torch.randint(0, CFG.n_items, (16,)),
    )
    assert np.isfinite(stats["ce_loss"])


def test_sampled_softmax_with_every_item_as_negative_is_the_full_softmax():
    torch.manual_seed(0)
    b, n = 6, 40
    targets = torch.randint(0, n, (b,))
    full = torch.randn(b, n)
    negatives = torch.arange(n)
    logits = torch.cat([full[torch.arange(b)[:, None], targets[None, :]], full], dim=1)
    ce = gan.sampled_softmax_ce(logits, targets, negatives, n)
    torch.testing.assert_close(ce, F.cross_entropy(full, targets))
    # Fewer negatives, each standing for n / c items: the normaliser is scaled up to match.
    half = torch.arange(0, n, 2)
    logits = torch.cat([full[torch.arange(b)[:, None], targets[None, :]], full[:, half]], dim=1)
    ce = gan.sampled_softmax_ce(logits, targets, half, n)
    pos = full[torch.arange(b), targets]
    others = full[:, half].exp().masked_fill(half[None] == targets[:, None], 0).sum(1)
    torch.testing.assert_close(ce, (torch.log(pos.exp() + 2 * others) - pos).mean())


def test_mixed_negatives_estimate_the_full_normaliser_without_bias():
    """The batch's targets (drawn by popularity) and uniform negatives, each log-Q corrected:
    over many batches the corrected exponentials of row 0's negatives sum, on average, to the
    full softmax's normaliser without its target; uncorrected they would not."""
    gen = torch.Generator().manual_seed(0)
    n, b, c, trials = 30, 8, 5, 20_000
    popularity = torch.distributions.Dirichlet(torch.full((n,), 0.3)).sample((1,))[0]
    scores = torch.randn(n, generator=gen)  # row 0's scores of every item
    target = int(torch.argmax(popularity))  # a popular target: in-batch duplicates get masked
    estimates, plain = [], []
    for _ in range(trials // 500):
        others = torch.multinomial(popularity, 500 * (b - 1), replacement=True, generator=gen)
        uniform = torch.randint(0, n, (500, c), generator=gen)
        for t in range(500):
            targets = torch.cat([torch.tensor([target]), others[t * (b - 1) : (t + 1) * (b - 1)]])
            logits = scores[torch.cat([targets, uniform[t]])][None].repeat(b, 1)
            row = gan.sampled_logits(logits, targets, uniform[t], n, popularity)[0]
            estimates.append(row[1:].exp().sum())
            plain.append(
                logits[0, 1:]
                .exp()
                .masked_fill(torch.cat([targets, uniform[t]])[1:] == target, 0)
                .sum()
            )
    exact = scores.exp().sum() - scores[target].exp()
    assert float(torch.stack(estimates).mean() / exact) == pytest.approx(1.0, abs=0.03)
    assert abs(float(torch.stack(plain).mean() / exact) - 1.0) > 0.2
    # Without popularity, only the uniform negatives: the batch's targets are not negatives.
    targets = torch.tensor([0, 1, 2])
    logits = torch.randn(3, 3 + 2)
    row = gan.sampled_logits(logits, targets, torch.tensor([4, 5]), n)
    assert row.shape == (3, 3)


@pytest.mark.parametrize("mixed", [True, False])
def test_fused_sampled_softmax_matches_the_reference_and_its_gradients(mixed):
    """The in-place sampled cross-entropy against ``sampled_softmax_ce``: the same loss and the
    same gradients at the logits, with repeated targets, a negative equal to a target, large
    logits, mixed (popularity) and uniform-only negatives."""
    torch.manual_seed(0)
    n = 50
    targets = torch.tensor([3, 0, 49, 3, 17, 8])  # a repeated target
    negatives = torch.tensor([17, 5, 9, 33, 41, 2, 12])  # 17 is also a target
    popularity = torch.distributions.Dirichlet(torch.full((n,), 0.5)).sample() if mixed else None
    logits = (6 * torch.randn(len(targets), len(targets) + len(negatives))).requires_grad_()
    upstream = torch.tensor(0.7)
    reference = gan.sampled_softmax_ce(logits, targets, negatives, n, popularity)
    (expected,) = torch.autograd.grad(reference * upstream, logits)
    fused = gan.fused_sampled_ce(logits, targets, gan.Negatives(negatives, popularity), n)
    (got,) = torch.autograd.grad(fused * upstream, logits)
    torch.testing.assert_close(fused, reference, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    assert torch.equal(got == 0, expected == 0)  # masked columns get no gradient


def test_catalogue_cross_entropy_matches_cross_entropy_and_its_gradients():
    torch.manual_seed(0)
    targets = torch.tensor([3, 0, 39, 3, 17])  # a repeated target; the first and last item
    vector = (5 * torch.randn(5, 8)).requires_grad_()  # large logits: the max shift matters
    table = torch.randn(40, 8, requires_grad=True)
    upstream = torch.tensor(0.7)  # a non-unit upstream gradient (e.g. a loss weight)
    ours = catalogue_cross_entropy(vector, table, targets)
    (ours * upstream).backward()
    ours_grads = vector.grad.clone(), table.grad.clone()
    vector.grad = table.grad = None
    reference = F.cross_entropy(vector @ table.T, targets)
    (reference * upstream).backward()
    torch.testing.assert_close(ours, reference)
    torch.testing.assert_close(ours_grads[0], vector.grad)
    torch.testing.assert_close(ours_grads[1], table.grad)


def test_generator_cross_entropy_output_matches_its_logits():
    torch.manual_seed(0)
    gen = Generator(CFG)
    batch = _batch()
    _, _, logits = gen(batch.history, batch.users)
    _, _, ce = gen(batch.history, batch.users, targets=batch.targets)
    torch.testing.assert_close(ce, F.cross_entropy(logits, batch.targets))
    ce.backward()  # the tied catalogue gets the gradient of both the history and the softmax
    grad = gen.encoder.items.weight.grad.clone()
    gen.zero_grad()
    F.cross_entropy(gen(batch.history, batch.users)[2], batch.targets).backward()
    torch.testing.assert_close(grad, gen.encoder.items.weight.grad)


def _assert_same_updates(reference, ours, rel, **close):
    """Two (stats, G state, D state) results of the same training steps agree."""
    assert ours[0] == pytest.approx(reference[0], rel=rel)
    for ref_state, state in zip(reference[1:], ours[1:]):
        assert state.keys() == ref_state.keys()
        for name in ref_state:
            torch.testing.assert_close(state[name], ref_state[name], **close)


def test_fused_g_step_and_adam_update_like_the_reference():
    batch, z = _batch(), torch.randn(12, CFG.noise_dim, generator=torch.Generator().manual_seed(3))
    after = []
    for fused in (False, True):
        torch.manual_seed(0)
        gen, disc = Generator(CFG), Discriminator(CFG)
        g_opt, d_opt = optimisers(gen, disc, TrainConfig(), fused=fused)
        for _ in range(3):
            gan.d_step(gen, disc, d_opt, batch, z=z)
            stats = gan.g_step(gen, disc, g_opt, batch, z=z, adv_weight=0.3, fused_softmax=fused)
        after.append((stats, gen.state_dict(), disc.state_dict()))
    _assert_same_updates(*after, rel=1e-4, rtol=1e-4, atol=1e-6)


def test_train_step_shares_g_forward_without_changing_the_updates():
    # Without dropout, one G pass for the D-step and the G-step is the same as two passes.
    batch, z = _batch(), torch.randn(12, CFG.noise_dim, generator=torch.Generator().manual_seed(4))
    after = []
    for shared in (False, True):
        torch.manual_seed(0)
        gen, disc = Generator(CFG), Discriminator(CFG)
        g_opt = torch.optim.Adam(gen.parameters(), lr=1e-2)
        d_opt = torch.optim.Adam(disc.parameters(), lr=1e-2)
        for _ in range(3):
            if shared:
                stats = gan.train_step(
                    gen,
                    disc,
                    d_opt,
                    g_opt,
                    batch=batch,
                    z=z,
                    game=GameSettings(adv_weight=0.3),
                    discriminator=DiscriminatorSettings(d_mismatch=0.0, d_rows=0, d_steps=2),
                )
            else:
                stats = {}
                for _ in range(2):
                    stats.update(gan.d_step(gen, disc, d_opt, batch, z=z))
                stats.update(gan.g_step(gen, disc, g_opt, batch, z=z, adv_weight=0.3))
        after.append((stats, gen.state_dict(), disc.state_dict()))
    assert set(after[1][0]) == {
        "d_loss",
        "d_real",
        "d_fake",
        "g_loss",
        "adv_loss",
        "ce_loss",
        "g_d_fake",
    }
    _assert_same_updates(*after, rel=1e-5)
    # The ablation runs no D-step at all.
    assert "d_loss" not in gan.train_step(
        gen, disc, d_opt, g_opt, batch=batch, z=z, game=GameSettings(adv_weight=0.0)
    )


@pytest.mark.parametrize("mismatch", [0.0, 1.0])
def test_mismatch_term_makes_d_judge_the_user(mismatch):
    """Toy data: user u's real item is u. D-steps against G's samples alone can be won by telling
    catalogue vectors from generated ones, whoever the user is; with the mismatch term D must
    also tell (u, E[u]) from (u, E[another user's item])."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        n_items=10, n_users=10, dim=8, hidden=16, history_len=2, noise_dim=2, dropout=0.0
    )
    gen, disc = Generator(cfg), Discriminator(cfg)
    opt = torch.optim.Adam(disc.parameters(), lr=1e-2)
    users = torch.arange(10).repeat(20)[torch.randperm(200)]
    batch = gan.Batch(torch.full((200, 2), cfg.n_items), users, users)
    z = torch.randn(200, cfg.noise_dim)
    for _ in range(400):
        stats = gan.d_step(gen, disc, opt, batch, z=z, mismatch=mismatch)
    assert ("d_other" in stats) == (mismatch > 0)
    with torch.no_grad():
        state = gen.encoder(batch.history, users)
        own = disc(state, gen.catalogue()[users])
        other = disc(state, gen.catalogue()[(users + 1 + torch.randint(0, 9, (200,))) % 10])
    matched_first = (own > other).float().mean().item()
    if mismatch:
        assert matched_first > 0.85
    else:  # nothing in the plain objective asks D to use the user
        assert matched_first < 0.7


def test_the_ablation_takes_no_d_step_whatever_d_settings():
    """evaluate shares one ablation among GANs that differ only in D's settings (the
    `discriminator` section of TrainConfig): with adv_weight 0 they must not change G's updates."""
    results = []
    for d_steps, d_mismatch, d_lr, d_rows in ((1, 0.0, 1e-3, 0), (3, 1.0, 5e-2, 4)):
        torch.manual_seed(0)
        gen, disc = Generator(CFG), Discriminator(CFG)
        g_opt = torch.optim.Adam(gen.parameters(), lr=1e-2)
        d_opt = torch.optim.Adam(disc.parameters(), lr=d_lr)
        d_before = [p.clone() for p in disc.parameters()]
        for seed in range(3):
            batch, z = _batch(seed=seed), torch.randn(12, CFG.noise_dim)
            gan.train_step(
                gen,
                disc,
                d_opt,
                g_opt,
                batch=batch,
                z=z,
                game=GameSettings(adv_weight=0.0),
                discriminator=DiscriminatorSettings(
                    d_mismatch=d_mismatch, d_rows=d_rows, d_steps=d_steps
                ),
            )
        assert all(torch.equal(a, b) for a, b in zip(d_before, disc.parameters()))
        results.append([p.detach().clone() for p in gen.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*results))
    varied = {"d_lr", "d_steps", "d_mismatch", "d_rows"}  # the settings varied above
    assert {f.name for f in dataclasses.fields(TrainConfig().discriminator)} == varied


def test_user_dropout_hides_ids_in_training_only():
    torch.manual_seed(0)
    cfg = ModelConfig(**{**CFG.__dict__, "user_dropout": 1.0})
    enc = Generator(cfg).encoder
    history = torch.randint(0, cfg.n_items, (6, cfg.history_len))
    users, unknown = torch.arange(6), torch.full((6,), cfg.n_users)
    enc.train()
    assert torch.equal(enc(history, users), enc(history, unknown))  # every id dropped
    enc.eval()
    assert not torch.allclose(enc(history, users), enc(history, unknown))
    half = ModelConfig(**{**CFG.__dict__, "user_dropout": 0.5})
    torch.manual_seed(1)
    enc = Generator(half).encoder.train()
    hidden = (enc(history, users) == enc(history, unknown)).all(dim=1)
    assert 0 < int(hidden.sum()) < 6  # some ids, not all
