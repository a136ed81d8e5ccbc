//! `bitprobe`: compare a BitNet b1.58 engine with bitnet.cpp, stage by stage.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use harness::probes::{self, ModelSpec, ProbeKind};
use probe::{GenerateRequest, Sampling};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

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
        Command::Forge(a) => forge(a),
        Command::Run(a) => run(a),
        Command::Tokenize(a) => tokenize(a),
        Command::Diff(a) => diff(a),
        Command::Gallery(a) => gallery(a),
        Command::Inspect(a) => inspect(a),
        Command::Trace(a) => trace(a),
        Command::TraceDiff(a) => trace_diff(a),
        Command::Bench(a) => bench(a),
        Command::Sweep(a) => sweep(a),
        Command::ServeEngine => serve_engine(),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn forge(a: ForgeArgs) -> Result<ExitCode> {
    if a.list {
        for p in engine::forge::presets() {
            println!("{:<24} {}", p.name, p.description);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (name, out) = (
        a.preset.expect("clap requires it"),
        a.out.expect("clap requires it"),
    );
    let preset = engine::forge::preset(&name)?;
    let t = std::time::Instant::now();
    engine::forge::forge_to(preset, a.seed, &out)
        .with_context(|| format!("forging {name} into {}", out.display()))?;
    let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "forged {name} (seed {}) → {} ({:.1} MB in {:.1?})",
        a.seed,
        out.display(),
        size as f64 / 1e6,
        t.elapsed()
    );
    Ok(ExitCode::SUCCESS)
}

fn engine_options(tokenizer: &str) -> Vec<(&str, &str)> {
    vec![("tokenizer", tokenizer)]
}

fn run(a: RunArgs) -> Result<ExitCode> {
    let path = a.model.resolve()?;
    let opts = if a.probe == ProbeKind::Engine {
        engine_options(&a.tokenizer)
    } else {
        vec![]
    };
    let mut p = probes::open(a.probe, &path, a.threads, &opts)?;
    let prompt = if a.chat {
        let text = engine::tokenizer::llama3_chat(&[("user", a.prompt.as_str())], true);
        p.tokenize(&text, false, true)?
    } else {
        p.tokenize(&a.prompt, true, false)?
    };
    let info = p.info().clone();
    eprintln!(
        "{} · {} · {} threads",
        info.implementation,
        path.display(),
        info.threads
    );
    eprintln!("prompt: {} tokens {:?}", prompt.len(), prompt);
    let sampling = if a.temp > 0.0 {
        Sampling::Seeded {
            temperature: a.temp,
            top_k: a.top_k,
            top_p: a.top_p,
            seed: a.seed,
        }
    } else {
        Sampling::Greedy
    };
    let mut req = GenerateRequest::greedy(prompt.clone(), a.n);
    req.sampling = sampling;
    req.stop_at_eos = true;
    // Every piece up front (≈1 MB for a 128k vocab), so tokens print as they are chosen.
    let all: Vec<u32> = (0..info.n_vocab).collect();
    let table = p.pieces(&all)?;
    let mut stdout = std::io::stdout();
    let g = {
        let mut on_token = |t: u32| {
            let _ = stdout.write_all(table.get(t as usize).map_or(&[][..], |v| v.as_slice()));
            let _ = stdout.flush();
        };
        p.generate_with(&req, &mut on_token)?
    };
    writeln!(stdout)?;
    eprintln!("generated: {:?}", g.tokens);
    eprintln!(
        "prompt: {:.1} tok/s ({} tokens in {:.3} s) · decode: {:.1} tok/s ({} steps in {:.3} s)",
        prompt.len() as f64 / g.prefill_seconds.max(1e-9),
        prompt.len(),
        g.prefill_seconds,
        g.steps.len() as f64 / g.decode_seconds.max(1e-9),
        g.steps.len(),
        g.decode_seconds
    );
    Ok(ExitCode::SUCCESS)
}

fn tokenize(a: TokenizeArgs) -> Result<ExitCode> {
    let path = a.model.resolve()?;
    let opts = if a.probe == ProbeKind::Engine {
        engine_options(&a.tokenizer)
    } else {
        vec![]
    };
    if a.compare {
        return tokenize_compare(&a, &path);
    }
    let text = a.text.as_deref().unwrap_or_default();
    let mut p = probes::open(a.probe, &path, 1, &opts)?;
    let ids = p.tokenize(text, !a.no_bos, a.parse_special)?;
    let pieces = p.pieces(&ids)?;
    println!("{} tokens", ids.len());
    for (id, piece) in ids.iter().zip(pieces) {
        println!("{id:>8}  {:?}", String::from_utf8_lossy(&piece));
    }
    Ok(ExitCode::SUCCESS)
}

/// Engine, oracle and (for Llama-3 vocabularies) truth on one text or a list of texts.
fn tokenize_compare(a: &TokenizeArgs, path: &std::path::Path) -> Result<ExitCode> {
    use engine::forge::vocab::{assets_dir, LLAMA3_ASSET};
    let mut e = probes::open(ProbeKind::Engine, path, 1, &engine_options(&a.tokenizer))?;
    let mut o = probes::open(ProbeKind::Oracle, path, 1, &[])?;
    let truth = if e.info().n_vocab == 128_256 {
        Some(engine::tokenizer::truth::Truth::from_ranks_file(
            assets_dir().join(LLAMA3_ASSET),
        )?)
    } else {
        None
    };
    let texts: Vec<String> = match (&a.inputs, &a.text) {
        (Some(f), _) => serde_json::from_str(
            &std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
        )
        .with_context(|| format!("{} is not a JSON array of strings", f.display()))?,
        (None, Some(t)) => vec![t.clone()],
        (None, None) => bail!("give --text or --inputs"),
    };
    let (bos, ps) = (!a.no_bos, a.parse_special);
    let mut counts = [0usize; 3]; // engine≠oracle, oracle≠truth, engine≠truth
    let single = texts.len() == 1;
    for text in &texts {
        let ei = e.tokenize(text, bos, ps)?;
        let oi = o.tokenize(text, bos, ps)?;
        let ti = truth
            .as_ref()
            .map(|t| t.encode(text, bos, ps))
            .transpose()?;
        let ne = |x: &[u32], y: &[u32]| x != y;
        counts[0] += ne(&ei, &oi) as usize;
        if let Some(ti) = &ti {
            counts[1] += ne(&oi, ti) as usize;
            counts[2] += ne(&ei, ti) as usize;
        }
        if a.emit_known_deviations {
            if let Some(ti) = &ti {
                if oi != *ti {
                    println!("[[tokenize.known_deviation]]");
                    println!("probe = \"oracle\"");
                    println!("input = {}", toml::Value::String(text.clone()));
                    println!("parse_special = {ps}");
                    println!("ids = {oi:?}");
                    println!("reason = \"GGUF has no tokenizer.ggml.pre: llama.cpp falls back to its default pre-tokenizer\"\n");
                }
            }
            continue;
        }
        if !single && ei == oi && ti.as_ref().is_none_or(|t| *t == ei) {
            continue;
        }
        println!("{text:?}");
        let mut cols: Vec<(&str, Vec<u32>, Vec<Vec<u8>>)> = vec![
            ("engine", ei.clone(), e.pieces(&ei)?),
            ("oracle", oi.clone(), o.pieces(&oi)?),
        ];
        if let (Some(t), Some(ti)) = (&truth, &ti) {
            cols.push(("truth", ti.clone(), t.pieces(ti)));
        }
        let n = cols.iter().map(|c| c.1.len()).max().unwrap_or(0);
        let first_diff = (0..n).find(|&i| cols.iter().any(|c| c.1.get(i) != cols[0].1.get(i)));
        print!("  {:>4}", "#");
        for c in &cols {
            print!("  {:<28}", c.0);
        }
        println!();
        for i in 0..n {
            let mark = if Some(i) == first_diff { "→" } else { " " };
            print!("{mark} {i:>4}");
            for c in &cols {
                let cell = match (c.1.get(i), c.2.get(i)) {
                    (Some(id), Some(p)) => format!("{id:>6} {:?}", String::from_utf8_lossy(p)),
                    _ => String::new(),
                };
                print!("  {cell:<28}");
            }
            println!();
        }
        match first_diff {
            None => println!("  all agree"),
            Some(i) => {
                let who: Vec<String> = cols
                    .iter()
                    .skip(1)
                    .map(|c| {
                        format!(
                            "{} {} engine",
                            c.0,
                            if c.1 == cols[0].1 { "=" } else { "≠" }
                        )
                    })
                    .collect();
                println!("  first difference at token {i}: {}", who.join(", "));
            }
        }
    }
    if !single || a.emit_known_deviations {
        let total = texts.len();
        eprintln!(
            "{total} inputs: engine ≠ oracle on {}{}",
            counts[0],
            if truth.is_some() {
                format!(
                    ", oracle ≠ truth on {}, engine ≠ truth on {}",
                    counts[1], counts[2]
                )
            } else {
                String::new()
            }
        );
    }
    Ok(if counts[0] > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn serve_engine() -> Result<ExitCode> {
    probe::wire::serve(
        engine::EngineProbe::open,
        std::io::stdin().lock(),
        std::io::stdout().lock(),
    )?;
    Ok(ExitCode::SUCCESS)
}

fn diff(a: DiffArgs) -> Result<ExitCode> {
    use harness::diff::{run_diff, DiffRequest};
    let path = a.model.resolve()?;
    let mut stages = Vec::new();
    for n in &a.stages {
        match probe::Stage::from_name(n) {
            Some(s) => stages.push(s),
            None => bail!(
                "unknown stage '{n}' (valid: {})",
                probe::Stage::valid_names()
            ),
        }
    }
    if stages.is_empty() {
        stages = probe::Stage::ALL.to_vec();
    }
    let mut opts = engine_options(&a.tokenizer);
    if let Some(f) = &a.inject_fault {
        opts.push(("fault", f.as_str()));
    }
    let mut e = probes::open(ProbeKind::Engine, &path, a.threads, &opts)?;
    let mut o = probes::open(ProbeKind::Oracle, &path, a.threads, &[])?;
    let req = DiffRequest {
        text: a.prompt.clone(),
        add_bos: !a.no_bos,
        parse_special: a.parse_special,
        chat: a.chat,
        decode: a.decode,
        stages,
        layers: (!a.layers.is_empty()).then(|| a.layers.clone()),
    };
    let tol = harness::tolerance::ToleranceOverrides::default();
    let r = run_diff(e.as_mut(), o.as_mut(), &req, &tol)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(if r.pass() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    println!("model     {}", path.display());
    println!("tokens    engine {:?}", r.engine_tokens);
    println!("          oracle {:?}", r.oracle_tokens);
    println!("weights   {}", r.weight_type);
    println!();
    print!("{}", harness::diff::render_rows_and_logits(&r, a.failures));
    if !r.oracle_greedy.is_empty() {
        println!("greedy    oracle {:?}", r.oracle_greedy);
        println!("          engine {:?}", r.engine_greedy);
    }
    match &r.first_divergence {
        None => {
            println!("verdict   PASS: engine and oracle agree within tolerance");
            Ok(ExitCode::SUCCESS)
        }
        Some(d) => {
            println!("verdict   FIRST DIVERGENCE: {d}");
            Ok(ExitCode::from(1))
        }
    }
}

fn inspect(a: InspectArgs) -> Result<ExitCode> {
    let path = match a.file {
        Some(p) => p,
        None => a.model.resolve()?,
    };
    let t = std::time::Instant::now();
    let r = harness::inspect::inspect(&path)
        .with_context(|| format!("inspecting {}", path.display()))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", harness::inspect::render(&r));
    }
    eprintln!("inspected in {:.2?}", t.elapsed());
    Ok(ExitCode::SUCCESS)
}

fn trace(a: TraceArgs) -> Result<ExitCode> {
    use harness::trace::{record, TraceRequest};
    let path = a.model.resolve()?;
    let opts = if a.probe == ProbeKind::Engine {
        engine_options(&a.tokenizer)
    } else {
        vec![]
    };
    let mut p = probes::open(a.probe, &path, a.threads, &opts)?;
    let req = TraceRequest {
        text: a.prompt,
        add_bos: !a.no_bos,
        parse_special: a.parse_special,
        chat: a.chat,
        decode: a.decode,
        raw: a.raw,
    };
    let m = record(p.as_mut(), &a.probe.to_string(), &path, &req, &a.out)
        .with_context(|| format!("tracing into {}", a.out.display()))?;
    eprintln!(
        "{}: {} stage tensors ({} prompt tokens, {} decode steps{}) → {}",
        m.implementation,
        m.files.as_ref().map_or(0, |f| f.len()),
        m.tokens.len(),
        m.decode.len(),
        if a.raw { ", with .npy values" } else { "" },
        a.out.join(harness::trace::MANIFEST).display()
    );
    Ok(ExitCode::SUCCESS)
}

fn trace_diff(a: TraceDiffArgs) -> Result<ExitCode> {
    use harness::trace::{read, render, trace_diff};
    let ta = read(&a.a).with_context(|| format!("reading trace {}", a.a.display()))?;
    let tb = read(&a.b).with_context(|| format!("reading trace {}", a.b.display()))?;
    let d = trace_diff(&ta, &tb, &harness::tolerance::ToleranceOverrides::default());
    if a.json {
        println!("{}", serde_json::to_string_pretty(&d)?);
    } else {
        print!("{}", render(&d, a.failures));
    }
    Ok(if d.pass() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn gallery(a: GalleryArgs) -> Result<ExitCode> {
    use harness::trials::{faults_built, gallery_run, GalleryResult};
    if !faults_built() {
        eprintln!(
            "error: this bitprobe was built without fault injection; the gallery needs it:\n  \
             cargo build -p harness --release --features faults"
        );
        return Ok(ExitCode::from(2));
    }
    let root = a.cases.parent().unwrap_or(&a.cases).to_path_buf();
    let files = harness::case::discover(&a.cases);
    if files.is_empty() {
        bail!("no gallery cases (*.toml) in {}", a.cases.display());
    }
    let runs = harness::runs::Runs::default();
    let mut results: Vec<(GalleryResult, f64)> = Vec::new();
    for file in files {
        let case =
            harness::case::load(&file, &root).map_err(|e| anyhow::anyhow!("{}", e.message))?;
        let Some(fault) = case.fault.clone() else {
            bail!("{}: a gallery case needs `fault`", file.display())
        };
        if a.filter
            .as_ref()
            .is_some_and(|f| !fault.contains(f.as_str()))
        {
            continue;
        }
        let t = std::time::Instant::now();
        let r = gallery_run(&runs, &case).map_err(|e| anyhow::anyhow!("{}: {e}", case.id))?;
        let secs = t.elapsed().as_secs_f64();
        if !a.json {
            eprintln!(
                "{:<22} {} ({secs:.1} s)",
                fault,
                if r.pass { "ok" } else { "FAIL" }
            );
        }
        results.push((r, secs));
    }
    let all_pass = results.iter().all(|(r, _)| r.pass);
    if a.json {
        let rows: Vec<serde_json::Value> = results
            .iter()
            .map(|(r, secs)| {
                let mut v = serde_json::to_value(r).unwrap_or_default();
                v["detected"] = r.detected().into();
                v["seconds"] = (*secs).into();
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(if all_pass {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    let nmse = |x: Option<f64>| x.map_or("-".to_string(), harness::diff::fmt_metric);
    let line = |c: [&str; 8]| {
        format!(
            "{:<22} {:<8} {:<40} {:<9} {:<32} {:<22} {:<9} {}",
            c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]
        )
    };
    println!(
        "{}",
        line([
            "fault",
            "detected",
            "first divergence reported",
            "nmse",
            "expected",
            "first not bit-exact",
            "nmse",
            "result"
        ])
    );
    for (r, _) in &results {
        let reported = r.reported.as_ref().map_or("-".to_string(), |d| {
            format!("{} @ {} pos {}", d.stage, d.phase, d.position)
        });
        let expected = format!(
            "{} ({})",
            r.expected,
            r.expected_phase.as_deref().unwrap_or("any phase")
        );
        println!(
            "{}",
            line([
                &r.fault,
                if r.detected() { "yes" } else { "no" },
                &reported,
                &nmse(r.nmse),
                &expected,
                r.first_inexact.as_deref().unwrap_or("-"),
                &nmse(r.first_inexact_nmse),
                if r.pass { "pass" } else { "FAIL" },
            ])
        );
    }
    let n_pass = results.iter().filter(|(r, _)| r.pass).count();
    println!(
        "\n{n_pass}/{} faults detected and localized as expected",
        results.len()
    );
    Ok(if all_pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn bench(a: BenchArgs) -> Result<ExitCode> {
    let model = match (&a.model, &a.preset) {
        (Some(p), _) => ModelSpec::Path(p.clone()),
        (None, Some(name)) => ModelSpec::Preset {
            name: name.clone(),
            seed: 1,
        },
        (None, None) => ModelSpec::Preset {
            name: "2b4t-i2s".into(),
            seed: 1,
        },
    };
    if a.reps == 0 || a.prompt_tokens == 0 || a.decode_tokens == 0 {
        bail!("--reps, --prompt-tokens and --decode-tokens must be at least 1");
    }
    eprintln!("bench: model {model} (forging it first if needed)");
    let path = model.resolve().with_context(|| format!("model {model}"))?;
    let me = std::env::current_exe().context("locating the bitprobe binary")?;
    let req = harness::bench::BenchRequest {
        threads: a.threads,
        prompt_tokens: a.prompt_tokens,
        decode_tokens: a.decode_tokens,
        reps: a.reps,
    };
    let report = harness::bench::run(&me, &path, &req, |line| eprintln!("bench: {line}"))
        .map_err(anyhow::Error::msg)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", harness::bench::table(&report));
    }
    Ok(ExitCode::SUCCESS)
}

/// `2026-11-22T101500Z`: a sortable folder name without colons.
fn utc_stamp() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace(':', "")
}

/// The newest `receipt.json` in a folder next to `out` (not `out` itself).
fn previous_receipt(out: &std::path::Path) -> Option<PathBuf> {
    let parent = out.parent()?;
    let mut best: Option<(std::time::SystemTime, PathBuf)> = None;
    for e in std::fs::read_dir(parent).ok()?.flatten() {
        let dir = e.path();
        if dir == out || !dir.is_dir() {
            continue;
        }
        let r = dir.join("receipt.json");
        if let Ok(t) = r.metadata().and_then(|m| m.modified()) {
            if best.as_ref().is_none_or(|(bt, _)| t > *bt) {
                best = Some((t, r));
            }
        }
    }
    best.map(|(_, p)| p.canonicalize().unwrap_or(p))
}

fn sweep(a: SweepArgs) -> Result<ExitCode> {
    use harness::sweep::{self, receipt::Status, Event};
    use indicatif::{ProgressBar, ProgressStyle};
    use std::io::IsTerminal;

    let models = sweep::models::load(&a.models).map_err(anyhow::Error::msg)?;
    if !a.cases.is_dir() {
        bail!(
            "cases folder {} does not exist (give one with --cases)",
            a.cases.display()
        );
    }
    if let Some(f) = &a.inject_fault {
        if !harness::trials::faults_built() {
            bail!("--inject-fault {f}: this bitprobe was built without fault injection; build with `cargo build -p harness --release --features faults`");
        }
        engine::faults::Fault::from_name(f).map_err(|e| {
            anyhow::anyhow!(
                "--inject-fault: {e}; known: {}",
                engine::faults::Fault::NAMES.join(", ")
            )
        })?;
    }
    if !(0.0..1.0).contains(&a.speed_tolerance) {
        bail!("--speed-tolerance must be in [0, 1), e.g. 0.1 for 10%");
    }
    if a.reps == 0 || a.prompt_tokens == 0 || a.decode_tokens == 0 {
        bail!("--reps, --prompt-tokens and --decode-tokens must be at least 1");
    }
    let out = a.out.clone().unwrap_or_else(|| {
        harness::snapshot::workspace_root()
            .join("target/bitprobe-sweep")
            .join(utc_stamp())
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let baseline_path = match a.baseline.as_deref() {
        Some("none") => None,
        Some(p) => {
            let p = PathBuf::from(p);
            Some(if p.is_dir() {
                p.join("receipt.json")
            } else {
                p
            })
        }
        None => previous_receipt(&out),
    };
    // Read the baseline first: a bad one is a usage error before a long run, not after.
    let baseline = match &baseline_path {
        Some(p) => Some(sweep::baseline::load(p).map_err(anyhow::Error::msg)?),
        None => None,
    };

    let req = sweep::SweepRequest {
        models,
        cases_dir: a.cases.clone(),
        inject_fault: a.inject_fault.clone(),
        jobs: a
            .jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        speed: sweep::receipt::SpeedSettings {
            prompt_tokens: a.prompt_tokens,
            decode_tokens: a.decode_tokens,
            reps: a.reps,
        },
        only: a.only.clone(),
    };
    let mut req = req;
    if a.no_speed {
        for m in &mut req.models.models {
            m.speed = false;
        }
    }
    let tty = std::io::stderr().is_terminal();
    let bar = if tty {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:.bold} {msg:24} [{bar:32}] {pos}/{len} trials {elapsed_precise}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let selected = req
        .models
        .models
        .iter()
        .filter(|m| a.only.as_ref().is_none_or(|o| m.name.contains(o.as_str())))
        .count();
    if selected == 0 {
        bail!(
            "no model in {} has a name containing {:?}",
            a.models.display(),
            a.only.as_deref().unwrap_or("")
        );
    }
    eprintln!(
        "sweep: {selected} model(s) from {} → {}",
        a.models.display(),
        out.display()
    );
    if let Some(p) = &baseline_path {
        eprintln!("sweep: baseline {}", p.display());
    }
    let progress = |ev: Event| match ev {
        Event::ModelStart { index, of, name } => {
            bar.set_prefix(format!("[{index}/{of}]"));
            bar.set_message(name.to_string());
            bar.set_length(0);
            bar.set_position(0);
        }
        Event::Trials { count } => bar.set_length(count as u64),
        Event::TrialDone => bar.inc(1),
        Event::Speed => bar.set_message(format!("{} (speed)", bar.message())),
        Event::ModelDone {
            index,
            of,
            result: m,
        } => {
            let speed = m.speed.as_ref().map_or(String::new(), |s| {
                format!(
                    "; prefill {:.2}×, decode {:.2}×",
                    s.prefill_ratio, s.decode_ratio
                )
            });
            let what = match m.status {
                Status::Pass | Status::Fail => format!(
                    "{} ({} pass, {} fail, {} ignored){}{speed}",
                    m.status.as_str(),
                    m.counts.pass,
                    m.counts.fail,
                    m.counts.ignored,
                    m.first_divergence
                        .as_ref()
                        .map_or(String::new(), |d| format!(
                            "; first divergence {} at {}",
                            d.stage, d.phase
                        )),
                ),
                Status::Error | Status::Skipped => format!(
                    "{}: {}",
                    m.status.as_str(),
                    m.error.as_deref().unwrap_or("")
                ),
            };
            let line = format!(
                "sweep: [{index}/{of}] {}: {what} in {:.1} s",
                m.name, m.seconds
            );
            if tty {
                bar.println(line);
            } else {
                eprintln!("{line}");
            }
        }
    };
    let mut receipt = sweep::run(&req, &progress);
    bar.finish_and_clear();
    if let (Some(b), Some(p)) = (&baseline, &baseline_path) {
        sweep::attach_baseline(&mut receipt, b, p, a.speed_tolerance);
    }
    let write = |name: &str, text: String| -> Result<PathBuf> {
        let p = out.join(name);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
        Ok(p)
    };
    write(
        "receipt.json",
        serde_json::to_string_pretty(&receipt)? + "\n",
    )?;
    write("report.md", sweep::report::markdown(&receipt))?;
    let html = write("report.html", sweep::report::html(&receipt))?;
    let s = &receipt.summary;
    eprintln!(
        "sweep: {} models: {} pass, {} fail, {} error, {} skipped; {} trials, {} failed; {:.0} s",
        s.models,
        s.passed,
        s.failed,
        s.errors,
        s.skipped,
        s.trials,
        s.trials_failed,
        receipt.duration_seconds
    );
    let bad = match &receipt.comparison {
        Some(c) => {
            for g in sweep::baseline::groups(&c.regressions) {
                eprintln!(
                    "regression: {}: {}; {}",
                    g.model,
                    g.counts_text(),
                    g.lead(&receipt)
                );
            }
            eprintln!(
                "sweep: {} regression(s), {} fixed against {}",
                c.regressions.len(),
                c.improvements.len(),
                c.baseline
            );
            !c.regressions.is_empty()
        }
        None => {
            eprintln!("sweep: no baseline; failures count as regressions on a first run");
            s.failed + s.errors > 0
        }
    };
    eprintln!(
        "sweep: wrote {}/{{receipt.json, report.md}} and {}",
        out.display(),
        html.display()
    );
    Ok(if bad {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
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
