#!/usr/bin/env python3
"""A compact numpy BitNet b1.58 engine served over bitprobe's wire protocol.

An example for engine authors: the whole forward pass of bitnet.cpp's BitNet graphs in about
two hundred lines of numpy, every step captured under its bitprobe stage name. Run it as a
probe (stdin/stdout carry the protocol):

    python3 adapters/python/example_engine.py                 # a correct engine
    python3 adapters/python/example_engine.py --bug silu      # with a known bug switched on
    python3 adapters/python/example_engine.py --list-bugs

The `open` request's options accept `bug = "name[,name…]"` as well.

What it computes (shared/BITNET_NOTES.md §1, bitnet.cpp `build_bitnet` is the reference):

    x = token_embd[tokens]                                          inp_embd
    per layer:  xn = RMSNorm(x)·attn_norm                           attn_norm
                q, k, v = xn·Wq, xn·Wk, xn·Wv  (ternary matmuls)    attn_q/k/v (q, k after RoPE)
                q, k = RoPE_NEOX(q, k)   (rotate halves)
                a = causal GQA softmax(q·kᵀ/√head_dim)·v            kqv_out
                an = RMSNorm(a)·attn_sub_norm                       attn_sub_norm
                x = x + an·Wo                                       attn_output, ffn_inp
                xn = RMSNorm(x)·ffn_norm                            ffn_norm
                h = act(xn·Wgate) ⊙ (xn·Wup)                        ffn_gate/up, ffn_sub_out
                x = x + (RMSNorm(h)·ffn_sub_norm)·Wdown             ffn_sub_norm, ffn_down, l_out
    logits = (RMSNorm(x)·output_norm)·token_embdᵀ (tied)            result_norm, result_output

act = SiLU for arch `bitnet`, ReLU² (relu, then square) for `bitnet-b1.58` / `bitnet-25`.

Numerics kept as bitnet.cpp has them, because they are what makes a ternary engine agree:

- I2_S matmul: each activation row (one token) is quantized to int8 on its own — m = max|x|
  (in double, at least 1e-5), s = f32(127/m), q = round-half-even(f32(x·s)) clamped to
  [-128, 127] — the integer dot Σ (code−1)·q is exact, then y = f32(dot / s) · scale.
  (bitnet.cpp's AVX2 kernel keeps 16-bit partial sums that can wrap on extreme rows; this
  engine does not imitate that.)
- TQ1_0 / TQ2_0: each activation row is quantized to Q8_K per 256-value block (iscale =
  −127/max, max the first value of largest |x|; d = 1/iscale), the weights carry one f16 d per
  256-value block; y = Σ_blocks (dy·dw) · Σ (code−1)·q.
- F16 weights (the tied head of every ternary preset, all projections of the f16 presets):
  with two or more rows the activation stays f32 (ggml hands the product to llamafile's
  tinyBLAS); a single row (a decode step, or the last-row-only prefill) is first rounded to
  f16 (ggml's vec_dot_f16 path). F32 weights: a plain f32 product.
- RMSNorm sums squares in double; scale = 1/sqrt(f32(mean) + eps) in f32.
- RoPE NEOX: theta_scale = base^(−2/n_rot) in f32, theta multiplied pair by pair in f32, the
  rotation fused as ggml's clang build does (fma(x0, cos, −x1·sin)).
- The KV cache holds f16 (llama.cpp's default cache type); q is rounded to f16 for q·kᵀ
  when there is more than one head; the softmax sums in double; a decode step rounds the
  probabilities to f16 before ·v (the prompt pass keeps them f32), as ggml's matmul paths do.

Known bugs, switched on with --bug (each one seen in a real BitNet engine, BITNET_NOTES §5):
see BUGS below for each one's effect and the first stage bitprobe should blame.

Speed: a tiny preset forward over ~10 tokens with every stage captured takes a few ms.
Memory: weights are unpacked to float32 (exact small integers for the ternary types), fine
for the tiny and small presets, not meant for a 2B model.
"""

import argparse
import os
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")   # tests run on two shared cores
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bitprobe_adapter as bp  # noqa: E402  (puts .cache/python/numpy on sys.path)
import numpy as np  # noqa: E402
from gguf_reader import GGUFError, GGUFFile, bitnet_info  # noqa: E402

F16, F32, F64 = np.float16, np.float32, np.float64

# name -> (what it does, the first stage that should fail on tiny-i2s)
BUGS = {
    "relu2": ("ReLU² on every arch (wrong for arch `bitnet`, which wants SiLU)",
              "blk.0.ffn_sub_out (bitnet presets; correct on tiny158-*)"),
    "silu": ("SiLU on every arch (wrong for `bitnet-b1.58`, which wants ReLU²)",
             "blk.0.ffn_sub_out (tiny158-* presets; correct on tiny-*)"),
    "no_sub_norm": ("skip attn_sub_norm and ffn_sub_norm (the stage then shows the "
                    "un-normed input)", "blk.0.attn_sub_norm"),
    "layernorm": ("mean-subtracting LayerNorm instead of RMSNorm everywhere",
                  "blk.0.attn_norm"),
    "rope_interleaved": ("RoPE on adjacent pairs (2i, 2i+1), GPT-J style, instead of NEOX "
                         "halves (i, i+n_rot/2)", "blk.0.attn_q (at positions ≥ 1)"),
    "i2s_bit_order": ("I2_S bytes decoded with shifts 0,2,4,6 instead of 6,4,2,0 (values "
                      "j, j+32, j+64, j+96 swapped)", "blk.0.attn_q (I2_S files only)"),
    "no_act_quant": ("ternary matmuls on float activations, no int8/Q8_K quantization",
                     "none at the default tolerances: on tiny-i2s the worst hidden NMSE is "
                     "1.7e-3 (limit 2e-2; a correct engine summing in another order reaches "
                     "1.9e-3), logits 9e-4"),
    "gqa_modulo": ("query head h reads KV head h % n_head_kv instead of h // (n_head / "
                   "n_head_kv)", "blk.0.kqv_out (models with GQA)"),
    "no_causal_mask": ("attention sees future positions", "blk.0.kqv_out (all positions but "
                                                          "the last)"),
}


class Linear:
    """One weight matrix `W` (rows × cols) and bitnet.cpp's way of computing x·Wᵀ."""

    def __init__(self, g, name, bugs, scale_name=None):
        t = g.tensor(name)
        self.name, self.kind = name, t.type_name
        self.rows, self.cols = t.shape
        self.no_act_quant = "no_act_quant" in bugs
        if self.kind == "I2_S":
            shifts = (0, 2, 4, 6) if "i2s_bit_order" in bugs else (6, 4, 2, 0)
            codes, self.scale = g.ternary(name, i2s_shifts=shifts)
            self.w = codes.astype(F32)                               # exact {-1, 0, 1}
        elif self.kind in ("TQ1_0", "TQ2_0"):
            codes, self.d = g.ternary(name)                          # d: (rows, cols/256)
            self.w = codes.astype(F32).reshape(self.rows, -1, 256)   # (rows, blocks, 256)
        elif self.kind in ("F16", "F32"):
            self.w = g.dequantize(name)
        else:
            raise GGUFError(f"{g.path}: tensor '{name}' has type {self.kind}; this engine "
                            "handles I2_S, TQ1_0, TQ2_0, F16 and F32")
        self.out_scale = None
        if scale_name and scale_name in g.tensors:                   # optional `<w>.scale`
            self.out_scale = F32(g.dequantize(scale_name).reshape(-1)[0])

    def __call__(self, x):
        """x: (n, cols) f32 -> (n, rows) f32."""
        y = getattr(self, "_" + self.kind.lower())(np.ascontiguousarray(x, dtype=F32))
        return y if self.out_scale is None else y * self.out_scale

    def _i2_s(self, x):
        if self.no_act_quant:
            return x @ (self.w * self.scale).T
        m = np.maximum(np.abs(x).max(axis=1).astype(F64), 1e-5)     # per token, in double
        s = (127.0 / m).astype(F32)                                  # act_scale, f32
        q = np.clip(np.rint(x * s[:, None]), -128, 127)              # round half to even
        dot = q @ self.w.T                                           # exact integers in f32
        return (dot / s[:, None]) * self.scale

    def _tq(self, x):
        n = x.shape[0]
        xb = x.reshape(n, -1, 256)                                   # Q8_K blocks
        if self.no_act_quant:
            return np.einsum("tbk,rbk,rb->tr", xb, self.w, self.d, dtype=F32)
        idx = np.abs(xb).argmax(axis=2)                              # first largest |x|
        mx = np.take_along_axis(xb, idx[..., None], axis=2)[..., 0]
        with np.errstate(divide="ignore", invalid="ignore"):
            iscale = np.where(mx == 0, F32(0), F32(-127.0) / mx).astype(F32)
            d = np.where(mx == 0, F32(0), F32(1.0) / iscale).astype(F32)
        q = np.minimum(np.rint(iscale[..., None] * xb), 127)         # all-zero block: q = 0
        out = np.zeros((n, self.rows), dtype=F32)
        for b in range(xb.shape[1]):                                 # one 256-value block
            isum = q[:, b, :] @ self.w[:, b, :].T                    # exact integers
            out += isum * (d[:, b, None] * self.d[None, :, b])
        return out

    _tq1_0 = _tq2_0 = _tq

    def _f16(self, x):
        if x.shape[0] == 1 or self.cols % 16:                        # ggml vec_dot_f16 path
            x = x.astype(F16).astype(F32)
        return x @ self.w.T

    def _f32(self, x):
        return x @ self.w.T


class Layer:
    def __init__(self, g, i, bugs):
        t = lambda w: f"blk.{i}.{w}.weight"                          # noqa: E731
        lin = lambda w: Linear(g, t(w), bugs, f"blk.{i}.{w}.scale")  # noqa: E731
        vec = lambda w: g.dequantize(t(w)).reshape(-1)               # noqa: E731
        self.attn_norm, self.attn_sub_norm = vec("attn_norm"), vec("attn_sub_norm")
        self.ffn_norm, self.ffn_sub_norm = vec("ffn_norm"), vec("ffn_sub_norm")
        self.wq, self.wk, self.wv, self.wo = (lin("attn_q"), lin("attn_k"), lin("attn_v"),
                                              lin("attn_output"))
        self.wgate, self.wup, self.wdown = lin("ffn_gate"), lin("ffn_up"), lin("ffn_down")


class Model:
    def __init__(self, path, n_ctx, bugs):
        g = GGUFFile(path)
        self.info = bitnet_info(g, n_ctx)
        self.bugs = bugs
        h = self.info
        self.n_head, self.n_head_kv, self.head_dim = h["n_head"], h["n_head_kv"], h["head_dim"]
        self.n_rot, self.eps, self.n_ctx = h["n_rot"], F32(h["rms_eps"]), h["n_ctx"]
        if self.n_rot % 2 or self.n_rot > self.head_dim:
            raise GGUFError(f"{path}: rope.dimension_count {self.n_rot} must be even and at "
                            f"most head_dim {self.head_dim}")
        self.theta_scale = F32(np.power(F64(F32(h["rope_freq_base"])), -2.0 / self.n_rot))
        relu2 = h["arch"] != "bitnet"
        if "relu2" in bugs:
            relu2 = True
        if "silu" in bugs:
            relu2 = False
        self.act = self.relu_sqr if relu2 else self.silu
        self.tok_embd = g.dequantize("token_embd.weight")                 # (n_vocab, n_embd)
        self.output_norm = g.dequantize("output_norm.weight").reshape(-1)
        # The head: tied token_embd, except that `bitnet-b1.58` uses output.weight if present.
        untied = h["arch"] != "bitnet" and "output.weight" in g.tensors
        head = "output.weight" if untied else "token_embd.weight"
        self.head = Linear(g, head, bugs)
        self.layers = [Layer(g, i, bugs) for i in range(h["n_layer"])]
        self.weight_types = g.weight_types()
        kv = (self.n_ctx, self.n_head_kv, self.head_dim)
        self.k_cache = [np.zeros(kv, dtype=F16) for _ in self.layers]
        self.v_cache = [np.zeros(kv, dtype=F16) for _ in self.layers]
        self.n_past = 0
        eot = g.get("tokenizer.ggml.eot_token_id")
        self.eos = [t for t in (h["eos"], eot) if t is not None]

    # -- the pieces -----------------------------------------------------------------------

    def norm(self, x, gamma):
        if "layernorm" in self.bugs:
            x = x - x.mean(axis=1, keepdims=True, dtype=F64).astype(F32)
        mean = ((x * x).sum(axis=1, dtype=F64) / x.shape[1]).astype(F32)
        return (x * (F32(1) / np.sqrt(mean + self.eps))[:, None]) * gamma

    def sub_norm(self, x, gamma):
        return x if "no_sub_norm" in self.bugs else self.norm(x, gamma)

    @staticmethod
    def silu(x):
        with np.errstate(over="ignore"):
            return x / (F32(1) + np.exp(-x))

    @staticmethod
    def relu_sqr(x):
        r = np.maximum(x, F32(0))
        return r * r

    def rope(self, x, pos0):
        """x: (n, heads, head_dim), rotated in place at positions pos0.."""
        n, half = x.shape[0], self.n_rot // 2
        theta = np.arange(pos0, pos0 + n, dtype=F32)
        cos, sin = np.empty((n, half), F32), np.empty((n, half), F32)
        for i in range(half):                       # theta *= theta_scale, in f32, per pair
            cos[:, i], sin[:, i] = np.cos(theta.astype(F64)), np.sin(theta.astype(F64))
            theta = theta * self.theta_scale
        if "rope_interleaved" in self.bugs:
            i0, i1 = np.arange(0, self.n_rot, 2), np.arange(1, self.n_rot, 2)
        else:
            i0, i1 = np.arange(half), np.arange(half, self.n_rot)
        c, s = cos[:, None, :], sin[:, None, :]
        x0, x1 = x[..., i0], x[..., i1]
        # fma(x0, cos, -(x1·sin)) and fma(x0, sin, x1·cos): the f64 product x0·cos is exact.
        x[..., i0] = (x0.astype(F64) * c - (x1 * s)).astype(F32)
        x[..., i1] = (x0.astype(F64) * s + (x1 * c)).astype(F32)
        return x

    def attention(self, q, layer, pos0):
        """q: (n, n_head, head_dim) at positions pos0.. -> (n, n_head·head_dim)."""
        n, H, Hkv, D = q.shape[0], self.n_head, self.n_head_kv, self.head_dim
        used = pos0 + n
        n_kv = min(self.n_ctx, max(32, -(-used // 32) * 32))        # llama.cpp's padded row
        k = self.k_cache[layer][:used].astype(F32)                   # (used, Hkv, D)
        v = self.v_cache[layer][:used].astype(F32)
        if not (H == 1 and n >= 2 and D % 16 == 0):
            q = q.astype(F16).astype(F32)                            # vec_dot_f16 path
        G = H // Hkv
        if "gqa_modulo" in self.bugs:
            kv_of = np.arange(H) % Hkv
        else:
            kv_of = np.arange(H) // G
        kh, vh = k[:, kv_of, :].transpose(1, 2, 0), v[:, kv_of, :].transpose(1, 0, 2)
        scores = np.matmul(q.transpose(1, 0, 2), kh)                 # (H, n, used)
        scores = scores * F32(1.0 / np.sqrt(F32(D)))
        if "no_causal_mask" not in self.bugs:
            future = np.arange(used)[None, :] > (pos0 + np.arange(n))[:, None]
            scores = np.where(future[None], F32(-np.inf), scores)
        e = np.exp(scores - scores.max(axis=2, keepdims=True))
        p = e * (1.0 / e.sum(axis=2, dtype=F64, keepdims=True)).astype(F32)
        if not (n >= 2 and n_kv % 16 == 0):
            p = p.astype(F16).astype(F32)                            # decode: vec_dot_f16
        out = np.matmul(p, vh)                                       # (H, n, D)
        return np.ascontiguousarray(out.transpose(1, 0, 2)).reshape(n, H * D)

    # -- the pass ---------------------------------------------------------------------------

    def run(self, tokens, pos0, cap, last_only=False):
        """Tokens at positions pos0.. through the model and the KV cache; returns logits rows
        (all, or the last only), capturing stages through `cap`."""
        n, H, Hkv, D = len(tokens), self.n_head, self.n_head_kv, self.head_dim
        if pos0 + n > self.n_ctx:
            raise bp.InvalidRequest(f"{n} tokens from position {pos0} exceed the context "
                                    f"of {self.n_ctx}")
        x = self.tok_embd[np.asarray(tokens)]
        cap.put("inp_embd", None, x)
        for l, L in enumerate(self.layers):
            xn = self.norm(x, L.attn_norm)
            cap.put("attn_norm", l, xn)
            q = self.rope(L.wq(xn).reshape(n, H, D), pos0)
            k = self.rope(L.wk(xn).reshape(n, Hkv, D), pos0)
            v = L.wv(xn)
            cap.put("attn_q", l, q)
            cap.put("attn_k", l, k)
            cap.put("attn_v", l, v)
            self.k_cache[l][pos0:pos0 + n] = k                       # stored as f16
            self.v_cache[l][pos0:pos0 + n] = v.reshape(n, Hkv, D)
            a = self.attention(q, l, pos0)
            cap.put("kqv_out", l, a)
            an = self.sub_norm(a, L.attn_sub_norm)
            cap.put("attn_sub_norm", l, an)
            o = L.wo(an)
            cap.put("attn_output", l, o)
            x = x + o
            cap.put("ffn_inp", l, x)
            xn = self.norm(x, L.ffn_norm)
            cap.put("ffn_norm", l, xn)
            gate, up = L.wgate(xn), L.wup(xn)
            cap.put("ffn_gate", l, gate)
            cap.put("ffn_up", l, up)
            h = self.act(gate) * up
            cap.put("ffn_sub_out", l, h)
            hn = self.sub_norm(h, L.ffn_sub_norm)
            cap.put("ffn_sub_norm", l, hn)
            o = L.wdown(hn)
            cap.put("ffn_down", l, o)
            x = x + o
            cap.put("l_out", l, x)
        xn = self.norm(x, self.output_norm)
        cap.put("result_norm", None, xn)
        rows = xn[-1:] if last_only else xn
        logits = self.head(rows)
        cap.put("result_output", None, logits, pos0=pos0 + n - rows.shape[0])
        self.n_past = pos0 + n
        return logits


class ExampleEngine(bp.Engine):
    """The numpy BitNet as a bitprobe probe: forward, and generate through a KV cache."""

    implementation = "bitprobe example numpy engine 0.1"

    def __init__(self, bugs=()):
        self.bugs = set(bugs)
        self.model = None

    def open(self, req):
        bugs = set(self.bugs)
        for key, value in req.options.items():
            if key != "bug":
                raise bp.InvalidRequest(f"example engine: unknown option '{key}' (known: bug)")
            bugs |= {b for b in value.split(",") if b}
        unknown = sorted(bugs - set(BUGS))
        if unknown:
            raise bp.InvalidRequest(f"example engine: unknown bug(s) {unknown} (known: "
                                    f"{', '.join(sorted(BUGS))})")
        try:
            self.model = Model(req.model, req.n_ctx, bugs)
        except GGUFError as e:
            raise bp.LoadError(str(e), req.model) from None
        info = dict(self.model.info)
        info["implementation"] = self.implementation + (
            f" with bugs {','.join(sorted(bugs))}" if bugs else "")
        info["threads"] = 1
        return info

    def forward(self, tokens, capture):
        return self.model.run(tokens, 0, capture)

    def prefill(self, tokens, capture, all_logits):
        return self.model.run(tokens, 0, capture, last_only=not all_logits)

    def step(self, token, position, capture):
        if position != self.model.n_past:
            raise bp.BackendError(f"step at position {position}, but the cache holds "
                                  f"{self.model.n_past} tokens")
        return self.model.run([token], position, capture)[0]

    def eos_ids(self):
        return self.model.eos


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="A numpy BitNet b1.58 engine speaking bitprobe's wire protocol on "
                    "stdin/stdout (adapters/python/bitprobe_adapter.py).")
    ap.add_argument("--bug", action="append", default=[], metavar="NAME",
                    help="switch a known bug on (repeatable); --list-bugs shows them")
    ap.add_argument("--list-bugs", action="store_true", help="list the bugs and exit")
    args = ap.parse_args(argv)
    if args.list_bugs:
        for name, (what, where) in BUGS.items():
            print(f"{name:17} {what}\n{'':17} first failing stage: {where}")
        return 0
    bad = [b for b in args.bug if b not in BUGS]
    if bad:
        ap.error(f"unknown bug(s) {bad}; known: {', '.join(BUGS)}")
    return bp.serve(lambda: ExampleEngine(args.bug))


if __name__ == "__main__":
    sys.exit(main())
