//! `bitprobe`: judge a BitNet b1.58 engine against bitnet.cpp, stage by stage.
//!
//! This file holds the command line (one `Args` type per command, the flags they share);
//! each command's work is in `cli/<command>.rs`.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use harness::probes::{self, ModelSpec, ProbeSpec};
use probe::{GenerateRequest, Sampling};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

mod cli;

#[derive(Parser)]
#[command(
    name = "bitprobe",
    version,
    about = "Differential testing of BitNet b1.58 engines: any engine against bitnet.cpp",
    long_about = "Differential testing of BitNet b1.58 engines: any engine against bitnet.cpp.\n\n\
        bitprobe runs a model through an engine and through a reference (bitnet.cpp) and names \
        the first token, layer and stage where they part. An engine is bitprobe's own \
        (`engine`), a reference build (`oracle`, `bitnet.cpp-2026`), one declared in \
        probes.toml, or any program speaking the wire protocol (`cmd:PROGRAM ARG…`, see \
        docs/wire-protocol.md). Models are GGUF files, or synthetic ones forged from a preset \
        (`bitprobe forge --list`).\n\n\
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
    /// Run an engine and a reference on one prompt; judge every stage; name the first
    /// divergence.
    ///
    /// Prints a summary: the worst NMSE per stage, the logits, the greedy tokens, and the
    /// verdict with the first divergence (`--all` for every (position, layer, stage) row,
    /// `--failures` for the failing ones). Each level is compared where both probes offer it;
    /// what cannot be compared is listed. Exit status: 0 within tolerance, 1 divergent,
    /// 2 usage or load error.
    Diff(DiffArgs),
    /// Check that a probe speaks the wire protocol as it declares: frames, shapes, stage
    /// names, positions, determinism, errors, causality — one line per check.
    ///
    /// Runs on a forged preset (default tiny-i2s). Never hangs: every request has a deadline
    /// (`--timeout`). Exit status: 0 every check passed, 1 a check failed, 2 usage error.
    Conformance(ConformanceArgs),
    /// List the probes this bitprobe can run: built in, and declared in probes.toml.
    Probes,
    /// Run the known-bug gallery: each cases/gallery/*.toml injects one engine fault, and the
    /// harness must fail, first at the stage the case expects (needs `--features faults`).
    ///
    /// Prints one row per fault: detected, the first divergence reported, the expected one,
    /// the first stage that is not bit-exact, and pass/fail. Exit status: 0 every fault
    /// detected and localized, 1 not, 2 a build without fault injection or a load error.
    ///
    /// With `--on PRESET` every fault runs on that model instead (the trained model:
    /// `--on trained-i2s`): one row per fault with what the faulty engine says, the
    /// reference's answer above, and the first divergence bitprobe names. Exit status 0.
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
    /// Otherwise hash-only: each row bit-exact or not. A trace with fewer decode steps than
    /// the reference fails unless `--prompt-only`. Exit status: 0 agree, 1 divergent,
    /// 2 unreadable trace.
    TraceDiff(TraceDiffArgs),
    /// Speed side by side on one model: our engine, each --engine, and the reference — load,
    /// prefill and decode tok/s, peak RSS, and the decode ceiling of this machine's read
    /// bandwidth.
    ///
    /// Every probe runs in a child process, round robin after a warm-up; medians with min–max
    /// and each probe's ratio to the reference are printed. Speed is reported, never asserted.
    Bench(BenchArgs),
    /// Run every model of models.toml through its case files; write receipt.json, report.md
    /// and report.html; list regressions against the previous run.
    ///
    /// Each model runs through every engine its entry lists (`engines`, default ours), judged
    /// against its `reference` (default the vendored bitnet.cpp): one result per pair.
    /// A model that cannot be loaded, or crashes a probe, is a failed row with its error;
    /// the sweep goes on. The baseline is the newest earlier receipt next to --out unless
    /// --baseline says otherwise. Regressions: new failures, metrics worse by more than a
    /// decade, engine/reference speed ratio drops beyond --speed-tolerance, models that stopped
    /// loading. Exit status: 0 no regression (without a baseline: no failure), 1 regressions,
    /// 2 usage error or unreadable models.toml/baseline.
    Sweep(SweepArgs),
    /// Serve the engine over the probe wire protocol on stdin/stdout (used by bench).
    #[command(hide = true)]
    ServeEngine,
}

/// A model: `--model FILE` or `--preset NAME [--preset-seed N]`.
#[derive(Args, Clone)]
struct ModelArgs {
    /// GGUF model file.
    #[arg(long, short = 'm', conflicts_with_all = ["preset", "preset_seed"])]
    model: Option<PathBuf>,
    /// Forge preset instead of a file (forged once, cached under target/; `bitprobe forge --list`).
    #[arg(long)]
    preset: Option<String>,
    /// Seed for --preset [default: 1].
    #[arg(long = "preset-seed", requires = "preset")]
    preset_seed: Option<u64>,
}

impl ModelArgs {
    fn spec(&self) -> Result<ModelSpec> {
        Ok(match (&self.model, &self.preset) {
            (Some(p), _) => ModelSpec::Path(p.clone()),
            (None, Some(name)) => ModelSpec::Preset {
                name: name.clone(),
                seed: self.preset_seed.unwrap_or(1),
            },
            (None, None) => {
                bail!("give a model: --model FILE or --preset NAME (see `bitprobe forge --list`)")
            }
        })
    }

    fn resolve(&self) -> Result<PathBuf> {
        let spec = self.spec()?;
        resolve_model(&spec)
    }
}

/// A model spec to a file, with a spinner while a preset is forged on a terminal.
fn resolve_model(spec: &ModelSpec) -> Result<PathBuf> {
    let _spin =
        matches!(spec, ModelSpec::Preset { .. }).then(|| cli::spinner(&format!("model {spec}")));
    match spec.resolve() {
        Ok(p) => Ok(p),
        Err(e) => bail!("model {spec}: {e}"),
    }
}

/// Compute threads, the same flag and default everywhere.
#[derive(Args, Clone, Copy)]
struct ThreadArgs {
    /// Compute threads per probe (capped at this machine's cores) [default: 1].
    #[arg(long, short = 't', value_name = "N")]
    threads: Option<usize>,
}

impl ThreadArgs {
    /// The thread count to use: at least 1, at most the machine's cores (with a warning).
    fn get(self) -> usize {
        cli::threads(self.threads.unwrap_or(1))
    }
}

/// How long an out-of-process probe may take.
#[derive(Args, Clone, Copy)]
struct TimeoutArgs {
    /// Base deadline in seconds for each request to an out-of-process probe (opening gets
    /// 5×, and each token of work adds 1/60 of it); on expiry the probe is stopped and the
    /// request fails [default: 120].
    #[arg(long, value_name = "SECS")]
    timeout: Option<f64>,
}

impl TimeoutArgs {
    fn watchdog(self) -> Result<probe::wire::Watchdog> {
        match self.timeout {
            None => Ok(probe::wire::Watchdog::default()),
            Some(t) if t.is_finite() && t > 0.0 => Ok(probe::wire::Watchdog::scaled(t)),
            Some(t) => bail!("--timeout {t}: give a number of seconds > 0"),
        }
    }
}

/// A prompt, tokenized the same way by every command.
#[derive(Args, Clone)]
struct PromptArgs {
    /// Prompt text.
    #[arg(
        long,
        short = 'p',
        visible_alias = "text",
        required_unless_present = "prompt_file"
    )]
    prompt: Option<String>,
    /// The prompt text from a file (exactly its bytes; for long prompts).
    #[arg(long, value_name = "FILE", conflicts_with = "prompt")]
    prompt_file: Option<PathBuf>,
    /// Do not add BOS.
    #[arg(long)]
    no_bos: bool,
    /// Map special-token text (`<|eot_id|>`) to special ids.
    #[arg(long)]
    parse_special: bool,
    /// Wrap the prompt in the Llama-3 chat template (one BOS, specials parsed).
    #[arg(long)]
    chat: bool,
}

impl PromptArgs {
    fn prompt(&self, decode: usize) -> Result<harness::case::Prompt> {
        let text = match (&self.prompt, &self.prompt_file) {
            (Some(t), _) => t.clone(),
            (None, Some(f)) => std::fs::read_to_string(f)
                .with_context(|| format!("reading --prompt-file {}", f.display()))?,
            (None, None) => bail!("give --prompt TEXT or --prompt-file FILE"),
        };
        if text.is_empty() {
            bail!("the prompt is empty: give some text");
        }
        Ok(harness::case::Prompt {
            add_bos: !self.no_bos,
            parse_special: self.parse_special,
            chat: self.chat,
            decode,
            ..harness::case::Prompt::text(&text)
        })
    }
}

/// Options only bitprobe's own engine takes.
#[derive(Args, Clone)]
struct EngineOptionArgs {
    /// Our engine's tokenizer: gguf (as llama.cpp reads the file), truth (the trained
    /// Llama-3 tokenizer) or a tokenizer.json path.
    #[arg(long, default_value = "gguf")]
    tokenizer: String,
    /// Switch on one fault of our engine from the known-bug gallery (needs the `faults`
    /// feature; `bitprobe gallery`).
    #[arg(long, value_name = "FAULT")]
    inject_fault: Option<String>,
}

impl EngineOptionArgs {
    fn options(&self) -> Vec<(&str, &str)> {
        let mut o = vec![("tokenizer", self.tokenizer.as_str())];
        if let Some(f) = &self.inject_fault {
            o.push(("fault", f.as_str()));
        }
        o
    }
}

/// Opens a probe as every command does: the thread cap, the watchdog, our engine's options.
fn open_probe(
    spec: &ProbeSpec,
    path: &std::path::Path,
    threads: ThreadArgs,
    timeout: TimeoutArgs,
    engine: &EngineOptionArgs,
) -> Result<probes::SharedProbe> {
    Ok(probes::open(
        spec,
        path,
        threads.get(),
        &engine.options(),
        timeout.watchdog()?,
    )?)
}

/// A probe spec: what `--probe`, `--engine` and `--reference` take.
const SPEC_HELP: &str = "engine (bitprobe's), oracle / bitnet.cpp-2024 (the vendored bitnet.cpp), \
    bitnet.cpp-2026, a name from probes.toml, or cmd:PROGRAM ARG… (any program speaking \
    docs/wire-protocol.md); `bitprobe probes` lists them";

#[derive(Args)]
struct ForgeArgs {
    /// Preset name (see --list).
    #[arg(long, required_unless_present = "list")]
    preset: Option<String>,
    /// Output file.
    #[arg(long, short = 'o', required_unless_present = "list")]
    out: Option<PathBuf>,
    /// Seed: the same preset and seed always give the same bytes [default: 1].
    #[arg(long = "preset-seed")]
    preset_seed: Option<u64>,
    /// List the presets, one per line: name, then a description.
    #[arg(long)]
    list: bool,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    prompt: PromptArgs,
    /// Tokens to generate.
    #[arg(short = 'n', long = "n-predict", default_value_t = 32)]
    n: usize,
    /// Who generates.
    #[arg(long, default_value = "engine", value_name = "SPEC", long_help = SPEC_HELP)]
    probe: String,
    #[command(flatten)]
    threads: ThreadArgs,
    #[command(flatten)]
    timeout: TimeoutArgs,
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temp: f32,
    /// Keep the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 40)]
    top_k: u32,
    /// Keep the smallest set of tokens whose probability reaches p.
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Seed of the sampler (with --temp > 0).
    #[arg(long, default_value_t = 0)]
    sampling_seed: u64,
    #[command(flatten)]
    engine: EngineOptionArgs,
}

#[derive(Args)]
struct TokenizeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Text to tokenize.
    #[arg(
        long,
        short = 'p',
        visible_alias = "text",
        required_unless_present = "inputs"
    )]
    prompt: Option<String>,
    /// A JSON array of texts to tokenize (with --compare: a summary of who disagrees).
    #[arg(long, requires = "compare")]
    inputs: Option<PathBuf>,
    /// The probe, the reference and truth (the trained Llama-3 tokenizer, when the vocab is
    /// Llama-3's) side by side, with the first difference marked.
    #[arg(long)]
    compare: bool,
    /// With --compare: print `[[tokenize.known_deviation]]` entries for every input where the
    /// probe or the reference differs from truth (without truth: where the probe differs from
    /// the reference), ready to paste into a case file.
    #[arg(long, requires = "compare")]
    emit_known_deviations: bool,
    /// Who tokenizes (with --compare: the probe judged against --reference).
    #[arg(long, default_value = "engine", value_name = "SPEC", long_help = SPEC_HELP)]
    probe: String,
    /// With --compare: the implementation the probe is judged against.
    #[arg(long, default_value = "oracle", value_name = "SPEC", long_help = SPEC_HELP, requires = "compare")]
    reference: String,
    /// Do not add BOS.
    #[arg(long)]
    no_bos: bool,
    /// Map special-token text (`<|eot_id|>`) to special ids.
    #[arg(long)]
    parse_special: bool,
    #[command(flatten)]
    timeout: TimeoutArgs,
    /// Our engine's tokenizer: gguf, truth or a tokenizer.json path.
    #[arg(long, default_value = "gguf")]
    tokenizer: String,
}

#[derive(Args)]
struct DiffArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    prompt: PromptArgs,
    /// The implementation under test.
    #[arg(long, default_value = "engine", value_name = "SPEC", long_help = SPEC_HELP)]
    engine: String,
    /// The implementation it is judged against.
    #[arg(long, default_value = "oracle", value_name = "SPEC", long_help = SPEC_HELP)]
    reference: String,
    /// Greedy decode steps compared after the prompt (teacher-forced with the reference's
    /// tokens; token by token for an engine that only generates).
    #[arg(short = 'n', long = "decode", default_value_t = 0)]
    decode: usize,
    /// Stages to compare (comma-separated names, default all): e.g. attn_q,ffn_down.
    #[arg(long, value_delimiter = ',')]
    stages: Vec<String>,
    /// Layers to compare (comma-separated; default all).
    #[arg(long, value_delimiter = ',')]
    layers: Vec<u32>,
    /// NMSE limit for every stage (default: the measured tolerance table, cases/README.md).
    #[arg(long)]
    nmse: Option<f64>,
    /// KL limit for the logits (default: the measured tolerance table).
    #[arg(long)]
    kl: Option<f64>,
    /// NMSE limit for one stage, STAGE=LIMIT (repeatable), e.g. attn_q=1e-3.
    #[arg(long, value_name = "STAGE=LIMIT")]
    stage_nmse: Vec<String>,
    #[command(flatten)]
    threads: ThreadArgs,
    #[command(flatten)]
    timeout: TimeoutArgs,
    #[command(flatten)]
    engine_options: EngineOptionArgs,
    /// Print every compared (position, layer, stage) row, not only the summary.
    #[arg(long, conflicts_with = "failures")]
    all: bool,
    /// Print the failing rows after the summary.
    #[arg(long)]
    failures: bool,
    /// Print the whole report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ConformanceArgs {
    /// The probe to check.
    #[arg(value_name = "SPEC", long_help = SPEC_HELP)]
    probe: String,
    /// Forge preset to run it on.
    #[arg(long, default_value = "tiny-i2s")]
    preset: String,
    /// Seed for --preset.
    #[arg(long = "preset-seed", default_value_t = 1)]
    preset_seed: u64,
    /// A GGUF file instead of a preset.
    #[arg(long, short = 'm', conflicts_with = "preset")]
    model: Option<PathBuf>,
    /// Base deadline per request in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    timeout: f64,
    #[command(flatten)]
    threads: ThreadArgs,
    /// Print the checklist as JSON.
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
    #[command(flatten)]
    prompt: PromptArgs,
    /// Output folder (created; a previous trace in it is replaced only once the new one is
    /// complete).
    #[arg(long, short = 'o')]
    out: PathBuf,
    /// Who runs it.
    #[arg(long, default_value = "engine", value_name = "SPEC", long_help = SPEC_HELP)]
    probe: String,
    /// Also write each tensor's f32 values as .npy (trace-diff needs them for NMSE).
    #[arg(long)]
    raw: bool,
    /// Greedy decode steps traced after the prompt.
    #[arg(short = 'n', long = "decode", default_value_t = 0)]
    decode: usize,
    #[command(flatten)]
    threads: ThreadArgs,
    #[command(flatten)]
    timeout: TimeoutArgs,
    #[command(flatten)]
    engine: EngineOptionArgs,
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
    /// Run every fault on this preset instead of each case's own model (e.g. trained-i2s),
    /// showing what the faulty engine says next to the reference and what bitprobe names.
    #[arg(long, value_name = "PRESET")]
    on: Option<String>,
    /// With --on: the prompt.
    #[arg(
        long,
        short = 'p',
        visible_alias = "text",
        requires = "on",
        default_value = "The capital of France is"
    )]
    prompt: String,
    /// With --on: greedy tokens generated and compared.
    #[arg(short = 'n', long = "decode", requires = "on", default_value_t = 8)]
    decode: usize,
    /// Folder of gallery case files [default: cases/gallery of this workspace].
    #[arg(long)]
    cases: Option<PathBuf>,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Another implementation to measure besides ours (repeatable).
    #[arg(long, value_name = "SPEC", long_help = SPEC_HELP)]
    engine: Vec<String>,
    /// The implementation the ratios are taken against.
    #[arg(long, default_value = "oracle", value_name = "SPEC", long_help = SPEC_HELP)]
    reference: String,
    #[command(flatten)]
    threads: ThreadArgs,
    /// Prompt length for the prefill figure.
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    /// Decode steps for the decode figure.
    #[arg(short = 'n', long = "decode-tokens", default_value_t = 64)]
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
    /// The models to sweep (see the comments in the default file) [default: models.toml of
    /// this workspace].
    #[arg(long)]
    models: Option<PathBuf>,
    /// Folder of case files; each model entry picks its cases from here by id [default:
    /// cases/ of this workspace].
    #[arg(long)]
    cases: Option<PathBuf>,
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
    /// Largest accepted drop of an engine/reference speed ratio against the baseline.
    #[arg(long, default_value_t = 0.10)]
    speed_tolerance: f64,
    /// Prompt tokens for the speed figures.
    #[arg(long, default_value_t = 64)]
    prompt_tokens: usize,
    /// Decode steps for the speed figures.
    #[arg(short = 'n', long = "decode-tokens", default_value_t = 64)]
    decode_tokens: usize,
    /// Alternating engine/reference speed repetitions per result (medians reported).
    #[arg(long, default_value_t = 7)]
    reps: usize,
    /// Skip the speed measurements.
    #[arg(long)]
    no_speed: bool,
}

fn main() -> ExitCode {
    cli::install_signal_handlers();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Forge(a) => cli::forge::forge(a),
        Command::Run(a) => cli::run::run(a),
        Command::Tokenize(a) => cli::tokenize::tokenize(a),
        Command::Diff(a) => cli::diff::diff(a),
        Command::Conformance(a) => cli::conformance::conformance(a),
        Command::Probes => cli::probes::list(),
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
            eprintln!("error: {}", cli::error_text(&e));
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

    /// One name per meaning in every command: the model is `-m, --model` (with `--preset` and
    /// `--preset-seed` beside it), the prompt `-p, --prompt` (alias `--text`), threads
    /// `-t, --threads`, any count of generated or decoded tokens `-n`; no bare `--seed`
    /// (`--preset-seed` forges, `--sampling-seed` samples); every option says what it does;
    /// no help text or default shows this machine's paths.
    #[test]
    fn one_flag_name_per_meaning_in_every_command() {
        let root = harness::snapshot::workspace_root().display().to_string();
        let cli = Cli::command();
        let mut checked = 0;
        for sub in cli.get_subcommands() {
            let cmd = sub.get_name();
            let longs: Vec<&str> = sub.get_arguments().filter_map(|a| a.get_long()).collect();
            for a in sub.get_arguments() {
                let Some(long) = a.get_long() else { continue };
                if long == "help" {
                    continue;
                }
                checked += 1;
                let help = format!(
                    "{} {}",
                    a.get_help().map(|h| h.to_string()).unwrap_or_default(),
                    a.get_long_help().map(|h| h.to_string()).unwrap_or_default()
                );
                assert!(!help.trim().is_empty(), "{cmd} --{long} has no help text");
                let defaults: Vec<String> = a
                    .get_default_values()
                    .iter()
                    .map(|v| v.to_string_lossy().into_owned())
                    .collect();
                assert!(
                    !help.contains(&root) && !defaults.iter().any(|d| d.contains(&root)),
                    "{cmd} --{long} shows this machine's path {root}"
                );
                let short = a.get_short();
                match long {
                    "model" => assert_eq!(short, Some('m'), "{cmd} --model"),
                    "threads" => assert_eq!(short, Some('t'), "{cmd} --threads"),
                    "prompt" => {
                        assert_eq!(short, Some('p'), "{cmd} --prompt");
                        let aliases = a.get_all_aliases().unwrap_or_default();
                        assert!(aliases.contains(&"text"), "{cmd} --prompt lacks --text");
                    }
                    "decode" | "decode-tokens" | "n-predict" => {
                        assert_eq!(short, Some('n'), "{cmd} --{long}: tokens are -n")
                    }
                    "preset" => assert!(
                        longs.contains(&"preset-seed"),
                        "{cmd} has --preset but no --preset-seed"
                    ),
                    "seed" => panic!("{cmd} --seed: say --preset-seed or --sampling-seed"),
                    "text" => panic!("{cmd} --text: the prompt is -p, --prompt"),
                    _ => {}
                }
            }
        }
        assert!(checked > 80, "only {checked} options seen");
    }
}
