//! Tokenizer trials, and the one tokenizer comparison every report uses (`tokenize::` trials,
//! `bitprobe tokenize --compare`, the sweep's parity counts).

use crate::case::{Case, DeviationProbe, TokenizerChoice};
use crate::runs::Runs;
use engine::tokenizer::truth::Truth;
use probe::{Probe, Token};

/// The trained Llama-3 tokenizer (tiktoken over the ranks asset), loaded once.
pub fn truth() -> Result<&'static Truth, String> {
    use engine::forge::vocab::{assets_dir, LLAMA3_ASSET};
    static T: std::sync::OnceLock<Result<Truth, String>> = std::sync::OnceLock::new();
    T.get_or_init(|| {
        Truth::from_ranks_file(assets_dir().join(LLAMA3_ASSET)).map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| e.clone())
}

/// One text tokenized by the engine, the reference and (when asked) the trained tokenizer.
#[derive(Clone, Debug, PartialEq)]
pub struct Tokenized {
    pub engine: Vec<Token>,
    pub oracle: Vec<Token>,
    pub truth: Option<Vec<Token>>,
}

impl Tokenized {
    /// Tokenizes `text` on every side; errors name the side.
    pub fn of(
        e: &mut dyn Probe,
        o: &mut dyn Probe,
        truth: Option<&Truth>,
        text: &str,
        add_bos: bool,
        parse_special: bool,
    ) -> Result<Tokenized, String> {
        Ok(Tokenized {
            engine: e
                .tokenize(text, add_bos, parse_special)
                .map_err(|x| format!("engine: {x}"))?,
            oracle: o
                .tokenize(text, add_bos, parse_special)
                .map_err(|x| format!("oracle: {x}"))?,
            truth: truth
                .map(|t| t.encode(text, add_bos, parse_special))
                .transpose()
                .map_err(|x| format!("truth: {x}"))?,
        })
    }

    pub fn ids(&self, who: DeviationProbe) -> &[Token] {
        match who {
            DeviationProbe::Engine => &self.engine,
            DeviationProbe::Oracle => &self.oracle,
        }
    }

    pub fn engine_eq_oracle(&self) -> bool {
        self.engine == self.oracle
    }

    pub fn engine_eq_truth(&self) -> Option<bool> {
        self.truth.as_ref().map(|t| *t == self.engine)
    }

    pub fn oracle_eq_truth(&self) -> Option<bool> {
        self.truth.as_ref().map(|t| *t == self.oracle)
    }
}

/// Index of the first difference.
pub fn first_diff(a: &[Token], b: &[Token]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn pieces_around(p: &mut dyn Probe, ids: &[Token], at: usize) -> String {
    let lo = at.saturating_sub(2);
    let hi = (at + 3).min(ids.len());
    let pieces = p.pieces(&ids[lo..hi]).unwrap_or_default();
    let shown: Vec<String> = ids[lo..hi]
        .iter()
        .zip(
            pieces
                .iter()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .chain(std::iter::repeat(String::new())),
        )
        .map(|(id, s)| format!("{id}:{s:?}"))
        .collect();
    format!("[{}{}]", if lo > 0 { "…, " } else { "" }, shown.join(", "))
}

fn eq_sign(x: bool) -> &'static str {
    if x {
        "="
    } else {
        "≠"
    }
}

pub(super) fn check_tokenize(runs: &Runs, case: &Case, input: usize) -> Result<(), String> {
    let spec = case
        .tokenize
        .as_ref()
        .expect("tokenize trials come from [tokenize]");
    let text = &spec.inputs[input];
    let mut e = runs.lease(case, &case.engine)?;
    let mut o = runs.lease(case, &case.reference)?;
    let truth = if spec.truth { Some(truth()?) } else { None };
    let mut problems = Vec::new();
    for &ps in &spec.parse_special {
        let t = Tokenized::of(e.as_mut(), o.as_mut(), truth, text, spec.add_bos, ps)?;
        let mode = format!("parse_special={ps}");
        let dev = |who: DeviationProbe| {
            spec.known_deviations.iter().find(|d| {
                d.probe == who && &d.input == text && d.parse_special.is_none_or(|x| x == ps)
            })
        };
        match &t.truth {
            None => {
                if !t.engine_eq_oracle() {
                    let at = first_diff(&t.engine, &t.oracle);
                    problems.push(format!(
                        "{mode}: engine ≠ oracle from index {at}: engine {} vs oracle {}",
                        pieces_around(e.as_mut(), &t.engine, at),
                        pieces_around(o.as_mut(), &t.oracle, at)
                    ));
                }
            }
            Some(ti) => {
                let who = format!(
                    "engine {} truth, oracle {} truth, engine {} oracle",
                    eq_sign(t.engine == *ti),
                    eq_sign(t.oracle == *ti),
                    eq_sign(t.engine_eq_oracle())
                );
                let oracle_dev = dev(DeviationProbe::Oracle);
                // In GGUF mode the engine follows the file as llama.cpp reads it, so it may
                // deviate where the oracle's deviation is recorded — exactly as the oracle.
                let gguf_mode = case.tokenizer == TokenizerChoice::Gguf;
                for (side, probe) in [
                    (DeviationProbe::Oracle, &mut o),
                    (DeviationProbe::Engine, &mut e),
                ] {
                    let ids = t.ids(side);
                    let like_for_like = side == DeviationProbe::Engine
                        && gguf_mode
                        && oracle_dev.is_some()
                        && t.engine_eq_oracle();
                    match (ids != ti.as_slice(), dev(side)) {
                        (true, None) if !like_for_like => {
                            let at = first_diff(ids, ti);
                            problems.push(format!(
                                "{mode}: {who}. {side} from index {at}: {} vs truth {:?}",
                                pieces_around(probe.as_mut(), ids, at),
                                &ti[at.min(ti.len())..(at + 3).min(ti.len())],
                            ));
                        }
                        (false, Some(d)) => problems.push(format!(
                            "{mode}: {who}. The known deviation of {side} on {:?} has disappeared: remove it from {} (reason was: {})",
                            d.input,
                            case.file.display(),
                            d.reason
                        )),
                        _ => {}
                    }
                }
                if oracle_dev.is_some() && gguf_mode && !t.engine_eq_oracle() {
                    problems.push(format!("{mode}: {who}. The oracle deviates as recorded; the engine (GGUF mode) must match it"));
                }
            }
        }
        for x in spec.expected.iter().filter(|x| &x.input == text) {
            for (name, ids) in [
                ("engine", Some(&t.engine)),
                ("oracle", Some(&t.oracle)),
                ("truth", t.truth.as_ref()),
            ] {
                let Some(ids) = ids else { continue };
                let body: &[Token] = if spec.add_bos && ids.first() == e.info().bos.as_ref() {
                    &ids[1..]
                } else {
                    ids
                };
                if body != x.ids.as_slice() {
                    problems.push(format!(
                        "{mode}: {name} gives {body:?}, the pinned ids are {:?}",
                        x.ids
                    ));
                }
            }
        }
        if let Some(ti) = &t.truth {
            for d in spec
                .known_deviations
                .iter()
                .filter(|d| &d.input == text && d.parse_special.is_none_or(|x| x == ps))
            {
                let got = t.ids(d.probe);
                if let Some(want) = &d.ids {
                    if got != want.as_slice() && got != ti.as_slice() {
                        problems.push(format!(
                            "{mode}: the known deviation of {} on {:?} changed: recorded {want:?}, now {got:?}",
                            d.probe, d.input
                        ));
                    }
                }
            }
        }
        if spec.round_trip {
            let body: Vec<Token> = t
                .engine
                .iter()
                .copied()
                .filter(|tok| Some(*tok) != e.info().bos || !spec.add_bos)
                .collect();
            let back = e
                .detokenize(&body)
                .map_err(|x| format!("engine detokenize: {x}"))?;
            if &back != text && !(ps && text.contains("<|")) {
                problems.push(format!("{mode}: engine round trip gives {back:?}"));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("input {input} {text:?}:\n{}", problems.join("\n")))
    }
}
