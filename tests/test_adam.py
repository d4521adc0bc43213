"""The training's Adam (ganrec_dist.training.adam) against torch.optim's: the same bits, the
same state_dict, and no import of torch._dynamo. One process; no Ray."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import torch

from ganrec_dist.training.adam import Adam, RowAdamState


def _params() -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(1)
    return [
        torch.nn.Parameter(torch.randn(shape, generator=g)) for shape in ((30, 8), (8,), (4, 3))
    ]


def _groups(params: list) -> list[dict]:
    return [{"params": params[:2], "lr": 0.01}, {"params": params[2:], "lr": 0.002}]


def _steps(params: list, opt, first: int, last: int) -> None:
    for i in range(first, last):
        opt.zero_grad()
        for k, p in enumerate(params):
            if i % 4 == 3 and k == 1:
                continue  # a parameter without a gradient this step is not moved
            g = torch.Generator().manual_seed(100 * i + k)
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()


def _torch_adam(params: list):
    return torch.optim.Adam(
        _groups(params), lr=0.01, betas=(0.5, 0.999), weight_decay=1e-3, fused=True
    )


def _ours(params: list) -> Adam:
    return Adam(_groups(params), lr=0.01, betas=(0.5, 0.999), weight_decay=1e-3)


def _same_state(a: dict, b: dict) -> None:
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for index, values in b["state"].items():
        assert values.keys() == a["state"][index].keys()
        for key, value in values.items():
            assert value.dtype == a["state"][index][key].dtype, key
            assert torch.equal(value, a["state"][index][key]), (index, key)


def test_adam_is_torchs_fused_adam_bit_for_bit_with_the_same_state_dict():
    ours, theirs = _params(), _params()
    ours_opt, theirs_opt = _ours(ours), _torch_adam(theirs)
    _steps(ours, ours_opt, 0, 12)
    _steps(theirs, theirs_opt, 0, 12)
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
    _same_state(ours_opt.state_dict(), theirs_opt.state_dict())
    assert not torch.equal(ours[0], _params()[0])  # it did train


def test_a_state_dict_carries_over_between_ours_and_torchs_both_ways():
    reference = _params()
    reference_opt = _torch_adam(reference)
    _steps(reference, reference_opt, 0, 10)
    for first, second in ((_torch_adam, _ours), (_ours, _torch_adam)):
        params = _params()
        opt = first(params)
        _steps(params, opt, 0, 5)
        copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
        resumed = second(copies)
        resumed.load_state_dict(opt.state_dict())
        _steps(copies, resumed, 5, 10)
        for a, b in zip(copies, reference):
            assert torch.equal(a, b)


def test_row_adam_state_loads_torchs_sparse_adam_state():
    table = torch.nn.Parameter(torch.zeros(5, 2))
    theirs = torch.optim.SparseAdam([table], lr=0.1)
    table.grad = torch.sparse_coo_tensor([[1, 3]], torch.ones(2, 2), table.shape)
    theirs.step()
    ours = RowAdamState([table], lr=0.5)
    ours.load_state_dict(theirs.state_dict())
    state = ours.state[table]
    assert state["step"] == 1 and torch.equal(state["exp_avg"], theirs.state[table]["exp_avg"])
    assert ours.param_groups[0]["lr"] == 0.1  # the saved settings, as torch's load does


def test_the_training_optimisers_never_import_torch_dynamo():
    """Constructing any torch.optim optimiser imports torch._dynamo (1-2 s in each new worker
    process); the dense and the sparse model's optimisers, a step and a checkpoint round trip
    must not."""
    script = textwrap.dedent(
        """
        import sys
        from ganrec_dist.bench.common import random_step
        from ganrec_dist.core.config import train_config
        from ganrec_dist.model.models import Discriminator, Generator
        from ganrec_dist.training.building import model_config, optimisers
        for negatives in (0, 8):  # a full softmax's dense tables, a sampled one's sparse tables
            cfg = train_config(batch_size=16, sampled_negatives=negatives)
            step = random_step(cfg, 9, 50, negatives=negatives)
            for _ in range(3):
                step()
            mcfg = model_config(cfg, 9, 50)
            assert mcfg.sparse == bool(negatives)
            g_opt, d_opt = optimisers(Generator(mcfg), Discriminator(mcfg), cfg)
            g_opt.load_state_dict(g_opt.state_dict())
            d_opt.load_state_dict(d_opt.state_dict())
        print("torch._dynamo" in sys.modules)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
