//! The forward pass, top to bottom in bitnet.cpp's evaluation order (`build_bitnet` in the
//! vendored `3rdparty/llama.cpp/src/llama.cpp`). Each step is one line of math; the kernels
//! live in [`crate::kernels`]. Every step hands its output to [`Tap::take`], which copies it
//! out only when the caller's [`Capture`] asks for that stage (a no-op otherwise).

use crate::faults::Fault;
use crate::kernels::attention::{ggml_n_kv, AttnShape};
use crate::kernels::elementwise::{add_assign, get_rows, scale};
use crate::kernels::matmul::Scratch as MatmulScratch;
use crate::model::Model;
use half::f16;
use probe::{Capture, Stage, StageTensor};
use rayon::prelude::*;

/// Which logits rows a pass computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Every position (what `Probe::forward` promises).
    All,
    /// Only the last position (prefill before decoding).
    Last,
}

/// KV cache and reusable buffers for one sequence.
pub struct Session {
    pub n_ctx: usize,
    /// Tokens already in the cache (the next token's position).
    pub n_past: usize,
    /// Tokens of the first batch after a reset: the prompt (decode steps come after it).
    pub n_prefill: usize,
    /// Per layer: K and V rows of `n_embd_kv` halves per position, stored in F16 as
    /// bitnet.cpp's default cache type (`type_k = type_v = GGML_TYPE_F16`).
    k_cache: Vec<Vec<f16>>,
    v_cache: Vec<Vec<f16>>,
    buf: Buffers,
    pub fault: Fault,
}

/// Activations for a batch of `n` tokens; each grows to the largest batch seen, then stays.
#[derive(Default)]
struct Buffers {
    x: Vec<f32>,      // [n, n_embd]  residual stream
    xn: Vec<f32>,     // [n, n_embd]  normed input of a sub-block
    q: Vec<f32>,      // [n, n_embd]
    k: Vec<f32>,      // [n, n_embd_kv]
    v: Vec<f32>,      // [n, n_embd_kv]
    att: Vec<f32>,    // [n, n_embd]  attention output (kqv_out)
    o: Vec<f32>,      // [n, n_embd]
    gate: Vec<f32>,   // [n, n_ff]
    up: Vec<f32>,     // [n, n_ff]
    hn: Vec<f32>,     // [n, n_ff]    sub-normed FFN hidden
    logits: Vec<f32>, // [n_out, n_vocab]
    mm: MatmulScratch,
}

fn grow(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if v.len() < len {
        v.resize(len, 0.0);
    }
    &mut v[..len]
}

/// Copies requested stage tensors out of the pass.
pub struct Tap<'c> {
    capture: &'c Capture,
    pos0: usize,
    pub out: Vec<StageTensor>,
}

impl<'c> Tap<'c> {
    pub fn new(capture: &'c Capture, pos0: usize) -> Self {
        Tap {
            capture,
            pos0,
            out: Vec::new(),
        }
    }

    /// `data` holds `n` rows of `shape.product()` values, one per token of the batch.
    #[inline]
    fn take(&mut self, stage: Stage, layer: Option<usize>, data: &[f32], shape: &[usize]) {
        let layer = layer.map(|l| l as u32);
        if !self.capture.wants_stage(stage, layer) {
            return;
        }
        let width: usize = shape.iter().product();
        for (i, row) in data.chunks_exact(width).enumerate() {
            let position = (self.pos0 + i) as u32;
            if self.capture.wants_position(position) {
                self.out.push(StageTensor {
                    stage,
                    layer,
                    position,
                    shape: shape.to_vec(),
                    data: row.to_vec(),
                });
            }
        }
    }
}

impl Session {
    pub fn new(model: &Model, n_ctx: usize) -> Session {
        let kv = model.hp.n_embd_kv() * n_ctx;
        Session {
            n_ctx,
            n_past: 0,
            n_prefill: 0,
            k_cache: (0..model.hp.n_layer).map(|_| vec![f16::ZERO; kv]).collect(),
            v_cache: (0..model.hp.n_layer).map(|_| vec![f16::ZERO; kv]).collect(),
            buf: Buffers::default(),
            fault: Fault::None,
        }
    }

    pub fn reset(&mut self) {
        self.n_past = 0;
    }

    /// Runs `tokens` at positions `n_past..n_past+n`, appending them to the KV cache.
    /// Returns the requested logits rows (`n_vocab` each).
    pub fn forward(&mut self, m: &Model, tokens: &[u32], logits: Logits, tap: &mut Tap) -> &[f32] {
        let hp = &m.hp;
        let (n, d, dkv, ff, hd) = (
            tokens.len(),
            hp.n_embd,
            hp.n_embd_kv(),
            hp.n_ff,
            hp.head_dim,
        );
        let pos0 = self.n_past;
        assert!(
            pos0 + n <= self.n_ctx,
            "context overflow is checked by the caller"
        );
        if pos0 == 0 {
            self.n_prefill = n;
        }
        let fault = self.fault;
        let b = &mut self.buf;
        let x = grow(&mut b.x, n * d);
        let xn = grow(&mut b.xn, n * d);
        let q = grow(&mut b.q, n * d);
        let k = grow(&mut b.k, n * dkv);
        let v = grow(&mut b.v, n * dkv);
        let att = grow(&mut b.att, n * d);
        let o = grow(&mut b.o, n * d);
        let gate = grow(&mut b.gate, n * ff);
        let up = grow(&mut b.up, n * ff);
        let hn = grow(&mut b.hn, n * ff);
        let mm = &mut b.mm;
        let eps = fault.rms_eps(hp.rms_eps);

        // inp_embd: x[i] = token_embd[tokens[i]]                         x: [n, n_embd]
        get_rows(m.token_embd.ty, m.bytes(&m.token_embd), d, tokens, x);
        fault.embed(m, tokens, x);
        tap.take(Stage::InpEmbd, None, x, &[d]);

        for (l, w) in m.layers.iter().enumerate() {
            let li = Some(l);
            // attn_norm: xn = RMSNorm(x) · blk.l.attn_norm
            fault.norm(x, m.gamma(&w.attn_norm), eps, xn, d);
            tap.take(Stage::AttnNorm, li, xn, &[d]);

            // q, k, v = xn · W (ternary matmuls, each activation row quantized to int8)
            fault.matmul(&m.weight(&w.attn_q), xn, q, mm);
            scale(q, w.attn_q_scale);
            fault.matmul(&m.weight(&w.attn_k), xn, k, mm);
            scale(k, w.attn_k_scale);
            fault.matmul(&m.weight(&w.attn_v), xn, v, mm);
            scale(v, w.attn_v_scale);

            // RoPE (NEOX: rotate halves) on q and k at their absolute positions
            for i in 0..n {
                let pos = (pos0 + i) as u32;
                fault.rope(
                    &mut q[i * d..(i + 1) * d],
                    hd,
                    pos,
                    hp.n_rot,
                    hp.rope_freq_base,
                );
                fault.rope(
                    &mut k[i * dkv..(i + 1) * dkv],
                    hd,
                    pos,
                    hp.n_rot,
                    hp.rope_freq_base,
                );
            }
            tap.take(Stage::AttnQ, li, q, &[hp.n_head, hd]);
            tap.take(Stage::AttnK, li, k, &[hp.n_head_kv, hd]);
            tap.take(Stage::AttnV, li, v, &[dkv]);

            // KV cache: store k, v (F16) at positions pos0..pos0+n
            let (kc, vc) = (&mut self.k_cache[l], &mut self.v_cache[l]);
            for i in 0..n {
                let at = fault.kv_position(pos0 + i, self.n_prefill);
                fault.store_kv(
                    &k[i * dkv..(i + 1) * dkv],
                    &mut kc[at * dkv..(at + 1) * dkv],
                );
                fault.store_kv(
                    &v[i * dkv..(i + 1) * dkv],
                    &mut vc[at * dkv..(at + 1) * dkv],
                );
            }

            // kqv_out: causal GQA attention, softmax(q·kᵀ / sqrt(head_dim)) · v over the cache;
            // rows of ggml's padded length n_kv (see ggml_n_kv) so sums group as ggml's do
            let shape = AttnShape {
                n_head: hp.n_head,
                n_head_kv: hp.n_head_kv,
                head_dim: hd,
            };
            fault.attention(q, kc, vc, pos0, shape, ggml_n_kv(pos0 + n, self.n_ctx), att);
            tap.take(Stage::KqvOut, li, att, &[d]);

            // attn_sub_norm: xn = RMSNorm(att) · blk.l.attn_sub_norm
            fault.sub_norm(
                Stage::AttnSubNorm,
                att,
                m.gamma(&w.attn_sub_norm),
                eps,
                xn,
                d,
            );
            tap.take(Stage::AttnSubNorm, li, xn, &[d]);

            // attn_output: o = xn · Wo
            fault.matmul(&m.weight(&w.attn_output), xn, o, mm);
            scale(o, w.attn_output_scale);
            tap.take(Stage::AttnOutput, li, o, &[d]);

            // ffn_inp: x = x + o (residual)
            add_assign(x, o);
            tap.take(Stage::FfnInp, li, x, &[d]);

            // ffn_norm: xn = RMSNorm(x) · blk.l.ffn_norm
            let gamma = fault.ffn_norm_gamma(m.gamma(&w.ffn_norm), m.gamma(&w.attn_norm));
            fault.norm(x, gamma, eps, xn, d);
            tap.take(Stage::FfnNorm, li, xn, &[d]);

            // gate, up = xn · Wgate, xn · Wup
            fault.matmul(&m.weight(&w.ffn_gate), xn, gate, mm);
            scale(gate, w.ffn_gate_scale);
            tap.take(Stage::FfnGate, li, gate, &[ff]);
            fault.matmul(&m.weight(&w.ffn_up), xn, up, mm);
            scale(up, w.ffn_up_scale);
            tap.take(Stage::FfnUp, li, up, &[ff]);

            // ffn_sub_out: gate = act(gate) ⊙ up (SiLU for bitnet, ReLU² for bitnet-b1.58),
            // token by token (elementwise: the tokens of a prompt in parallel)
            gate.par_chunks_mut(ff)
                .zip(hn.par_chunks_mut(ff))
                .zip(up.par_chunks(ff))
                .for_each(|((gate, hn), up)| {
                    fault.act(m.hp.arch, gate, hn);
                    crate::kernels::act::mul(hn, up, gate);
                });
            tap.take(Stage::FfnSubOut, li, gate, &[ff]);

            // ffn_sub_norm: hn = RMSNorm(gate) · blk.l.ffn_sub_norm
            fault.sub_norm(
                Stage::FfnSubNorm,
                gate,
                m.gamma(&w.ffn_sub_norm),
                eps,
                hn,
                ff,
            );
            tap.take(Stage::FfnSubNorm, li, hn, &[ff]);

            // ffn_down: o = hn · Wdown
            fault.matmul(&m.weight(&w.ffn_down), hn, o, mm);
            scale(o, w.ffn_down_scale);
            tap.take(Stage::FfnDown, li, o, &[d]);

            // l_out: x = x + o (residual)
            add_assign(x, o);
            tap.take(Stage::LOut, li, x, &[d]);
        }

        // result_norm: xn = RMSNorm(x) · output_norm
        fault.norm(x, m.gamma(&m.output_norm), eps, xn, d);
        tap.take(Stage::ResultNorm, None, xn, &[d]);

        // result_output: logits = xn · output (the tied token_embd unless output.weight exists);
        // F16 weights: one row goes through ggml's vec_dot_f16 (row rounded to f16), two or more
        // through tinyBLAS (f32 rows) — the matmul kernel picks as ggml does (kernels::sgemm).
        let (first, n_out) = match logits {
            Logits::All => (0, n),
            Logits::Last => (n - 1, 1),
        };
        let nv = hp.n_vocab;
        let out = grow(&mut b.logits, n_out * nv);
        fault.matmul(&m.weight(&m.output), &xn[first * d..n * d], out, mm);
        let tap_pos0 = tap.pos0;
        tap.pos0 = pos0 + first;
        tap.take(Stage::ResultOutput, None, out, &[nv]);
        tap.pos0 = tap_pos0;

        self.n_past = pos0 + n;
        &b.logits[..n_out * nv]
    }
}
