//! `answer::` trials: a prompt with a known answer (`answer = " Paris."`) must be answered by
//! each probe of the case's `[answers]` — its greedy continuation is the answer, then EOS —
//! and, where the probe gives logits, with at least `min_margin` between the answer's token
//! and any other at every position. The judgement of each position is
//! [`crate::judge::answer_step`].

use super::{shell_quote, Runs};
use crate::case::{Case, Prompt};
use crate::diff::spell;
use crate::judge::{self, AnswerStep, Failure, Outcome};
use crate::probes::{ModelSpec, ProbeSpec};
use crate::runs::Lease;
use probe::{GenerateRequest, Probe, Token};

/// The prompt's tokens and the answer's, EOS last, as `t` tokenizes them: the answer is what
/// `text + answer` adds to `text` (so it is split as it is in context).
fn expected_tokens(
    t: &mut dyn Probe,
    p: &Prompt,
    answer: &str,
) -> Result<(Vec<Token>, Vec<Token>), String> {
    let (text, add_bos, parse_special) = p.tokenizer_input();
    let prompt = t
        .tokenize(&text, add_bos, parse_special)
        .map_err(|e| format!("tokenizing the prompt: {e}"))?;
    let full = t
        .tokenize(&format!("{text}{answer}"), add_bos, parse_special)
        .map_err(|e| format!("tokenizing prompt + answer: {e}"))?;
    if !full.starts_with(&prompt) || full.len() == prompt.len() {
        return Err(format!(
            "{}: prompt '{}': the answer {answer:?} does not begin at a token boundary after the prompt ({:?} → {prompt:?}, with the answer {full:?})\nfix: move the boundary (most answers start with a space)",
            p.at.as_deref().unwrap_or("case"),
            p.id,
            text
        ));
    }
    let eos = t
        .info()
        .eos
        .ok_or("the model declares no EOS token: an answer must end in one")?;
    let mut expected = full[prompt.len()..].to_vec();
    expected.push(eos);
    Ok((prompt, expected))
}

/// The probe that tokenizes and spells for `probe`: itself, or the reference it leans on.
fn speller<'a>(probe: &'a mut Lease<'_>, other: &'a mut Option<Lease<'_>>) -> &'a mut dyn Probe {
    match other {
        Some(l) => l.as_mut(),
        None => probe.as_mut(),
    }
}

/// What `spec` says after the prompt, greedily, up to `max_tokens` or EOS — spelled by its
/// own tokenizer, or the case reference's when it has none.
pub fn greedy_text(
    runs: &Runs,
    case: &Case,
    spec: &ProbeSpec,
    p: &Prompt,
    max_tokens: usize,
) -> Result<String, String> {
    let mut probe = runs.lease(case, spec)?;
    let mut other = if probe.info().caps().tokenize {
        None
    } else {
        Some(runs.lease(case, &case.reference)?)
    };
    let prompt = p
        .tokenize(speller(&mut probe, &mut other))
        .map_err(|e| format!("tokenizing the prompt: {e}"))?;
    let mut g = GenerateRequest::greedy(prompt, max_tokens);
    g.stop_at_eos = true;
    let gen = probe
        .generate(&g)
        .map_err(|e| format!("{spec}: generate: {e}"))?;
    Ok(spell(speller(&mut probe, &mut other), &gen.tokens))
}

pub(super) fn check_answer(
    runs: &Runs,
    case: &Case,
    p: &Prompt,
    spec: &ProbeSpec,
) -> Result<(), String> {
    let answer = p
        .answer
        .as_deref()
        .ok_or("internal: answer trial without an answer")?;
    let mut probe = runs.lease(case, spec)?;
    let caps = probe.info().caps();
    if !caps.generate {
        return Err(format!("{spec} cannot generate"));
    }
    // The probe's own tokenizer where it has one, else the reference's.
    let mut other = if caps.tokenize {
        None
    } else {
        Some(runs.lease(case, &case.reference)?)
    };
    let (prompt, expected) = expected_tokens(speller(&mut probe, &mut other), p, answer)?;
    let n = expected.len();
    let forced = caps.teacher_forced;
    let mut g = GenerateRequest::greedy(prompt.clone(), n);
    g.stop_at_eos = false;
    if forced {
        // Fed the answer: every position is judged in the right context.
        g.forced = Some(expected[..n - 1].to_vec());
        g.keep_logits = caps.decode_logits;
    }
    let gen = probe
        .generate(&g)
        .map_err(|e| format!("{spec}: generate: {e}"))?;
    let n_vocab = gen.prefill.n_vocab as usize;
    let last_row = gen
        .prefill
        .n_tokens()
        .checked_sub(1)
        .and_then(|i| gen.prefill.logits.get(i * n_vocab..(i + 1) * n_vocab));
    let rows: Vec<Option<&[f32]>> = std::iter::once(last_row)
        .chain(gen.steps.iter().map(|s| s.logits.as_deref()))
        .collect();
    let mut steps: Vec<AnswerStep> = Vec::new();
    for (i, &want) in expected.iter().enumerate() {
        let Some(&chosen) = gen.tokens.get(i) else {
            break;
        };
        let row = if g.keep_logits {
            rows.get(i).copied().flatten()
        } else {
            None
        };
        let s = judge::answer_step(i, chosen, want, row, case.answers.min_margin);
        let wrong = s.chosen != s.expected;
        steps.push(s);
        if wrong && !forced {
            break; // free-running: what follows a wrong token is another continuation
        }
    }

    let repro = {
        let model = match &case.model {
            ModelSpec::Preset { name, seed } => format!("--preset {name} --preset-seed {seed}"),
            ModelSpec::Path(path) => {
                format!("--model {}", shell_quote(&path.display().to_string()))
            }
        };
        let fault = match (&case.fault, spec.is_engine()) {
            (Some(f), true) => format!(" --inject-fault {f}"),
            _ => String::new(),
        };
        format!(
            "bitprobe run --probe {} {model} -p {} -n {}{fault}",
            shell_quote(&spec.spec()),
            shell_quote(&p.text),
            n + 4
        )
    };

    if steps.len() < n {
        let got = spell(speller(&mut probe, &mut other), &gen.tokens);
        return Err(format!(
            "{spec} stopped after {} of {n} tokens ({got:?}); the answer is {answer:?} then EOS\nreproduce: {repro}",
            gen.tokens.len()
        ));
    }
    let bad = steps.iter().find(|s| s.outcome != Outcome::Pass);
    let Some(bad) = bad else {
        return Ok(());
    };
    let (bad, tokens_wrong) = (
        bad.clone(),
        steps
            .iter()
            .any(|s| s.outcome == Outcome::Fail(Failure::Tokens)),
    );
    // What it says when left to itself (a forced run shows only one step at a time).
    let said = if tokens_wrong {
        let mut free = GenerateRequest::greedy(prompt, n + 8);
        free.stop_at_eos = true;
        probe
            .generate(&free)
            .map(|f| f.tokens)
            .map(|ids| spell(speller(&mut probe, &mut other), &ids))
            .unwrap_or_else(|e| format!("<generate failed: {e}>"))
    } else {
        String::new()
    };
    let t = speller(&mut probe, &mut other);
    let piece = |t: &mut dyn Probe, id: Token| format!("{id} {:?}", spell(t, &[id]));
    let top5: Vec<String> = bad.top5.iter().map(|&id| piece(t, id)).collect();
    let margins = steps
        .iter()
        .map(|s| s.margin.map_or("-".into(), |m| format!("{m:.2}")))
        .collect::<Vec<_>>()
        .join(" ");
    let what = match bad.outcome {
        Outcome::Fail(Failure::Unsure) => format!(
            "answers {answer:?}, but unsure: at answer token {} ({}) the top-2 margin is {:.3} < min_margin {}",
            bad.index,
            piece(t, bad.expected),
            bad.margin.unwrap_or(f64::NAN),
            bad.limit.unwrap_or(f64::NAN)
        ),
        _ => format!(
            "says {said:?} where the answer is {answer:?} then EOS: at answer token {} it chose {} instead of {}{}",
            bad.index,
            piece(t, bad.chosen),
            piece(t, bad.expected),
            match (bad.rank, bad.margin) {
                (Some(r), Some(m)) => format!(" (ranked #{r} in its logits, {:.3} below the top)", -m),
                _ => String::new(),
            }
        ),
    };
    Err(format!(
        "{spec} {what}\n  its top-5 there: {}\n  margins at each answer token{}: {margins}\nreproduce: {repro}",
        if top5.is_empty() {
            "- (no logits)".to_string()
        } else {
            top5.join(", ")
        },
        if forced { " (fed the answer)" } else { "" },
    ))
}
