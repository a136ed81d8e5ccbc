//! Assembling a forged model: metadata keys and tensors in the layout bitnet.cpp's llama.cpp
//! loader expects for arch `bitnet` (`LLM_ARCH_BITNET` in the vendored `src/llama.cpp`: the
//! tensor-name table, `llm_load_hparams`, and the tensor creation in `llm_load_tensors`).
//!
//! Every weight is a pure function of (seed, tensor name), independent of the storage type,
//! and chosen so that every storage type represents it *exactly*: projection scales and
//! embeddings are F16-representable, so `tiny-f32`, `tiny-f16`, `tiny-i2s`, `tiny-tq1` and
//! `tiny-tq2` with the same seed hold the same model and differ only in how kernels compute.

use std::sync::Arc;

use half::f16;

use super::pack;
use super::presets::{Preset, VocabKind};
use super::rng::Stream;
use super::vocab::{self, Vocab};
use super::{ForgeError, FORGE_VERSION};
use crate::gguf::{GgmlType, GgufArray, GgufWriter};

/// What a tensor holds, which decides how it is generated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorRole {
    /// `token_embd.weight`, also the tied output head; or an untied `output.weight`
    /// (`Preset::untied_output`), generated alike from its own name.
    Embedding,
    /// An RMSNorm gamma; the value is the centre its entries scatter around (±10 %).
    Norm(NormCentre),
    /// One of the seven ternary projections.
    Projection,
    /// A projection's optional per-tensor `.scale` (`Preset::scales`): one F32 value.
    Scale,
}

/// Centre of a norm's gamma entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormCentre {
    /// Around 1.
    One,
    /// Around 0.015 (2B-4T's attn_norm).
    AttnSmall,
    /// Around 1.3 (2B-4T's ffn_norm).
    FfnLarge,
    /// Around 8: large attention scores (`Preset::hot_attention`).
    AttnHot,
}

impl NormCentre {
    fn value(self) -> f32 {
        match self {
            NormCentre::One => 1.0,
            NormCentre::AttnSmall => 0.015,
            NormCentre::FfnLarge => 1.3,
            NormCentre::AttnHot => 8.0,
        }
    }
}

/// One tensor of a forged model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorPlan {
    /// GGUF name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// ggml dims, ne0 (input / row length) first: a projection from n_in to n_out is
    /// `[n_in, n_out]`, as `create_tensor(.., {n_embd, n_embd_gqa})` declares attn_k.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    pub role: TensorRole,
}

impl Preset {
    /// The tensors of this preset in file order: token_embd, then per layer in stage order
    /// (attn_norm, attn_q, attn_k, attn_v, attn_output, attn_sub_norm, ffn_norm, ffn_gate,
    /// ffn_up, ffn_down, ffn_sub_norm), then output_norm. No `output.weight` (the head is tied
    /// to token_embd) and none of the optional `*.scale` tensors, unless the preset asks:
    /// `scales` puts `blk.N.<projection>.scale` after each projection, `untied_output` puts
    /// `output.weight` last.
    pub fn tensor_plan(&self) -> Vec<TensorPlan> {
        let e = u64::from(self.n_embd);
        let kv = u64::from(self.n_embd_kv());
        let ff = u64::from(self.n_ff);
        let proj = self.weights.ggml_type();
        let t = |name: String, dims: Vec<u64>, ty, role| TensorPlan {
            name,
            dims,
            ty,
            role,
        };
        let norm = |name: String, n: u64, c| t(name, vec![n], GgmlType::F32, TensorRole::Norm(c));
        let (attn_c, ffn_c) = if self.small_gamma {
            (NormCentre::AttnSmall, NormCentre::FfnLarge)
        } else if self.hot_attention {
            (NormCentre::AttnHot, NormCentre::One)
        } else {
            (NormCentre::One, NormCentre::One)
        };
        let mut out = vec![t(
            "token_embd.weight".into(),
            vec![e, u64::from(self.n_vocab())],
            self.weights.embedding_type(),
            TensorRole::Embedding,
        )];
        for i in 0..self.n_layer {
            let p = |s: &str| format!("blk.{i}.{s}.weight");
            let scales = self.scales;
            let w = |out: &mut Vec<TensorPlan>, s: &str, n_in, n_out| {
                out.push(t(p(s), vec![n_in, n_out], proj, TensorRole::Projection));
                if scales {
                    let name = format!("blk.{i}.{s}.scale");
                    out.push(t(name, vec![1], GgmlType::F32, TensorRole::Scale));
                }
            };
            out.push(norm(p("attn_norm"), e, attn_c));
            w(&mut out, "attn_q", e, e);
            w(&mut out, "attn_k", e, kv);
            w(&mut out, "attn_v", e, kv);
            w(&mut out, "attn_output", e, e);
            out.push(norm(p("attn_sub_norm"), e, NormCentre::One));
            out.push(norm(p("ffn_norm"), e, ffn_c));
            w(&mut out, "ffn_gate", e, ff);
            w(&mut out, "ffn_up", e, ff);
            w(&mut out, "ffn_down", ff, e);
            out.push(norm(p("ffn_sub_norm"), ff, NormCentre::One));
        }
        out.push(norm("output_norm.weight".into(), e, NormCentre::One));
        if self.untied_output {
            out.push(t(
                "output.weight".into(),
                vec![e, u64::from(self.n_vocab())],
                self.weights.embedding_type(),
                TensorRole::Embedding,
            ));
        }
        out
    }
}

/// Standard deviation of embedding entries: 2/sqrt(n_embd), so the tied head's logits have a
/// standard deviation of about 2 over the vocabulary (peaked enough for a stable greedy
/// argmax, spread enough that the top token moves with position and prompt).
fn embedding_std(p: &Preset) -> f32 {
    2.0 / (p.n_embd as f32).sqrt()
}

/// Per-tensor scale of a projection: sqrt(3 / (2·fan_in)) keeps unit-RMS inputs at unit RMS
/// (2/3 of the ternary weights are non-zero), times a per-tensor factor in [0.8, 1.2) so a
/// kernel that applies the wrong tensor's scale shows. Rounded to F16 so every storage type
/// (F16 and TQ's f16 block scale included) holds it exactly.
fn projection_scale(stream: &Stream, fan_in: u64) -> f32 {
    let base = (1.5 / fan_in as f64).sqrt();
    let factor = 0.8 + 0.4 * stream.uniform();
    f16::from_f64(base * factor).to_f32()
}

/// The float values of a tensor (row-major, ne0 fastest) before packing: what any correct
/// dequantizer must reproduce exactly from the stored bytes.
pub fn tensor_values(p: &Preset, seed: u64, plan: &TensorPlan) -> Vec<f32> {
    let n = plan.dims.iter().product::<u64>() as usize;
    let stream = Stream::new(seed, &plan.name);
    match plan.role {
        TensorRole::Embedding => {
            let std = embedding_std(p);
            let mut v = stream.normal(n);
            for x in &mut v {
                *x = f16::from_f32(*x * std).to_f32();
            }
            v
        }
        TensorRole::Norm(c) => {
            let centre = c.value();
            let mut v = stream.normal(n);
            for x in &mut v {
                *x = centre * (1.0 + 0.1 * *x);
            }
            v
        }
        // In [0.75, 1.25), F16-representable; a kernel applying the wrong tensor's scale shows.
        TensorRole::Scale => vec![f16::from_f64(0.75 + 0.5 * stream.uniform()).to_f32()],
        TensorRole::Projection => {
            let scale = projection_scale(&stream, plan.dims[0]);
            stream
                .ternary(n)
                .into_iter()
                .map(|t| f32::from(t) * scale)
                .collect()
        }
    }
}

/// Packs float values as `ty`.
fn encode(ty: GgmlType, values: &[f32]) -> Vec<u8> {
    match ty {
        GgmlType::F32 => pack::pack_f32(values),
        GgmlType::F16 => pack::pack_f16(values),
        GgmlType::I2_S => pack::pack_i2s(values),
        GgmlType::TQ1_0 => pack::pack_tq1_0(values),
        GgmlType::TQ2_0 => pack::pack_tq2_0(values),
        other => unreachable!("the forge never plans {other} tensors"),
    }
}

/// A writer holding the whole model, tensors generated lazily while it writes.
pub(crate) fn build(preset: &Preset, seed: u64) -> Result<GgufWriter<'_>, ForgeError> {
    // `trained-*`: vocabulary and weights from trainer/train.py's output (forge::trained).
    let trained = match preset.vocab {
        VocabKind::Trained => Some(super::trained::load(preset, seed)?),
        _ => None,
    };
    let vocab: Arc<Vocab> = match preset.vocab {
        VocabKind::ByteLevel => vocab::byte_level(),
        VocabKind::Llama3 => vocab::llama3()?,
        VocabKind::Trained => trained
            .as_ref()
            .map(|t| t.vocab.clone())
            .expect("loaded above"),
    };
    debug_assert_eq!(vocab.tokens.len(), preset.n_vocab() as usize);

    let mut w = GgufWriter::new();
    let arch = preset.arch.gguf_name();
    let k = |s: &str| format!("{arch}.{s}");

    w.add_str("general.architecture", arch)?;
    w.add_str("general.name", preset.name)?;
    w.add_u32("general.file_type", preset.weights.file_type())?;
    w.add_u32("general.quantization_version", 2)?;
    w.add_str("bitprobe.forge.preset", preset.name)?;
    w.add_kv("bitprobe.forge.seed", seed)?;
    w.add_u32("bitprobe.forge.version", FORGE_VERSION)?;
    if let Some(t) = &trained {
        t.add_metadata(&mut w)?;
    }

    // Hyperparameters, read by llm_load_hparams with exact types (u32 / f32).
    w.add_u32(&k("vocab_size"), preset.n_vocab())?;
    w.add_u32(&k("context_length"), preset.n_ctx)?;
    w.add_u32(&k("embedding_length"), preset.n_embd)?;
    w.add_u32(&k("block_count"), preset.n_layer)?;
    w.add_u32(&k("feed_forward_length"), preset.n_ff)?;
    w.add_u32(&k("attention.head_count"), preset.n_head)?;
    w.add_u32(&k("attention.head_count_kv"), preset.n_head_kv)?;
    w.add_u32(&k("rope.dimension_count"), preset.head_dim())?;
    w.add_f32(&k("rope.freq_base"), preset.rope_freq_base)?;
    w.add_f32(&k("attention.layer_norm_rms_epsilon"), preset.rms_eps)?;

    // Vocabulary, read by llm_load_vocab. `<|eot_id|>` needs no key: llama.cpp finds it by
    // its text. With pre = llama-bpe llama.cpp adds BOS by default; the explicit key makes
    // the nopre preset behave the same.
    w.add_str("tokenizer.ggml.model", "gpt2")?;
    if preset.pre_tokenizer {
        w.add_str("tokenizer.ggml.pre", "llama-bpe")?;
    }
    w.add_arr(
        "tokenizer.ggml.tokens",
        GgufArray::Str(vocab.tokens.clone()),
    )?;
    w.add_arr(
        "tokenizer.ggml.token_type",
        GgufArray::I32(vocab.token_types.clone()),
    )?;
    w.add_arr(
        "tokenizer.ggml.merges",
        GgufArray::Str(vocab.merges.clone()),
    )?;
    w.add_u32("tokenizer.ggml.bos_token_id", vocab.bos)?;
    w.add_u32("tokenizer.ggml.eos_token_id", vocab.eos)?;
    w.add_bool("tokenizer.ggml.add_bos_token", true)?;
    w.add_bool("tokenizer.ggml.add_eos_token", false)?;

    for plan in preset.tensor_plan() {
        let dims = plan.dims.clone();
        let ty = plan.ty;
        let name = plan.name.clone();
        if let Some(t) = &trained {
            let t = t.clone();
            w.add_tensor_with(&name, &dims, ty, move || {
                encode(plan.ty, t.values(&plan.name))
            })?;
            continue;
        }
        w.add_tensor_with(&name, &dims, ty, move || {
            encode(plan.ty, &tensor_values(preset, seed, &plan))
        })?;
    }
    Ok(w)
}
