//! Fault injection points of the forward pass.
//!
//! Every step of [`crate::forward`] that a real BitNet engine got wrong goes through a method
//! of [`Fault`]. Each method is the correct computation, written once and inlined. Without
//! the `faults` cargo feature `Fault` has one variant, `None`, and the engine contains no
//! fault code paths. With the feature, the known-bug gallery (`bitprobe gallery`) can switch
//! one fault on at a time: each method gains a `#[cfg(feature = "faults")]` branch that hands
//! the faulty computation to `gallery` (`faults/gallery.rs`) — the kernels in
//! [`crate::kernels`] never change.
//!
//! The faults are the bug classes of BITNET_NOTES §5, shipped by a Rust and a Zig BitNet
//! engine that produced garbage for months while bitnet.cpp answered "Paris".

use crate::kernels::act::{relu_sqr, silu};
use crate::kernels::attention::{attention, AttnShape};
use crate::kernels::elementwise::{rms_norm_rows, store_f16};
use crate::kernels::matmul::{matmul, Scratch, WeightView};
use crate::kernels::rope::rope_neox;
use crate::model::{Arch, Model};
use half::f16;
use probe::Stage;

/// One engine fault of the known-bug gallery, or `None`. "§5" is BITNET_NOTES §5: the bug
/// classes a Rust and a Zig BitNet engine shipped (the notes do not say which engine shipped
/// which); "issue 6" marks faults that list adds as plausible neighbours of those.
///
/// Without the `faults` feature only `None` exists and every method below is the correct
/// computation, written once: the `#[cfg(feature = "faults")]` branches are the only fault
/// code, and they are compiled out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fault {
    #[default]
    None,
    /// I2_S decoded in blocks of 256 values / 64 bytes instead of 128 / 32 (§5: wrong block size).
    #[cfg(feature = "faults")]
    I2sBlock256,
    /// I2_S values read at shifts 0, 2, 4, 6 instead of 6, 4, 2, 0 (§5: wrong bit order).
    #[cfg(feature = "faults")]
    I2sBitOrder,
    /// I2_S codes 0..3 mapped to {−2, −1, +1, +2} instead of {−1, 0, +1} (§5: wrong code map).
    #[cfg(feature = "faults")]
    I2sCodeMap,
    /// The I2_S tensor scale never applied (§5: scale ignored).
    #[cfg(feature = "faults")]
    I2sScaleIgnored,
    /// The I2_S tensor scale divided by instead of multiplied (issue 6).
    #[cfg(feature = "faults")]
    I2sScaleInverted,
    /// SiLU where arch `bitnet-b1.58` wants ReLU² (§5).
    #[cfg(feature = "faults")]
    SiluForRelu2,
    /// ReLU² where arch `bitnet` wants SiLU (§5, the same confusion the other way round).
    #[cfg(feature = "faults")]
    Relu2ForSilu,
    /// `attn_sub_norm` never applied (§5: sub-norms never applied).
    #[cfg(feature = "faults")]
    AttnSubNormSkipped,
    /// `ffn_sub_norm` never applied (§5: sub-norms never applied).
    #[cfg(feature = "faults")]
    FfnSubNormSkipped,
    /// Every RMSNorm replaced by mean-subtracting LayerNorm (§5).
    #[cfg(feature = "faults")]
    Layernorm,
    /// RMSNorm eps 1e-6 instead of the file's `layer_norm_rms_epsilon` (issue 6).
    #[cfg(feature = "faults")]
    RmsEps1e6,
    /// RoPE on pairs (2i, 2i+1) instead of NEOX halves (i, i + n_rot/2) (§5: pair layout swapped).
    #[cfg(feature = "faults")]
    RopeInterleaved,
    /// RoPE base 10000 whatever the file's `rope.freq_base` says (issue 6).
    #[cfg(feature = "faults")]
    RopeBase10000,
    /// Query head h reads KV head h % n_head_kv instead of h / (n_head / n_head_kv) (§5: GQA heads mapped wrongly).
    #[cfg(feature = "faults")]
    GqaSequential,
    /// BOS added twice: once by a template, once by the tokenizer (§5).
    #[cfg(feature = "faults")]
    DoubleBos,
    /// I2_S matmul on f32 activations: no int8 activation quantization (§5: activations never quantized).
    #[cfg(feature = "faults")]
    NoActQuant,
    /// Attention softmax without subtracting the row max: exp overflows on large scores (issue 6).
    #[cfg(feature = "faults")]
    SoftmaxNoMax,
    /// Causal mask off by one: each position also sees the next one (§5: the C++ reference
    /// itself was once run with causal attention switched off; this is the subtle cousin).
    #[cfg(feature = "faults")]
    CausalOffByOne,
    /// From the second decode step on, K/V written one slot early, over the previous token (issue 6).
    #[cfg(feature = "faults")]
    KvWrongPosition,
    /// `token_embd` read transposed: element (t, j) taken from j·n_vocab + t (issue 6).
    #[cfg(feature = "faults")]
    EmbdTransposed,
    /// One 128-value I2_S block per matrix (row 0, block 0) decoded with its signs flipped:
    /// a block-decode error whose NMSE at its origin is under the I2_S limit (issue 18).
    #[cfg(feature = "faults")]
    I2sBlockNegated,
    /// `ffn_norm` multiplies by the layer's `attn_norm` gamma (issue 18: a norm using the
    /// wrong gamma, under the limit where it starts).
    #[cfg(feature = "faults")]
    NormWrongGamma,
    /// K/V rounded toward zero when stored as F16 instead of to nearest even: an
    /// f16-rounding-level error that stays inside every tolerance (issue 18; only
    /// bit-exactness catches it).
    #[cfg(feature = "faults")]
    KvTruncated,
    /// RMSNorm's sum of squares accumulated in f32 instead of ggml's double (issue 18;
    /// exactness-only).
    #[cfg(feature = "faults")]
    RmsSumF32,
    /// SiLU evaluated in f64 and rounded, instead of ggml's f32 `expf` path (issue 18;
    /// exactness-only).
    #[cfg(feature = "faults")]
    SiluF64,
}

#[cfg(feature = "faults")]
mod gallery;

#[cfg(feature = "faults")]
impl Fault {
    /// Every fault, in the order of [`Fault::NAMES`].
    pub const ALL: [Fault; 25] = [
        Fault::I2sBlock256,
        Fault::I2sBitOrder,
        Fault::I2sCodeMap,
        Fault::I2sScaleIgnored,
        Fault::I2sScaleInverted,
        Fault::SiluForRelu2,
        Fault::Relu2ForSilu,
        Fault::AttnSubNormSkipped,
        Fault::FfnSubNormSkipped,
        Fault::Layernorm,
        Fault::RmsEps1e6,
        Fault::RopeInterleaved,
        Fault::RopeBase10000,
        Fault::GqaSequential,
        Fault::DoubleBos,
        Fault::NoActQuant,
        Fault::SoftmaxNoMax,
        Fault::CausalOffByOne,
        Fault::KvWrongPosition,
        Fault::EmbdTransposed,
        Fault::I2sBlockNegated,
        Fault::NormWrongGamma,
        Fault::KvTruncated,
        Fault::RmsSumF32,
        Fault::SiluF64,
    ];

    /// Names of the faults this build can inject (`from_name` also takes them kebab-cased).
    pub const NAMES: &'static [&'static str] = &[
        "i2s_block_256",
        "i2s_bit_order",
        "i2s_code_map",
        "i2s_scale_ignored",
        "i2s_scale_inverted",
        "silu_for_relu2",
        "relu2_for_silu",
        "attn_sub_norm_skipped",
        "ffn_sub_norm_skipped",
        "layernorm",
        "rms_eps_1e6",
        "rope_interleaved",
        "rope_base_10000",
        "gqa_sequential",
        "double_bos",
        "no_act_quant",
        "softmax_no_max",
        "causal_off_by_one",
        "kv_wrong_position",
        "embd_transposed",
        "i2s_block_negated",
        "norm_wrong_gamma",
        "kv_truncated",
        "rms_sum_f32",
        "silu_f64",
    ];
}

#[cfg(not(feature = "faults"))]
impl Fault {
    /// Every fault (none without the `faults` feature).
    pub const ALL: [Fault; 0] = [];
    /// Names of the faults this build can inject (none without the `faults` feature).
    pub const NAMES: &'static [&'static str] = &[];
}

impl Fault {
    /// The snake_case name (`none` for [`Fault::None`]).
    pub fn name(self) -> &'static str {
        match Fault::ALL.iter().position(|&f| f == self) {
            Some(i) => Fault::NAMES[i],
            None => "none",
        }
    }

    pub fn from_name(name: &str) -> Result<Fault, String> {
        let n = name.trim().to_ascii_lowercase().replace('-', "_");
        if n == "none" {
            return Ok(Fault::None);
        }
        match Fault::NAMES.iter().position(|&k| k == n) {
            Some(i) => Ok(Fault::ALL[i]),
            None if Fault::NAMES.is_empty() => Err(format!(
                "fault '{name}': this build has no fault injection (rebuild with --features faults)"
            )),
            None => Err(format!(
                "unknown fault '{name}' (known: {})",
                Fault::NAMES.join(", ")
            )),
        }
    }

    /// Whether BOS is added twice (a tokenizer-level fault).
    #[inline(always)]
    pub fn double_bos(self) -> bool {
        #[cfg(feature = "faults")]
        if self == Fault::DoubleBos {
            return true;
        }
        false
    }

    #[inline(always)]
    pub fn rms_eps(self, eps: f32) -> f32 {
        #[cfg(feature = "faults")]
        if self == Fault::RmsEps1e6 {
            return 1e-6;
        }
        eps
    }

    /// The embedding rows are gathered by the caller; a fault may overwrite them.
    #[inline(always)]
    pub fn embed(self, _m: &Model, _tokens: &[u32], _x: &mut [f32]) {
        #[cfg(feature = "faults")]
        if self == Fault::EmbdTransposed {
            gallery::embed_transposed(_m, _tokens, _x)
        }
    }

    #[inline(always)]
    pub fn norm(self, x: &[f32], gamma: &[f32], eps: f32, out: &mut [f32], width: usize) {
        #[cfg(feature = "faults")]
        match self {
            Fault::Layernorm => return gallery::layer_norm_rows(x, gamma, eps, out, width),
            Fault::RmsSumF32 => return gallery::rms_norm_f32_rows(x, gamma, eps, out, width),
            _ => {}
        }
        rms_norm_rows(x, gamma, eps, out, width)
    }

    /// The gamma `ffn_norm` multiplies by: the layer's own.
    #[inline(always)]
    pub fn ffn_norm_gamma<'a>(self, ffn_norm: &'a [f32], _attn_norm: &'a [f32]) -> &'a [f32] {
        #[cfg(feature = "faults")]
        if self == Fault::NormWrongGamma {
            return _attn_norm;
        }
        ffn_norm
    }

    /// K or V rows into the F16 cache.
    #[inline(always)]
    pub fn store_kv(self, src: &[f32], dst: &mut [f16]) {
        #[cfg(feature = "faults")]
        if self == Fault::KvTruncated {
            return gallery::store_f16_truncated(src, dst);
        }
        store_f16(src, dst)
    }

    #[inline(always)]
    pub fn sub_norm(
        self,
        _stage: Stage,
        x: &[f32],
        gamma: &[f32],
        eps: f32,
        out: &mut [f32],
        width: usize,
    ) {
        #[cfg(feature = "faults")]
        match (self, _stage) {
            (Fault::AttnSubNormSkipped, Stage::AttnSubNorm)
            | (Fault::FfnSubNormSkipped, Stage::FfnSubNorm) => return out.copy_from_slice(x),
            (Fault::Layernorm, _) => return gallery::layer_norm_rows(x, gamma, eps, out, width),
            (Fault::RmsSumF32, _) => return gallery::rms_norm_f32_rows(x, gamma, eps, out, width),
            _ => {}
        }
        rms_norm_rows(x, gamma, eps, out, width)
    }

    #[inline(always)]
    pub fn matmul(self, w: &WeightView, x: &[f32], out: &mut [f32], mm: &mut Scratch) {
        #[cfg(feature = "faults")]
        if matches!(
            self,
            Fault::I2sBlock256
                | Fault::I2sBitOrder
                | Fault::I2sCodeMap
                | Fault::I2sScaleIgnored
                | Fault::I2sScaleInverted
                | Fault::NoActQuant
                | Fault::I2sBlockNegated
        ) && matches!(w, WeightView::I2S { .. })
        {
            return gallery::matmul_i2s(self, w, x, out);
        }
        // Shapes and block multiples were validated when the model was loaded.
        matmul(w, x, out, mm).expect("matmul shapes are validated at load")
    }

    #[inline(always)]
    pub fn rope(self, x: &mut [f32], head_dim: usize, pos: u32, n_rot: usize, base: f32) {
        #[cfg(feature = "faults")]
        match self {
            Fault::RopeInterleaved => {
                return gallery::rope_interleaved(x, head_dim, pos, n_rot, base)
            }
            Fault::RopeBase10000 => return rope_neox(x, head_dim, pos as i32, n_rot, 10_000.0),
            _ => {}
        }
        rope_neox(x, head_dim, pos as i32, n_rot, base)
    }

    /// The KV-cache slot of the token at `pos`; `n_prefill` is the size of the session's
    /// first batch (the prompt), so a fault can tell decode steps apart (`KvWrongPosition`
    /// writes decode step k ≥ 2, position `n_prefill + k − 1`, one slot early).
    #[inline(always)]
    pub fn kv_position(self, pos: usize, _n_prefill: usize) -> usize {
        #[cfg(feature = "faults")]
        if self == Fault::KvWrongPosition && pos > _n_prefill {
            return pos - 1;
        }
        pos
    }

    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub fn attention(
        self,
        q: &[f32],
        k: &[f16],
        v: &[f16],
        n_past: usize,
        shape: AttnShape,
        n_kv: usize,
        out: &mut [f32],
    ) {
        #[cfg(feature = "faults")]
        if matches!(
            self,
            Fault::GqaSequential | Fault::CausalOffByOne | Fault::SoftmaxNoMax
        ) {
            return gallery::attention(self, q, k, v, n_past, shape, n_kv, out);
        }
        attention(q, k, v, n_past, shape, n_kv, out, None)
            .expect("attention shapes follow the model")
    }

    #[inline(always)]
    pub fn act(self, arch: Arch, gate: &[f32], out: &mut [f32]) {
        #[cfg(feature = "faults")]
        match (self, arch) {
            (Fault::SiluForRelu2, Arch::Bitnet158) => return silu(gate, out),
            (Fault::Relu2ForSilu, Arch::Bitnet) => return relu_sqr(gate, out),
            (Fault::SiluF64, Arch::Bitnet) => return gallery::silu_f64(gate, out),
            _ => {}
        }
        match arch {
            Arch::Bitnet => silu(gate, out),
            Arch::Bitnet158 => relu_sqr(gate, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Fault;

    /// Without the feature there is nothing to inject: the engine has no fault code paths.
    #[cfg(not(feature = "faults"))]
    #[test]
    fn without_the_feature_there_are_no_faults() {
        assert!(Fault::NAMES.is_empty());
        assert_eq!(Fault::from_name("none"), Ok(Fault::None));
        let e = Fault::from_name("i2s_block_256").unwrap_err();
        assert!(e.contains("--features faults"), "{e}");
    }

    #[cfg(feature = "faults")]
    #[test]
    fn every_fault_has_one_name_both_ways() {
        assert_eq!(Fault::ALL.len(), Fault::NAMES.len());
        for (f, n) in Fault::ALL.iter().zip(Fault::NAMES) {
            assert_eq!(f.name(), *n);
            assert_eq!(Fault::from_name(n), Ok(*f));
            assert_eq!(Fault::from_name(&n.replace('_', "-")), Ok(*f));
        }
        assert_eq!(Fault::from_name("none"), Ok(Fault::None));
        assert!(Fault::from_name("i2s_block_512")
            .unwrap_err()
            .contains("i2s_block_256"));
    }
}
