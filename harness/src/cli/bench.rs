//! `bitprobe bench`: speed side by side.

use crate::*;

pub(crate) fn bench(a: BenchArgs) -> Result<ExitCode> {
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
