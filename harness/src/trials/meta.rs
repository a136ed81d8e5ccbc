//! Metamorphic trials: properties one probe must have on its own.

use super::Meta;
use crate::case::{Case, Prompt};
use crate::compare::compare;
use crate::judge::{self, Phase};
use crate::probes::ProbeSpec;
use crate::runs::Runs;
use crate::tolerance::LogitsTolerance;
use probe::{Capture, GenerateRequest};

/// KL limit between a whole-prompt prefill and the same tokens fed one at a time. Not zero:
/// bitnet.cpp itself takes different matmul paths for one row and for many (llamafile's
/// sgemm vs ggml's vec_dot), and the int8 activation quantization of ternary models turns
/// ~1e-8 differences into flipped roundings. Worst observed, by the oracle itself:
/// 1.9e-3 (small-llama3-i2s, "story" prompt); limit = that × 10, rounded up.
const PREFILL_VS_DECODE_KL: f64 = 2e-2;

pub(super) fn check_meta(
    runs: &Runs,
    case: &Case,
    p: &Prompt,
    check: Meta,
    kind: &ProbeSpec,
) -> Result<(), String> {
    let mut pr = runs.lease(case, kind)?;
    // A probe that cannot tokenize runs on the ids bitprobe's engine gives the same file.
    let tokens = if pr.info().caps().tokenize {
        p.tokenize(pr.as_mut())
    } else {
        p.tokenize(runs.lease(case, &ProbeSpec::Engine)?.as_mut())
    }
    .map_err(|e| e.to_string())?;
    let n = tokens.len();
    let err = |e: probe::Error| format!("{kind}: {e}");
    match check {
        Meta::Determinism => {
            let cap = Capture::all();
            let a = pr.forward(&tokens, &cap).map_err(err)?;
            let b = pr.forward(&tokens, &cap).map_err(err)?;
            if probe::blake3_f32(&a.logits) != probe::blake3_f32(&b.logits) {
                return Err(format!(
                    "{kind}: two forward passes over the same tokens gave different logits bits"
                ));
            }
            for (x, y) in a.stages.iter().zip(&b.stages) {
                if x.blake3() != y.blake3() {
                    return Err(format!(
                        "{kind}: {} at position {} differs between two identical runs",
                        x.id(),
                        x.position
                    ));
                }
            }
            Ok(())
        }
        Meta::Causality => {
            if n < 2 {
                return Err(format!(
                    "prompt '{}' has {n} token(s); causality needs at least 2",
                    p.id
                ));
            }
            let k = n / 2;
            // Same prefix, different continuation: positions < k must not notice.
            let mut other = tokens.clone();
            let nv = pr.info().n_vocab;
            for t in other.iter_mut().skip(k) {
                *t = (*t + 7) % nv;
            }
            let a = pr.forward(&tokens, &Capture::none()).map_err(err)?;
            let b = pr.forward(&other, &Capture::none()).map_err(err)?;
            for i in 0..k {
                let m = compare(b.logits_at(i), a.logits_at(i));
                if !m.bit_exact {
                    return Err(format!(
                        "{kind}: logits at position {i} changed when tokens from position {k} on changed (nmse {:.3e}, max|Δ| {:.3e}): attention sees the future",
                        m.nmse, m.max_abs
                    ));
                }
            }
            Ok(())
        }
        Meta::PrefillVsDecode => {
            let all = pr.forward(&tokens, &Capture::none()).map_err(err)?;
            let mut g = GenerateRequest::greedy(tokens[..1].to_vec(), n);
            g.forced = Some(tokens[1..].to_vec());
            g.keep_logits = true;
            let gen = pr.generate(&g).map_err(err)?;
            let mut rows: Vec<&[f32]> = vec![gen.prefill.logits_at(0)];
            rows.extend(gen.steps.iter().filter_map(|s| s.logits.as_deref()));
            let tol = LogitsTolerance {
                kl: PREFILL_VS_DECODE_KL,
                nmse: f64::INFINITY,
                // One probe against itself: any flip its own logits explain is a near-tie.
                margin: f64::INFINITY,
            };
            for (i, step) in rows.iter().enumerate().take(n) {
                let j = judge::logits(Phase::Prompt, i as u32, step, all.logits_at(i), tol);
                if !j.pass() {
                    let m = j.measure.logits().expect("a logits judgement");
                    return Err(format!(
                        "{kind}: position {i}: one-token-at-a-time decode vs whole-prompt prefill: top-1 {} vs {} (margins {:.3e} / {:.3e}), KL {:.3e} (limit {:.0e})",
                        m.top1_engine, m.top1_oracle, m.margin_engine, m.margin_oracle, m.kl, PREFILL_VS_DECODE_KL
                    ));
                }
            }
            Ok(())
        }
    }
}
