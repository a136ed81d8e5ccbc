//! A BitNet b1.58 model, built from a GGUF file in one place.
//!
//! Hyperparameters come from `<arch>.*` metadata through [`Hparams::from_gguf`], which names
//! each key and its default (and where the default comes from). Weights are views into the
//! memory-mapped file: nothing is dequantized at load time, and the one copy is of the
//! ternary matrices on CPUs with AVX-512 VNNI, rows interleaved four by four (TQ1_0's trits
//! re-packed five blocks to a byte) for the decode kernels ([`Interleaved`]).

use crate::gguf::{GgmlType, GgufFile, TensorInfo};
use crate::kernels::matmul::WeightView;
#[cfg(target_arch = "x86_64")]
use crate::kernels::Simd;
#[cfg(target_arch = "x86_64")]
use crate::quant::{i2s_vnni, tq_vnni};
use std::path::Path;

/// Errors building a model from a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] crate::gguf::GgufError),
    #[error("{path}: architecture '{arch}' is not supported (supported: bitnet, bitnet-b1.58, bitnet-25)")]
    UnknownArch { path: String, arch: String },
    #[error("{path}: tensor '{name}' is missing")]
    MissingTensor { path: String, name: String },
    #[error("{path}: tensor '{name}' has shape {found:?}, expected {expected:?}")]
    Shape {
        path: String,
        name: String,
        found: Vec<u64>,
        expected: Vec<u64>,
    },
    #[error("{path}: tensor '{name}' has type {ty}, which the engine does not support here (supported: {supported})")]
    UnsupportedType {
        path: String,
        name: String,
        ty: String,
        supported: &'static str,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// The two graphs (`../shared/BITNET_NOTES.md` §1). They differ only in the FFN activation
/// and in whether an untied `output.weight` may exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// `bitnet`: 1bitLLM bitnet_b1_58-large / -3B; act = SiLU (`build_bitnet`, LLM_FFN_SILU).
    Bitnet,
    /// `bitnet-b1.58` (also `bitnet-25`): microsoft/bitnet-b1.58-2B-4T; act = ReLU².
    Bitnet158,
}

impl Arch {
    pub fn from_name(name: &str) -> Option<Arch> {
        match name {
            "bitnet" => Some(Arch::Bitnet),
            "bitnet-b1.58" | "bitnet-25" => Some(Arch::Bitnet158),
            _ => None,
        }
    }
}

/// Hyperparameters, all from metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct Hparams {
    pub arch: Arch,
    /// The `general.architecture` string, and the prefix of every hparam key.
    pub arch_name: String,
    pub name: String,
    pub n_vocab: usize,
    pub n_ctx_train: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_ff: usize,
    /// Rotated dimensions per head (`rope.dimension_count`; default head_dim, as llama.cpp).
    pub n_rot: usize,
    pub rope_freq_base: f32,
    pub rms_eps: f32,
}

impl Hparams {
    pub fn from_gguf(f: &GgufFile, path: &str) -> Result<Hparams, ModelError> {
        let arch_name = f.get_str("general.architecture")?.to_string();
        let arch = Arch::from_name(&arch_name).ok_or_else(|| ModelError::UnknownArch {
            path: path.into(),
            arch: arch_name.clone(),
        })?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let n_embd = f.get_u32(&key("embedding_length"))? as usize;
        let n_head = f.get_u32(&key("attention.head_count"))? as usize;
        // llama.cpp: head_count_kv defaults to head_count (no GQA) when absent.
        let n_head_kv = opt(f, &key("attention.head_count_kv"), GgufFile::get_u32)?
            .map_or(n_head, |v| v as usize);
        if n_head == 0
            || n_head_kv == 0
            || !n_embd.is_multiple_of(n_head)
            || !n_head.is_multiple_of(n_head_kv)
        {
            return Err(ModelError::Invalid {
                path: path.into(),
                message: format!(
                    "inconsistent attention shape: embedding_length {n_embd}, head_count {n_head}, head_count_kv {n_head_kv} \
                     (need head_count | embedding_length and head_count_kv | head_count)"
                ),
            });
        }
        let head_dim = n_embd / n_head;
        // The vocabulary size is the token list's length (llama.cpp: n_vocab = vocab.id_to_token.size()).
        let n_vocab = match opt(f, &key("vocab_size"), GgufFile::get_u32)? {
            Some(v) => v as usize,
            None => f.get_arr("tokenizer.ggml.tokens")?.len(),
        };
        Ok(Hparams {
            arch,
            arch_name: arch_name.clone(),
            name: opt(f, "general.name", GgufFile::get_str)?
                .unwrap_or_default()
                .to_string(),
            n_vocab,
            n_ctx_train: f.get_u32(&key("context_length"))? as usize,
            n_embd,
            n_layer: f.get_u32(&key("block_count"))? as usize,
            n_head,
            n_head_kv,
            head_dim,
            n_ff: f.get_u32(&key("feed_forward_length"))? as usize,
            // llama.cpp: n_rot defaults to n_embd / n_head.
            n_rot: opt(f, &key("rope.dimension_count"), GgufFile::get_u32)?
                .map_or(head_dim, |v| v as usize),
            // llama.cpp: rope_freq_base defaults to 10000 when absent.
            rope_freq_base: opt(f, &key("rope.freq_base"), GgufFile::get_f32)?.unwrap_or(10000.0),
            rms_eps: f.get_f32(&key("attention.layer_norm_rms_epsilon"))?,
        })
    }

    pub fn n_embd_kv(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
}

/// Where a tensor's bytes are in the mapped file.
#[derive(Clone, Debug)]
pub struct Tensor {
    pub name: String,
    pub ty: GgmlType,
    /// ggml order: `dims[0]` is the row length (ne0).
    pub dims: Vec<u64>,
    range: std::ops::Range<usize>,
}

impl Tensor {
    pub fn rows(&self) -> usize {
        self.dims.iter().skip(1).product::<u64>() as usize
    }
    pub fn cols(&self) -> usize {
        self.dims[0] as usize
    }
}

/// One transformer block's tensors, named as in the GGUF file (`blk.N.*`).
#[derive(Clone, Debug)]
pub struct Layer {
    pub attn_norm: Tensor,
    pub attn_q: Tensor,
    pub attn_k: Tensor,
    pub attn_v: Tensor,
    pub attn_sub_norm: Tensor,
    pub attn_output: Tensor,
    pub ffn_norm: Tensor,
    pub ffn_gate: Tensor,
    pub ffn_up: Tensor,
    pub ffn_sub_norm: Tensor,
    pub ffn_down: Tensor,
    /// Optional per-tensor output multipliers `blk.N.<w>.scale` (bitnet.cpp `wq_scale` …).
    pub attn_q_scale: Option<f32>,
    pub attn_k_scale: Option<f32>,
    pub attn_v_scale: Option<f32>,
    pub attn_output_scale: Option<f32>,
    pub ffn_gate_scale: Option<f32>,
    pub ffn_up_scale: Option<f32>,
    pub ffn_down_scale: Option<f32>,
}

pub struct Model {
    pub file: GgufFile,
    pub path: String,
    pub hp: Hparams,
    pub token_embd: Tensor,
    pub output_norm: Tensor,
    /// The head: `output.weight` when present (bitnet-b1.58 only), else the tied `token_embd`.
    pub output: Tensor,
    pub layers: Vec<Layer>,
    /// Norm gammas converted to f32 once (they are tiny; every forward reads them).
    norms: std::collections::HashMap<String, Vec<f32>>,
    /// The ternary matrices' rows interleaved for the VNNI decode kernels, if made.
    interleaved: Option<Interleaved>,
}

/// A copy of the ternary matrices' rows interleaved four by four
/// ([`i2s_vnni::interleave4`], [`tq_vnni::interleave4`]; TQ1_0's trits re-packed five
/// blocks to a byte), which the AVX-512 VNNI decode kernels read as one stream instead of
/// four (the file's layout stays what prefill and every other path read). Made at load for
/// the types whose VNNI kernels will run (`Simd::current()` is AVX-512 and the CPU has what
/// they need) when the copy fits twice into the available memory. It costs those bytes once
/// more in memory (2B-4T: 521 MB for I2_S, 537 MB for TQ2_0, 435 MB for TQ1_0) and their
/// copying at load (about 0.9 s on the EPYC), and buys decode steps that stream the
/// matrices faster (`docs/performance.md`, "Four rows in one stream", "TQ1_0: five blocks
/// to a byte").
struct Interleaved {
    buf: crate::hugepage::HugeBuffer,
    /// Start of a tensor's bytes in the file → where its rows start in `buf`, and their
    /// length.
    at: std::collections::HashMap<usize, (usize, usize)>,
}

impl Interleaved {
    /// The copy for those of `tensors` the VNNI decode kernels will read, or `None` when
    /// none will, or memory is short.
    fn build<'t>(
        file: &GgufFile,
        tensors: impl Iterator<Item = &'t Tensor>,
    ) -> Option<Interleaved> {
        #[cfg(target_arch = "x86_64")]
        if Simd::current() == Simd::Avx512 {
            // Each tensor the kernels take, with its rows' length.
            let mine: Vec<(&Tensor, usize)> = tensors
                .filter_map(|t| {
                    let (rows, cols) = (t.rows(), t.cols());
                    let n = match t.ty {
                        GgmlType::I2_S if i2s_vnni::has_vnni() && cols <= i2s_vnni::MAX_COLS => {
                            rows * cols / 4
                        }
                        GgmlType::TQ1_0 if tq_vnni::available() => {
                            tq_vnni::copy_len(tq_vnni::Format::Tq1, rows, cols)
                        }
                        GgmlType::TQ2_0 if tq_vnni::available() => {
                            tq_vnni::copy_len(tq_vnni::Format::Tq2, rows, cols)
                        }
                        _ => return None,
                    };
                    Some((t, n))
                })
                .collect();
            // Each tensor's copy starts on a 64-byte boundary, so the kernels' vector loads
            // of whole groups are aligned (the buffer itself starts on a 2 MiB one).
            let total: usize = mine.iter().map(|&(_, n)| n.next_multiple_of(64)).sum();
            let fits = crate::hugepage::mem_available()
                .is_some_and(|avail| (total as u64).saturating_mul(2) <= avail);
            if total == 0 || !fits {
                return None;
            }
            let mut buf = crate::hugepage::HugeBuffer::new(total).ok()?;
            let mut at = std::collections::HashMap::with_capacity(mine.len());
            let mut rest = buf.bytes_mut();
            let mut offset = 0;
            for (t, n) in mine {
                let (dst, tail) = rest.split_at_mut(n.next_multiple_of(64));
                let dst = &mut dst[..n];
                let (src, rows, cols) = (&file.bytes()[t.range.clone()], t.rows(), t.cols());
                match t.ty {
                    GgmlType::I2_S => i2s_vnni::interleave4(src, rows, cols, dst),
                    GgmlType::TQ1_0 => {
                        tq_vnni::interleave4(tq_vnni::Format::Tq1, src, rows, cols, dst)
                    }
                    _ => tq_vnni::interleave4(tq_vnni::Format::Tq2, src, rows, cols, dst),
                }
                at.insert(t.range.start, (offset, n));
                (rest, offset) = (tail, offset + n.next_multiple_of(64));
            }
            return Some(Interleaved { buf, at });
        }
        let _ = (file, tensors);
        None
    }

    /// `t`'s interleaved rows, if copied.
    fn rows_of(&self, t: &Tensor) -> Option<&[u8]> {
        let (o, n) = *self.at.get(&t.range.start)?;
        Some(&self.buf.bytes()[o..o + n])
    }
}

const TERNARY_TYPES: &str = "F32, F16, I2_S, TQ1_0, TQ2_0";
const FLOAT_TYPES: &str = "F32, F16";

impl Model {
    /// Reads the model at `path` into huge pages ([`GgufFile::open_in_huge_pages`]: every
    /// decode step streams all of it).
    pub fn load(path: &Path) -> Result<Model, ModelError> {
        let file = GgufFile::open_in_huge_pages(path)?;
        Model::from_gguf(file, &path.display().to_string())
    }

    pub fn from_gguf(file: GgufFile, path: &str) -> Result<Model, ModelError> {
        let hp = Hparams::from_gguf(&file, path)?;
        let (d, kv, ff, nv) = (
            hp.n_embd as u64,
            hp.n_embd_kv() as u64,
            hp.n_ff as u64,
            hp.n_vocab as u64,
        );
        let mut norms = std::collections::HashMap::new();
        let mut b = Builder {
            file: &file,
            path,
            norms: &mut norms,
        };

        let token_embd = b.tensor("token_embd.weight", &[d, nv], FLOAT_TYPES)?;
        let output_norm = b.norm("output_norm.weight", d)?;
        let output = match (hp.arch, file.tensor("output.weight")) {
            (Arch::Bitnet158, Some(_)) => b.tensor("output.weight", &[d, nv], FLOAT_TYPES)?,
            _ => token_embd.clone(), // tied embeddings: the head is token_embd
        };
        let mut layers = Vec::with_capacity(hp.n_layer);
        for i in 0..hp.n_layer {
            let n = |w: &str| format!("blk.{i}.{w}.weight");
            let s = |w: &str| format!("blk.{i}.{w}.scale");
            layers.push(Layer {
                attn_norm: b.norm(&n("attn_norm"), d)?,
                attn_q: b.tensor(&n("attn_q"), &[d, d], TERNARY_TYPES)?,
                attn_k: b.tensor(&n("attn_k"), &[d, kv], TERNARY_TYPES)?,
                attn_v: b.tensor(&n("attn_v"), &[d, kv], TERNARY_TYPES)?,
                attn_sub_norm: b.norm(&n("attn_sub_norm"), d)?,
                attn_output: b.tensor(&n("attn_output"), &[d, d], TERNARY_TYPES)?,
                ffn_norm: b.norm(&n("ffn_norm"), d)?,
                ffn_gate: b.tensor(&n("ffn_gate"), &[d, ff], TERNARY_TYPES)?,
                ffn_up: b.tensor(&n("ffn_up"), &[d, ff], TERNARY_TYPES)?,
                ffn_sub_norm: b.norm(&n("ffn_sub_norm"), ff)?,
                ffn_down: b.tensor(&n("ffn_down"), &[ff, d], TERNARY_TYPES)?,
                attn_q_scale: b.scale(&s("attn_q"))?,
                attn_k_scale: b.scale(&s("attn_k"))?,
                attn_v_scale: b.scale(&s("attn_v"))?,
                attn_output_scale: b.scale(&s("attn_output"))?,
                ffn_gate_scale: b.scale(&s("ffn_gate"))?,
                ffn_up_scale: b.scale(&s("ffn_up"))?,
                ffn_down_scale: b.scale(&s("ffn_down"))?,
            });
        }
        let interleaved = Interleaved::build(
            &file,
            layers.iter().flat_map(|l| {
                [
                    &l.attn_q,
                    &l.attn_k,
                    &l.attn_v,
                    &l.attn_output,
                    &l.ffn_gate,
                    &l.ffn_up,
                    &l.ffn_down,
                ]
            }),
        );
        Ok(Model {
            path: path.to_string(),
            hp,
            token_embd,
            output_norm,
            output,
            layers,
            norms,
            file,
            interleaved,
        })
    }

    /// The bytes of a tensor, straight from the map.
    pub fn bytes(&self, t: &Tensor) -> &[u8] {
        &self.file.bytes()[t.range.clone()]
    }

    /// A matmul view of a weight tensor (with its interleaved rows, if made).
    pub fn weight(&self, t: &Tensor) -> WeightView<'_> {
        weight_view(t.ty, self.bytes(t), t.rows(), t.cols())
            .with_by4(self.interleaved.as_ref().and_then(|i| i.rows_of(t)))
    }

    /// A norm gamma as f32.
    pub fn gamma(&self, t: &Tensor) -> &[f32] {
        &self.norms[&t.name]
    }

    /// Tensor type name → count, for `ModelInfo::weight_types`.
    pub fn weight_types(&self) -> std::collections::BTreeMap<String, u32> {
        let mut m = std::collections::BTreeMap::new();
        for t in self.file.tensors() {
            *m.entry(t.ty.name().to_string()).or_insert(0) += 1;
        }
        m
    }
}

struct Builder<'a> {
    file: &'a GgufFile,
    path: &'a str,
    norms: &'a mut std::collections::HashMap<String, Vec<f32>>,
}

impl Builder<'_> {
    fn info(&self, name: &str) -> Result<&TensorInfo, ModelError> {
        self.file
            .tensor(name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.path.into(),
                name: name.into(),
            })
    }

    fn tensor(
        &mut self,
        name: &str,
        dims: &[u64],
        supported: &'static str,
    ) -> Result<Tensor, ModelError> {
        let info = self.info(name)?;
        if info.dims != dims {
            return Err(ModelError::Shape {
                path: self.path.into(),
                name: name.into(),
                found: info.dims.clone(),
                expected: dims.to_vec(),
            });
        }
        let ok = match supported {
            FLOAT_TYPES => matches!(info.ty, GgmlType::F32 | GgmlType::F16),
            _ => matches!(
                info.ty,
                GgmlType::F32 | GgmlType::F16 | GgmlType::I2_S | GgmlType::TQ1_0 | GgmlType::TQ2_0
            ),
        };
        if !ok {
            return Err(ModelError::UnsupportedType {
                path: self.path.into(),
                name: name.into(),
                ty: info.ty.name().into(),
                supported,
            });
        }
        let data = self.file.tensor_data(info)?;
        let start = data.as_ptr() as usize - self.file.bytes().as_ptr() as usize;
        let range = start..start + data.len();
        let t = Tensor {
            name: name.into(),
            ty: info.ty,
            dims: info.dims.clone(),
            range,
        };
        if dims.len() == 2 {
            // A matmul weight: check block multiples and byte counts once, here, so the
            // forward pass can rely on them.
            weight_view(t.ty, data, t.rows(), t.cols())
                .validate()
                .map_err(|e| ModelError::Invalid {
                    path: self.path.into(),
                    message: format!("tensor '{name}' ({}): {e}", t.ty.name()),
                })?;
        }
        Ok(t)
    }

    fn norm(&mut self, name: &str, len: u64) -> Result<Tensor, ModelError> {
        let t = self.tensor(name, &[len], FLOAT_TYPES)?;
        let bytes = &self.file.bytes()[t.range.clone()];
        self.norms.insert(name.to_string(), to_f32(t.ty, bytes));
        Ok(t)
    }

    fn scale(&mut self, name: &str) -> Result<Option<f32>, ModelError> {
        if self.file.tensor(name).is_none() {
            return Ok(None);
        }
        let t = self.tensor(name, &[1], FLOAT_TYPES)?;
        Ok(to_f32(t.ty, &self.file.bytes()[t.range.clone()])
            .first()
            .copied())
    }
}

/// The matmul view of a weight tensor's bytes.
pub fn weight_view(ty: GgmlType, data: &[u8], rows: usize, cols: usize) -> WeightView<'_> {
    match ty {
        GgmlType::F16 => WeightView::F16 { data, rows, cols },
        GgmlType::I2_S => WeightView::I2S {
            data,
            rows,
            cols,
            by4: None,
        },
        GgmlType::TQ1_0 => WeightView::TQ1 {
            data,
            rows,
            cols,
            by4: None,
        },
        GgmlType::TQ2_0 => WeightView::TQ2 {
            data,
            rows,
            cols,
            by4: None,
        },
        _ => WeightView::F32 { data, rows, cols },
    }
}

/// An optional key: absent → `None`; present with the wrong type → the reader's error.
fn opt<'f, T>(
    f: &'f GgufFile,
    key: &str,
    get: impl Fn(&'f GgufFile, &str) -> Result<T, crate::gguf::GgufError>,
) -> Result<Option<T>, crate::gguf::GgufError> {
    if f.get(key).is_some() {
        get(f, key).map(Some)
    } else {
        Ok(None)
    }
}

/// F32/F16 bytes → f32 values.
pub fn to_f32(ty: GgmlType, bytes: &[u8]) -> Vec<f32> {
    match ty {
        GgmlType::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    }
}
