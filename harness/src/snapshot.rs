//! insta snapshots, one per case file (plus its `::metrics` companion), in the top-level
//! `snapshots/` folder. Review changes with `cargo insta review`; CI never writes them.

use crate::case::Case;
use crate::compare::{decade, sig, top_k};
use crate::judge::{self, Worst};
use crate::runs::Runs;
use probe::StageId;
use std::fmt::Write as _;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;

/// The workspace root (`cases/`, `snapshots/` live there).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("harness/ has a parent")
        .to_path_buf()
}

/// The snapshot file name for a case: `smoke/tiny-i2s` → `smoke__tiny-i2s`.
pub fn snapshot_name(case: &Case, suffix: Option<&str>) -> String {
    let mut n = case.id.replace('/', "__");
    if let Some(s) = suffix {
        n.push_str("__");
        n.push_str(s);
    }
    n
}

/// Asserts `text` against the stored snapshot; Err carries how to accept a change.
pub fn assert(case: &Case, suffix: Option<&str>, text: &str) -> Result<(), String> {
    let name = snapshot_name(case, suffix);
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(workspace_root().join("snapshots"));
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(true);
    settings.set_input_file(&case.file);
    settings.set_description(format!("case {} ({})", case.id, case.description));
    let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
        settings.bind(|| insta::assert_snapshot!(name.as_str(), text));
    }));
    r.map_err(|_| {
        let file = workspace_root().join("snapshots").join(format!("{name}.snap"));
        let state = if file.exists() { "differs from" } else { "is missing:" };
        format!(
            "the snapshot {state} {} (diff above).\n\
             If the change is intended, accept it locally: `cargo test -p harness --test cases -- snapshot::{}` then \
             `cargo insta review` (or INSTA_UPDATE=always). CI never writes snapshots.",
            file.display(),
            case.id
        )
    })
}

/// The engine-alone snapshot of a case: per prompt its tokens, greedy tokens, one line per
/// stage (blake3 over every position's bytes, RMS over all positions) and the top-5 ids at
/// each position.
pub fn engine_text(runs: &Runs, case: &Case) -> Result<String, String> {
    let mut s = String::new();
    writeln!(s, "model: {}", case.model).ok();
    for p in &case.prompts {
        let r = runs.engine_run(case, p)?;
        writeln!(s, "\n## prompt {}: {:?}", p.id, clip(&p.text, 80)).ok();
        writeln!(s, "tokens: {:?}", r.tokens).ok();
        if !r.greedy.is_empty() {
            writeln!(s, "greedy: {:?}", r.greedy).ok();
        }
        let mut ids: Vec<StageId> = r.forward.stages.iter().map(|t| t.id()).collect();
        ids.sort_by_key(|i| i.eval_key());
        ids.dedup();
        for id in ids {
            let data: Vec<f32> = r
                .forward
                .stages
                .iter()
                .filter(|t| t.id() == id)
                .flat_map(|t| t.data.iter().copied())
                .collect();
            let st = probe::Stats::of(&data);
            writeln!(
                s,
                "{:<22} blake3 {}  rms {}",
                id.to_string(),
                &probe::blake3_f32(&data)[..12],
                sig(st.rms, 4)
            )
            .ok();
        }
        let nv = r.forward.n_vocab as usize;
        for (i, row) in r.forward.logits.chunks_exact(nv).enumerate() {
            writeln!(s, "top5 pos {i:<3} {:?}", top_k(row, 5)).ok();
        }
    }
    Ok(s)
}

/// The engine-vs-reference snapshot of a case: per prompt and stage the worst NMSE over
/// positions rounded to the decade (or `bit-exact`), prompt stages then decode stages, and
/// the logits summary.
pub fn metrics_text(runs: &Runs, case: &Case) -> Result<String, String> {
    let mut s = String::new();
    writeln!(s, "model: {}", case.model).ok();
    writeln!(
        s,
        "worst NMSE per stage over positions, rounded to the decade"
    )
    .ok();
    let show = |w: Worst| match w {
        Worst::BitExact => "bit-exact".to_string(),
        Worst::Nmse(x) => decade(x),
        Worst::NonFinite => "non-finite".to_string(),
    };
    for p in &case.prompts {
        let d = runs.diff(case, p)?;
        writeln!(s, "\n## prompt {}", p.id).ok();
        writeln!(
            s,
            "tokens {} = {}: {}",
            d.labels.a,
            d.labels.b,
            d.tokens_a == d.tokens_b
        )
        .ok();
        let stages = judge::worst_by_stage(&d.judged);
        for st in &stages {
            if let Some(w) = st.prompt {
                writeln!(s, "{:<22} {}", st.stage.to_string(), show(w)).ok();
            }
        }
        for st in &stages {
            if let Some(w) = st.decode {
                writeln!(s, "{:<22} {} (decode)", st.stage.to_string(), show(w)).ok();
            }
        }
        let l = judge::logits_summary(d.logits());
        writeln!(
            s,
            "logits: top-1 agree {}/{}, worst KL {}",
            l.top1_agree,
            l.positions,
            decade(l.worst_kl)
        )
        .ok();
        if !d.greedy_b.is_empty() {
            writeln!(s, "greedy: {} {:?}", d.labels.b, d.greedy_b).ok();
        }
    }
    Ok(s)
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}
