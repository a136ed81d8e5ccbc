//! Measures the evidence behind the default tolerances and noise floors: every comparing
//! case in `cases/`, engine against oracle — worst NMSE per (stage kind, weight type), worst
//! NMSE per (stage, layer, weight type) (the noise floors the origin finder uses), worst
//! logits KL and worst logits max |Δ| per weight type (the near-tie margin).
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
    // (weight type, stage, layer) → worst nmse: the floor table.
    let mut floors: BTreeMap<(WeightType, usize, Option<u32>), (f64, String)> = BTreeMap::new();
    let mut worst_dlogit: BTreeMap<WeightType, (f64, String)> = BTreeMap::new();
    let mut top1 = (0usize, 0usize);
    for file in case::discover(&root) {
        let Ok(c) = case::load(&file, &root) else {
            continue;
        };
        if !c.compare
            || c.prompts.is_empty()
            || c.fault.is_some()
            || c.unavailable.is_some()
            || !c.engine.is_engine()
        {
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
                let f = floors
                    .entry((wt, id.stage.order(), id.layer))
                    .or_insert((0.0, String::new()));
                if m.nmse > f.0 {
                    *f = (m.nmse, at.clone());
                }
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
                    *e = (m.kl, at.clone());
                }
                let d = worst_dlogit.entry(wt).or_insert((0.0, String::new()));
                if m.max_abs > d.0 {
                    *d = (m.max_abs, at);
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
    println!("\n| weight type | worst logits max abs diff | where |");
    println!("|---|---|---|");
    for (t, (v, at)) in &worst_dlogit {
        println!("| {t} | {v:.3e} | {at} |");
    }
    println!("\n| weight type | stage | layer | worst NMSE (floor) | where |");
    println!("|---|---|---|---|---|");
    for ((t, order, layer), (v, at)) in &floors {
        let stage = probe::Stage::ALL[*order];
        let l = layer.map_or("-".to_string(), |l| l.to_string());
        println!("| {t} | {stage} | {l} | {v:.2e} | {at} |");
    }
    println!("\ntop-1 agreement: {}/{} positions", top1.0, top1.1);
}
