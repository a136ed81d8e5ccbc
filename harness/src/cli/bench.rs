//! `bitprobe bench`: speed side by side.

use crate::*;

pub(crate) fn bench(a: BenchArgs) -> Result<ExitCode> {
    let model = match (&a.model.model, &a.model.preset) {
        (None, None) => ModelSpec::Preset {
            name: "2b4t-i2s".into(),
            seed: 1,
        },
        _ => a.model.spec()?,
    };
    if a.reps == 0 || a.prompt_tokens == 0 || a.decode_tokens == 0 {
        bail!("--reps, --prompt-tokens and --decode-tokens must be at least 1");
    }
    eprintln!("bench: model {model} (forging it first if needed)");
    let path = resolve_model(&model)?;
    let registry = harness::probes::Registry::global().map_err(anyhow::Error::msg)?;
    let parse = |s: &str| ProbeSpec::parse(s, registry).map_err(anyhow::Error::msg);
    // Our engine is always measured; each --engine besides it; the reference last.
    let mut probes = vec![ProbeSpec::Engine];
    for e in &a.engine {
        let spec = parse(e)?;
        if !probes.contains(&spec) {
            probes.push(spec);
        }
    }
    let reference = parse(&a.reference)?;
    probes.retain(|p| *p != reference);
    probes.push(reference);
    let req = harness::bench::BenchRequest {
        threads: a.threads.get(),
        prompt_tokens: a.prompt_tokens,
        decode_tokens: a.decode_tokens,
        reps: a.reps,
    };
    let report = harness::bench::run(&probes, &path, &req, |line| eprintln!("bench: {line}"))
        .map_err(anyhow::Error::msg)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", harness::bench::table(&report));
    }
    Ok(ExitCode::SUCCESS)
}
