"""Itera-Lite (selective SSM + Mixture-of-Experts) and a decoder-only Transformer baseline.

Both models take explicit state and return the new state, so one forward serves training (zero
state, T tokens), prompt prefill (state in, T tokens, state out) and decoding (T = 1). That same
forward is what is exported to ONNX, so the exported graph is the trained function.

SSM: Mamba-2 style (scalar A per head, one group of B and C). That choice makes the multi-token form
a small quadratic "attention-like" product inside a chunk (decay matrix from a masked segment sum),
so the same graph runs T = 1 steps and T = 256 prefill with no loop, and is cheap to train on CPU.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class IteraLiteConfig:
    vocab_size: int = 66
    d_model: int = 128
    n_layers: int = 5
    expand: int = 2
    d_state: int = 16
    head_dim: int = 32
    d_conv: int = 4
    n_experts: int = 4
    top_k: int = 2
    d_ff: int = 256
    context_length: int = 256
    family: str = field(default="itera-lite", init=False)

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def n_heads(self) -> int:
        return self.d_inner // self.head_dim

    @property
    def conv_dim(self) -> int:
        return self.d_inner + 2 * self.d_state

    def validate(self) -> None:
        if self.d_inner % self.head_dim:
            raise ValueError(f"expand*d_model={self.d_inner} is not a multiple of head_dim={self.head_dim}")
        if not 1 <= self.top_k <= self.n_experts:
            raise ValueError(f"top_k={self.top_k} must be between 1 and n_experts={self.n_experts}")
        for name in ("vocab_size", "d_model", "n_layers", "d_state", "d_conv", "d_ff", "context_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TransformerConfig:
    vocab_size: int = 66
    d_model: int = 192
    n_layers: int = 4
    n_heads: int = 6
    d_ff: int = 768
    # Rotary positions have no table: this bounds generation (the KV cache), not the weights.
    context_length: int = 2048
    rope_base: float = 10000.0
    family: str = field(default="transformer", init=False)

    @property
    def head_size(self) -> int:
        return self.d_model // self.n_heads

    def validate(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not a multiple of n_heads={self.n_heads}")
        if self.head_size % 2:
            raise ValueError(f"head_size={self.head_size} must be even for rotary positions (pairs of channels)")
        for name in ("vocab_size", "d_model", "n_layers", "d_ff", "context_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return asdict(self)


CONFIGS = {
    "tiny": lambda vocab: IteraLiteConfig(vocab_size=vocab),
    "micro": lambda vocab: IteraLiteConfig(vocab_size=vocab, d_model=64, n_layers=3, d_ff=128),
    "transformer-tiny": lambda vocab: TransformerConfig(vocab_size=vocab),
    # Test-only: random tiny shapes so the python tests stay fast.
    "test-ssm": lambda vocab: IteraLiteConfig(
        vocab_size=vocab, d_model=16, n_layers=2, d_state=4, head_dim=8, d_ff=16, n_experts=3, top_k=2
    ),
    "test-transformer": lambda vocab: TransformerConfig(
        vocab_size=vocab, d_model=16, n_layers=2, n_heads=2, d_ff=32, context_length=256
    ),
}


def build_model(config: IteraLiteConfig | TransformerConfig) -> nn.Module:
    config.validate()
    return IteraLite(config) if isinstance(config, IteraLiteConfig) else Transformer(config)


def config_from_dict(d: dict) -> IteraLiteConfig | TransformerConfig:
    d = dict(d)
    family = d.pop("family")
    return IteraLiteConfig(**d) if family == "itera-lite" else TransformerConfig(**d)


SSD_TRAIN_CHUNK = 64


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class SelectiveSSM(nn.Module):
    """Mamba-2-style mixer: in_proj -> causal depthwise conv over (x, B, C) -> SSD -> D skip -> SiLU(z) gate."""

    def __init__(self, c: IteraLiteConfig):
        super().__init__()
        self.c = c
        self.in_proj = nn.Linear(c.d_model, 2 * c.d_inner + 2 * c.d_state + c.n_heads, bias=False)
        self.conv = nn.Conv1d(c.conv_dim, c.conv_dim, c.d_conv, groups=c.conv_dim, bias=True)
        # dt initialised log-uniform in [1e-3, 1e-1] as Mamba does, stored through inverse softplus.
        dt = torch.exp(torch.rand(c.n_heads) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.log(torch.empty(c.n_heads).uniform_(1, 16)))
        self.D = nn.Parameter(torch.ones(c.n_heads))
        self.out_proj = nn.Linear(c.d_inner, c.d_model, bias=False)

    def forward(self, u: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor):
        c = self.c
        b, t = u.shape[0], u.shape[1]
        zxbcdt = self.in_proj(u)
        z, xbc, dt = torch.split(zxbcdt, [c.d_inner, c.conv_dim, c.n_heads], dim=-1)
        # Causal depthwise conv continued from the previous tokens kept in conv_state [b, d_conv-1, conv_dim]
        # (time-major, channels last: the layout of onnxruntime's CausalConvWithState, so the exported
        # graph and this forward carry the same state tensors).
        xbc_t = torch.cat([conv_state, xbc], dim=1)
        new_conv_state = xbc_t[:, -(c.d_conv - 1) :]
        xbc = F.silu(self.conv(xbc_t.transpose(1, 2))).transpose(1, 2)
        x, bm, cm = torch.split(xbc, [c.d_inner, c.d_state, c.d_state], dim=-1)
        dt = F.softplus(dt + self.dt_bias)  # [b, t, h]
        a = -torch.exp(self.A_log)  # [h]
        xh = x.reshape(b, t, c.n_heads, c.head_dim)
        # ssm_state is [b, h, d_state, head_dim] (onnxruntime LinearAttention's [b, h, d_k, d_v]);
        # ssd() works in [b, h, p, n].
        ssm_state = ssm_state.transpose(2, 3)
        if self.training and t > SSD_TRAIN_CHUNK:
            # Same recurrence, chunk by chunk: the quadratic part stays chunk-sized (cheaper on CPU).
            ys, new_ssm_state = [], ssm_state
            for s in range(0, t, SSD_TRAIN_CHUNK):
                e = s + SSD_TRAIN_CHUNK
                yc, new_ssm_state = ssd(xh[:, s:e], dt[:, s:e], a, bm[:, s:e], cm[:, s:e], new_ssm_state)
                ys.append(yc)
            y = torch.cat(ys, dim=1)
        else:
            y, new_ssm_state = ssd(xh, dt, a, bm, cm, ssm_state)
        y = y + x.reshape(b, t, c.n_heads, c.head_dim) * self.D[:, None]
        y = y.reshape(b, t, c.d_inner) * F.silu(z)
        return self.out_proj(y), new_conv_state, new_ssm_state.transpose(2, 3)


def ssd(x, dt, a, bm, cm, h0):
    """Chunk form of the selective scan with scalar decay per head.

    x [b,t,h,p], dt [b,t,h], a [h], bm/cm [b,t,n], h0 [b,h,p,n] -> y [b,t,h,p], h [b,h,p,n].
    h_t = exp(dt_t a) h_{t-1} + dt_t x_t B_t^T,  y_t = h_t C_t.
    Decays come from differences of a cumulative sum that stay <= 0 where used (the rest is masked
    to -inf before exp), so nothing overflows.
    """
    # Everything per head as [b, h, t, 1] / [b, h, t, p] so the graph needs few reshapes.
    dt4 = dt.transpose(1, 2).unsqueeze(-1)  # [b,h,t,1]
    da = dt4 * a[:, None, None]  # [b,h,t,1], <= 0
    acum = torch.cumsum(da, dim=2)  # [b,h,t,1], non-increasing along t
    idx = torch.arange(x.shape[1], device=x.device).unsqueeze(-1)
    causal = idx >= idx.transpose(0, 1)  # [t,s]
    # Segment sums seg[t,s] = sum_{s<r<=t} da_r as a cumulative sum down the columns of a masked
    # matrix, not as acum_t - acum_s: no cancellation between large numbers on long inputs.
    seg = torch.cumsum(torch.where(idx > idx.transpose(0, 1), da, torch.tensor(0.0)), dim=2)  # [b,h,t,s]
    decay = torch.exp(torch.where(causal, seg, torch.tensor(float("-inf"))))
    bm4, cm4 = bm.unsqueeze(1), cm.unsqueeze(1)  # [b,1,t,n]
    xdt = x.transpose(1, 2) * dt4  # [b,h,t,p]
    y = ((cm4 @ bm4.transpose(2, 3)) * decay) @ xdt
    # Contribution of the incoming state, decayed to each position.
    y = y + torch.exp(acum) * (cm4 @ h0.transpose(2, 3))
    # Outgoing state: incoming state decayed over the chunk plus every token decayed to the end.
    last = acum[:, :, -1:]  # [b,h,1,1]
    to_end = seg[:, :, -1:].transpose(2, 3)  # [b,h,t,1]: sum_{s<r<=T-1} da_r
    h = torch.exp(last) * h0 + (xdt * torch.exp(to_end)).transpose(2, 3) @ bm4
    return y.transpose(1, 2), h


class MoEFeedForward(nn.Module):
    """E experts (SiLU MLPs) with a top-k softmax router, gates renormalised over the chosen k.

    Experts are stored stacked so the dense form is two matmuls for all experts together:
    sum_e g_e (act(x W1_e + b1_e) W2_e + b2_e) = [g_e act(x W1_e + b1_e)]_e @ vstack(W2_e) + g @ B2.
    The dense form (all experts computed, zero gates for the unselected) is the exported path; the
    sparse form (only routed tokens per expert) computes the same function faster for training.
    """

    def __init__(self, c: IteraLiteConfig):
        super().__init__()
        self.c = c
        self.router = nn.Linear(c.d_model, c.n_experts, bias=False)
        self.w1 = nn.Parameter(torch.randn(c.d_model, c.n_experts * c.d_ff) / math.sqrt(c.d_model))
        self.b1 = nn.Parameter(torch.zeros(c.n_experts * c.d_ff))
        self.w2 = nn.Parameter(torch.randn(c.n_experts * c.d_ff, c.d_model) / math.sqrt(c.d_ff))
        self.b2 = nn.Parameter(torch.zeros(c.n_experts, c.d_model))
        self.register_buffer("spread", torch.repeat_interleave(torch.eye(c.n_experts), c.d_ff, dim=1), persistent=False)
        self.sparse = False

    def gates(self, x):
        probs = torch.softmax(self.router(x), dim=-1)
        kth = torch.topk(probs, self.c.top_k, dim=-1).values[..., -1:]
        chosen = probs * (probs >= kth).to(probs.dtype)
        return probs, chosen / chosen.sum(-1, keepdim=True)

    def forward(self, x):
        probs, g = self.gates(x)
        out = self._sparse(x, g) if self.sparse else self._dense(x, g)
        return out, load_balancing_loss(probs, g)

    def _dense(self, x, g):
        # g @ spread repeats each expert's gate over its d_ff hidden units: no reshapes in the graph.
        h = F.silu(x @ self.w1 + self.b1) * (g @ self.spread)
        return h @ self.w2 + g @ self.b2

    def _sparse(self, x, g):
        c = self.c
        flat, gf = x.reshape(-1, c.d_model), g.reshape(-1, c.n_experts)
        out = gf @ self.b2
        w1 = self.w1.view(c.d_model, c.n_experts, c.d_ff)
        b1 = self.b1.view(c.n_experts, c.d_ff)
        w2 = self.w2.view(c.n_experts, c.d_ff, c.d_model)
        for e in range(c.n_experts):
            rows = torch.nonzero(gf[:, e] > 0).squeeze(1)
            if rows.numel() == 0:
                continue
            h = F.silu(flat[rows] @ w1[:, e] + b1[e]) * gf[rows, e : e + 1]
            out = out.index_add(0, rows, h @ w2[e])
        return out.reshape(x.shape)


def load_balancing_loss(probs, gates):
    """Switch Transformer auxiliary loss: E * sum_e (fraction of routed slots to e) * (mean prob of e)."""
    e = probs.shape[-1]
    routed = (gates > 0).to(probs.dtype).reshape(-1, e)
    frac = routed.sum(0) / routed.sum()
    return e * (frac * probs.reshape(-1, e).mean(0)).sum()


class IteraLiteBlock(nn.Module):
    def __init__(self, c: IteraLiteConfig):
        super().__init__()
        self.norm1 = RMSNorm(c.d_model)
        self.mixer = SelectiveSSM(c)
        self.norm2 = RMSNorm(c.d_model)
        self.moe = MoEFeedForward(c)

    def forward(self, x, conv_state, ssm_state):
        y, conv_state, ssm_state = self.mixer(self.norm1(x), conv_state, ssm_state)
        x = x + y
        y, aux = self.moe(self.norm2(x))
        return x + y, conv_state, ssm_state, aux


class IteraLite(nn.Module):
    def __init__(self, c: IteraLiteConfig):
        super().__init__()
        self.config = c
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.blocks = nn.ModuleList(IteraLiteBlock(c) for _ in range(c.n_layers))
        self.norm = RMSNorm(c.d_model)
        self.head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.head.weight = self.embed.weight  # tied
        self.aux_loss = torch.zeros(())

    def initial_state(self, batch: int = 1) -> list[torch.Tensor]:
        c = self.config
        state = []
        for _ in range(c.n_layers):
            state.append(torch.zeros(batch, c.d_conv - 1, c.conv_dim))
            state.append(torch.zeros(batch, c.n_heads, c.d_state, c.head_dim))
        return state

    def state_names(self) -> list[str]:
        names = []
        for i in range(self.config.n_layers):
            names += [f"past_key_values.{i}.conv_state", f"past_key_values.{i}.recurrent_state"]
        return names

    def set_sparse_moe(self, sparse: bool) -> None:
        for blk in self.blocks:
            blk.moe.sparse = sparse

    def forward(self, input_ids, state=None):
        if state is None:
            state = self.initial_state(input_ids.shape[0])
        x = self.embed(input_ids)
        new_state, aux = [], []
        for i, blk in enumerate(self.blocks):
            x, cs, ss, a = blk(x, state[2 * i], state[2 * i + 1])
            new_state += [cs, ss]
            aux.append(a)
        self.aux_loss = torch.stack(aux).mean()
        return self.head(self.norm(x)), new_state


def rotate_half_matrix(head_size: int) -> torch.Tensor:
    """R with x @ R = cat(-x[half:], x[:half]) (Llama's rotate_half): one MatMul in the graph, not slices."""
    half = head_size // 2
    r = torch.zeros(head_size, head_size)
    r[half:, :half] = -torch.eye(half)
    r[:half, half:] = torch.eye(half)
    return r


def rotary_cos_sin(position_ids: torch.Tensor, freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of position x frequency, [b, t, 3, 1, head_size] over the fused (q, k, v) axis (`freq`:
    the head_size/2 inverse frequencies repeated for the two halves, GPT-NeoX); v's slot has cos 1 and
    sin 0, so one multiply-add rotates q and k and passes v through exactly, with no slicing in the graph."""
    angles = position_ids.to(freq.dtype)[:, :, None, None, None] * freq
    rotated = torch.tensor([1.0, 1.0, 0.0]).view(1, 1, 3, 1, 1)
    return angles.cos() * rotated + (1 - rotated), angles.sin() * rotated


class Attention(nn.Module):
    """Multi-head causal attention with rotary positions: q and k rotated by their absolute position,
    so scores depend only on the distance between tokens. Keys enter the KV cache already rotated."""

    def __init__(self, c: TransformerConfig):
        super().__init__()
        self.c = c
        self.qkv = nn.Linear(c.d_model, 3 * c.d_model)
        self.proj = nn.Linear(c.d_model, c.d_model)
        self.register_buffer("rotate_half", rotate_half_matrix(c.head_size), persistent=False)

    def forward(self, x, past_k, past_v, bias, cos, sin):
        c = self.c
        b, t = x.shape[0], x.shape[1]
        qkv = self.qkv(x).reshape(b, t, 3, c.n_heads, c.head_size)
        qkv = qkv * cos + (qkv @ self.rotate_half) * sin  # rotates q and k; v has cos 1, sin 0
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        k = torch.cat([past_k, k], dim=2)
        v = torch.cat([past_v, v], dim=2)
        att = torch.softmax((q @ k.transpose(2, 3)) * (1.0 / math.sqrt(c.head_size)) + bias, dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, c.d_model)
        return self.proj(y), k, v


class TransformerBlock(nn.Module):
    def __init__(self, c: TransformerConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(c.d_model)
        self.attn = Attention(c)
        self.ln2 = nn.LayerNorm(c.d_model)
        self.fc = nn.Linear(c.d_model, c.d_ff)
        self.out = nn.Linear(c.d_ff, c.d_model)

    def forward(self, x, past_k, past_v, bias, cos, sin):
        y, k, v = self.attn(self.ln1(x), past_k, past_v, bias, cos, sin)
        x = x + y
        return x + self.out(F.gelu(self.fc(self.ln2(x)))), k, v


class Transformer(nn.Module):
    """GPT-2-style decoder (pre-LayerNorm, tied head) with rotary positions (RoPE, GPT-NeoX/Llama
    rotate-half form, no position table: it runs at any length) and a KV cache."""

    def __init__(self, c: TransformerConfig):
        super().__init__()
        self.config = c
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        nn.init.normal_(self.embed.weight, std=0.02)
        inv_freq = 1.0 / (c.rope_base ** (torch.arange(0, c.head_size, 2, dtype=torch.float32) / c.head_size))
        self.register_buffer("rope_freq", torch.cat([inv_freq, inv_freq]), persistent=False)
        self.blocks = nn.ModuleList(TransformerBlock(c) for _ in range(c.n_layers))
        self.norm = nn.LayerNorm(c.d_model)
        self.head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.head.weight = self.embed.weight
        self.aux_loss = torch.zeros(())

    def initial_state(self, batch: int = 1) -> list[torch.Tensor]:
        c = self.config
        return [torch.zeros(batch, c.n_heads, 0, c.head_size) for _ in range(2 * c.n_layers)]

    def state_names(self) -> list[str]:
        names = []
        for i in range(self.config.n_layers):
            names += [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
        return names

    def set_sparse_moe(self, sparse: bool) -> None:
        pass

    def forward(self, input_ids, state=None, attention_mask=None, position_ids=None, attention_window=None):
        """attention_window (analysis only, not exported): a query sees at most the last N keys."""
        b, t = input_ids.shape
        if state is None:
            state = self.initial_state(b)
        past = state[0].shape[2]
        if position_ids is None:
            position_ids = torch.arange(past, past + t).unsqueeze(0).expand(b, t)
        if attention_mask is None:
            attention_mask = torch.ones(b, past + t, dtype=torch.long)
        # Query i (absolute position past+i) may see key j when j <= past+i and attention_mask[j] = 1.
        kpos = torch.arange(past + t)
        qpos = torch.arange(t) + past
        allowed = (kpos[None, :] <= qpos[:, None])[None, None] & (attention_mask[:, None, None, :] > 0)
        if attention_window is not None:
            allowed = allowed & (qpos[:, None] - kpos[None, :] < attention_window)[None, None]
        bias = torch.where(allowed, torch.tensor(0.0), torch.tensor(torch.finfo(torch.float32).min))
        x = self.embed(input_ids)
        cos, sin = rotary_cos_sin(position_ids, self.rope_freq)  # once, shared by every layer
        new_state = []
        for i, blk in enumerate(self.blocks):
            x, k, v = blk(x, state[2 * i], state[2 * i + 1], bias, cos, sin)
            new_state += [k, v]
        return self.head(self.norm(x)), new_state


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights counted once


def flops_per_token(config, context: int | None = None) -> dict:
    """Multiply-adds x2 per token; attention/scan terms at `context`. Itera-Lite: "dense" counts every
    expert, "active" the top-k ones a token is routed to (what the exported MoE op runs)."""
    c = config
    if isinstance(c, IteraLiteConfig):
        mixer = 2 * c.d_model * (2 * c.d_inner + 2 * c.d_state + c.n_heads) + 2 * c.conv_dim * c.d_conv
        mixer += 2 * c.d_inner * c.d_model
        scan = 6 * c.d_inner * c.d_state  # state update, readout, decay per step
        router = 2 * c.d_model * c.n_experts
        dense_ffn = 4 * c.d_model * c.d_ff * c.n_experts
        active_ffn = 4 * c.d_model * c.d_ff * c.top_k
        head = 2 * c.d_model * c.vocab_size
        dense = c.n_layers * (mixer + scan + router + dense_ffn) + head
        active = c.n_layers * (mixer + scan + router + active_ffn) + head
        return {"dense": dense, "active": active}
    ctx = context or c.context_length
    per_layer = 2 * c.d_model * 3 * c.d_model + 2 * c.d_model * c.d_model + 4 * c.d_model * c.d_ff
    attn = 4 * ctx * c.d_model
    total = c.n_layers * (per_layer + attn) + 2 * c.d_model * c.vocab_size
    return {"dense": total, "active": total}
