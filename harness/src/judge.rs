//! The one judge: every comparison of two probes becomes a list of [`Judged`] values, built
//! here and nowhere else, and every report — trials, the gallery, snapshots, the sweep,
//! `diff`, `trace-diff` — folds over that list without deciding anything itself.
//!
//! Like llama.cpp's `test-backend-ops` `eval`, each judgement goes in one order: a value one
//! side did not produce, then a shape mismatch, then NaN/Inf, then the metric against its
//! limit, then (logits only) the near-tie rule that may excuse a top-1 flip.
//!
//! Side A is the implementation under test (the engine), side B the reference (the oracle);
//! [`Labels`] name them for people.

use crate::compare::{compare, compare_logits, LogitsMetrics, TensorMetrics};
use crate::tolerance::{LogitsTolerance, WeightType};
use probe::{StageId, StageTensor, Token};
use serde::Serialize;
use std::fmt;

/// When a value was computed: in the prompt pass, or at decode step `n` (1-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Prompt,
    Decode(u32),
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Phase::Prompt => f.write_str("prompt"),
            Phase::Decode(n) => write!(f, "decode step {n}"),
        }
    }
}

/// What was compared: the token ids of the prompt, one stage tensor, one logits row, or the
/// token a decode step was fed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "stage")]
pub enum Site {
    Tokenize,
    Stage(#[serde(serialize_with = "ser_display")] StageId),
    Logits,
    Decode,
}

impl Site {
    /// Order within one phase: tokens, then stages in evaluation order, then logits, then
    /// the decode token.
    pub fn order(&self) -> (u8, (u32, usize)) {
        match self {
            Site::Tokenize => (0, (0, 0)),
            Site::Stage(id) => (1, id.eval_key()),
            Site::Logits => (2, (0, 0)),
            Site::Decode => (3, (0, 0)),
        }
    }

    /// Whether two sites name the same place in a report: the logits row is the
    /// `result_output` stage.
    pub fn same_place(self, other: Site) -> bool {
        let logits = |s: Site| {
            s == Site::Logits || s == Site::Stage(StageId::new(probe::Stage::ResultOutput, None))
        };
        self == other || (logits(self) && logits(other))
    }

    pub fn stage(&self) -> Option<StageId> {
        match self {
            Site::Stage(id) => Some(*id),
            _ => None,
        }
    }
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Site::Tokenize => f.write_str("tokenize"),
            Site::Stage(id) => id.fmt(f),
            // The logits are the `result_output` stage; reports have always named them so.
            Site::Logits => f.write_str("result_output"),
            Site::Decode => f.write_str("decode"),
        }
    }
}

fn ser_display<S: serde::Serializer, T: fmt::Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// Which side of a comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// The implementation under test.
    A,
    /// The reference.
    B,
}

/// Who A and B are, for people: `engine` / `oracle`, or `A` / `B` for two trace folders.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Labels {
    pub a: String,
    pub b: String,
}

impl Labels {
    pub fn new(a: impl Into<String>, b: impl Into<String>) -> Labels {
        Labels {
            a: a.into(),
            b: b.into(),
        }
    }

    pub fn of(&self, side: Side) -> &str {
        match side {
            Side::A => &self.a,
            Side::B => &self.b,
        }
    }
}

/// What was measured.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Measure {
    Tensor(TensorMetrics),
    Logits(LogitsMetrics),
    /// Hash-only traces: the blake3 of both sides, and their RMS when known.
    Hash {
        equal: bool,
        rms_a: Option<f64>,
        rms_b: Option<f64>,
    },
    /// Token ids from the first index where they differ (`at`), a few on each side.
    Tokens {
        at: usize,
        a: Vec<Token>,
        b: Vec<Token>,
    },
    /// Only one side produced the value.
    Absent {
        missing: Side,
    },
    /// The token each side generated at one step of free-running greedy generation, with B's
    /// top-2 margin there (and its runner-up), from B's logits.
    Generated {
        a: Token,
        b: Token,
        margin_b: f64,
        runner_up_b: Token,
        /// How far below B's choice A's token sits in B's logits, and its rank there (1 = top).
        gap_b: f64,
        rank_b: usize,
    },
    /// Both produced it with different element counts.
    Shape {
        a: Vec<usize>,
        b: Vec<usize>,
    },
}

impl Measure {
    pub fn tensor(&self) -> Option<&TensorMetrics> {
        match self {
            Measure::Tensor(m) => Some(m),
            _ => None,
        }
    }

    pub fn logits(&self) -> Option<&LogitsMetrics> {
        match self {
            Measure::Logits(m) => Some(m),
            _ => None,
        }
    }

    /// The NMSE this measure judged (tensor or logits row).
    pub fn nmse(&self) -> Option<f64> {
        match self {
            Measure::Tensor(m) => Some(m.nmse),
            Measure::Logits(m) => Some(m.nmse),
            _ => None,
        }
    }

    /// Whether every value has the same bits (`None`: not a value comparison).
    pub fn bit_exact(&self) -> Option<bool> {
        match self {
            Measure::Tensor(m) => Some(m.bit_exact),
            Measure::Hash { equal, .. } => Some(*equal),
            _ => None,
        }
    }
}

/// The limits a value was judged against (`None`: no limit applies, e.g. hash-only rows).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Limit {
    pub nmse: Option<f64>,
    pub kl: Option<f64>,
    /// For generated tokens: the largest top-2 margin of B that still counts as a near-tie.
    pub margin: Option<f64>,
}

/// Why a value failed.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Failure {
    /// One side did not produce it.
    Absent,
    /// Different element counts.
    Shape,
    /// NaN on a side, or an Inf not faced by the same Inf.
    NonFinite,
    /// The metric is over its limit.
    OverLimit,
    /// Top-1 differs and the logits do not explain it as a near-tie.
    Top1Flip,
    /// Hash-only: the bits differ.
    HashDiffers,
    /// Different token ids.
    Tokens,
    /// The right token, but chosen by less than the required top-2 margin.
    Unsure,
}

/// A judgement's outcome.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome", content = "why")]
pub enum Outcome {
    Pass,
    /// Top-1 differs at a near-tie while KL and NMSE are within limits: passes, and is
    /// reported wherever the verdict is.
    NearTie,
    Fail(Failure),
}

/// One compared value and its verdict.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Judged {
    pub phase: Phase,
    pub site: Site,
    /// Absolute token position (for `Tokenize`: the first differing index).
    pub position: u32,
    pub shape: Vec<usize>,
    pub measure: Measure,
    pub limit: Limit,
    pub outcome: Outcome,
}

impl Judged {
    pub fn pass(&self) -> bool {
        !matches!(self.outcome, Outcome::Fail(_))
    }

    /// Sort key: phase, then site in evaluation order, then position.
    pub fn key(&self) -> (Phase, (u8, (u32, usize)), u32) {
        (self.phase, self.site.order(), self.position)
    }

    /// One line: where, the numbers, and why it failed when it did. `labels` name the sides.
    pub fn summary(&self, labels: &Labels) -> String {
        let at = format!("{} pos {} {}", self.phase, self.position, self.site);
        match &self.measure {
            Measure::Tensor(m) => format!(
                "{at}: {}{}",
                tensor_numbers(m, self.limit.nmse),
                self.note(labels)
                    .map(|n| format!(" — {n}"))
                    .unwrap_or_default()
            ),
            _ => format!("{at}: {}", self.note(labels).unwrap_or_default()),
        }
    }

    /// What is worth saying beyond the numbers: the failure, or the near-tie that excused a
    /// flip. `None` for a plain pass.
    pub fn note(&self, labels: &Labels) -> Option<String> {
        let (a, b) = (&labels.a, &labels.b);
        match (&self.measure, &self.outcome) {
            (Measure::Absent { missing }, _) => {
                Some(format!("{} did not produce this stage", labels.of(*missing)))
            }
            (Measure::Shape { a: sa, b: sb }, _) => {
                Some(format!("shape differs: {a} {sa:?}, {b} {sb:?}"))
            }
            (Measure::Tensor(m), Outcome::Fail(Failure::NonFinite)) => {
                Some(non_finite_text(m, labels))
            }
            (Measure::Tensor(_), _) => None,
            (Measure::Logits(m), Outcome::Fail(Failure::NonFinite)) => Some(format!(
                "non-finite logits: NaN {a} {}, {b} {}; {} unmatched Inf",
                m.nan_engine, m.nan_oracle, m.inf_mismatch
            )),
            (Measure::Logits(m), Outcome::NearTie | Outcome::Fail(Failure::Top1Flip)) => {
                Some(format!(
                    "top-1 differs: {a} {} (margin {:.2e}), {b} {} (margin {:.2e}; {a}'s choice {:.2e} below it; max|Δ| {:.2e}){}",
                    m.top1_engine,
                    m.margin_engine,
                    m.top1_oracle,
                    m.margin_oracle,
                    m.gap_oracle,
                    m.max_abs,
                    if self.outcome == Outcome::NearTie {
                        format!(" — a near-tie ({b}'s margin ≤ {:.2e}, the most a correct engine's logits move)", self.limit.margin.unwrap_or(f64::NAN))
                    } else {
                        format!(" — not a near-tie: {b} preferred its top-1 by more than {:.2e}, and the logits otherwise agree", self.limit.margin.unwrap_or(f64::NAN))
                    }
                ))
            }
            (Measure::Logits(m), Outcome::Fail(_)) => Some(format!(
                "KL {:.3e} (limit {:.0e}), nmse {:.3e} (limit {:.0e})",
                m.kl,
                self.limit.kl.unwrap_or(f64::NAN),
                m.nmse,
                self.limit.nmse.unwrap_or(f64::NAN)
            )),
            (Measure::Logits(_), _) => None,
            (
                Measure::Hash {
                    equal: false,
                    rms_a,
                    rms_b,
                },
                _,
            ) => {
                let r = |x: &Option<f64>| x.map_or("?".to_string(), |v| format!("{v:.6e}"));
                Some(format!(
                    "hash-only: blake3 differs (rms {a} {} vs {b} {})",
                    r(rms_a),
                    r(rms_b)
                ))
            }
            (Measure::Hash { .. }, _) => None,
            (
                Measure::Generated {
                    a: ta,
                    b: tb,
                    margin_b,
                    runner_up_b,
                    gap_b,
                    rank_b,
                },
                outcome,
            ) => Some(format!(
                "generated token differs: {a} {ta}, {b} {tb}; in {b}'s logits {a}'s token ranks #{rank_b}, {gap_b:.3e} below the top ({b}'s top-2 margin {margin_b:.3e}, runner-up {runner_up_b}){}",
                match outcome {
                    Outcome::NearTie => format!(
                        " — a near-tie (≤ {:.2e}, the most a correct engine's logits move)",
                        self.limit.margin.unwrap_or(f64::NAN)
                    ),
                    _ => format!(
                        " — not a near-tie: more than {:.2e}, the most a correct engine's logits move",
                        self.limit.margin.unwrap_or(f64::NAN)
                    ),
                }
            )),
            (Measure::Tokens { at, a: ta, b: tb }, _) => Some(match self.site {
                Site::Decode => format!(
                    "decode step {} feeds token {} in {a} and {} in {b}: the two were not \
                     teacher-forced, so this and later steps are not compared",
                    match self.phase {
                        Phase::Decode(s) => s,
                        Phase::Prompt => 0,
                    },
                    ta.first().map_or("-".into(), |t| t.to_string()),
                    tb.first().map_or("-".into(), |t| t.to_string()),
                ),
                _ => format!("{a} tokens {ta:?} vs {b} {tb:?} (from index {at})"),
            }),
        }
    }
}

fn tensor_numbers(m: &TensorMetrics, limit: Option<f64>) -> String {
    format!(
        "nmse {:.3e} (limit {}), cos {:.6}, max|Δ| {:.3e}{}",
        m.nmse,
        limit.map_or("none".to_string(), |l| format!("{l:.0e}")),
        m.cosine,
        m.max_abs,
        if m.bit_exact && m.nan_engine == 0 {
            ", bit-exact"
        } else {
            ""
        }
    )
}

fn non_finite_text(m: &TensorMetrics, labels: &Labels) -> String {
    if m.nan_engine + m.nan_oracle > 0 {
        format!(
            "NaN: {} {}, {} {}",
            labels.a, m.nan_engine, labels.b, m.nan_oracle
        )
    } else {
        format!(
            "{} Inf values without a same-signed Inf opposite",
            m.inf_mismatch
        )
    }
}

// ------------------------------------------------------------------------------------------
// The judge.

/// A stage tensor of A against B's. Either may be absent (the other side's shape is kept).
pub fn tensor(
    phase: Phase,
    a: Option<&StageTensor>,
    b: Option<&StageTensor>,
    nmse_limit: f64,
) -> Judged {
    let t = b.or(a).expect("a tensor on at least one side");
    let mut j = Judged {
        phase,
        site: Site::Stage(t.id()),
        position: t.position,
        shape: t.shape.clone(),
        measure: Measure::Absent { missing: Side::A },
        limit: Limit {
            nmse: Some(nmse_limit),
            ..Limit::default()
        },
        outcome: Outcome::Fail(Failure::Absent),
    };
    match (a, b) {
        (None, _) => {}
        (Some(_), None) => j.measure = Measure::Absent { missing: Side::B },
        (Some(a), Some(b)) if a.data.len() != b.data.len() => {
            j.measure = Measure::Shape {
                a: a.shape.clone(),
                b: b.shape.clone(),
            };
            j.outcome = Outcome::Fail(Failure::Shape);
        }
        (Some(a), Some(b)) => {
            let m = compare(&a.data, &b.data);
            j.outcome = if m.non_finite_failure().is_some() {
                Outcome::Fail(Failure::NonFinite)
            } else if m.nmse <= nmse_limit {
                Outcome::Pass
            } else {
                Outcome::Fail(Failure::OverLimit)
            };
            j.measure = Measure::Tensor(m);
        }
    }
    j
}

/// Whether a top-1 flip is a near-tie: B's top-2 margin is at most twice the largest logit
/// difference (the difference explains the flip) *and* at most the margin a correct
/// engine's logits can move (`tol.margin`, measured): where B was sure, a flip is a bug
/// however far off the logits are.
pub fn near_tie(m: &LogitsMetrics, tol: LogitsTolerance) -> bool {
    m.gap_oracle <= 2.0 * m.max_abs && m.gap_oracle <= tol.margin
}

/// A's logits row against B's at one position.
pub fn logits(phase: Phase, position: u32, a: &[f32], b: &[f32], tol: LogitsTolerance) -> Judged {
    let m = compare_logits(a, b);
    let over = !(m.kl <= tol.kl && m.nmse <= tol.nmse);
    // NaN/Inf first, then the metrics against their limits, then the near-tie rule: a flip
    // is excused only where the logits otherwise agree.
    let outcome = if m.nan_engine + m.nan_oracle + m.inf_mismatch > 0 {
        Outcome::Fail(Failure::NonFinite)
    } else if over {
        Outcome::Fail(Failure::OverLimit)
    } else if m.top1_agree() {
        Outcome::Pass
    } else if near_tie(&m, tol) {
        Outcome::NearTie
    } else {
        Outcome::Fail(Failure::Top1Flip)
    };
    Judged {
        phase,
        site: Site::Logits,
        position,
        shape: vec![b.len()],
        measure: Measure::Logits(m),
        limit: Limit {
            nmse: Some(tol.nmse),
            kl: Some(tol.kl),
            margin: Some(tol.margin),
        },
        outcome,
    }
}

/// The prompt's token ids: `None` when they agree.
pub fn tokens(a: &[Token], b: &[Token]) -> Option<Judged> {
    if a == b {
        return None;
    }
    let at = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    Some(Judged {
        phase: Phase::Prompt,
        site: Site::Tokenize,
        position: at as u32,
        shape: Vec::new(),
        measure: Measure::Tokens {
            at,
            a: a[at..a.len().min(at + 4)].to_vec(),
            b: b[at..b.len().min(at + 4)].to_vec(),
        },
        limit: Limit::default(),
        outcome: Outcome::Fail(Failure::Tokens),
    })
}

/// Decode step `step` was fed different tokens on the two sides (no teacher forcing): the
/// step and everything after it cannot be compared.
pub fn decode_inputs(step: u32, position: u32, a: Token, b: Token) -> Judged {
    Judged {
        phase: Phase::Decode(step),
        site: Site::Decode,
        position,
        shape: Vec::new(),
        measure: Measure::Tokens {
            at: 0,
            a: vec![a],
            b: vec![b],
        },
        limit: Limit::default(),
        outcome: Outcome::Fail(Failure::Tokens),
    }
}

/// One generation step: the token A chose against B's, with B's logits at that step (the
/// logits at `position`, which chose the token). A different token is excused as a near-tie
/// when A's token sits at most `near_tie_margin` below B's choice in B's logits (a correct
/// engine's logits may move that much); a token B ranked far down is a bug.
pub fn generated(
    step: u32,
    position: u32,
    a: Token,
    b: Token,
    b_logits: &[f32],
    near_tie_margin: f64,
) -> Judged {
    let top = crate::compare::top_k(b_logits, 2);
    let (first, second) = (
        top.first().copied().unwrap_or(b),
        top.get(1).copied().unwrap_or(b),
    );
    let at = |t: Token| b_logits.get(t as usize).map_or(f64::NAN, |x| *x as f64);
    let margin_b = at(first) - at(second);
    let gap_b = at(b) - at(a);
    let rank_b = 1 + b_logits.iter().filter(|&&x| (x as f64) > at(a)).count();
    let outcome = if a == b {
        Outcome::Pass
    } else if gap_b <= near_tie_margin {
        Outcome::NearTie
    } else {
        Outcome::Fail(Failure::Tokens)
    };
    Judged {
        phase: if step == 0 {
            Phase::Prompt
        } else {
            Phase::Decode(step)
        },
        site: Site::Decode,
        position,
        shape: Vec::new(),
        measure: Measure::Generated {
            a,
            b,
            margin_b,
            runner_up_b: second,
            gap_b,
            rank_b,
        },
        limit: Limit {
            margin: Some(near_tie_margin),
            ..Limit::default()
        },
        outcome,
    }
}

/// One position of a known answer (`answer = " Paris."`): the token a probe chose against
/// the answer's, and — when the probe gives logits — how sure it was.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AnswerStep {
    /// 0 = the token chosen from the prompt's last position.
    pub index: usize,
    pub chosen: Token,
    pub expected: Token,
    /// The expected token's logit minus the largest other (negative: it was not the top).
    pub margin: Option<f64>,
    /// The expected token's rank in the probe's logits (1 = top).
    pub rank: Option<usize>,
    /// The probe's five most likely tokens there.
    pub top5: Vec<Token>,
    pub limit: Option<f64>,
    pub outcome: Outcome,
}

/// Judges one answer position: the probe must choose the answer's token, and (with logits
/// and a `min_margin`) by at least that margin over every other token.
pub fn answer_step(
    index: usize,
    chosen: Token,
    expected: Token,
    logits: Option<&[f32]>,
    min_margin: Option<f64>,
) -> AnswerStep {
    let (mut margin, mut rank, mut top5) = (None, None, Vec::new());
    if let Some(row) = logits.filter(|r| (expected as usize) < r.len()) {
        let e = row[expected as usize] as f64;
        let best_other = row
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != expected as usize)
            .map(|(_, &x)| x as f64)
            .fold(f64::NEG_INFINITY, f64::max);
        margin = Some(e - best_other);
        rank = Some(1 + row.iter().filter(|&&x| (x as f64) > e).count());
        top5 = crate::compare::top_k(row, 5);
    }
    let outcome = if chosen != expected {
        Outcome::Fail(Failure::Tokens)
    } else if matches!((margin, min_margin), (Some(m), Some(min)) if m < min || m.is_nan()) {
        Outcome::Fail(Failure::Unsure)
    } else {
        Outcome::Pass
    };
    AnswerStep {
        index,
        chosen,
        expected,
        margin,
        rank,
        top5,
        limit: min_margin,
        outcome,
    }
}

/// Hash-only comparison of one stage tensor (values absent on at least one side).
pub fn hash(
    phase: Phase,
    id: StageId,
    position: u32,
    shape: &[usize],
    a: Option<(&str, Option<f64>)>,
    b: Option<(&str, Option<f64>)>,
) -> Judged {
    let (measure, outcome) = match (a, b) {
        (None, _) => (
            Measure::Absent { missing: Side::A },
            Outcome::Fail(Failure::Absent),
        ),
        (_, None) => (
            Measure::Absent { missing: Side::B },
            Outcome::Fail(Failure::Absent),
        ),
        (Some((ha, ra)), Some((hb, rb))) => {
            let equal = ha == hb;
            (
                Measure::Hash {
                    equal,
                    rms_a: ra,
                    rms_b: rb,
                },
                if equal {
                    Outcome::Pass
                } else {
                    Outcome::Fail(Failure::HashDiffers)
                },
            )
        }
    };
    Judged {
        phase,
        site: Site::Stage(id),
        position,
        shape: shape.to_vec(),
        measure,
        limit: Limit::default(),
        outcome,
    }
}

// ------------------------------------------------------------------------------------------
// Folds every report shares.

/// The first failure in evaluation order: the prompt's tokens, then each phase in order —
/// its stages (earliest stage first, lowest position first), then its logits, then its
/// decode token.
pub fn first_failure(judged: &[Judged]) -> Option<&Judged> {
    judged.iter().filter(|j| !j.pass()).min_by_key(|j| j.key())
}

/// Where the trouble starts: the earliest value on the path to `failing` (an earlier phase, or
/// the same phase at a position no later, earlier in evaluation order) that is clearly above
/// what a correct engine shows there — [`crate::floors::ORIGIN_FACTOR`] times its noise floor
/// — or that could not be compared at all. `failing` itself when nothing before it is. A bug
/// whose error at its true origin is just under the limit is named there, not where the
/// limit is first crossed.
pub fn origin<'a>(judged: &'a [Judged], failing: &'a Judged, wt: WeightType) -> &'a Judged {
    let upstream = |j: &Judged| {
        j.key() < failing.key() && (j.phase < failing.phase || j.position <= failing.position)
    };
    judged
        .iter()
        .filter(|j| upstream(j) && above_floor(j, wt))
        .min_by_key(|j| j.key())
        .unwrap_or(failing)
}

/// Whether a stage value is clearly above its noise floor (or not comparable).
pub fn above_floor(j: &Judged, wt: WeightType) -> bool {
    let Site::Stage(id) = j.site else {
        return false;
    };
    match &j.measure {
        Measure::Tensor(m) if m.non_finite_failure().is_some() || !m.nmse.is_finite() => true,
        Measure::Tensor(m) => {
            m.nmse >= crate::floors::ORIGIN_FACTOR * crate::floors::floor(wt, id.stage, id.layer)
        }
        Measure::Absent { .. } | Measure::Shape { .. } => true,
        _ => false,
    }
}

/// The first value that is not bit-exact (values compared, bits differ): the sharpest
/// localization while A is otherwise a bit-exact mirror of B.
pub fn first_inexact(judged: &[Judged]) -> Option<&Judged> {
    judged
        .iter()
        .filter(|j| j.measure.bit_exact() == Some(false))
        .min_by_key(|j| j.key())
}

/// The worst of a set of values, one NaN policy for every report: any non-finite value (or a
/// failure to compare) makes the result [`Worst::NonFinite`]; otherwise the largest NMSE,
/// or [`Worst::BitExact`] when every value matched bit for bit.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "nmse")]
pub enum Worst {
    BitExact,
    Nmse(f64),
    NonFinite,
}

impl Worst {
    fn of(j: &Judged) -> Option<Worst> {
        match (&j.measure, &j.outcome) {
            (_, Outcome::Fail(Failure::NonFinite)) => Some(Worst::NonFinite),
            (Measure::Tensor(m), _) if !m.nmse.is_finite() => Some(Worst::NonFinite),
            (Measure::Tensor(m), _) if m.bit_exact => Some(Worst::BitExact),
            (Measure::Tensor(m), _) => Some(Worst::Nmse(m.nmse)),
            _ => None,
        }
    }

    fn max(self, other: Worst) -> Worst {
        match (self, other) {
            (Worst::NonFinite, _) | (_, Worst::NonFinite) => Worst::NonFinite,
            (Worst::BitExact, x) | (x, Worst::BitExact) => x,
            (Worst::Nmse(a), Worst::Nmse(b)) => Worst::Nmse(a.max(b)),
        }
    }

    /// The NMSE as a number: 0 for bit-exact, ∞ for non-finite.
    pub fn value(self) -> f64 {
        match self {
            Worst::BitExact => 0.0,
            Worst::Nmse(x) => x,
            Worst::NonFinite => f64::INFINITY,
        }
    }
}

/// One stage's worst value over positions, in the prompt and over all decode steps.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StageSummary {
    pub stage: StageId,
    pub prompt: Option<Worst>,
    pub decode: Option<Worst>,
    /// The tightest NMSE limit applied to the stage.
    pub nmse_limit: Option<f64>,
}

/// Per stage, in evaluation order: the worst value (see [`Worst`]) in the prompt and in the
/// decode steps. Rows that could not be compared (absent, shape) count as non-finite.
pub fn worst_by_stage<'a>(judged: impl IntoIterator<Item = &'a Judged>) -> Vec<StageSummary> {
    let mut by: std::collections::BTreeMap<(u32, usize), StageSummary> = Default::default();
    for j in judged {
        let Site::Stage(id) = j.site else { continue };
        let s = by.entry(id.eval_key()).or_insert(StageSummary {
            stage: id,
            prompt: None,
            decode: None,
            nmse_limit: None,
        });
        if let Some(l) = j.limit.nmse {
            s.nmse_limit = Some(s.nmse_limit.map_or(l, |x: f64| x.min(l)));
        }
        let w = Worst::of(j).unwrap_or(Worst::NonFinite);
        let slot = match j.phase {
            Phase::Prompt => &mut s.prompt,
            Phase::Decode(_) => &mut s.decode,
        };
        *slot = Some(slot.map_or(w, |x| x.max(w)));
    }
    by.into_values().collect()
}

/// Logits over a set of rows: positions, top-1 agreement, worst KL and NMSE (non-finite
/// rows make the worst ∞), and the excused flips.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LogitsSummary {
    pub positions: usize,
    pub top1_agree: usize,
    pub worst_kl: f64,
    pub worst_nmse: f64,
    /// (phase, position, B's top-2 margin) of every flip excused as a near-tie.
    pub near_ties: Vec<(Phase, u32, f64)>,
}

pub fn logits_summary<'a>(judged: impl IntoIterator<Item = &'a Judged>) -> LogitsSummary {
    let mut s = LogitsSummary::default();
    let worse = |acc: f64, x: f64| {
        if x.is_finite() {
            acc.max(x)
        } else {
            f64::INFINITY
        }
    };
    for j in judged {
        let Measure::Logits(m) = &j.measure else {
            continue;
        };
        s.positions += 1;
        s.top1_agree += m.top1_agree() as usize;
        s.worst_kl = worse(s.worst_kl, m.kl);
        s.worst_nmse = worse(s.worst_nmse, m.nmse);
        if j.outcome == Outcome::NearTie {
            s.near_ties.push((j.phase, j.position, m.margin_oracle));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use probe::Stage;

    fn t(data: Vec<f32>) -> StageTensor {
        StageTensor {
            stage: Stage::AttnQ,
            layer: Some(0),
            position: 3,
            shape: vec![data.len()],
            data,
        }
    }

    #[test]
    fn tensor_order_absent_shape_nonfinite_limit() {
        let l = 1e-3;
        let x = t(vec![1.0, 2.0]);
        assert_eq!(
            tensor(Phase::Prompt, None, Some(&x), l).outcome,
            Outcome::Fail(Failure::Absent)
        );
        let j = tensor(Phase::Prompt, Some(&x), None, l);
        assert_eq!(j.measure, Measure::Absent { missing: Side::B });
        assert_eq!(
            tensor(Phase::Prompt, Some(&t(vec![1.0])), Some(&x), l).outcome,
            Outcome::Fail(Failure::Shape)
        );
        // NaN comes before the metric, even when the finite part matches.
        assert_eq!(
            tensor(Phase::Prompt, Some(&t(vec![f32::NAN, 2.0])), Some(&x), l).outcome,
            Outcome::Fail(Failure::NonFinite)
        );
        assert_eq!(
            tensor(Phase::Prompt, Some(&t(vec![1.5, 2.0])), Some(&x), l).outcome,
            Outcome::Fail(Failure::OverLimit)
        );
        assert_eq!(
            tensor(Phase::Prompt, Some(&x), Some(&x), l).outcome,
            Outcome::Pass
        );
    }

    #[test]
    fn both_nan_is_not_called_bit_exact() {
        let n = t(vec![f32::NAN, 1.0]);
        let j = tensor(Phase::Prompt, Some(&n), Some(&n), 1.0);
        let labels = Labels::new("engine", "oracle");
        let s = j.summary(&labels);
        assert!(!s.contains("bit-exact"), "{s}");
        assert!(s.contains("NaN: engine 1, oracle 1"), "{s}");
    }

    #[test]
    fn logits_non_finite_first_then_flip_then_limit() {
        let tol = LogitsTolerance {
            kl: 1.0,
            nmse: 1.0,
            margin: 1.0,
        };
        let b = [0.0, 5.0, 4.9, 1.0];
        // Inf (not only NaN) in the logits fails first.
        let j = logits(Phase::Prompt, 0, &[0.0, f32::INFINITY, 4.9, 1.0], &b, tol);
        assert_eq!(j.outcome, Outcome::Fail(Failure::NonFinite));
        // A flip at a 0.1 margin with max|Δ| 0.1 is a near-tie.
        let j = logits(Phase::Prompt, 0, &[0.0, 4.9, 5.0, 1.0], &b, tol);
        assert_eq!(j.outcome, Outcome::NearTie);
        assert!(j.pass());
        // A flip with the KL over its limit fails on the limit.
        let j = logits(
            Phase::Prompt,
            0,
            &[0.0, 5.0, 9.0, 1.0],
            &[0.0, 9.0, 5.0, 1.0],
            tol,
        );
        assert_eq!(j.outcome, Outcome::Fail(Failure::OverLimit), "{j:?}");
    }

    #[test]
    fn first_failure_orders_tokens_stages_logits() {
        let x = t(vec![1.0]);
        let bad = tensor(Phase::Prompt, Some(&t(vec![2.0])), Some(&x), 1e-3);
        let lg = logits(
            Phase::Prompt,
            0,
            &[1.0, 0.0],
            &[0.0, 1.0],
            LogitsTolerance {
                kl: 0.0,
                nmse: 0.0,
                margin: 1.0,
            },
        );
        let v = vec![lg.clone(), bad.clone()];
        assert_eq!(first_failure(&v), Some(&bad));
        let tk = tokens(&[1, 2], &[1, 3]).unwrap();
        let v = vec![lg, bad, tk.clone()];
        assert_eq!(first_failure(&v).unwrap().site, Site::Tokenize);
        assert_eq!(tk.position, 1);
    }

    #[test]
    fn worst_has_one_nan_policy() {
        let x = t(vec![1.0, 1.0]);
        let rows = vec![
            tensor(Phase::Prompt, Some(&x), Some(&x), 1.0),
            tensor(Phase::Prompt, Some(&t(vec![1.5, 1.0])), Some(&x), 1.0),
            tensor(
                Phase::Decode(1),
                Some(&t(vec![f32::NAN, 1.0])),
                Some(&x),
                1.0,
            ),
        ];
        let s = worst_by_stage(&rows);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].prompt, Some(Worst::Nmse(0.125)));
        assert_eq!(s[0].decode, Some(Worst::NonFinite));
        assert_eq!(worst_by_stage(&rows[..1])[0].prompt, Some(Worst::BitExact));
    }
}
