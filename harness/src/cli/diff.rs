//! `bitprobe diff`: two probes on one prompt, judged stage by stage.

use crate::cli::run::engine_options;
use crate::*;

pub(crate) fn diff(a: DiffArgs) -> Result<ExitCode> {
    use harness::diff::{run_diff, DiffRequest};
    use harness::judge::Labels;
    let path = a.model.resolve()?;
    let stages = parse_stages(&a.stages)?;
    let mut opts = engine_options(&a.tokenizer);
    if let Some(f) = &a.inject_fault {
        opts.push(("fault", f.as_str()));
    }
    let mut e = probes::open(ProbeKind::Engine, &path, a.threads, &opts)?;
    let mut o = probes::open(ProbeKind::Oracle, &path, a.threads, &[])?;
    let req = DiffRequest {
        prompt: harness::case::Prompt {
            add_bos: !a.no_bos,
            parse_special: a.parse_special,
            chat: a.chat,
            decode: a.decode,
            ..harness::case::Prompt::text(&a.prompt)
        },
        stages,
        layers: (!a.layers.is_empty()).then(|| a.layers.clone()),
    };
    let tol = harness::tolerance::ToleranceOverrides::default();
    let r = run_diff(
        e.as_mut(),
        o.as_mut(),
        Labels::new("engine", "oracle"),
        &req,
        &tol,
    )?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r.to_json())?);
        return Ok(if r.pass() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    println!("model     {}", path.display());
    println!("tokens    engine {:?}", r.tokens_a);
    println!("          oracle {:?}", r.tokens_b);
    println!("weights   {}", r.weight_type);
    println!();
    print!("{}", harness::diff::render_rows_and_logits(&r, a.failures));
    if !r.greedy_b.is_empty() {
        println!("greedy    oracle {:?}", r.greedy_b);
        println!("          engine {:?}", r.greedy_a);
    }
    match r.first_divergence() {
        None => {
            println!("verdict   PASS: engine and oracle agree within tolerance");
            Ok(ExitCode::SUCCESS)
        }
        Some(d) => {
            println!("verdict   FIRST DIVERGENCE: {}", r.describe(d));
            Ok(ExitCode::from(1))
        }
    }
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
