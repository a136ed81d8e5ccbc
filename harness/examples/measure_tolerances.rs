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
use harness::diff::{run_diff, DiffRequest};
use harness::judge::{Labels, Phase};
use harness::probes::{open, ProbeSpec};
use harness::snapshot::workspace_root;
use harness::tolerance::{governing_type, StageKind, WeightType};
use std::collections::BTreeMap;

fn main() {
    let root = workspace_root().join("cases");
    // (kind, weight type) → (worst nmse, where)
    let mut worst: BTreeMap<(String, WeightType), (f64, String)> = BTreeMap::new();
    let mut worst_kl: BTreeMap<WeightType, (f64, String)> = BTreeMap::new();
    let mut top1 = (0usize, 0usize);
    for file in case::discover(&root) {
        let Ok(c) = case::load(&file, &root) else {
            continue;
        };
        if !c.compare || c.prompts.is_empty() || c.fault.is_some() || c.unavailable.is_some() {
            continue;
        }
        let path = c.model.resolve().expect("model");
        let tokenizer = c.tokenizer.to_string();
        let mut e = open(
            &ProbeSpec::Engine,
            &path,
            1,
            &[("tokenizer", tokenizer.as_str())],
            Default::default(),
        )
        .expect("engine");
        let mut o = open(&ProbeSpec::ORACLE, &path, 1, &[], Default::default()).expect("oracle");
        let wt = governing_type(&o.info().weight_types);
        for p in &c.prompts {
            let req = DiffRequest {
                prompt: p.clone(),
                stages: c.stages.clone(),
                layers: c.layers.clone(),
            };
            let r = run_diff(
                e.as_mut(),
                o.as_mut(),
                Labels::new("engine", "oracle"),
                &req,
                &Default::default(),
            )
            .expect("diff");
            for row in r.stages() {
                let (Some(m), Some(id)) = (row.measure.tensor(), row.site.stage()) else {
                    continue;
                };
                let kind = format!("{:?}", StageKind::of(id.stage, id.layer));
                let at = format!("{} {} {} pos {}", c.id, p.id, id, row.position);
                let e = worst.entry((kind, wt)).or_insert((0.0, String::new()));
                if m.nmse > e.0 {
                    *e = (m.nmse, at);
                }
            }
            for l in r.logits() {
                let Some(m) = l.measure.logits() else {
                    continue;
                };
                top1.0 += m.top1_agree() as usize;
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
                let e = worst_kl.entry(wt).or_insert((0.0, String::new()));
                if m.kl > e.0 {
                    *e = (m.kl, at);
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
