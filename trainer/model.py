"""BitNet b1.58 in JAX: exactly the graph bitnet.cpp evaluates for arch `bitnet-b1.58`
(shared/BITNET_NOTES.md §1, engine/src/forward.rs), with quantization-aware training.

Per layer, in bitnet.cpp's order:
    h = RMSNorm(x)·attn_norm
    q, k, v = BitLinear(h)            ternary weights, int8 per-token activations
    q, k = RoPE_NEOX(q), RoPE_NEOX(k) (rotate halves of each head, base rope_freq_base)
    a = causal GQA softmax(q·kᵀ/sqrt(head_dim))·v   (query head h reads KV head h // (n_head/n_head_kv))
    x = x + BitLinear_o(RMSNorm(a)·attn_sub_norm)
    h = RMSNorm(x)·ffn_norm
    m = relu(BitLinear_gate(h))² ⊙ BitLinear_up(h)
    x = x + BitLinear_down(RMSNorm(m)·ffn_sub_norm)
logits = (RMSNorm(x)·output_norm) · token_embdᵀ          (tied head, no int8 quantization)

BitLinear (BitNet b1.58 paper, and what I2_S computes at inference):
- weights: γ = mean|W| over the whole tensor; W_q = round_clip(W/γ, −1, 1)·γ16, where γ16 is
  γ rounded to f16 so that every GGUF weight type (the TQ block scale is an f16) holds the
  same number;
- activations, per token (row): m = max(max|x|, 1e-5), s = 127/m,
  x_q = clamp(round_half_even(x·s), −128, 127)/s  (= quantize_row_i8_s);
- y = x_q · W_q. Gradients pass both roundings straight through (STE).

token_embd is kept f16-representable the same way (it is stored as F16 in every weight type
but f32). RMSNorm: y = x / sqrt(mean(x²) + eps) · gamma (no mean subtraction).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np


@dataclass(frozen=True)
class Shape:
    n_vocab: int
    n_embd: int = 256
    n_layer: int = 2
    n_head: int = 8
    n_head_kv: int = 2
    n_ff: int = 512
    rope_freq_base: float = 500000.0
    rms_eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def n_embd_kv(self) -> int:
        return self.head_dim * self.n_head_kv


PROJECTIONS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
NORMS = ("attn_norm", "attn_sub_norm", "ffn_norm", "ffn_sub_norm")


def _ste(x, q):
    return x + jax.lax.stop_gradient(q - x)


def f16_round(x):
    return x.astype(jnp.float16).astype(jnp.float32)


def ternary(w):
    """(codes in {-1, 0, 1}, γ16): the absmean quantization of one tensor."""
    g = jnp.mean(jnp.abs(w))
    codes = jnp.clip(jnp.round(w / (g + 1e-8)), -1.0, 1.0)
    return codes, f16_round(g)


def quant_weight(w):
    codes, g16 = ternary(w)
    return _ste(w, codes * g16)


def quant_act(x):
    m = jnp.maximum(jnp.max(jnp.abs(x), axis=-1, keepdims=True), 1e-5)
    s = 127.0 / m
    return _ste(x, jnp.clip(jnp.round(x * s), -128.0, 127.0) / s)


def rms_norm(x, g, eps):
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps) * g


def bitlinear(x, w):
    return quant_act(x) @ quant_weight(w)


def rope_neox(x, pos, base):
    """x: [B, T, heads, head_dim]; rotates (i, i + head_dim/2) pairs by pos·base^(−2i/head_dim)."""
    hd = x.shape[-1]
    half = hd // 2
    inv = base ** (-jnp.arange(half, dtype=jnp.float32) * 2.0 / hd)
    ang = pos[:, None] * inv[None, :]
    c = jnp.cos(ang)[None, :, None, :]
    s = jnp.sin(ang)[None, :, None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)


def forward(p, tok, shp: Shape):
    """Logits [B, T, n_vocab] for token ids [B, T] at positions 0..T-1."""
    emb = _ste(p["token_embd"], f16_round(p["token_embd"]))
    x = emb[tok]
    b, t = tok.shape
    hd, nh, nkv = shp.head_dim, shp.n_head, shp.n_head_kv
    pos = jnp.arange(t, dtype=jnp.float32)
    causal = jnp.tril(jnp.ones((t, t), dtype=bool))
    eps = shp.rms_eps
    for l in p["layers"]:
        h = rms_norm(x, l["attn_norm"], eps)
        q = bitlinear(h, l["attn_q"]).reshape(b, t, nh, hd)
        k = bitlinear(h, l["attn_k"]).reshape(b, t, nkv, hd)
        v = bitlinear(h, l["attn_v"]).reshape(b, t, nkv, hd)
        q = rope_neox(q, pos, shp.rope_freq_base)
        k = rope_neox(k, pos, shp.rope_freq_base)
        k = jnp.repeat(k, nh // nkv, axis=2)
        v = jnp.repeat(v, nh // nkv, axis=2)
        s = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.float32(np.sqrt(hd))
        s = jnp.where(causal, s, -jnp.inf)
        a = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(s, axis=-1), v).reshape(b, t, nh * hd)
        x = x + bitlinear(rms_norm(a, l["attn_sub_norm"], eps), l["attn_output"])
        h = rms_norm(x, l["ffn_norm"], eps)
        m = jnp.square(jax.nn.relu(bitlinear(h, l["ffn_gate"]))) * bitlinear(h, l["ffn_up"])
        x = x + bitlinear(rms_norm(m, l["ffn_sub_norm"], eps), l["ffn_down"])
    return rms_norm(x, p["output_norm"], eps) @ emb.T


def init(key, shp: Shape):
    """Latent weights: projections N(0, 1/fan_in), embeddings N(0, 1/n_embd), gammas 1."""
    d, kv, ff = shp.n_embd, shp.n_embd_kv, shp.n_ff
    keys = iter(jax.random.split(key, 1 + 7 * shp.n_layer))

    def normal(shape, std):
        return jax.random.normal(next(keys), shape, dtype=jnp.float32) * std

    p = {"token_embd": normal((shp.n_vocab, d), d ** -0.5), "layers": [], "output_norm": jnp.ones(d)}
    dims = {"attn_q": (d, d), "attn_k": (d, kv), "attn_v": (d, kv), "attn_output": (d, d),
            "ffn_gate": (d, ff), "ffn_up": (d, ff), "ffn_down": (ff, d)}
    for _ in range(shp.n_layer):
        l = {name: normal(dims[name], dims[name][0] ** -0.5) for name in PROJECTIONS}
        l.update(attn_norm=jnp.ones(d), attn_sub_norm=jnp.ones(d), ffn_norm=jnp.ones(d),
                 ffn_sub_norm=jnp.ones(ff))
        p["layers"].append(l)
    return p
