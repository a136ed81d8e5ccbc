//! Writing a trace: one probe over a prompt, every stage captured.

use super::format::*;
use super::npy::write_npy;
use super::read::{list_stage_files, read_manifest};
use crate::case::Prompt;
use crate::judge::Phase;
use crate::tolerance::governing_type;
use probe::{Capture, GenerateRequest, Probe, StageTensor, Stats};
use std::io::Read;
use std::path::{Path, PathBuf};

/// What to trace: a prompt (its `decode` greedy steps after it), and whether to write values.
#[derive(Clone, Debug)]
pub struct TraceRequest {
    pub prompt: Prompt,
    /// Also write each tensor's values as `.npy`.
    pub raw: bool,
}

/// Runs `probe` over the request with every stage captured and writes the trace to `out`
/// (created if missing; a previous trace there is replaced; any other non-empty folder is
/// refused). `probe_name` is `engine`, `oracle` or a third party's name.
pub fn record(
    probe: &mut dyn Probe,
    probe_name: &str,
    model: &Path,
    req: &TraceRequest,
    out: &Path,
) -> Result<Manifest, TraceError> {
    let (_, add_bos, parse_special) = req.prompt.tokenizer_input();
    let tokens = req.prompt.tokenize(probe)?;
    if tokens.is_empty() {
        return Err(probe::Error::InvalidRequest(format!(
            "prompt {:?} tokenizes to nothing",
            req.prompt.text
        ))
        .into());
    }
    let decode_steps = req.prompt.decode;
    check_target(out)?;
    // Everything is written to a sibling folder first and moved into place at the end, so
    // an interrupted trace never leaves a half-written folder where a trace was.
    let final_out = out;
    let partial = partial_dir(out);
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(io_err("remove", &partial))?;
    }
    std::fs::create_dir_all(&partial).map_err(io_err("create", &partial))?;
    let out = partial.as_path();
    let mut files = Vec::new();
    let fwd = probe.forward(&tokens, &Capture::all())?;
    for t in &fwd.stages {
        files.push(write_stage(out, Phase::Prompt, t, req.raw)?);
    }
    let (mut decode, mut generated) = (Vec::new(), Vec::new());
    if decode_steps > 0 {
        // The prompt's stages are in `fwd` already: capture only the decode positions.
        let n = tokens.len() as u32;
        let mut g = GenerateRequest::greedy(tokens.clone(), decode_steps + 1);
        g.capture = Capture::all().with_positions(n..n + decode_steps as u32);
        g.keep_logits = true;
        let gen = probe.generate(&g)?;
        for (i, s) in gen.steps.iter().enumerate() {
            let step = i as u32 + 1;
            for t in &s.stages {
                files.push(write_stage(out, Phase::Decode(step), t, req.raw)?);
            }
            decode.push(DecodeRecord {
                step,
                position: s.position,
                input: s.input,
                chosen: s.chosen,
            });
        }
        generated = gen.tokens.clone();
    }
    let info = probe.info().clone();
    let (bytes, blake3) = hash_file(model)?;
    let manifest = Manifest {
        format: FORMAT.into(),
        version: VERSION,
        probe: probe_name.into(),
        implementation: info.implementation.clone(),
        model: Some(ModelRef {
            path: model.display().to_string(),
            bytes,
            blake3,
        }),
        prompt: Some(req.prompt.text.clone()),
        add_bos: Some(add_bos),
        parse_special: Some(parse_special),
        chat: Some(req.prompt.chat),
        tokens,
        decode,
        generated,
        weight_type: Some(governing_type(&info.weight_types)),
        info: Some(info),
        raw: req.raw,
        files: Some(files),
    };
    let path = out.join(MANIFEST);
    let json = serde_json::to_string_pretty(&manifest).map_err(|source| TraceError::Json {
        path: path.clone(),
        source,
    })?;
    std::fs::write(&path, json + "\n").map_err(io_err("write", &path))?;
    move_into_place(out, final_out)?;
    Ok(manifest)
}

/// Refuses a folder that holds something other than a trace (before any work).
fn check_target(out: &Path) -> Result<(), TraceError> {
    if out.is_dir() && !out.join(MANIFEST).is_file() {
        let mut entries = std::fs::read_dir(out).map_err(io_err("list", out))?;
        if entries.next().is_some() {
            return Err(format_err(
                out,
                "folder is not empty and holds no trace.json: refusing to write a trace into it",
            ));
        }
    } else if out.exists() && !out.is_dir() {
        return Err(format_err(out, "exists and is not a folder"));
    }
    Ok(())
}

/// `.<name>.partial` beside `out`.
fn partial_dir(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map_or("trace".into(), |n| n.to_string_lossy().into_owned());
    out.with_file_name(format!(".{name}.partial"))
}

/// Removes the trace in `out` (its manifest and the files it lists), leaving anything else.
fn remove_trace(out: &Path) -> Result<(), TraceError> {
    let manifest = out.join(MANIFEST);
    if !manifest.is_file() {
        return Ok(());
    }
    let old = read_manifest(out)?;
    let names = match old.files {
        Some(f) => f,
        None => list_stage_files(out)?,
    };
    for name in names.iter().filter(|n| is_plain_name(n)) {
        for f in [out.join(name), out.join(name).with_extension("npy")] {
            if f.is_file() {
                std::fs::remove_file(&f).map_err(io_err("remove", &f))?;
            }
        }
    }
    std::fs::remove_file(&manifest).map_err(io_err("remove", &manifest))
}

/// Puts the finished trace in `partial` where `out` is: the old trace goes only now.
fn move_into_place(partial: &Path, out: &Path) -> Result<(), TraceError> {
    remove_trace(out)?;
    let empty = !out.exists()
        || std::fs::read_dir(out)
            .map_err(io_err("list", out))?
            .next()
            .is_none();
    if empty {
        if out.exists() {
            std::fs::remove_dir(out).map_err(io_err("remove", out))?;
        }
        return std::fs::rename(partial, out).map_err(io_err("rename into place", partial));
    }
    for e in std::fs::read_dir(partial).map_err(io_err("list", partial))? {
        let e = e.map_err(io_err("list", partial))?;
        let to = out.join(e.file_name());
        std::fs::rename(e.path(), &to).map_err(io_err("move into place", &to))?;
    }
    std::fs::remove_dir(partial).map_err(io_err("remove", partial))
}

fn is_plain_name(name: &str) -> bool {
    Path::new(name).file_name().is_some_and(|f| f == name)
}

/// Writes one stage tensor (and its `.npy` with `raw`); returns the JSON file name.
fn write_stage(out: &Path, phase: Phase, t: &StageTensor, raw: bool) -> Result<String, TraceError> {
    let stem = format!("pos{:04}.{}", t.position, t.id());
    let stats = Stats::of(&t.data);
    let finite = |x: f32| x.is_finite().then_some(x as f64);
    let data = if raw {
        let name = format!("{stem}.npy");
        let path = out.join(&name);
        write_npy(&path, &t.shape, &t.data).map_err(io_err("write", &path))?;
        Some(name)
    } else {
        None
    };
    let record = StageRecord {
        stage: t.id().to_string(),
        phase: match phase {
            Phase::Prompt => TracePhase::Prompt,
            Phase::Decode(_) => TracePhase::Decode,
        },
        step: match phase {
            Phase::Prompt => None,
            Phase::Decode(s) => Some(s),
        },
        position: t.position,
        layer: t.layer,
        shape: t.shape.clone(),
        blake3: Some(t.blake3()),
        rms: (stats.len > stats.non_finite()).then_some(stats.rms),
        mean: (stats.len > stats.non_finite()).then_some(stats.mean),
        min: finite(stats.min),
        max: finite(stats.max),
        nan: Some(stats.nan),
        pos_inf: Some(stats.pos_inf),
        neg_inf: Some(stats.neg_inf),
        data,
    };
    let name = format!("{stem}.json");
    let path = out.join(&name);
    let json = serde_json::to_string_pretty(&record).map_err(|source| TraceError::Json {
        path: path.clone(),
        source,
    })?;
    std::fs::write(&path, json + "\n").map_err(io_err("write", &path))?;
    Ok(name)
}

/// Size and blake3 of a file, streamed.
fn hash_file(path: &Path) -> Result<(u64, String), TraceError> {
    let mut f = std::fs::File::open(path).map_err(io_err("open", path))?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io_err("read", path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok((bytes, h.finalize().to_hex().to_string()))
}
