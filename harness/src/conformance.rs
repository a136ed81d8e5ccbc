//! `bitprobe conformance SPEC`: drives a probe through every message it declares and checks
//! what comes back — frames, shapes, stage names, positions, determinism, errors, causality —
//! one line per check, each failure saying what to fix. Nothing here can hang: every request
//! has the watchdog's deadline, and a probe that dies is started again for the next check.
//!
//! Shapes and stage conventions are taken from bitprobe's own engine on the same model
//! (the reference for what `attn_q` at a position looks like: `[n_head, head_dim]`, …).

use crate::probes::{self, ProbeSpec};
use probe::wire::Watchdog;
use probe::{Capabilities, Capture, Error, GenerateRequest, Probe, Stage, StageTensor, Token};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// One line of the checklist.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    /// What was seen, and for a failure what to fix.
    pub detail: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pass,
    Fail,
    /// Not declared by the probe, so not checked.
    Skipped,
}

impl Check {
    fn pass(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Pass,
            detail: detail.into(),
        }
    }
    fn fail(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Fail,
            detail: detail.into(),
        }
    }
    fn skip(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Skipped,
            detail: detail.into(),
        }
    }
}

/// What to say about an error a probe returned (or a crash, hang, bad frame).
fn problem(e: &Error) -> String {
    match e {
        Error::Crashed {
            status,
            stderr_tail,
            ..
        } => {
            let last = stderr_tail.lines().last().unwrap_or("").trim();
            format!(
                "the probe died ({status}){}: reply with an `error` frame instead of exiting",
                if last.is_empty() {
                    String::new()
                } else {
                    format!("; its last words: {last}")
                }
            )
        }
        Error::Timeout { seconds, .. } => {
            format!("no reply within {seconds:.1} s (the watchdog stopped it): answer every request, or reply with an `error`")
        }
        Error::Protocol(m) => format!("{m} (docs/wire-protocol.md, Framing)"),
        other => other.to_string(),
    }
}

/// A crash, a hang or an unreadable frame: the probe did not reply at all.
fn no_reply(e: &Error) -> bool {
    matches!(
        e,
        Error::Crashed { .. } | Error::Timeout { .. } | Error::Protocol(_)
    )
}

const PROMPT: &str = "Hello world, conformance";

/// Runs every check of `spec` on `model`.
pub fn run(spec: &ProbeSpec, model: &Path, threads: usize, watchdog: Watchdog) -> Vec<Check> {
    let mut out = Vec::new();

    // The model as bitprobe's engine sees it: tokens and the shape of every stage.
    let truth = (|| -> Result<(Vec<Token>, probe::Forward), String> {
        let mut e =
            probes::open(&ProbeSpec::Engine, model, 1, &[], watchdog).map_err(|e| e.to_string())?;
        let t = e.tokenize(PROMPT, true, false).map_err(|e| e.to_string())?;
        let f = e.forward(&t, &Capture::all()).map_err(|e| e.to_string())?;
        Ok((t, f))
    })();
    let (tokens, shapes) = match truth {
        Ok((t, f)) => {
            let shapes: BTreeMap<(Stage, Option<u32>), Vec<usize>> = f
                .stages
                .iter()
                .map(|s| ((s.stage, s.layer), s.shape.clone()))
                .collect();
            (t, shapes)
        }
        Err(e) => {
            out.push(Check::fail(
                "model",
                format!("bitprobe's engine cannot run {}: {e}", model.display()),
            ));
            return out;
        }
    };

    // 1. Opening, and what the probe says about itself.
    let mut p = match probes::open(spec, model, threads, &[], watchdog) {
        Ok(p) => p,
        Err(e) => {
            let why = match &e {
                probes::OpenError::Probe(pe) => problem(pe),
                other => other.to_string(),
            };
            out.push(Check::fail(
                "open",
                format!("{why}: reply to `open` with `opened` (a ModelInfo)"),
            ));
            return out;
        }
    };
    let info = p.info().clone();
    let declared = info.capabilities.is_some();
    let caps = info.caps();
    out.push(Check::pass(
        "open",
        format!(
            "opened: {} ({}, {} layers, vocab {}), protocol {}",
            info.implementation, info.arch, info.n_layer, info.n_vocab, info.protocol
        ),
    ));
    out.push(if declared {
        Check::pass("capabilities", describe_caps(&caps))
    } else {
        Check::pass(
            "capabilities",
            "none declared: taken to support the whole protocol (declare `capabilities` in `opened` to say less)",
        )
    });
    let n_vocab = info.n_vocab;
    let sane = info.n_vocab > 0 && info.n_layer > 0 && info.n_embd > 0 && info.n_head > 0;
    let engine_layers = shapes
        .keys()
        .filter_map(|(_, l)| *l)
        .max()
        .map(|l| l + 1)
        .unwrap_or(0);
    out.push(if !sane {
        Check::fail(
            "model info",
            format!(
                "n_vocab {}, n_layer {}, n_embd {}, n_head {}: all must be > 0",
                info.n_vocab, info.n_layer, info.n_embd, info.n_head
            ),
        )
    } else if info.n_layer != engine_layers {
        Check::fail(
            "model info",
            format!(
                "n_layer {} but the file has {engine_layers} layers",
                info.n_layer
            ),
        )
    } else {
        Check::pass(
            "model info",
            format!("n_vocab {n_vocab}, n_layer {}", info.n_layer),
        )
    });

    // 2. Tokenization.
    if caps.tokenize {
        out.push(match p.tokenize(PROMPT, true, false) {
            Err(e) => Check::fail("tokenize", format!("{}: reply with `tokens`", problem(&e))),
            Ok(ids) if ids.is_empty() => Check::fail("tokenize", "no tokens for a non-empty text"),
            Ok(ids) if ids.iter().any(|&t| t >= n_vocab) => Check::fail(
                "tokenize",
                format!("ids {ids:?} outside the vocabulary of {n_vocab}"),
            ),
            Ok(ids) if info.bos.is_some() && ids.first() != info.bos.as_ref() => Check::fail(
                "tokenize",
                format!(
                    "add_bos: the first id is {:?}, BOS is {:?}: add exactly one BOS when asked",
                    ids.first(),
                    info.bos
                ),
            ),
            Ok(ids) => match p.pieces(&ids) {
                Ok(pc) if pc.len() == ids.len() => Check::pass(
                    "tokenize",
                    format!("{} ids, {} pieces", ids.len(), pc.len()),
                ),
                Ok(pc) => Check::fail(
                    "tokenize",
                    format!(
                        "`pieces` of {} ids returned {}: one piece per id",
                        ids.len(),
                        pc.len()
                    ),
                ),
                Err(e) => Check::fail("tokenize", format!("pieces: {}", problem(&e))),
            },
        });
    } else {
        out.push(Check::skip("tokenize", "not declared"));
    }

    // 3. Forward: logits at every position, stages with the right names, shapes, positions.
    let mut forward_broken = false;
    if caps.forward {
        let capture = Capture {
            stages: caps.stages.clone(),
            layers: None,
            positions: None,
        };
        match p.forward(&tokens, &capture) {
            Err(e) => {
                forward_broken = no_reply(&e);
                out.push(Check::fail(
                    "forward",
                    if forward_broken {
                        problem(&e)
                    } else {
                        format!("{}: reply with `forward`", problem(&e))
                    },
                ))
            }
            Ok(f) => {
                let want = tokens.len() * n_vocab as usize;
                out.push(if f.n_vocab != n_vocab {
                    Check::fail("forward", format!("n_vocab {} in the reply, {} in `opened`", f.n_vocab, n_vocab))
                } else if f.logits.len() != want {
                    Check::fail("forward", format!(
                        "{} logits for {} tokens × {n_vocab}: return logits at every position (n_tokens × n_vocab, row-major), {want} floats",
                        f.logits.len(), tokens.len()
                    ))
                } else if f.logits.iter().any(|x| !x.is_finite()) {
                    Check::fail("forward", "non-finite logits on a plain prompt")
                } else {
                    Check::pass("forward", format!("{} × {n_vocab} logits", tokens.len()))
                });
                out.push(check_stages(
                    &f.stages,
                    &caps,
                    &shapes,
                    tokens.len(),
                    info.n_layer,
                ));
                // Positions and layers as asked: only position 1, only layer 0.
                if !caps.stages.is_empty() {
                    let narrow = Capture {
                        stages: caps.stages.clone(),
                        layers: Some(vec![0]),
                        positions: Some(vec![1]),
                    };
                    out.push(match p.forward(&tokens, &narrow) {
                        Err(e) => Check::fail("capture filter", problem(&e)),
                        Ok(g) => {
                            let bad: Vec<String> = g
                                .stages
                                .iter()
                                .filter(|t| t.position != 1 || t.layer.is_some_and(|l| l != 0))
                                .map(|t| format!("{} pos {}", t.id(), t.position))
                                .collect();
                            if bad.is_empty() && !g.stages.is_empty() {
                                Check::pass("capture filter", "only the asked layers and positions came back")
                            } else if g.stages.is_empty() {
                                Check::fail("capture filter", "nothing came back for layers [0], positions [1]")
                            } else {
                                Check::fail("capture filter", format!(
                                    "asked for layer 0, position 1; also got {}: honour `capture.layers` and `capture.positions`",
                                    bad.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
                                ))
                            }
                        }
                    });
                }
                // Determinism: the same request twice, the same bits.
                out.push(match p.forward(&tokens, &capture) {
                    Err(e) => Check::fail("determinism", problem(&e)),
                    Ok(g) => {
                        let same_logits = probe::blake3_f32(&f.logits) == probe::blake3_f32(&g.logits);
                        let differ = f.stages.iter().zip(&g.stages).find(|(x, y)| x.blake3() != y.blake3() || x.id() != y.id());
                        match (same_logits, differ) {
                            (true, None) if f.stages.len() == g.stages.len() => Check::pass("determinism", "the same request twice gave the same bits"),
                            (false, _) => Check::fail("determinism", "two identical forward requests gave different logits bits: make a forward pass start from an empty KV cache and not depend on thread timing"),
                            (_, Some((x, _))) => Check::fail("determinism", format!("{} at position {} differs between two identical requests", x.id(), x.position)),
                            _ => Check::fail("determinism", "two identical requests returned different numbers of stage tensors"),
                        }
                    }
                });
                // Causality: changing later tokens must not change earlier positions.
                out.push(check_causality(p.as_mut(), &tokens, &f.logits, n_vocab));
            }
        }
    } else {
        for name in ["forward", "stages", "determinism", "causality"] {
            out.push(Check::skip(name, "no forward pass declared"));
        }
    }

    // 4. Generation.
    if caps.generate {
        let n = 4;
        let mut g = GenerateRequest::greedy(tokens.clone(), n);
        g.keep_logits = caps.decode_logits;
        let mut streamed = Vec::new();
        out.push(match p.generate_with(&g, &mut |t| streamed.push(t)) {
            Err(e) => Check::fail("generate", format!("{}: reply with `token` frames, then `generation`", problem(&e))),
            Ok(r) => {
                let positions: Vec<u32> = r.steps.iter().map(|s| s.position).collect();
                let want_pos: Vec<u32> = (tokens.len() as u32..).take(n - 1).collect();
                if r.tokens.len() != n {
                    Check::fail("generate", format!("max_tokens {n} gave {} tokens: generate exactly max_tokens (unless stop_at_eos)", r.tokens.len()))
                } else if r.steps.len() != n - 1 || positions != want_pos {
                    Check::fail("generate", format!("steps at positions {positions:?}, expected {want_pos:?}: one step per token after the first, at the next position"))
                } else if streamed != r.tokens {
                    Check::fail("generate", format!("streamed `token` frames {streamed:?} but `generation.tokens` is {:?}", r.tokens))
                } else if r.tokens.iter().any(|&t| t >= n_vocab) {
                    Check::fail("generate", format!("generated ids {:?} outside the vocabulary", r.tokens))
                } else if caps.decode_logits && r.steps.iter().any(|s| s.logits.as_ref().is_none_or(|l| l.len() != n_vocab as usize)) {
                    Check::fail("generate", "keep_logits: each step must carry its n_vocab logits")
                } else {
                    Check::pass("generate", format!("{n} greedy tokens {:?}", r.tokens))
                }
            }
        });
        if caps.teacher_forced {
            let forced: Vec<Token> = vec![(tokens[1] + 3) % n_vocab, (tokens[1] + 5) % n_vocab];
            let mut g = GenerateRequest::greedy(tokens.clone(), 3);
            g.forced = Some(forced.clone());
            out.push(match p.generate(&g) {
                Err(e) => Check::fail("teacher forcing", problem(&e)),
                Ok(r) => {
                    let fed: Vec<Token> = r.steps.iter().map(|s| s.input).collect();
                    if fed == forced {
                        Check::pass("teacher forcing", "step i fed forced[i]")
                    } else {
                        Check::fail("teacher forcing", format!("forced {forced:?}, the steps fed {fed:?}: with `forced`, feed forced[i] at step i whatever was chosen"))
                    }
                }
            });
        } else {
            out.push(Check::skip("teacher forcing", "not declared"));
        }
    } else {
        out.push(Check::skip("generate", "not declared"));
    }

    // 5. Errors: a bad request is an `error` reply, and the probe goes on.
    let bad = vec![n_vocab + 7];
    let reply = if caps.forward && forward_broken {
        Err(None)
    } else if caps.forward {
        p.forward(&bad, &Capture::none()).map(|_| ()).map_err(Some)
    } else if caps.generate {
        p.generate(&GenerateRequest::greedy(bad, 2))
            .map(|_| ())
            .map_err(Some)
    } else {
        Ok(())
    };
    out.push(match reply {
        Err(None) => Check::skip("invalid request", "forward does not answer (see above)"),
        Ok(()) if caps.forward || caps.generate => Check::fail(
            "invalid request",
            format!(
                "token id {} (≥ n_vocab) was accepted: reply `error` with kind `invalid_request`",
                n_vocab + 7
            ),
        ),
        Ok(()) => Check::skip("invalid request", "nothing to send it to"),
        Err(Some(Error::InvalidRequest(_))) | Err(Some(Error::Backend(_))) => Check::pass(
            "invalid request",
            "an out-of-vocabulary id got an `error` reply",
        ),
        Err(Some(e)) => Check::fail(
            "invalid request",
            format!(
                "{}: reply `error` (kind `invalid_request`) and keep serving",
                problem(&e)
            ),
        ),
    });
    drop(p);
    let missing = model.with_file_name("bitprobe-conformance-no-such-model.gguf");
    out.push(match open_unvalidated(spec, &missing, watchdog) {
        Ok(()) => Check::fail(
            "bad model path",
            format!(
                "opening {} succeeded: reply `error` (kind `load`)",
                missing.display()
            ),
        ),
        Err(Error::Load { .. })
        | Err(Error::InvalidRequest(_))
        | Err(Error::Backend(_))
        | Err(Error::Io(_)) => Check::pass(
            "bad model path",
            "a missing model file got an `error` reply",
        ),
        Err(e) => Check::fail(
            "bad model path",
            format!(
                "{}: reply `error` (kind `load`) naming the file",
                problem(&e)
            ),
        ),
    });
    out
}

/// Opens without bitprobe's own file check, to see what the probe itself says.
fn open_unvalidated(spec: &ProbeSpec, model: &Path, watchdog: Watchdog) -> Result<(), Error> {
    match spec {
        ProbeSpec::Engine => engine::EngineProbe::open(&probe::OpenRequest::new(model)).map(|_| ()),
        other => {
            let launch =
                probes::launch_of(other, watchdog).map_err(|e| Error::Io(e.to_string()))?;
            probe::wire::RemoteProbe::launch(launch, probe::OpenRequest::new(model)).map(|_| ())
        }
    }
}

fn describe_caps(c: &Capabilities) -> String {
    let mut v = Vec::new();
    for (on, name) in [
        (c.tokenize, "tokenize"),
        (c.forward, "forward"),
        (c.generate, "generate"),
        (c.teacher_forced, "teacher_forced"),
        (c.decode_logits, "decode_logits"),
        (c.decode_stages, "decode_stages"),
    ] {
        if on {
            v.push(name.to_string());
        }
    }
    v.push(format!("{} stages", c.stages.len()));
    v.join(", ")
}

fn check_stages(
    got: &[StageTensor],
    caps: &Capabilities,
    shapes: &BTreeMap<(Stage, Option<u32>), Vec<usize>>,
    n_tokens: usize,
    n_layer: u32,
) -> Check {
    if caps.stages.is_empty() {
        return Check::skip("stages", "no stages declared");
    }
    let mut seen = std::collections::HashSet::new();
    for t in got {
        if !caps.stages.contains(&t.stage) {
            return Check::fail(
                "stages",
                format!("{} came back but was not declared or asked for", t.id()),
            );
        }
        if t.stage.is_per_layer() != t.layer.is_some() {
            return Check::fail("stages", format!(
                "{} with layer {:?}: per-layer stages carry their layer, inp_embd/result_norm/result_output carry null",
                t.stage, t.layer
            ));
        }
        if t.layer.is_some_and(|l| l >= n_layer) || t.position as usize >= n_tokens {
            return Check::fail(
                "stages",
                format!(
                    "{} at position {} is outside the model or the prompt",
                    t.id(),
                    t.position
                ),
            );
        }
        if !seen.insert((t.stage, t.layer, t.position)) {
            return Check::fail(
                "stages",
                format!(
                    "{} at position {} came twice: one tensor per (stage, layer, position)",
                    t.id(),
                    t.position
                ),
            );
        }
        let n: usize = t.shape.iter().product();
        if n != t.data.len() {
            return Check::fail(
                "stages",
                format!(
                    "{} at position {}: shape {:?} holds {n} values, the blob has {}",
                    t.id(),
                    t.position,
                    t.shape,
                    t.data.len()
                ),
            );
        }
        if let Some(want) = shapes.get(&(t.stage, t.layer)) {
            if *want != t.shape {
                return Check::fail("stages", format!(
                    "{} at position {}: shape {:?}, expected {want:?} (docs/trace-format.md, Stages)",
                    t.id(), t.position, t.shape
                ));
            }
        }
    }
    let want = caps
        .stages
        .iter()
        .map(|s| {
            if s.is_per_layer() {
                n_layer as usize
            } else {
                1
            }
        })
        .sum::<usize>()
        * n_tokens;
    if seen.len() != want {
        return Check::fail("stages", format!(
            "{} stage tensors for {} declared stages over {n_tokens} positions and {n_layer} layers: expected {want} (every declared stage, every layer, every position)",
            seen.len(), caps.stages.len()
        ));
    }
    Check::pass(
        "stages",
        format!("{want} tensors, names, layers, positions and shapes as expected"),
    )
}

fn check_causality(p: &mut dyn Probe, tokens: &[Token], logits: &[f32], n_vocab: u32) -> Check {
    let k = tokens.len() / 2;
    let mut other = tokens.to_vec();
    for t in other.iter_mut().skip(k) {
        *t = (*t + 7) % n_vocab;
    }
    match p.forward(&other, &Capture::none()) {
        Err(e) => Check::fail("causality", problem(&e)),
        Ok(f) => {
            let n = n_vocab as usize;
            for i in 0..k {
                let m = crate::compare::compare(
                    &f.logits[i * n..(i + 1) * n],
                    &logits[i * n..(i + 1) * n],
                );
                if m.nmse > 1e-10 {
                    return Check::fail("causality", format!(
                        "logits at position {i} changed (nmse {:.2e}) when only tokens from position {k} on changed: attention must be causal (mask future positions)",
                        m.nmse
                    ));
                }
            }
            Check::pass(
                "causality",
                format!("positions 0..{k} did not notice later tokens changing"),
            )
        }
    }
}

/// The checklist as text: one line per check.
pub fn render(spec: &ProbeSpec, checks: &[Check]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "conformance of {spec}");
    for c in checks {
        let mark = match c.status {
            Status::Pass => "ok  ",
            Status::Fail => "FAIL",
            Status::Skipped => "skip",
        };
        let _ = writeln!(s, "  {mark} {:<16} {}", c.name, c.detail);
    }
    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    let _ = writeln!(
        s,
        "{}",
        if failed == 0 {
            "all checks passed".to_string()
        } else {
            format!("{failed} check(s) failed")
        }
    );
    s
}
