//! The model forge: deterministic synthetic BitNet b1.58 models in exactly the GGUF format
//! bitnet.cpp reads.
//!
//! A [`Preset`] names a shape (tiny / small / 2B-4T), an architecture (`bitnet` with SiLU or
//! `bitnet-b1.58` with ReLU²), a storage type for the seven ternary projections (F32, F16,
//! I2_S, TQ1_0, TQ2_0) and a vocabulary (byte-level toy or the real Llama-3 one).
//! [`forge_to`] writes a preset with a seed to a path; [`forged`] does so once into a cache
//! under the target directory and returns the path, safe to call from parallel tests.
//!
//! Same preset + seed → byte-identical file: weights come from seeded ChaCha8 streams keyed
//! by tensor name ([`rng`]), metadata and tensors are written in a fixed order, and nothing
//! depends on hash-map order, thread count or platform maths. The weights do not depend on
//! the storage type either (see [`model`]): `tiny-f32` and `tiny-i2s` with one seed are the
//! same model.
//!
//! Packing to I2_S / TQ1_0 / TQ2_0 lives in [`pack`], each function mirroring the vendored
//! quantizer it replaces (`quantize_i2_s`, `quantize_row_tq1_0_ref`,
//! `quantize_row_tq2_0_ref`).

pub mod model;
pub mod pack;
mod presets;
pub mod rng;
pub mod trained;
pub mod vocab;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::gguf::GgufError;

pub use model::{NormCentre, TensorPlan, TensorRole};
pub use presets::{Arch, Preset, VocabKind, WeightType};

/// Version of the forge's output format. Bump it whenever the bytes a preset produces change
/// (weight generation, metadata, packing): it is part of every cache file name.
pub const FORGE_VERSION: u32 = 1;

/// A forge failure.
#[derive(Debug, thiserror::Error)]
pub enum ForgeError {
    #[error("forge: unknown preset '{name}'; valid presets: {valid}")]
    UnknownPreset { name: String, valid: String },

    #[error(
        "forge: Llama-3 vocabulary not found at {}: run scripts/setup.sh \
         (or point BITPROBE_ASSETS at a folder holding llama3-tokenizer.model)",
        path.display()
    )]
    MissingAsset { path: PathBuf },

    #[error(
        "forge: trained model not found at {}: scripts/setup.sh trains it (seed 1); for seed \
         {seed} run `python3 trainer/train.py --seed {seed}` (or point BITPROBE_TRAINED at a \
         folder holding seed-{seed}/model.txt)",
        path.display()
    )]
    MissingTrained { path: PathBuf, seed: u64 },

    #[error("forge: {}: line {line}: {reason}", path.display())]
    BadAsset {
        path: PathBuf,
        line: usize,
        reason: String,
    },

    #[error("forge: {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(transparent)]
    Gguf(#[from] GgufError),
}

/// Every preset, in listing order.
pub fn presets() -> &'static [Preset] {
    &presets::PRESETS
}

/// The preset called `name`; the error lists the valid names.
pub fn preset(name: &str) -> Result<&'static Preset, ForgeError> {
    presets()
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| ForgeError::UnknownPreset {
            name: name.to_string(),
            valid: presets()
                .iter()
                .map(|p| p.name)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Writes `preset` forged with `seed` to `out` (created or truncated).
pub fn forge_to(preset: &Preset, seed: u64, out: &Path) -> Result<(), ForgeError> {
    model::build(preset, seed)?.write_file(out)?;
    Ok(())
}

/// FNV-1a over every source file that decides a forged file's bytes, computed at compile
/// time: editing the generator, the packers, the presets, the vocabulary code, the corpus or
/// the GGUF writer invalidates cached models even if nobody remembers to bump
/// [`FORGE_VERSION`].
const SOURCE_HASH: u64 = {
    const SOURCES: [&[u8]; 9] = [
        include_bytes!("model.rs"),
        include_bytes!("pack.rs"),
        include_bytes!("presets.rs"),
        include_bytes!("rng.rs"),
        include_bytes!("vocab.rs"),
        include_bytes!("trained.rs"),
        include_bytes!("corpus.txt"),
        include_bytes!("../gguf/writer.rs"),
        include_bytes!("../gguf/types.rs"),
    ];
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut f = 0;
    while f < SOURCES.len() {
        let src = SOURCES[f];
        let mut i = 0;
        while i < src.len() {
            h ^= src[i] as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
            i += 1;
        }
        f += 1;
    }
    h
};

/// Short hash of the forge version, the forge's sources and the preset's definition: the
/// cache key suffix, so a format change or an edited preset never reuses a stale file.
pub fn version_hash(preset: &Preset) -> String {
    let key = format!("{FORGE_VERSION}|{SOURCE_HASH:016x}|{preset:?}");
    format!("{:08x}", rng::fnv1a64(key.as_bytes()) as u32)
}

/// The workspace root (the folder holding the top `Cargo.toml`).
pub(crate) fn workspace_root() -> PathBuf {
    let engine = Path::new(env!("CARGO_MANIFEST_DIR"));
    engine.parent().unwrap_or(engine).to_path_buf()
}

/// Where [`forged`] caches models: `$CARGO_TARGET_DIR/bitprobe-models` (a relative
/// `CARGO_TARGET_DIR` is taken from the workspace root), else
/// `<workspace root>/target/bitprobe-models`.
pub fn cache_dir() -> PathBuf {
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => workspace_root().join(dir),
        _ => workspace_root().join("target"),
    };
    target.join("bitprobe-models")
}

/// The path of preset `preset_name` forged with `seed`, forging it first if the cache does
/// not have it: `<cache_dir>/<preset>-s<seed>-<version hash>.gguf`. The file is written to a
/// temporary name and renamed into place, so concurrent callers (parallel tests, several
/// processes) never see a partial file; within one process, callers for the same file wait
/// for one forging.
pub fn forged(preset_name: &str, seed: u64) -> Result<PathBuf, ForgeError> {
    let p = preset(preset_name)?;
    let dir = cache_dir();
    let hash = match p.vocab {
        // A trained preset's bytes also depend on the trained model: its fingerprint joins the key.
        VocabKind::Trained => trained::version_hash(p, seed)?,
        _ => version_hash(p),
    };
    let file_name = format!("{}-s{}-{}.gguf", p.name, seed, hash);
    let path = dir.join(&file_name);

    static IN_FLIGHT: Mutex<Option<HashMap<PathBuf, Arc<Mutex<()>>>>> = Mutex::new(None);
    let lock = {
        let mut map = IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner());
        map.get_or_insert_with(HashMap::new)
            .entry(path.clone())
            .or_default()
            .clone()
    };
    let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());

    if path.is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(&dir).map_err(|source| ForgeError::Io {
        path: dir.clone(),
        source,
    })?;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{file_name}.tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    if let Err(e) = forge_to(p, seed, &tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &path).map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        ForgeError::Io {
            path: path.clone(),
            source,
        }
    })?;
    prune_older_versions(&dir, &format!("{}-s{}-", p.name, seed), &file_name);
    Ok(path)
}

/// Removes cached files of the same preset and seed forged by an older forge version (the
/// 2B-shaped ones are 1.2 GB each). Best effort: a file another process still maps stays
/// readable until it is closed.
fn prune_older_versions(dir: &Path, prefix: &str, keep: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix) && name.ends_with(".gguf") && name != keep {
            // The hash part has no '-' (`<preset>-s<seed>-<hash>.gguf`), so a longer preset
            // name sharing the prefix (tiny-i2s vs tiny-i2s-x) is never matched by mistake.
            if !name[prefix.len()..].trim_end_matches(".gguf").contains('-') {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}
