//! `bitprobe bench`: several probes side by side, in one run, as ratios to the reference.
//!
//! Every probe runs in a child process (the references and external engines always do; our
//! engine through `bitprobe serve-engine`), so their peak RSS figures compare. Runs go round
//! robin (A B C A B C …) after one warm-up each, so drift on the machine hits all alike.
//! Speed is reported, never asserted: absolute numbers drift between machines, ratios from
//! one run do not.

use crate::probes::{open_remote, ProbeSpec};
use probe::wire::Watchdog;
use probe::{GenerateRequest, Probe, Token};
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct BenchRequest {
    pub threads: usize,
    pub prompt_tokens: usize,
    pub decode_tokens: usize,
    pub reps: usize,
}

/// One probe's measurements over the repetitions.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Series {
    pub load_seconds: Vec<f64>,
    pub prefill_tok_s: Vec<f64>,
    pub decode_tok_s: Vec<f64>,
    pub peak_rss_bytes: Vec<u64>,
}

/// Median, min and max of a series.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

pub fn summarize(v: &[f64]) -> Summary {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let median = match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    };
    Summary {
        median,
        min: s.first().copied().unwrap_or(f64::NAN),
        max: s.last().copied().unwrap_or(f64::NAN),
    }
}

/// One measured probe.
#[derive(Clone, Debug, Serialize)]
pub struct Side {
    /// The probe's name (`engine`, `oracle`, `ik-llama`).
    pub probe: String,
    /// Its `implementation` string (which build, which converted model).
    pub implementation: String,
    pub series: Series,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub threads: usize,
    pub prompt_tokens: usize,
    pub decode_tokens: usize,
    pub reps: usize,
    /// Every probe measured; the last is the reference the ratios are taken against.
    pub sides: Vec<Side>,
    /// Bytes one decode step must read: every tensor's data (the tied head reads the whole
    /// embedding matrix; the embedding lookup itself reads one row, which is ignored).
    pub bytes_per_decode_step: u64,
    /// Read bandwidth with `threads` threads, bytes/s: the best of 7 streaming passes of
    /// the faster form (`engine::ceiling::read_bandwidth`), with the passes' median and
    /// spread, the form, and the other form's best pass.
    pub read_bandwidth: f64,
    pub read_bandwidth_median: f64,
    pub read_bandwidth_spread: f64,
    pub read_bandwidth_form: engine::ceiling::Stream,
    pub read_bandwidth_other_form: f64,
    /// Weights a token multiplies through (every 2-D tensor's elements but the embedding
    /// lookup's): one MAC each.
    pub macs_per_token: u64,
    /// int8 multiply-accumulates per second with `threads` threads
    /// (`engine::ceiling::int8_macs`), best of 5.
    pub int8_macs_per_second: f64,
}

impl BenchReport {
    /// tok/s a decode step could reach if it only had to read the weights once.
    pub fn decode_ceiling(&self) -> f64 {
        self.read_bandwidth / self.bytes_per_decode_step as f64
    }

    /// tok/s a prefill could reach if every weight cost one int8 MAC at the machine's peak.
    pub fn prefill_ceiling(&self) -> f64 {
        self.int8_macs_per_second / self.macs_per_token.max(1) as f64
    }
}

/// Peak resident set of a process (VmHWM), from /proc.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A prompt of exactly `n` tokens (ids of a repeated English text, BOS first).
pub fn prompt_of(p: &mut dyn Probe, n: usize) -> Result<Vec<Token>, String> {
    let text =
        "The quick brown fox jumps over the lazy dog while the ternary network counts to ten. ";
    let mut ids = p
        .tokenize(&text.repeat(n / 8 + 2), true, false)
        .map_err(|e| e.to_string())?;
    if ids.len() < n {
        return Err(format!("could not build a {n}-token prompt"));
    }
    ids.truncate(n);
    Ok(ids)
}

/// One measured run: start, open, prefill, decode, read the peak RSS, stop. The prompt is
/// built by our engine's tokenizer (a probe may not tokenize), the same ids for every probe.
fn one_run(
    spec: &ProbeSpec,
    model: &Path,
    prompt: &[Token],
    req: &BenchRequest,
    s: &mut Series,
) -> Result<String, String> {
    let t = Instant::now();
    let mut p = open_remote(spec, model, req.threads, Watchdog::default())
        .map_err(|e| format!("{spec}: {e}"))?;
    let load = t.elapsed().as_secs_f64();
    let caps = p.info().caps();
    if !caps.generate {
        return Err(format!(
            "{spec} cannot generate (its capabilities: {caps:?}), so it cannot be benchmarked"
        ));
    }
    let g = p
        .generate(&GenerateRequest::greedy(
            prompt.to_vec(),
            req.decode_tokens + 1,
        ))
        .map_err(|e| format!("{spec}: {e}"))?;
    let rss = p.pid().map_or(0, peak_rss);
    s.load_seconds.push(load);
    s.prefill_tok_s
        .push(req.prompt_tokens as f64 / g.prefill_seconds.max(1e-9));
    s.decode_tok_s
        .push(g.steps.len() as f64 / g.decode_seconds.max(1e-9));
    s.peak_rss_bytes.push(rss);
    Ok(p.info().implementation.clone())
}

/// Runs the benchmark over `probes` (the last one is the reference); `progress` gets one
/// line per run.
pub fn run(
    probes: &[ProbeSpec],
    model: &Path,
    req: &BenchRequest,
    mut progress: impl FnMut(&str),
) -> Result<BenchReport, String> {
    let file = engine::gguf::GgufFile::open(model).map_err(|e| e.to_string())?;
    let bytes_per_decode_step: u64 = file.tensors().iter().map(|t| t.size).sum();
    let macs_per_token: u64 = file
        .tensors()
        .iter()
        .filter(|t| t.dims.len() == 2 && t.name != "token_embd.weight")
        .map(|t| t.n_elements())
        .sum::<u64>()
        + file
            .tensors()
            .iter()
            .find(|t| t.name == "token_embd.weight")
            .filter(|_| file.tensor("output.weight").is_none())
            .map_or(0, |t| t.n_elements());
    drop(file);
    let prompt = {
        let mut e = engine::EngineProbe::open(&probe::OpenRequest::new(model).threads(1))
            .map_err(|e| e.to_string())?;
        prompt_of(&mut e, req.prompt_tokens)?
    };
    let mut sides: Vec<Side> = probes
        .iter()
        .map(|p| Side {
            probe: p.label(),
            implementation: String::new(),
            series: Series::default(),
        })
        .collect();
    let names: Vec<String> = sides.iter().map(|s| s.probe.clone()).collect();
    progress(&format!("warm-up: {}", names.join(", ")));
    for (spec, side) in probes.iter().zip(&mut sides) {
        side.implementation = one_run(spec, model, &prompt, req, &mut Series::default())?;
    }
    for rep in 1..=req.reps {
        for (spec, side) in probes.iter().zip(&mut sides) {
            let s = &mut side.series;
            one_run(spec, model, &prompt, req, s)?;
            progress(&format!(
                "rep {rep}/{}: {spec} prefill {:.1} tok/s, decode {:.2} tok/s",
                req.reps,
                s.prefill_tok_s.last().unwrap_or(&0.0),
                s.decode_tok_s.last().unwrap_or(&0.0)
            ));
        }
    }
    progress("measuring read bandwidth and int8 throughput");
    let bw = engine::ceiling::read_bandwidth(req.threads);
    let macs = engine::ceiling::int8_macs(req.threads);
    Ok(BenchReport {
        model: model.display().to_string(),
        threads: req.threads,
        prompt_tokens: req.prompt_tokens,
        decode_tokens: req.decode_tokens,
        reps: req.reps,
        sides,
        bytes_per_decode_step,
        read_bandwidth: bw.measured.best,
        read_bandwidth_median: bw.measured.median,
        read_bandwidth_spread: bw.measured.spread,
        read_bandwidth_form: bw.form,
        read_bandwidth_other_form: bw.other_best,
        macs_per_token,
        int8_macs_per_second: macs.best,
    })
}

/// The report as a table: per figure, each probe's median (min–max), and each probe's
/// ratio to the reference (the last column group).
pub fn table(r: &BenchReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "model {} · {} thread{} · prompt {} tokens · decode {} tokens · {} rep{} (round robin, after a warm-up)",
        r.model,
        r.threads,
        if r.threads == 1 { "" } else { "s" },
        r.prompt_tokens,
        r.decode_tokens,
        r.reps,
        if r.reps == 1 { "" } else { "s" }
    );
    for s in &r.sides {
        let _ = writeln!(out, "  {:<16} {}", s.probe, s.implementation);
    }
    let Some(reference) = r.sides.last() else {
        return out;
    };
    let _ = write!(out, "{:<10}", "");
    for s in &r.sides {
        let _ = write!(out, " {:>24}", format!("{} median (min–max)", s.probe));
    }
    for s in &r.sides[..r.sides.len() - 1] {
        let _ = write!(out, " {:>10}", format!("{}/{}", s.probe, reference.probe));
    }
    let _ = writeln!(out);
    fn mib(v: &[u64]) -> Vec<f64> {
        v.iter().map(|&b| b as f64 / (1 << 20) as f64).collect()
    }
    type Pick = fn(&Series) -> Vec<f64>;
    let rows: [(&str, Pick, &str); 4] = [
        ("load", |s| s.load_seconds.clone(), "s (lower is better)"),
        ("prefill", |s| s.prefill_tok_s.clone(), "tok/s"),
        ("decode", |s| s.decode_tok_s.clone(), "tok/s"),
        (
            "peak RSS",
            |s| mib(&s.peak_rss_bytes),
            "MiB (lower is better)",
        ),
    ];
    for (name, pick, unit) in rows {
        let _ = write!(out, "{name:<10}");
        let sums: Vec<Summary> = r
            .sides
            .iter()
            .map(|s| summarize(&pick(&s.series)))
            .collect();
        for x in &sums {
            let _ = write!(
                out,
                " {:>24}",
                format!("{:.2} ({:.2}–{:.2})", x.median, x.min, x.max)
            );
        }
        let base = sums.last().map_or(f64::NAN, |x| x.median);
        for x in &sums[..sums.len() - 1] {
            let _ = write!(out, " {:>9.2}×", x.median / base);
        }
        let _ = writeln!(out, "  {unit}");
    }
    // Each side's median as a share of a ceiling.
    let shares = |ceiling: f64, pick: fn(&Series) -> &[f64]| -> String {
        r.sides
            .iter()
            .map(|s| {
                format!(
                    "{} at {:.0}%",
                    s.probe,
                    100.0 * summarize(pick(&s.series)).median / ceiling
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let ceiling = r.decode_ceiling();
    let _ = writeln!(
        out,
        "decode ceiling  {:.2} tok/s = {:.2} GB/s read bandwidth (best of {} streaming passes in 2 MiB pages, {}: median {:.2}, spread {:.0}%; {}: best {:.2}) / {:.3} GB per step · {}",
        ceiling,
        r.read_bandwidth / 1e9,
        engine::ceiling::BANDWIDTH_PASSES,
        r.read_bandwidth_form.describe(),
        r.read_bandwidth_median / 1e9,
        100.0 * r.read_bandwidth_spread,
        r.read_bandwidth_form.other().describe(),
        r.read_bandwidth_other_form / 1e9,
        r.bytes_per_decode_step as f64 / 1e9,
        shares(ceiling, |s| &s.decode_tok_s)
    );
    let pc = r.prefill_ceiling();
    let _ = writeln!(
        out,
        "prefill ceiling {:.1} tok/s = {:.1} G int8 MAC/s (register-only dot loop, best of 5) / {:.2} G weights per token · {}",
        pc,
        r.int8_macs_per_second / 1e9,
        r.macs_per_token as f64 / 1e9,
        shares(pc, |s| &s.prefill_tok_s)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ranges() {
        let s = summarize(&[3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(summarize(&[1.0, 4.0]).median, 2.5);
        assert!(summarize(&[]).median.is_nan());
    }

    #[test]
    fn peak_rss_of_this_process_is_read() {
        assert!(peak_rss(std::process::id()) > 1 << 20);
    }
}
