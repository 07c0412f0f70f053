"""The models' forward with explicit state: stepping, chunking and the full sequence agree."""

import pytest
import torch

from model import CONFIGS, IteraLiteConfig, build_model, count_parameters, ssd


@pytest.mark.parametrize(
    "name,expected",
    [("tiny", 1_855_256), ("micro", 287_428), ("transformer-tiny", 1_792_512)],
)
def test_parameter_counts(name, expected):
    # Reference design: tiny 1,886,496, micro 293,656, transformer 1,829,120 (within 2%; the
    # Transformer's rotary positions have no table, 49,152 fewer than its learned positions had).
    assert count_parameters(build_model(CONFIGS[name](66))) == expected


@pytest.mark.parametrize("name", ["test-ssm", "test-transformer"])
@torch.no_grad()
def test_step_by_step_and_chunks_equal_full_sequence(name):
    torch.manual_seed(0)
    model = build_model(CONFIGS[name](66)).eval()
    ids = torch.randint(0, 66, (2, 40))
    full, full_state = model(ids)
    state, steps = model.initial_state(2), []
    for t in range(ids.shape[1]):
        logits, state = model(ids[:, t : t + 1], state)
        steps.append(logits)
    assert (torch.cat(steps, 1) - full).abs().max() < 1e-5
    a, s = model(ids[:, :13])
    b, s = model(ids[:, 13:], s)
    assert (torch.cat([a, b], 1) - full).abs().max() < 1e-5
    for x, y in zip(s, full_state):
        assert (x - y).abs().max() < 1e-5


@torch.no_grad()
def test_recurrent_state_has_constant_shape_and_kv_grows():
    ssm = build_model(CONFIGS["test-ssm"](66)).eval()
    _, s1 = ssm(torch.zeros(1, 3, dtype=torch.long))
    _, s2 = ssm(torch.zeros(1, 9, dtype=torch.long), s1)
    assert [t.shape for t in s1] == [t.shape for t in s2] == [t.shape for t in ssm.initial_state(1)]
    tr = build_model(CONFIGS["test-transformer"](66)).eval()
    _, k1 = tr(torch.zeros(1, 3, dtype=torch.long))
    _, k2 = tr(torch.zeros(1, 4, dtype=torch.long), k1)
    assert k1[0].shape[2] == 3 and k2[0].shape[2] == 7


@torch.no_grad()
def test_sparse_training_moe_and_chunked_training_scan_compute_the_exported_function():
    torch.manual_seed(1)
    model = build_model(CONFIGS["test-ssm"](66))
    ids = torch.randint(0, 66, (2, 150))  # longer than the training scan chunk
    model.eval()
    model.set_sparse_moe(False)
    dense, _ = model(ids)
    model.train()  # chunked scan path
    model.set_sparse_moe(True)
    sparse, _ = model(ids)
    assert (dense - sparse).abs().max() < 1e-5


def test_top_k_gates_select_k_experts_and_sum_to_one():
    model = build_model(CONFIGS["test-ssm"](66))
    moe = model.blocks[0].moe
    _, g = moe.gates(torch.randn(4, 5, moe.c.d_model))
    assert torch.all((g > 0).sum(-1) == moe.c.top_k)
    assert torch.allclose(g.sum(-1), torch.ones(4, 5))


def test_bad_config_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="head_dim"):
        build_model(IteraLiteConfig(d_model=20, head_dim=16))
    with pytest.raises(ValueError, match="top_k"):
        build_model(IteraLiteConfig(n_experts=2, top_k=3))


@torch.no_grad()
def test_one_long_call_stays_precise():
    # Segment sums by cumulative sum (not differences of a long cumulative sum): a 1024-token chunk
    # in float32 stays within 1e-4 of float64 (the difference form was off by 1.9e-3 here).
    torch.manual_seed(0)
    b, t, h, p, n = 1, 1024, 4, 8, 16
    x, dt = torch.randn(b, t, h, p), torch.nn.functional.softplus(torch.randn(b, t, h))
    a, bm, cm, h0 = -torch.linspace(1, 16, h), torch.randn(b, t, n), torch.randn(b, t, n), torch.randn(b, h, p, n)
    y32, s32 = ssd(x, dt, a, bm, cm, h0)
    y64, s64 = ssd(*(v.double() for v in (x, dt, a, bm, cm, h0)))
    assert (y32.double() - y64).abs().max() < 1e-4
    assert (s32.double() - s64).abs().max() < 1e-4


@torch.no_grad()
def test_rotary_positions_are_relative_and_the_transformer_has_no_position_table():
    # Scores depend only on distances: the same text at positions 1000.. gives the logits it gives at 0..
    # (float32 angles near 1000 rad carry ~6e-5 rad of rounding, hence the tolerance).
    torch.manual_seed(0)
    model = build_model(CONFIGS["test-transformer"](66)).eval()
    assert not any("pos" in name for name, _ in model.named_parameters())
    ids = torch.randint(0, 66, (1, 50))
    at_zero, _ = model(ids)
    shifted, _ = model(ids, position_ids=torch.arange(1000, 1050)[None])
    assert (at_zero - shifted).abs().max() < 1e-3
    # ... and positions do matter: the same tokens in another order are not a permutation of the output.
    scrambled, _ = model(ids, position_ids=torch.arange(50).flip(0)[None])
    assert (at_zero - scrambled).abs().max() > 1e-2


def test_odd_head_size_is_refused_for_rotary_positions():
    from model import TransformerConfig

    with pytest.raises(ValueError, match="even"):
        build_model(TransformerConfig(d_model=18, n_heads=2))


@torch.no_grad()
def test_attention_window_limits_each_query_to_the_last_n_keys():
    torch.manual_seed(0)
    model = build_model(CONFIGS["test-transformer"](66)).eval()
    ids = torch.randint(0, 66, (1, 30))
    full, _ = model(ids)
    assert (model(ids, attention_window=30)[0] - full).abs().max() == 0  # wider than the text: no change
    # A window of 1: each token sees only itself, as if fed alone at its position.
    alone = torch.cat([model(ids[:, j : j + 1], position_ids=torch.tensor([[j]]))[0] for j in range(30)], 1)
    assert (model(ids, attention_window=1)[0] - alone).abs().max() < 1e-5
    assert (model(ids, attention_window=8)[0] - full).abs().max() > 1e-3
