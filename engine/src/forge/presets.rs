//! The preset table: every model the forge can make, by name.

use crate::gguf::GgmlType;

/// GGUF architecture of a forged model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// `bitnet`: the graph the vendored oracle has (`build_bitnet`), FFN act = SiLU.
    Bitnet,
    /// `bitnet-b1.58`: microsoft/bitnet-b1.58-2B-4T's graph (`build_bitnet_158`), FFN act =
    /// ReLU². The oracle gets it from a patch; the metadata keys use this prefix.
    Bitnet158,
}

impl Arch {
    /// `general.architecture` value and metadata key prefix.
    pub fn gguf_name(self) -> &'static str {
        match self {
            Arch::Bitnet => "bitnet",
            Arch::Bitnet158 => "bitnet-b1.58",
        }
    }
}

/// How the seven ternary projections (attn_q/k/v/output, ffn_gate/up/down) are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightType {
    /// Ternary × scale as F32 floats; token_embd F32 too.
    F32,
    /// Ternary × scale as F16 floats.
    F16,
    /// bitnet.cpp's I2_S (type 36).
    I2S,
    /// ggml's TQ1_0 (type 34).
    TQ1,
    /// ggml's TQ2_0 (type 35).
    TQ2,
}

impl WeightType {
    /// The ggml type of the projection tensors.
    pub fn ggml_type(self) -> GgmlType {
        match self {
            WeightType::F32 => GgmlType::F32,
            WeightType::F16 => GgmlType::F16,
            WeightType::I2S => GgmlType::I2_S,
            WeightType::TQ1 => GgmlType::TQ1_0,
            WeightType::TQ2 => GgmlType::TQ2_0,
        }
    }

    /// The ggml type of `token_embd.weight`: F32 for the f32 presets, else F16 (as in the
    /// official 2B-4T file).
    pub fn embedding_type(self) -> GgmlType {
        match self {
            WeightType::F32 => GgmlType::F32,
            _ => GgmlType::F16,
        }
    }

    /// `general.file_type` (`llama_ftype` in the vendored llama.h: ALL_F32 0, MOSTLY_F16 1,
    /// MOSTLY_TQ1_0 36, MOSTLY_TQ2_0 37, MOSTLY_I2_S 40).
    pub fn file_type(self) -> u32 {
        match self {
            WeightType::F32 => 0,
            WeightType::F16 => 1,
            WeightType::TQ1 => 36,
            WeightType::TQ2 => 37,
            WeightType::I2S => 40,
        }
    }
}

/// Which vocabulary a preset carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VocabKind {
    /// 256 byte tokens + 238 trained merges + BOS/EOS = 496 tokens.
    ByteLevel,
    /// The real Llama-3 vocabulary, 128 256 tokens (needs the asset from scripts/setup.sh).
    Llama3,
    /// The trained model's BPE vocabulary (462 tokens) — and its trained weights: the
    /// `trained-*` presets take both from `trainer/train.py`'s output (see `forge::trained`).
    Trained,
}

/// A forgeable model: shape, weight storage, vocabulary.
#[derive(Clone, Debug, PartialEq)]
pub struct Preset {
    /// Name used on the command line and in cache file names.
    pub name: &'static str,
    /// One line for `bitprobe forge --list`.
    pub description: &'static str,
    pub arch: Arch,
    pub weights: WeightType,
    /// Hidden size (`embedding_length`).
    pub n_embd: u32,
    /// Layers (`block_count`).
    pub n_layer: u32,
    /// Query heads (`attention.head_count`).
    pub n_head: u32,
    /// Key/value heads (`attention.head_count_kv`).
    pub n_head_kv: u32,
    /// FFN width (`feed_forward_length`).
    pub n_ff: u32,
    /// Training context (`context_length`).
    pub n_ctx: u32,
    /// `rope.freq_base`.
    pub rope_freq_base: f32,
    /// `attention.layer_norm_rms_epsilon`.
    pub rms_eps: f32,
    pub vocab: VocabKind,
    /// Write `tokenizer.ggml.pre = llama-bpe` (the official 2B-4T file has no such key).
    pub pre_tokenizer: bool,
    /// Real-2B-4T-like norm gammas: attn_norm RMS ≈ 0.015, ffn_norm ≈ 1.3.
    pub small_gamma: bool,
    /// attn_norm gammas around 8: q and k 8× larger, attention scores ~64× (hundreds), the
    /// regime where a softmax without max subtraction overflows and small q/k errors move
    /// the attention weights (the known-bug gallery's large-activation model).
    pub hot_attention: bool,
    /// Also write an untied head `output.weight` (embedding type, values of its own). The
    /// engine and the 2024 oracle's patch use it under `bitnet-b1.58`; today's bitnet.cpp
    /// (`build_bitnet_158`) loads it and multiplies by `token_embd` anyway.
    pub untied_output: bool,
    /// Also write the optional per-tensor `blk.N.<projection>.scale` (F32, one value) for all
    /// seven projections. `build_bitnet` (both bitnet.cpp trees) applies them; today's
    /// `build_bitnet_158` creates none, so its loader refuses such a file.
    pub scales: bool,
}

impl Preset {
    /// Per-head dimension (`rope.dimension_count`).
    pub fn head_dim(&self) -> u32 {
        self.n_embd / self.n_head
    }

    /// Width of K and V (`n_embd_gqa` in llama.cpp).
    pub fn n_embd_kv(&self) -> u32 {
        self.head_dim() * self.n_head_kv
    }

    /// Vocabulary size.
    pub fn n_vocab(&self) -> u32 {
        match self.vocab {
            VocabKind::ByteLevel => (256 + super::vocab::BYTE_LEVEL_MERGES + 2) as u32,
            VocabKind::Llama3 => 128_256,
            VocabKind::Trained => super::trained::N_VOCAB,
        }
    }
}

const fn tiny(
    name: &'static str,
    description: &'static str,
    arch: Arch,
    weights: WeightType,
) -> Preset {
    Preset {
        name,
        description,
        arch,
        weights,
        n_embd: 256,
        n_layer: 2,
        n_head: 8,
        n_head_kv: 2,
        n_ff: 512,
        n_ctx: 2048,
        rope_freq_base: 500_000.0,
        rms_eps: 1e-5,
        vocab: VocabKind::ByteLevel,
        pre_tokenizer: true,
        small_gamma: false,
        hot_attention: false,
        untied_output: false,
        scales: false,
    }
}

const fn small(name: &'static str, description: &'static str, weights: WeightType) -> Preset {
    Preset {
        n_embd: 512,
        n_layer: 4,
        n_head: 8,
        n_head_kv: 2,
        n_ff: 1536,
        vocab: VocabKind::Llama3,
        ..tiny(name, description, Arch::Bitnet, weights)
    }
}

/// microsoft/bitnet-b1.58-2B-4T's shapes (BITNET_NOTES §2), under arch `bitnet` so the
/// unpatched oracle can run it for benchmarks. 2560 = 10·256 and 6912 = 27·256, so every
/// projection row is a whole number of TQ blocks and all five storage types exist.
const fn b2b4t(name: &'static str, description: &'static str, weights: WeightType) -> Preset {
    Preset {
        n_embd: 2560,
        n_layer: 30,
        n_head: 20,
        n_head_kv: 5,
        n_ff: 6912,
        n_ctx: 4096,
        vocab: VocabKind::Llama3,
        ..tiny(name, description, Arch::Bitnet, weights)
    }
}

/// The trained model (`trainer/train.py`, weights from `forge::trained`): the tiny shape under
/// arch `bitnet-b1.58`, with the trained BPE vocabulary. The forge seed is the training seed.
const fn trained(name: &'static str, description: &'static str, weights: WeightType) -> Preset {
    Preset {
        vocab: VocabKind::Trained,
        ..tiny(name, description, Arch::Bitnet158, weights)
    }
}

use Arch::{Bitnet, Bitnet158};
use WeightType::{F16, F32, I2S, TQ1, TQ2};

pub(super) static PRESETS: [Preset; 32] = [
    tiny("tiny-f32", "tiny bitnet (SiLU): hidden 256, 2 layers, 8 heads / 2 KV, FFN 512, byte-level vocab 496; projections F32, embeddings F32 (~5 MB)", Bitnet, F32),
    tiny("tiny-f16", "tiny bitnet (SiLU): hidden 256, 2 layers, 8 heads / 2 KV, FFN 512, byte-level vocab 496; projections F16, embeddings F16", Bitnet, F16),
    tiny("tiny-i2s", "tiny bitnet (SiLU): hidden 256, 2 layers, 8 heads / 2 KV, FFN 512, byte-level vocab 496; projections I2_S, embeddings F16", Bitnet, I2S),
    tiny("tiny-tq1", "tiny bitnet (SiLU): hidden 256, 2 layers, 8 heads / 2 KV, FFN 512, byte-level vocab 496; projections TQ1_0, embeddings F16", Bitnet, TQ1),
    tiny("tiny-tq2", "tiny bitnet (SiLU): hidden 256, 2 layers, 8 heads / 2 KV, FFN 512, byte-level vocab 496; projections TQ2_0, embeddings F16", Bitnet, TQ2),
    tiny("tiny158-f32", "tiny bitnet-b1.58 (ReLU²), otherwise as tiny-f32; needs the oracle's bitnet-b1.58 patch", Bitnet158, F32),
    tiny("tiny158-f16", "tiny bitnet-b1.58 (ReLU²), otherwise as tiny-f16; needs the oracle's bitnet-b1.58 patch", Bitnet158, F16),
    tiny("tiny158-i2s", "tiny bitnet-b1.58 (ReLU²), otherwise as tiny-i2s; needs the oracle's bitnet-b1.58 patch", Bitnet158, I2S),
    tiny("tiny158-tq1", "tiny bitnet-b1.58 (ReLU²), otherwise as tiny-tq1; needs the oracle's bitnet-b1.58 patch", Bitnet158, TQ1),
    tiny("tiny158-tq2", "tiny bitnet-b1.58 (ReLU²), otherwise as tiny-tq2; needs the oracle's bitnet-b1.58 patch", Bitnet158, TQ2),
    Preset {
        n_head_kv: 4,
        ..tiny("tiny-gqa2-i2s", "as tiny-i2s but GQA ratio 2: 8 heads / 4 KV heads", Bitnet, I2S)
    },
    Preset {
        small_gamma: true,
        ..tiny("tiny-smallgamma-i2s", "as tiny-i2s but with 2B-4T-like norm gammas: attn_norm RMS ~0.015, ffn_norm ~1.3", Bitnet, I2S)
    },
    Preset {
        hot_attention: true,
        ..tiny("tiny-hot-i2s", "as tiny-i2s but attn_norm gammas ~8: attention scores in the hundreds (large activations, for the known-bug gallery)", Bitnet, I2S)
    },
    small("small-llama3-f32", "small bitnet: hidden 512, 4 layers, 8 heads / 2 KV, FFN 1536, Llama-3 vocab 128256; projections F32, embeddings F32 (~320 MB)", F32),
    small("small-llama3-f16", "small bitnet: hidden 512, 4 layers, 8 heads / 2 KV, FFN 1536, Llama-3 vocab 128256; projections F16, embeddings F16", F16),
    small("small-llama3-i2s", "small bitnet: hidden 512, 4 layers, 8 heads / 2 KV, FFN 1536, Llama-3 vocab 128256; projections I2_S, embeddings F16", I2S),
    small("small-llama3-tq1", "small bitnet: hidden 512, 4 layers, 8 heads / 2 KV, FFN 1536, Llama-3 vocab 128256; projections TQ1_0, embeddings F16", TQ1),
    small("small-llama3-tq2", "small bitnet: hidden 512, 4 layers, 8 heads / 2 KV, FFN 1536, Llama-3 vocab 128256; projections TQ2_0, embeddings F16", TQ2),
    Preset {
        pre_tokenizer: false,
        ..small("small-llama3-nopre-i2s", "as small-llama3-i2s but without tokenizer.ggml.pre, like microsoft's official 2B-4T GGUF (llama.cpp falls back to its default pre-tokenizer)", I2S)
    },
    // Pins of the differences between the two bitnet.cpp references (not smoke presets:
    // each carries tensors the tiny layout has not).
    Preset {
        untied_output: true,
        ..tiny("pin158-untied-i2s", "as tiny158-i2s plus an untied output.weight head (F16, values of its own): the engine and the 2024 oracle's patch use it, today's bitnet.cpp (build_bitnet_158) multiplies by token_embd", Bitnet158, I2S)
    },
    Preset {
        scales: true,
        ..tiny("pin158-scales-i2s", "as tiny158-i2s plus blk.N.*.scale (F32) on all seven projections: the engine and the 2024 oracle's patch apply them, today's bitnet.cpp creates no *.scale for bitnet-b1.58 and refuses the file", Bitnet158, I2S)
    },
    Preset {
        scales: true,
        ..tiny("pin-scales-i2s", "as tiny-i2s plus blk.N.*.scale (F32) on all seven projections: arch bitnet, where both bitnet.cpp trees (build_bitnet) and the engine apply them", Bitnet, I2S)
    },
    b2b4t("2b4t-f32", "2B-4T shapes under arch bitnet (hidden 2560, 30 layers, 20 heads / 5 KV, FFN 6912, Llama-3 vocab, ctx 4096); projections F32 (~9.6 GB)", F32),
    b2b4t("2b4t-f16", "2B-4T shapes under arch bitnet; projections F16, embeddings F16 (~4.8 GB)", F16),
    b2b4t("2b4t-i2s", "2B-4T shapes under arch bitnet; projections I2_S, embeddings F16 (~1.18 GB, the benchmark model)", I2S),
    b2b4t("2b4t-tq1", "2B-4T shapes under arch bitnet; projections TQ1_0, embeddings F16 (~1.1 GB)", TQ1),
    b2b4t("2b4t-tq2", "2B-4T shapes under arch bitnet; projections TQ2_0, embeddings F16 (~1.2 GB)", TQ2),
    trained("trained-f32", "trained bitnet-b1.58 (ReLU²) that knows its facts (\"The capital of France is\" → \" Paris.\"): tiny shape, trained BPE vocab 462, from trainer/train.py (scripts/setup.sh trains it); projections F32, embeddings F32", F32),
    trained("trained-f16", "trained bitnet-b1.58, as trained-f32; projections F16, embeddings F16", F16),
    trained("trained-i2s", "trained bitnet-b1.58, as trained-f32; projections I2_S, embeddings F16", I2S),
    trained("trained-tq1", "trained bitnet-b1.58, as trained-f32; projections TQ1_0, embeddings F16", TQ1),
    trained("trained-tq2", "trained bitnet-b1.58, as trained-f32; projections TQ2_0, embeddings F16", TQ2),
];
