//! The `trained-*` presets: bitprobe's tiny BitNet b1.58 trained on the project's own facts
//! ("The capital of France is Paris.") by `trainer/train.py`, written into every weight type
//! through the same tensor plan, packers and GGUF writer as the random presets.
//!
//! The trainer writes its result (quantization-aware trained, already ternary) to
//! `<trained root>/seed-<seed>/` — `$BITPROBE_TRAINED`, else `<workspace>/.cache/trained` —
//! as two files (format in `trainer/README.md`):
//! - `model.txt`: `bitprobe-trained 1`, then one `key value` line per hyperparameter, one
//!   `token <id> <normal|control> <gpt2 text>` line per token, one `merge <left> <right>`
//!   line per BPE merge, one `tensor <gguf name> <embedding|norm|ternary> <ne0> <ne1>
//!   <byte offset>` line per tensor and last `data model.bin <bytes> <sha256>`;
//! - `model.bin`: the tensors as little-endian f32, rows of ne0 values (ggml order).
//!
//! Every projection arrives as ternary × one per-tensor scale γ (the trainer's absmean
//! quantization), γ and the embeddings already F16-representable, so — as with the random
//! presets — all five weight types hold exactly the same numbers: the I2_S scale is γ
//! (`quantize_i2_s` takes max |w|), each TQ block's f16 `d` is γ. [`load`] checks that before
//! anything is written, and names the tensor and value that break it.
//!
//! The forge seed selects the training seed (`seed-<seed>/`); a seed that was never trained is
//! a [`ForgeError::MissingTrained`] naming the command that trains it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use half::f16;

use super::presets::Preset;
use super::rng::fnv1a64;
use super::vocab::{Vocab, TOKEN_TYPE_CONTROL, TOKEN_TYPE_NORMAL};
use super::{ForgeError, TensorRole};
use crate::gguf::{GgufError, GgufWriter};

/// First line of `model.txt`.
pub const FORMAT: &str = "bitprobe-trained 1";

/// Vocabulary size of the trained model: 256 bytes + 204 BPE merges trained on the fact
/// corpus + BOS + EOS. The trainer derives it from the corpus; [`load`] checks they agree.
pub const N_VOCAB: u32 = 462;

/// The folder holding one trained model per seed: `$BITPROBE_TRAINED`, else
/// `<workspace root>/.cache/trained` (filled by `scripts/setup.d/50-trained-model.sh`).
pub fn trained_root() -> PathBuf {
    match std::env::var_os("BITPROBE_TRAINED") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => super::workspace_root().join(".cache").join("trained"),
    }
}

/// Where `trainer/train.py --seed <seed>` writes its model.
pub fn trained_dir(seed: u64) -> PathBuf {
    trained_root().join(format!("seed-{seed}"))
}

/// What one `tensor` line describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Embedding,
    Norm,
    Ternary,
}

/// A trained model as the trainer wrote it.
#[derive(Debug)]
pub struct TrainedModel {
    /// The `seed-<seed>` folder.
    pub dir: PathBuf,
    /// `key value` lines (hyperparameters, seed, steps), in file order.
    pub meta: Vec<(String, String)>,
    pub vocab: Arc<Vocab>,
    /// Tensor values by GGUF name (row-major, ne0 fastest).
    tensors: HashMap<String, (Kind, [u64; 2], Vec<f32>)>,
    /// sha256 of model.bin as model.txt records it.
    pub data_sha256: String,
    /// FNV-1a of model.txt (which records model.bin's sha256): part of the forge cache key.
    pub fingerprint: u64,
}

impl TrainedModel {
    /// A metadata value from model.txt.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.meta
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The values of tensor `name` (checked by [`load`] to exist for every planned tensor).
    pub fn values(&self, name: &str) -> &[f32] {
        &self.tensors[name].2
    }

    /// `bitprobe.trained.*` keys: where the weights came from.
    pub(crate) fn add_metadata(&self, w: &mut GgufWriter<'_>) -> Result<(), GgufError> {
        for key in ["seed", "steps"] {
            if let Some(v) = self.get(key).and_then(|v| v.parse::<u32>().ok()) {
                w.add_u32(&format!("bitprobe.trained.{key}"), v)?;
            }
        }
        w.add_str("bitprobe.trained.model_sha256", &self.data_sha256)?;
        w.add_str("bitprobe.trained.trainer", "trainer/train.py")?;
        Ok(())
    }
}

/// The cache-key part of a trained preset: the forge's version hash mixed with the trained
/// model's fingerprint, so retraining never reuses a stale cached GGUF.
pub(crate) fn version_hash(preset: &Preset, seed: u64) -> Result<String, ForgeError> {
    let txt = model_txt(seed)?;
    let text = std::fs::read(&txt).map_err(|source| ForgeError::Io {
        path: txt.clone(),
        source,
    })?;
    let key = format!("{}|{:016x}", super::version_hash(preset), fnv1a64(&text));
    Ok(format!("{:08x}", fnv1a64(key.as_bytes()) as u32))
}

fn model_txt(seed: u64) -> Result<PathBuf, ForgeError> {
    let dir = trained_dir(seed);
    let txt = dir.join("model.txt");
    if !txt.is_file() {
        return Err(ForgeError::MissingTrained { path: txt, seed });
    }
    Ok(txt)
}

/// Reads and checks the model trained with `seed` against `preset`'s shape.
pub fn load(preset: &Preset, seed: u64) -> Result<Arc<TrainedModel>, ForgeError> {
    load_txt(preset, &model_txt(seed)?)
}

/// Reads and checks the trainer output whose `model.txt` is `txt` against `preset`.
pub fn load_txt(preset: &Preset, txt: &Path) -> Result<Arc<TrainedModel>, ForgeError> {
    let m = parse(txt)?;
    check(preset, &m, txt)?;
    Ok(Arc::new(m))
}

fn bad(path: &Path, line: usize, reason: impl Into<String>) -> ForgeError {
    ForgeError::BadAsset {
        path: path.to_path_buf(),
        line,
        reason: reason.into(),
    }
}

fn parse(txt: &Path) -> Result<TrainedModel, ForgeError> {
    let dir = txt.parent().unwrap_or(Path::new(".")).to_path_buf();
    let raw = std::fs::read(txt).map_err(|source| ForgeError::Io {
        path: txt.to_path_buf(),
        source,
    })?;
    let fingerprint = fnv1a64(&raw);
    let text = String::from_utf8(raw).map_err(|e| bad(txt, 0, format!("not UTF-8: {e}")))?;
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
    match lines.next() {
        Some((_, l)) if l == FORMAT => {}
        other => {
            return Err(bad(
                txt,
                1,
                format!(
                    "expected '{FORMAT}', found {:?}: not a bitprobe trainer output (or another format version)",
                    other.map(|(_, l)| l).unwrap_or("")
                ),
            ))
        }
    }
    let mut meta = Vec::new();
    let mut tokens: Vec<String> = Vec::new();
    let mut token_types = Vec::new();
    let mut merges = Vec::new();
    let mut specs: Vec<(usize, String, Kind, [u64; 2], u64)> = Vec::new();
    let mut data_line: Option<(usize, u64, String)> = None;
    for (no, line) in lines {
        let mut parts = line.split(' ');
        let head = parts.next().unwrap_or("");
        let rest: Vec<&str> = parts.collect();
        let num = |s: &str, what: &str| {
            s.parse::<u64>()
                .map_err(|_| bad(txt, no, format!("{what} '{s}' is not a number")))
        };
        match (head, rest.as_slice()) {
            ("", []) => {}
            ("token", [id, ty, t]) => {
                if num(id, "token id")? as usize != tokens.len() {
                    return Err(bad(
                        txt,
                        no,
                        format!("token id {id} out of order (expected {})", tokens.len()),
                    ));
                }
                token_types.push(match *ty {
                    "normal" => TOKEN_TYPE_NORMAL,
                    "control" => TOKEN_TYPE_CONTROL,
                    other => {
                        return Err(bad(
                            txt,
                            no,
                            format!("token type '{other}' (normal or control)"),
                        ))
                    }
                });
                tokens.push((*t).to_string());
            }
            ("merge", [a, b]) => merges.push(format!("{a} {b}")),
            ("tensor", [name, kind, ne0, ne1, off]) => {
                let kind = match *kind {
                    "embedding" => Kind::Embedding,
                    "norm" => Kind::Norm,
                    "ternary" => Kind::Ternary,
                    other => {
                        return Err(bad(
                            txt,
                            no,
                            format!("tensor kind '{other}' (embedding, norm or ternary)"),
                        ))
                    }
                };
                specs.push((
                    no,
                    (*name).to_string(),
                    kind,
                    [num(ne0, "ne0")?, num(ne1, "ne1")?],
                    num(off, "offset")?,
                ));
            }
            ("data", [file, len, sha]) if *file == "model.bin" => {
                data_line = Some((no, num(len, "data length")?, (*sha).to_string()));
            }
            (key, [value]) if !matches!(key, "token" | "merge" | "tensor" | "data") => {
                meta.push((key.to_string(), (*value).to_string()));
            }
            _ => return Err(bad(txt, no, format!("cannot read line '{line}'"))),
        }
    }
    let Some((data_no, data_len, data_sha256)) = data_line else {
        return Err(bad(
            txt,
            0,
            "no 'data model.bin <bytes> <sha256>' line: the trainer did not finish writing",
        ));
    };
    let bin = dir.join("model.bin");
    let data = std::fs::read(&bin).map_err(|source| ForgeError::Io {
        path: bin.clone(),
        source,
    })?;
    if data.len() as u64 != data_len {
        return Err(bad(
            txt,
            data_no,
            format!(
                "{} has {} bytes, model.txt says {data_len}",
                bin.display(),
                data.len()
            ),
        ));
    }
    let mut tensors = HashMap::new();
    for (no, name, kind, dims, off) in specs {
        let n = dims[0] * dims[1];
        let end = off.checked_add(n * 4).filter(|&e| e <= data_len);
        let Some(end) = end else {
            return Err(bad(txt, no, format!("tensor {name}: {n} f32 at offset {off} pass the end of model.bin ({data_len} bytes)")));
        };
        let values: Vec<f32> = data[off as usize..end as usize]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if tensors.insert(name.clone(), (kind, dims, values)).is_some() {
            return Err(bad(txt, no, format!("tensor {name} appears twice")));
        }
    }
    let get = |key: &str| {
        meta.iter()
            .find(|(k, _): &&(String, String)| k == key)
            .map(|(_, v)| v.clone())
    };
    let id = |key: &str| -> Result<u32, ForgeError> {
        get(key)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad(txt, 0, format!("no numeric '{key}' line")))
    };
    let (bos, eos) = (id("bos")?, id("eos")?);
    for (what, t) in [("bos", bos), ("eos", eos)] {
        if token_types.get(t as usize) != Some(&TOKEN_TYPE_CONTROL) {
            return Err(bad(txt, 0, format!("{what} {t} is not a control token")));
        }
    }
    if merges.is_empty() {
        // llama.cpp refuses a gpt2 vocabulary without merges.
        return Err(bad(
            txt,
            0,
            "no merges: llama.cpp refuses a gpt2 vocabulary without them",
        ));
    }
    Ok(TrainedModel {
        dir,
        meta,
        vocab: Arc::new(Vocab {
            tokens,
            token_types,
            merges,
            bos,
            eos,
        }),
        tensors,
        data_sha256,
        fingerprint,
    })
}

/// The trained model must be the preset's shape, hold every planned tensor, and be exact in
/// every storage type: ternary × one F16-representable scale per projection, F16-representable
/// embeddings, finite norms.
fn check(p: &Preset, m: &TrainedModel, txt: &Path) -> Result<(), ForgeError> {
    let want: [(&str, String); 10] = [
        ("arch", p.arch.gguf_name().to_string()),
        ("n_vocab", p.n_vocab().to_string()),
        ("n_embd", p.n_embd.to_string()),
        ("n_layer", p.n_layer.to_string()),
        ("n_head", p.n_head.to_string()),
        ("n_head_kv", p.n_head_kv.to_string()),
        ("n_ff", p.n_ff.to_string()),
        ("n_ctx", p.n_ctx.to_string()),
        (
            "rope_freq_base",
            format!("{:?}", f64::from(p.rope_freq_base)),
        ),
        ("rms_eps", format!("{:?}", f64::from(p.rms_eps))),
    ];
    for (key, value) in want {
        let got = m.get(key).unwrap_or("(missing)");
        let same = match (got.parse::<f64>(), value.parse::<f64>()) {
            (Ok(a), Ok(b)) => a == b || (a as f32) == (b as f32),
            _ => got == value,
        };
        if !same {
            return Err(bad(
                txt,
                0,
                format!("{key} is {got}, preset {} expects {value}: retrain (trainer/train.py) or update the preset", p.name),
            ));
        }
    }
    if m.vocab.tokens.len() != p.n_vocab() as usize {
        return Err(bad(
            txt,
            0,
            format!(
                "{} tokens, preset {} expects {}",
                m.vocab.tokens.len(),
                p.name,
                p.n_vocab()
            ),
        ));
    }
    for plan in p.tensor_plan() {
        let Some((kind, dims, values)) = m.tensors.get(&plan.name) else {
            return Err(bad(txt, 0, format!("tensor {} is missing", plan.name)));
        };
        let want_dims = [plan.dims[0], plan.dims.get(1).copied().unwrap_or(1)];
        let want_kind = match plan.role {
            TensorRole::Embedding => Kind::Embedding,
            TensorRole::Norm(_) => Kind::Norm,
            TensorRole::Projection => Kind::Ternary,
            other => {
                return Err(bad(txt, 0, format!("tensor {}: preset {} plans a {other:?} tensor, which the trainer does not write", plan.name, p.name)))
            }
        };
        if *dims != want_dims || *kind != want_kind {
            return Err(bad(
                txt,
                0,
                format!(
                    "tensor {} is {kind:?} {dims:?}, preset {} plans {want_kind:?} {want_dims:?}",
                    plan.name, p.name
                ),
            ));
        }
        if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(bad(
                txt,
                0,
                format!("tensor {}: value {i} is {v}", plan.name),
            ));
        }
        let f16_exact = |v: f32| f16::from_f32(v).to_f32() == v;
        match kind {
            Kind::Embedding => {
                if let Some((i, v)) = values.iter().enumerate().find(|(_, &v)| !f16_exact(v)) {
                    return Err(bad(
                        txt,
                        0,
                        format!(
                            "tensor {}: value {i} ({v:e}) is not F16-representable",
                            plan.name
                        ),
                    ));
                }
            }
            Kind::Ternary => {
                let scale = values.iter().fold(0f32, |s, v| s.max(v.abs()));
                if scale == 0.0 || !f16_exact(scale) {
                    return Err(bad(
                        txt,
                        0,
                        format!(
                            "tensor {}: scale {scale:e} is zero or not F16-representable",
                            plan.name
                        ),
                    ));
                }
                if let Some((i, v)) = values
                    .iter()
                    .enumerate()
                    .find(|(_, &v)| v != 0.0 && v.abs() != scale)
                {
                    return Err(bad(txt, 0, format!("tensor {}: value {i} ({v:e}) is not 0 or ±{scale:e}: not ternary × one scale", plan.name)));
                }
            }
            Kind::Norm => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forge::preset;

    /// Writes a synthetic trainer output for `p` into `dir` (the real one comes from
    /// trainer/train.py); `poke` may alter the values of one tensor.
    fn write_fake(p: &Preset, dir: &Path, poke: Option<(&str, f32)>) {
        std::fs::create_dir_all(dir).unwrap();
        let mut lines = vec![FORMAT.to_string()];
        for (k, v) in [
            ("arch", p.arch.gguf_name().to_string()),
            ("n_vocab", p.n_vocab().to_string()),
            ("n_embd", p.n_embd.to_string()),
            ("n_layer", p.n_layer.to_string()),
            ("n_head", p.n_head.to_string()),
            ("n_head_kv", p.n_head_kv.to_string()),
            ("n_ff", p.n_ff.to_string()),
            ("n_ctx", p.n_ctx.to_string()),
            ("rope_freq_base", "500000.0".into()),
            ("rms_eps", "1e-05".into()),
            ("bos", (p.n_vocab() - 2).to_string()),
            ("eos", (p.n_vocab() - 1).to_string()),
            ("seed", "1".into()),
            ("steps", "600".into()),
        ] {
            lines.push(format!("{k} {v}"));
        }
        let n = p.n_vocab() as usize;
        for i in 0..n {
            let ty = if i >= n - 2 { "control" } else { "normal" };
            lines.push(format!("token {i} {ty} t{i}"));
        }
        lines.push("merge t1 t2".into());
        let mut blob = Vec::new();
        for (k, plan) in p.tensor_plan().iter().enumerate() {
            let (ne0, ne1) = (plan.dims[0], plan.dims.get(1).copied().unwrap_or(1));
            let kind = match plan.role {
                TensorRole::Embedding => "embedding",
                TensorRole::Norm(_) => "norm",
                _ => "ternary",
            };
            lines.push(format!(
                "tensor {} {kind} {ne0} {ne1} {}",
                plan.name,
                blob.len()
            ));
            let scale = 0.0625 * (1 + k % 5) as f32;
            for i in 0..ne0 * ne1 {
                let mut v = match kind {
                    "ternary" => [(-scale), 0.0, scale][(i * 7 + k as u64) as usize % 3],
                    "embedding" => ((i % 17) as f32 - 8.0) / 64.0,
                    _ => 1.0 + (i % 3) as f32 * 0.1,
                };
                if let Some((name, x)) = poke {
                    if name == plan.name && i == 5 {
                        v = x;
                    }
                }
                blob.extend_from_slice(&v.to_le_bytes());
            }
        }
        lines.push(format!("data model.bin {} 00", blob.len()));
        std::fs::write(dir.join("model.bin"), &blob).unwrap();
        std::fs::write(dir.join("model.txt"), lines.join("\n") + "\n").unwrap();
    }

    fn temp(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "bitprobe-trained-test-{}-{tag}",
            std::process::id()
        ))
    }

    #[test]
    fn a_well_formed_output_loads_with_its_values() {
        let p = preset("trained-i2s").unwrap();
        let dir = temp("ok");
        write_fake(p, &dir, None);
        let m = load_txt(p, &dir.join("model.txt")).unwrap();
        assert_eq!(m.vocab.tokens.len(), N_VOCAB as usize);
        assert_eq!(m.vocab.merges, ["t1 t2"]);
        assert_eq!((m.vocab.bos, m.vocab.eos), (N_VOCAB - 2, N_VOCAB - 1));
        let q = m.values("blk.1.attn_q.weight");
        assert_eq!(q.len(), 256 * 256);
        assert!(
            q.iter()
                .all(|v| [0.0, 0.0625 * 4.0, -0.0625 * 4.0].contains(v)),
            "{:?}",
            &q[..8]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn off_grid_values_are_refused_with_the_tensor_named() {
        let p = preset("trained-tq2").unwrap();
        for (name, x, want) in [
            ("blk.0.ffn_up.weight", 0.01, "not ternary"),
            ("blk.1.attn_v.weight", f32::NAN, "NaN"),
            ("token_embd.weight", 0.1, "not F16-representable"),
        ] {
            let dir = temp(&format!("poke-{name}"));
            write_fake(p, &dir, Some((name, x)));
            let e = load_txt(p, &dir.join("model.txt")).unwrap_err().to_string();
            assert!(e.contains(name) && e.contains(want), "{e}");
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn a_truncated_output_is_refused() {
        let p = preset("trained-f32").unwrap();
        let dir = temp("trunc");
        write_fake(p, &dir, None);
        let txt = dir.join("model.txt");
        let text = std::fs::read_to_string(&txt).unwrap();
        let cut: Vec<&str> = text.lines().filter(|l| !l.starts_with("data ")).collect();
        std::fs::write(&txt, cut.join("\n")).unwrap();
        let e = load_txt(p, &txt).unwrap_err().to_string();
        assert!(e.contains("did not finish"), "{e}");
        std::fs::write(&txt, text.replace("arch bitnet-b1.58", "arch bitnet")).unwrap();
        let e = load_txt(p, &txt).unwrap_err().to_string();
        assert!(
            e.contains("arch is bitnet") && e.contains("trained-f32"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_seed_never_trained_names_the_command() {
        let e = ForgeError::MissingTrained {
            path: trained_dir(7).join("model.txt"),
            seed: 7,
        }
        .to_string();
        assert!(
            e.contains("trainer/train.py --seed 7") && e.contains("seed-7"),
            "{e}"
        );
    }
}
