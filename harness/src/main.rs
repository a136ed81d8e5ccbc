//! `bitprobe`: compare a BitNet b1.58 engine with bitnet.cpp, stage by stage.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use harness::probes::{self, ModelSpec, ProbeKind};
use probe::{GenerateRequest, Sampling};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

mod cli;

#[derive(Parser)]
#[command(
    name = "bitprobe",
    version,
    about = "Differential testing of BitNet b1.58 engines against bitnet.cpp",
    long_about = "Differential testing of BitNet b1.58 engines against bitnet.cpp.\n\n\
        bitprobe runs a model through its Rust engine and through bitnet.cpp (the oracle) and \
        names the first token, layer and stage where they part. Models are GGUF files, or \
        synthetic ones forged from a preset (`bitprobe forge --list`).\n\n\
        Test suite: `cargo test` runs every case in cases/ (see cases/README.md)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a synthetic BitNet model (random but realistic ternary weights) as GGUF.
    Forge(ForgeArgs),
    /// Generate text with one probe, streaming tokens, and report prompt/decode speed.
    Run(RunArgs),
    /// Show the token ids and pieces a probe gives a text.
    Tokenize(TokenizeArgs),
    /// Run engine and oracle on one prompt; compare every stage; name the first divergence.
    ///
    /// Prints one row per (position, layer, stage) in evaluation order with NMSE, cosine,
    /// max |Δ| and a pass/fail mark, then the first divergence and a logits summary.
    /// Exit status: 0 within tolerance, 1 divergent, 2 usage or load error.
    Diff(DiffArgs),
    /// Run the known-bug gallery: each cases/gallery/*.toml injects one engine fault, and the
    /// harness must fail, first at the stage the case expects (needs `--features faults`).
    ///
    /// Prints one row per fault: detected, the first divergence reported, the expected one,
    /// the first stage that is not bit-exact, and pass/fail. Exit status: 0 every fault
    /// detected and localized, 1 not, 2 a build without fault injection or a load error.
    Gallery(GalleryArgs),
    /// Describe a GGUF file: header, metadata, tensors, weight statistics, and warnings.
    ///
    /// Warnings say what a finding means (a missing tokenizer.ggml.pre, measured; norm
    /// gammas far from 1; an arch the oracle does not know; NaN/Inf); nothing is changed.
    /// Exit status: 0 inspected, 2 unreadable or malformed file.
    Inspect(InspectArgs),
    /// Run one probe over a prompt and write every stage tensor to a folder (see
    /// docs/trace-format.md), for `trace-diff`.
    Trace(TraceArgs),
    /// Compare two trace folders: the same first-divergence report as `diff`, B the reference.
    ///
    /// With values in both (`trace --raw`): NMSE, cosine, max |Δ| against the tolerances.
    /// Otherwise hash-only: each row bit-exact or not. Exit status: 0 agree, 1 divergent,
    /// 2 unreadable trace.
    TraceDiff(TraceDiffArgs),
    /// Engine vs bitnet.cpp speed on one model, side by side: load, prefill and decode tok/s,
    /// peak RSS, and the decode ceiling of this machine's read bandwidth.
    ///
    /// Both probes run in child processes, alternating A B A B after a warm-up; medians with
    /// min–max and the engine/oracle ratio are printed. Speed is reported, never asserted.
    Bench(BenchArgs),
    /// Run every model of models.toml through its case files; write receipt.json, report.md
    /// and report.html; list regressions against the previous run.
    ///
    /// A model that cannot be loaded, or crashes the oracle, is a failed row with its error;
    /// the sweep goes on. The baseline is the newest earlier receipt next to --out unless
    /// --baseline says otherwise. Regressions: new failures, metrics worse by more than a
    /// decade, engine/oracle speed ratio drops beyond --speed-tolerance, models that stopped
    /// loading. Exit status: 0 no regression (without a baseline: no failure), 1 regressions,
    /// 2 usage error or unreadable models.toml/baseline.
    Sweep(SweepArgs),
    /// Serve the engine over the probe wire protocol on stdin/stdout (used by bench).
    #[command(hide = true)]
    ServeEngine,
}

/// A model: `--model FILE` or `--preset NAME [--seed N]`.
#[derive(Args, Clone)]
struct ModelArgs {
    /// GGUF model file.
    #[arg(long, short = 'm', conflicts_with = "preset")]
    model: Option<PathBuf>,
    /// Forge preset instead of a file (forged once, cached under target/).
    #[arg(long)]
    preset: Option<String>,
    /// Seed for --preset.
    #[arg(long = "preset-seed", default_value_t = 1, requires = "preset")]
    preset_seed: u64,
}

impl ModelArgs {
    fn resolve(&self) -> Result<PathBuf> {
        let spec = match (&self.model, &self.preset) {
            (Some(p), _) => ModelSpec::Path(p.clone()),
            (None, Some(name)) => ModelSpec::Preset {
                name: name.clone(),
                seed: self.preset_seed,
            },
            (None, None) => {
                bail!("give a model: --model FILE or --preset NAME (see `bitprobe forge --list`)")
            }
        };
        spec.resolve().with_context(|| format!("model {spec}"))
    }
}

#[derive(Args)]
struct ForgeArgs {
    /// Preset name (see --list).
    #[arg(long, required_unless_present = "list")]
    preset: Option<String>,
    /// Output file.
    #[arg(long, short = 'o', required_unless_present = "list")]
    out: Option<PathBuf>,
    /// RNG seed: the same preset and seed always give the same bytes.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// List the presets, one per line: name, then a description.
    #[arg(long)]
    list: bool,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt text.
    #[arg(long, short = 'p')]
    prompt: String,
    /// Tokens to generate.
    #[arg(short = 'n', long = "n-predict", default_value_t = 32)]
    n: usize,
    #[arg(long, value_enum, default_value_t = ProbeKind::Engine)]
    probe: ProbeKind,
    /// Compute threads (0 = all cores).
    #[arg(long, short = 't', default_value_t = 0)]
    threads: usize,
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temp: f32,
    /// Keep the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 40)]
    top_k: u32,
    /// Keep the smallest set of tokens whose probability reaches p.
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Wrap the prompt in the Llama-3 chat template (one BOS, specials parsed).
    #[arg(long)]
    chat: bool,
    /// Engine tokenizer: gguf (as llama.cpp reads the file), truth (the trained Llama-3
    /// tokenizer) or a tokenizer.json path.
    #[arg(long, default_value = "gguf")]
    tokenizer: String,
}

#[derive(Args)]
struct TokenizeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Text to tokenize.
    #[arg(long, required_unless_present = "inputs")]
    text: Option<String>,
    /// A JSON array of texts to tokenize (with --compare: a summary of who disagrees).
    #[arg(long, requires = "compare")]
    inputs: Option<PathBuf>,
    /// Engine, oracle and truth (the trained Llama-3 tokenizer, when the vocab is Llama-3's)
    /// side by side, with the first difference marked.
    #[arg(long)]
    compare: bool,
    /// With --compare: print `[[tokenize.known_deviation]]` entries for every input where the
    /// oracle differs from truth, ready to paste into a case file.
    #[arg(long, requires = "compare")]
    emit_known_deviations: bool,
    #[arg(long, value_enum, default_value_t = ProbeKind::Engine)]
    probe: ProbeKind,
    /// Do not add BOS.
    #[arg(long)]
    no_bos: bool,
    /// Map special-token text (`<|eot_id|>`) to special ids.
    #[arg(long)]
    parse_special: bool,
    /// Engine tokenizer: gguf, truth or a tokenizer.json path.
    #[arg(long, default_value = "gguf")]
    tokenizer: String,
}

#[derive(Args)]
struct DiffArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt text.
    #[arg(long, short = 'p')]
    prompt: String,
    /// Greedy decode steps compared after the prompt (teacher-forced with the oracle's tokens).
    #[arg(long, default_value_t = 0)]
    decode: usize,
    /// Stages to compare (comma-separated names, default all): e.g. attn_q,ffn_down.
    #[arg(long, value_delimiter = ',')]
    stages: Vec<String>,
    /// Layers to compare (comma-separated; default all).
    #[arg(long, value_delimiter = ',')]
    layers: Vec<u32>,
    /// Do not add BOS.
    #[arg(long)]
    no_bos: bool,
    /// Map special-token text to special ids.
    #[arg(long)]
    parse_special: bool,
    /// Wrap the prompt in the Llama-3 chat template.
    #[arg(long)]
    chat: bool,
    /// Compute threads for both probes.
    #[arg(long, short = 't', default_value_t = 2)]
    threads: usize,
    /// Engine tokenizer: gguf, truth or a tokenizer.json path.
    #[arg(long, default_value = "gguf")]
    tokenizer: String,
    /// Switch on one engine fault from the known-bug gallery (needs the `faults` feature).
    #[arg(long)]
    inject_fault: Option<String>,
    /// Print only the failing rows (and the first divergence).
    #[arg(long)]
    failures: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct InspectArgs {
    /// GGUF file (or --model FILE / --preset NAME).
    #[arg(conflicts_with_all = ["model", "preset"])]
    file: Option<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct TraceArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt text.
    #[arg(long, short = 'p')]
    prompt: String,
    /// Output folder (created; a previous trace in it is replaced).
    #[arg(long, short = 'o')]
    out: PathBuf,
    #[arg(long, value_enum, default_value_t = ProbeKind::Engine)]
    probe: ProbeKind,
    /// Also write each tensor's f32 values as .npy (trace-diff needs them for NMSE).
    #[arg(long)]
    raw: bool,
    /// Greedy decode steps traced after the prompt.
    #[arg(long, default_value_t = 0)]
    decode: usize,
    /// Do not add BOS.
    #[arg(long)]
    no_bos: bool,
    /// Map special-token text to special ids.
    #[arg(long)]
    parse_special: bool,
    /// Wrap the prompt in the Llama-3 chat template.
    #[arg(long)]
    chat: bool,
    /// Compute threads.
    #[arg(long, short = 't', default_value_t = 1)]
    threads: usize,
    /// Engine tokenizer: gguf, truth or a tokenizer.json path.
    #[arg(long, default_value = "gguf")]
    tokenizer: String,
}

#[derive(Args)]
struct TraceDiffArgs {
    /// Trace folder compared (the engine's place in the report).
    a: PathBuf,
    /// Reference trace folder (the oracle's place).
    b: PathBuf,
    /// Stages to compare (comma-separated names, default all): e.g. attn_q,ffn_down.
    #[arg(long, value_delimiter = ',')]
    stages: Vec<String>,
    /// Layers to compare (comma-separated; default all).
    #[arg(long, value_delimiter = ',')]
    layers: Vec<u32>,
    /// Compare the prompt pass only: decode steps are neither compared nor required.
    #[arg(long)]
    prompt_only: bool,
    /// NMSE limit for every stage (default: the measured tolerance table, cases/README.md).
    #[arg(long)]
    nmse: Option<f64>,
    /// KL limit for the logits (default: the measured tolerance table).
    #[arg(long)]
    kl: Option<f64>,
    /// Print only the failing rows (and the first divergence).
    #[arg(long)]
    failures: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct GalleryArgs {
    /// Only the faults whose name contains this text.
    filter: Option<String>,
    /// Folder of gallery case files.
    #[arg(long, default_value_os_t = harness::snapshot::workspace_root().join("cases").join("gallery"))]
    cases: PathBuf,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct BenchArgs {
    /// GGUF model file (default: the forged 2b4t-i2s preset, the 2B-4T shapes).
    #[arg(long, short = 'm', conflicts_with = "preset")]
    model: Option<PathBuf>,
    /// Forge preset to benchmark.
    #[arg(long)]
    preset: Option<String>,
    /// Compute threads for both probes.
    #[arg(long, short = 't', default_value_t = 2)]
    threads: usize,
    /// Prompt length for the prefill figure.
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    /// Decode steps for the decode figure.
    #[arg(long, default_value_t = 64)]
    decode_tokens: usize,
    /// Measured repetitions per probe (after one warm-up each).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct SweepArgs {
    /// The models to sweep (see the comments in the default file).
    #[arg(long, default_value_os_t = harness::snapshot::workspace_root().join("models.toml"))]
    models: PathBuf,
    /// Folder of case files; each model entry picks its cases from here by id.
    #[arg(long, default_value_os_t = harness::snapshot::workspace_root().join("cases"))]
    cases: PathBuf,
    /// Folder for receipt.json, report.md and report.html
    /// [default: target/bitprobe-sweep/<UTC time>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Receipt (or run folder) to compare with; `none` for no comparison
    /// [default: the newest receipt.json in a sibling folder of --out].
    #[arg(long)]
    baseline: Option<String>,
    /// Switch this engine fault on for every model (known-bug gallery; needs a build with
    /// `--features faults`). For checking that the sweep catches a regression.
    #[arg(long, value_name = "FAULT")]
    inject_fault: Option<String>,
    /// Only models whose name contains this.
    #[arg(long)]
    only: Option<String>,
    /// Trials run at once, each with its own probes [default: cores].
    #[arg(long, short = 'j')]
    jobs: Option<usize>,
    /// Largest accepted drop of an engine/oracle speed ratio against the baseline.
    #[arg(long, default_value_t = 0.10)]
    speed_tolerance: f64,
    /// Prompt tokens for the speed figures.
    #[arg(long, default_value_t = 64)]
    prompt_tokens: usize,
    /// Decode steps for the speed figures.
    #[arg(long, default_value_t = 64)]
    decode_tokens: usize,
    /// Alternating engine/oracle speed repetitions per model (medians reported).
    #[arg(long, default_value_t = 7)]
    reps: usize,
    /// Skip the speed measurements.
    #[arg(long)]
    no_speed: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Forge(a) => cli::forge::forge(a),
        Command::Run(a) => cli::run::run(a),
        Command::Tokenize(a) => cli::tokenize::tokenize(a),
        Command::Diff(a) => cli::diff::diff(a),
        Command::Gallery(a) => cli::gallery::gallery(a),
        Command::Inspect(a) => cli::inspect::inspect(a),
        Command::Trace(a) => cli::trace::trace(a),
        Command::TraceDiff(a) => cli::trace::trace_diff(a),
        Command::Bench(a) => cli::bench::bench(a),
        Command::Sweep(a) => cli::sweep::sweep(a),
        Command::ServeEngine => cli::run::serve_engine(),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
