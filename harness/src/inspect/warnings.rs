//! Warnings: what a finding means, never a change.

use super::*;

pub(super) fn warn_arch(f: &GgufFile, warnings: &mut Vec<Warning>) {
    let known = ORACLE_ARCHS.join(", ");
    match f.get_str("general.architecture") {
        Ok(a) if ORACLE_ARCHS.contains(&a) => {}
        Ok(a) => warnings.push(Warning {
            kind: WarningKind::UnknownArch,
            message: format!(
                "architecture '{a}' is not one the oracle knows ({known}; the last two via \
                 oracle/patches): bitnet.cpp will refuse to load this file, so there is nothing \
                 to compare against. The engine refuses it too unless it is one of these."
            ),
        }),
        Err(e) => warnings.push(Warning {
            kind: WarningKind::UnknownArch,
            message: format!(
                "{e}: neither probe can tell which graph to build (the oracle knows {known})"
            ),
        }),
    }
}

/// Today's bitnet.cpp (bitnet.cpp-2026) prefills the whole prompt in one batch, and its I2_S
/// matmul keeps rows × tokens floats on the stack: past a length it crashes. Worth a warning
/// when that length is below the context the file declares.
pub(super) fn warn_bitnet2026_prompt_limit(f: &GgufFile, warnings: &mut Vec<Warning>) {
    let n_ctx = f
        .get_str("general.architecture")
        .ok()
        .and_then(|a| f.get_u32(&format!("{a}.context_length")).ok());
    let at = |t| crate::probes::bitnet2026_prompt_limit(f, t);
    if let (Some(n_ctx), Some(one), Some(two)) = (n_ctx, at(1), at(2)) {
        if one >= n_ctx as usize {
            return;
        }
        warnings.push(Warning {
            kind: WarningKind::Bitnet2026PromptLimit,
            message: format!(
                "today's bitnet.cpp (bitnet.cpp-2026) crashes (SIGSEGV, stack overflow) on \
                 prompts over about {one} tokens with this file at 1 thread ({two} at 2), \
                 though its context is {n_ctx}: its I2_S matmul puts a rows × tokens float \
                 array on the stack (ggml.c ≈ 13261). bitprobe warns before running such a \
                 prompt; the 2024 reference and the engine are not affected"
            ),
        });
    }
}

pub(super) fn warn_pre_tokenizer(f: &GgufFile, report: &mut Inspection) {
    use engine::tokenizer::keys;
    if f.get(keys::PRE).is_some() || f.get(keys::TOKENS).is_none() {
        return;
    }
    let n_vocab = f.get_arr(keys::TOKENS).map(|a| a.len()).unwrap_or(0);
    let base = "no tokenizer.ggml.pre: llama.cpp (and so bitnet.cpp) falls back to its default \
                pre-tokenizer, which is not the split regex the model was trained with";
    let message = if n_vocab != LLAMA3_N_VOCAB {
        format!("{base}. (Vocab of {n_vocab} tokens is not Llama-3-sized, so the gap was not measured.)")
    } else {
        match measure_pre_tokenizer(f) {
            Ok(m) => {
                let example = m
                    .examples
                    .first()
                    .map(|(t, g, tr)| {
                        format!(
                            " For example {t:?}: {} tokens {g:?} instead of {} {tr:?}.",
                            g.len(),
                            tr.len()
                        )
                    })
                    .unwrap_or_default();
                let msg = format!(
                    "{base}: {} of the {} built-in probe strings tokenize differently from the \
                     trained tokenizer.{example} microsoft's official 2B-4T GGUF lacks the key \
                     too. The engine follows bitnet.cpp here, so engine-vs-oracle comparisons \
                     are like for like, but prompts with contractions, tabs, newline runs, code \
                     or punctuation reach the model split differently from training \
                     (`bitprobe tokenize --compare` shows the pieces; the engine's `--tokenizer \
                     truth` uses the trained tokenizer).",
                    m.differ, m.total
                );
                report.tokenizer_measurement = Some(m);
                msg
            }
            Err(e) => format!("{base}. (Not measured: {e}.)"),
        }
    };
    report.warnings.push(Warning {
        kind: WarningKind::NoPreTokenizer,
        message,
    });
}

/// The engine's GGUF-mode tokenizer (which follows llama.cpp) against the trained Llama-3
/// tokenizer over [`PROBE_STRINGS`], without BOS or special-token parsing.
pub fn measure_pre_tokenizer(f: &GgufFile) -> Result<TokenizerMeasurement, String> {
    use engine::forge::vocab::{assets_dir, LLAMA3_ASSET};
    let inputs: Vec<String> =
        serde_json::from_str(PROBE_STRINGS).map_err(|e| format!("built-in probe strings: {e}"))?;
    let gguf =
        engine::tokenizer::Tokenizer::from_gguf(f).map_err(|e| format!("GGUF tokenizer: {e}"))?;
    let truth = engine::tokenizer::truth::Truth::from_ranks_file(assets_dir().join(LLAMA3_ASSET))
        .map_err(|e| format!("trained tokenizer: {e} (run scripts/setup.sh)"))?;
    let mut differ = Vec::new();
    for text in &inputs {
        let g = gguf.encode(text, false, false).map_err(|e| e.to_string())?;
        let t = truth
            .encode(text, false, false)
            .map_err(|e| e.to_string())?;
        if g != t {
            differ.push((text.clone(), g, t));
        }
    }
    let n = differ.len();
    // Lead with a familiar example: a contraction ("don't"), else file order.
    differ.sort_by_key(|(t, _, _)| !(t.contains("'") && t.starts_with(char::is_alphabetic)));
    differ.truncate(3);
    Ok(TokenizerMeasurement {
        total: inputs.len(),
        differ: n,
        examples: differ,
    })
}

/// Norm gammas far from 1, one warning per norm kind (`attn_norm`, `ffn_norm`, …).
pub(super) fn warn_gammas(norms: &[NormStats], warnings: &mut Vec<Warning>) {
    let kind_of = |name: &str| -> String {
        let base = name.strip_suffix(".weight").unwrap_or(name);
        match base.strip_prefix("blk.").and_then(|r| r.split_once('.')) {
            Some((_, k)) => k.to_string(),
            None => base.to_string(),
        }
    };
    let mut by_kind: BTreeMap<String, (Vec<&NormStats>, usize)> = BTreeMap::new();
    for n in norms {
        let e = by_kind.entry(kind_of(&n.name)).or_default();
        e.1 += 1;
        if !(GAMMA_RMS_RANGE.0..=GAMMA_RMS_RANGE.1).contains(&n.rms) {
            e.0.push(n);
        }
    }
    for (kind, (far, total)) in by_kind {
        if far.is_empty() {
            continue;
        }
        let lo = far.iter().map(|n| n.rms).fold(f64::INFINITY, f64::min);
        let hi = far.iter().map(|n| n.rms).fold(f64::NEG_INFINITY, f64::max);
        let context = if kind == "attn_norm" {
            "Such gammas are present in the real 2B-4T (attn_norm RMS ≈ 0.01–0.02, \
             BITNET_NOTES.md §2): these are trained values, not corruption"
        } else {
            "The real 2B-4T has far-from-1 attn_norm gammas as trained values: unusual gammas \
             are not by themselves corruption"
        };
        warnings.push(Warning {
            kind: WarningKind::NormGamma,
            message: format!(
                "{kind} gammas far from 1: RMS {} in {} of {total} tensors (outside {}–{}), first \
                 {}. {context}. bitnet.cpp uses them as stored; an engine that rescales them \
                 diverges from it at the {kind} stage.",
                if sig(lo) == sig(hi) {
                    sig(lo)
                } else {
                    format!("{}–{}", sig(lo), sig(hi))
                },
                far.len(),
                GAMMA_RMS_RANGE.0,
                GAMMA_RMS_RANGE.1,
                far[0].name,
            ),
        });
    }
}

/// Three significant digits in plain decimals: 0.0150, 1.31, 25.3.
pub(super) fn sig(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let decimals = (2 - x.abs().log10().floor() as i32).max(0) as usize;
    format!("{x:.decimals$}")
}
