//! `bitprobe trace` and `trace-diff`: stage tensors on disk, and two traces compared.

use crate::cli::diff::parse_stages;
use crate::*;

pub(crate) fn trace(a: TraceArgs) -> Result<ExitCode> {
    use harness::trace::{record, TraceRequest};
    let spec = cli::spec(&a.probe)?;
    let path = a.model.resolve()?;
    let spin = cli::spinner(&format!("opening {spec}"));
    let mut p = open_probe(&spec, &path, a.threads, a.timeout, &a.engine)?;
    let caps = p.info().caps();
    if !(caps.forward && caps.tokenize) {
        bail!("{spec} cannot be traced: a trace needs `tokenize` and `forward` with stages (its capabilities: {caps:?})");
    }
    spin.set(&format!("tracing every stage with {spec}"));
    let req = TraceRequest {
        prompt: a.prompt.prompt(a.decode)?,
        raw: a.raw,
    };
    let m = record(p.as_mut(), &spec.label(), &path, &req, &a.out)
        .with_context(|| format!("tracing into {}", a.out.display()))?;
    drop(spin);
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

pub(crate) fn trace_diff(a: TraceDiffArgs) -> Result<ExitCode> {
    use harness::trace::{read, render, trace_diff, TraceDiffOptions};
    let ta = read(&a.a).with_context(|| format!("reading trace {}", a.a.display()))?;
    let tb = read(&a.b).with_context(|| format!("reading trace {}", a.b.display()))?;
    let mut tolerance = harness::tolerance::ToleranceOverrides {
        nmse: a.nmse,
        kl: a.kl,
        ..Default::default()
    };
    tolerance.validate().map_err(anyhow::Error::msg)?;
    tolerance.stages.clear();
    let opts = TraceDiffOptions {
        stages: (!a.stages.is_empty())
            .then(|| parse_stages(&a.stages))
            .transpose()?,
        layers: (!a.layers.is_empty()).then(|| a.layers.clone()),
        prompt_only: a.prompt_only,
        tolerance,
    };
    let d = trace_diff(&ta, &tb, &opts);
    if a.json {
        let mut v = serde_json::to_value(&d)?;
        v["report"] = d.report.to_json();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", render(&d, a.failures));
    }
    Ok(if d.pass() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
