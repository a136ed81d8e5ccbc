//! `OracleProbe::forward` on tiny models of every weight type and both archs: finite logits at
//! every position, every canonical stage at every layer and position with the engine's
//! shapes, in evaluation order; capture filters respected; the idle eval callback is free.

mod common;

use common::{open, prompt, TINY};
use oracle::OracleProbe;
use probe::{Capture, OpenRequest, Probe, Stage, StageId};
use std::time::Instant;

#[test]
fn every_stage_at_every_position_with_the_engine_shapes() {
    for preset in TINY {
        let mut p = open(preset, 1);
        let info = p.info().clone();
        let tokens = prompt(&mut p);
        let n = tokens.len();
        let t0 = Instant::now();
        let f = p
            .forward(&tokens, &Capture::all())
            .unwrap_or_else(|e| panic!("{preset}: {e}"));
        let with_stages = t0.elapsed();
        let t0 = Instant::now();
        let plain = p.forward(&tokens, &Capture::none()).unwrap();
        let logits_only = t0.elapsed();
        eprintln!(
            "{preset}: {} ({}), {n} tokens: forward {:.2} ms logits only, {:.2} ms with all {} stage tensors",
            info.arch,
            info.weight_types.iter().map(|(k, v)| format!("{k}×{v}")).collect::<Vec<_>>().join(" "),
            logits_only.as_secs_f64() * 1e3,
            with_stages.as_secs_f64() * 1e3,
            f.stages.len()
        );

        // Logits: n × n_vocab, finite everywhere, the same with and without capture.
        assert_eq!(f.n_tokens(), n, "{preset}");
        assert!(
            f.logits.iter().all(|x| x.is_finite()),
            "{preset}: non-finite logits"
        );
        assert_eq!(
            common::bits(&f.logits),
            common::bits(&plain.logits),
            "{preset}: capture changed the logits"
        );
        assert!(plain.stages.is_empty());

        // Every stage, layer and position exactly once, with the engine's per-position shape.
        let (d, hd) = (info.n_embd as usize, info.head_dim as usize);
        let (nh, nkv, ff, nv) = (
            info.n_head as usize,
            info.n_head_kv as usize,
            info.n_ff as usize,
            info.n_vocab as usize,
        );
        let mut expected = Vec::new();
        expected.push(StageId::new(Stage::InpEmbd, None));
        for l in 0..info.n_layer {
            expected.extend(
                Stage::ALL
                    .into_iter()
                    .filter(|s| s.is_per_layer())
                    .map(|s| StageId::new(s, Some(l))),
            );
        }
        expected.push(StageId::new(Stage::ResultNorm, None));
        expected.push(StageId::new(Stage::ResultOutput, None));
        let mut got = f.stages.iter();
        for id in &expected {
            let shape = match id.stage {
                Stage::AttnQ => vec![nh, hd],
                Stage::AttnK => vec![nkv, hd],
                Stage::AttnV => vec![nkv * hd],
                Stage::FfnGate | Stage::FfnUp | Stage::FfnSubOut | Stage::FfnSubNorm => vec![ff],
                Stage::ResultOutput => vec![nv],
                _ => vec![d],
            };
            for pos in 0..n as u32 {
                let t = got
                    .next()
                    .unwrap_or_else(|| panic!("{preset}: output ends before {id} at {pos}"));
                assert_eq!(
                    (t.id(), t.position),
                    (*id, pos),
                    "{preset}: out of evaluation order"
                );
                assert_eq!(t.shape, shape, "{preset}: {id} shape");
                assert_eq!(
                    t.data.len(),
                    shape.iter().product::<usize>(),
                    "{preset}: {id} data"
                );
                assert!(
                    t.data.iter().all(|x| x.is_finite()),
                    "{preset}: {id} at {pos} has non-finite values"
                );
                assert!(
                    t.data.iter().any(|&x| x != 0.0),
                    "{preset}: {id} at {pos} is all zeros"
                );
            }
        }
        assert!(
            got.next().is_none(),
            "{preset}: more stage tensors than expected"
        );

        // result_output is the logits row.
        for t in f.stages.iter().filter(|t| t.stage == Stage::ResultOutput) {
            assert_eq!(
                common::bits(&t.data),
                common::bits(f.logits_at(t.position as usize)),
                "{preset}"
            );
        }
        // ffn_sub_out is act(gate) ⊙ up (SiLU for bitnet, ReLU² for bitnet-b1.58).
        let relu_sqr = info.arch != "bitnet";
        for l in 0..info.n_layer {
            for pos in 0..n as u32 {
                let get = |s: Stage| {
                    f.stages
                        .iter()
                        .find(|t| t.stage == s && t.layer == Some(l) && t.position == pos)
                        .unwrap()
                };
                let (g, u, o) = (
                    get(Stage::FfnGate),
                    get(Stage::FfnUp),
                    get(Stage::FfnSubOut),
                );
                for i in 0..ff {
                    let x = g.data[i];
                    let act = if relu_sqr {
                        x.max(0.0) * x.max(0.0)
                    } else {
                        x / (1.0 + (-x).exp())
                    };
                    let want = act * u.data[i];
                    assert!(
                        (o.data[i] - want).abs() <= 1e-3 * want.abs().max(1e-3),
                        "{preset}: blk.{l}.ffn_sub_out[{i}] at {pos} = {}, act(gate)·up = {want}",
                        o.data[i]
                    );
                }
            }
        }
    }
}

#[test]
fn capture_filters_stages_layers_and_positions() {
    let mut p = open("tiny-i2s", 1);
    let tokens = prompt(&mut p);
    let all = p.forward(&tokens, &Capture::all()).unwrap();
    let c = Capture::stages([
        Stage::ResultOutput,
        Stage::AttnK,
        Stage::LOut,
        Stage::InpEmbd,
    ])
    .with_layers([1])
    .with_positions([0, 3]);
    let f = p.forward(&tokens, &c).unwrap();
    let ids: Vec<String> = f
        .stages
        .iter()
        .map(|t| format!("{}@{}", t.id(), t.position))
        .collect();
    assert_eq!(
        ids,
        [
            "inp_embd@0",
            "inp_embd@3",
            "blk.1.attn_k@0",
            "blk.1.attn_k@3",
            "blk.1.l_out@0",
            "blk.1.l_out@3",
            "result_output@0",
            "result_output@3"
        ]
    );
    for t in &f.stages {
        let same = all
            .stages
            .iter()
            .find(|a| a.id() == t.id() && a.position == t.position)
            .unwrap();
        assert_eq!(
            common::bits(&t.data),
            common::bits(&same.data),
            "{}",
            t.id()
        );
    }
}

/// The eval callback is always installed; with an empty capture it answers "no" to every
/// node and ggml computes each graph split in one go, as without a callback.
#[test]
fn idle_eval_callback_costs_nothing_noticeable() {
    let path = engine::forge::forged("tiny-i2s", 1).unwrap();
    // One thread each and alternating runs, so that both see the same load (other tests and
    // builds share the two cores); the best of many runs is the cost without interference.
    let req = OpenRequest::new(path).threads(1);
    let mut with = OracleProbe::open_with(&req, true).unwrap();
    let mut without = OracleProbe::open_with(&req, false).unwrap();
    let tokens: Vec<u32> = (0..64).map(|i| (i * 7 % 250) as u32 + 1).collect();
    let run = |p: &mut OracleProbe, best: &mut f64| {
        let t0 = Instant::now();
        let logits = p.forward(&tokens, &Capture::none()).unwrap().logits;
        *best = best.min(t0.elapsed().as_secs_f64());
        logits
    };
    let (mut t_with, mut t_without) = (f64::INFINITY, f64::INFINITY);
    let (mut l_with, mut l_without) = (Vec::new(), Vec::new());
    for _ in 0..30 {
        l_with = run(&mut with, &mut t_with);
        l_without = run(&mut without, &mut t_without);
    }
    eprintln!(
        "64-token forward, 1 thread, best of 30: {:.3} ms with the idle callback, {:.3} ms without ({:+.1}%)",
        t_with * 1e3,
        t_without * 1e3,
        (t_with / t_without - 1.0) * 100.0
    );
    assert_eq!(common::bits(&l_with), common::bits(&l_without));
    // Generous: the machine is shared with other builds; the point is "not a multiple".
    assert!(t_with < t_without * 1.5 + 1e-3, "{t_with} vs {t_without}");
}
