//! `bitprobe diff`: two probes on one prompt, judged stage by stage.

use crate::*;
use harness::diff::{render_rows_and_logits, render_summary, run_diff, DiffRequest};
use harness::judge::Labels;

pub(crate) fn diff(a: DiffArgs) -> Result<ExitCode> {
    let (engine, reference) = (cli::spec(&a.engine)?, cli::spec(&a.reference)?);
    let stages = parse_stages(&a.stages)?;
    let path = a.model.resolve()?;
    let info = engine::gguf::GgufFile::open(&path).ok().and_then(|f| {
        f.get_u32(&format!(
            "{}.block_count",
            f.get_str("general.architecture").ok()?
        ))
        .ok()
    });
    if let (Some(n_layer), false) = (info, a.layers.is_empty()) {
        if let Some(l) = a.layers.iter().find(|&&l| l >= n_layer) {
            bail!(
                "--layers {l}: the model has {n_layer} layers (0..{})",
                n_layer - 1
            );
        }
    }
    let req = DiffRequest {
        prompt: a.prompt.prompt(a.decode)?,
        stages,
        layers: (!a.layers.is_empty()).then(|| a.layers.clone()),
    };
    let mut spin = cli::spinner(&format!("opening {engine} and {reference}"));
    let mut e = open_probe(&engine, &path, a.threads, a.timeout, &a.engine_options)?;
    let mut o = open_probe(&reference, &path, a.threads, a.timeout, &a.engine_options)?;
    // Warn before a prompt one of them cannot take (today's bitnet.cpp's stack limit).
    if o.info().caps().tokenize {
        if let Ok(t) = req.prompt.tokenize(o.as_mut()) {
            drop(spin);
            for (s, threads) in [(&engine, e.info().threads), (&reference, o.info().threads)] {
                cli::warn_long_prompt(s, &path, threads as usize, t.len());
            }
            spin = cli::spinner("running both and judging every stage");
        }
    }
    spin.set("running both and judging every stage");
    let mut tol = harness::tolerance::ToleranceOverrides {
        nmse: a.nmse,
        kl: a.kl,
        ..Default::default()
    };
    for s in &a.stage_nmse {
        let (name, v) = s
            .split_once('=')
            .with_context(|| format!("--stage-nmse {s}: write STAGE=LIMIT, e.g. attn_q=1e-3"))?;
        let stage = probe::Stage::from_name(name).with_context(|| {
            format!(
                "--stage-nmse {s}: unknown stage '{name}' (valid: {})",
                probe::Stage::valid_names()
            )
        })?;
        let v: f64 = v
            .parse()
            .with_context(|| format!("--stage-nmse {s}: '{v}' is not a number"))?;
        tol.stages
            .insert(stage, harness::tolerance::StageOverride { nmse: Some(v) });
    }
    tol.validate().map_err(anyhow::Error::msg)?;
    let labels = Labels::new(engine.label(), reference.label());
    let r = run_diff(e.as_mut(), o.as_mut(), labels, &req, &tol)?;
    drop(spin);
    let code = if r.pass() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r.to_json())?);
        return Ok(code);
    }
    let (la, lb) = (&r.labels.a, &r.labels.b);
    println!("model     {}", path.display());
    println!("{la:<9} {}", e.info().implementation);
    println!("{lb:<9} {}  (reference)", o.info().implementation);
    println!("tokens    {la} {:?}", r.tokens_a);
    println!("          {lb} {:?}", r.tokens_b);
    println!("weights   {}", r.weight_type);
    println!();
    if a.all || a.failures {
        print!("{}", render_rows_and_logits(&r, a.failures));
        println!();
    }
    print!("{}", render_summary(&r));
    // What each says left to itself (the decode rows above are teacher-forced).
    let (ca, cb) = (e.info().caps(), o.info().caps());
    if req.prompt.decode > 0 && ca.generate && cb.generate && cb.tokenize {
        let n = req.prompt.decode + 1;
        let sb = harness::diff::says(o.as_mut(), None, &r.tokens_b, n);
        let sa = if ca.tokenize {
            harness::diff::says(e.as_mut(), None, &r.tokens_b, n)
        } else {
            harness::diff::says(e.as_mut(), Some(o.as_mut()), &r.tokens_b, n)
        };
        let show =
            |x: probe::Result<String>| x.map_or_else(|e| format!("<{e}>"), |t| format!("{t:?}"));
        println!("says      {lb} {}", show(sb));
        println!("          {la} {}", show(sa));
    }
    match r.first_divergence() {
        None => println!("verdict   PASS: {la} and {lb} agree within tolerance"),
        Some(d) => println!("verdict   FIRST DIVERGENCE: {}", r.describe(d)),
    }
    Ok(code)
}

/// Stage names from the command line; empty = all.
pub(crate) fn parse_stages(names: &[String]) -> Result<Vec<probe::Stage>> {
    let mut stages = Vec::new();
    for n in names {
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
    Ok(stages)
}
