//! Measures the evidence behind the default tolerances: every comparing case in `cases/`,
//! engine against oracle, worst NMSE per (stage kind, weight type) and worst logits KL.
//!
//! The engine mirrors bitnet.cpp's summation order exactly, so on a machine like the one the
//! oracle was built for every row is bit-exact. The defaults must also accept an engine that
//! is correct but sums in another order (any third-party engine), so measure that too:
//!
//! ```sh
//! cargo run -p harness --example measure_tolerances                        # as is
//! BITPROBE_LLAMAFILE=off cargo run -p harness --example measure_tolerances # other order
//! ```

use harness::case;
use harness::diff::{run_diff, DiffRequest, Phase};
use harness::probes::{open, ProbeKind};
use harness::snapshot::workspace_root;
use harness::tolerance::{governing_type, StageKind};
use std::collections::BTreeMap;

fn main() {
    let root = workspace_root().join("cases");
    // (kind, weight type) → (worst nmse, where)
    let mut worst: BTreeMap<(String, String), (f64, String)> = BTreeMap::new();
    let mut worst_kl: BTreeMap<String, (f64, String)> = BTreeMap::new();
    let mut top1 = (0usize, 0usize);
    for file in case::discover(&root) {
        let Ok(c) = case::load(&file, &root) else {
            continue;
        };
        if !c.compare || c.prompts.is_empty() || c.fault.is_some() || c.unavailable.is_some() {
            continue;
        }
        let path = c.model.resolve().expect("model");
        let mut e = open(
            ProbeKind::Engine,
            &path,
            1,
            &[("tokenizer", c.tokenizer.as_str())],
        )
        .expect("engine");
        let mut o = open(ProbeKind::Oracle, &path, 1, &[]).expect("oracle");
        let wt = governing_type(&o.info().weight_types);
        for p in &c.prompts {
            let req = DiffRequest {
                text: p.text.clone(),
                add_bos: p.add_bos,
                parse_special: p.parse_special,
                chat: p.chat,
                decode: p.decode,
                stages: c.stages.clone(),
                layers: c.layers.clone(),
            };
            let r = run_diff(e.as_mut(), o.as_mut(), &req, &Default::default()).expect("diff");
            for row in &r.rows {
                let Some(m) = row.metrics else { continue };
                let kind = format!("{:?}", StageKind::of(row.stage.stage, row.stage.layer));
                let at = format!("{} {} {} pos {}", c.id, p.id, row.stage, row.position);
                let e = worst
                    .entry((kind, wt.clone()))
                    .or_insert((0.0, String::new()));
                if m.nmse > e.0 {
                    *e = (m.nmse, at);
                }
            }
            for l in &r.logits {
                top1.0 += l.metrics.top1_agree() as usize;
                top1.1 += 1;
                let at = format!(
                    "{} {} {} pos {}",
                    c.id,
                    p.id,
                    if l.phase == Phase::Prompt {
                        "prompt"
                    } else {
                        "decode"
                    },
                    l.position
                );
                let e = worst_kl.entry(wt.clone()).or_insert((0.0, String::new()));
                if l.metrics.kl > e.0 {
                    *e = (l.metrics.kl, at);
                }
            }
        }
        eprintln!("measured {}", c.id);
    }
    println!("| stage kind | weight type | worst NMSE | where |");
    println!("|---|---|---|---|");
    for ((k, t), (v, at)) in &worst {
        println!("| {k} | {t} | {v:.2e} | {at} |");
    }
    println!("\n| weight type | worst logits KL | where |");
    println!("|---|---|---|");
    for (t, (v, at)) in &worst_kl {
        println!("| {t} | {v:.2e} | {at} |");
    }
    println!("\ntop-1 agreement: {}/{} positions", top1.0, top1.1);
}
