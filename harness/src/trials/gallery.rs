//! The known-bug gallery: a case with an injected fault must fail, first at the expected
//! place; and the table `bitprobe gallery` prints.

use crate::case::{Case, ExpectPhase};
use crate::judge::{self, Failure, Judged, Outcome, Phase, Site};
use crate::runs::Runs;
use serde::Serialize;

/// What one gallery case gave: the fault, where the harness first saw it, where it should.
#[derive(Clone, Debug, Serialize)]
pub struct GalleryResult {
    /// The case id (`gallery/i2s_block_256`).
    pub case: String,
    pub fault: String,
    /// The expected first divergence (`blk.0.attn_q`) and phase.
    #[serde(serialize_with = "display")]
    pub expected: Site,
    #[serde(serialize_with = "display_opt")]
    pub expected_phase: Option<ExpectPhase>,
    pub expected_position: Option<u32>,
    /// The prompt whose diff is reported: the first that diverged (else the first prompt).
    pub prompt: String,
    /// The harness's first divergence, when it saw one, and its line.
    pub reported: Option<Reported>,
    /// NMSE at the reported row (stage or logits); none for `tokenize`; NaN when non-finite.
    pub nmse: Option<f64>,
    /// The first stage (in evaluation order) whose values are not bit-exact, and its NMSE:
    /// the sharpest localization while the engine is otherwise bit-exact.
    #[serde(serialize_with = "display_opt")]
    pub first_inexact: Option<Site>,
    pub first_inexact_nmse: Option<f64>,
    #[serde(serialize_with = "display_opt")]
    pub expected_inexact: Option<Site>,
    /// Whether the prompt phase passed (the KV-cache fault must leave it clean).
    pub prompt_clean: bool,
    /// Every value stayed within tolerance: what was reported is only the first value that
    /// is not bit-exact (cases with `exact = true`).
    pub within_tolerance: bool,
    /// Detected and localized where expected.
    pub pass: bool,
}

/// Where the harness first saw the fault.
#[derive(Clone, Debug, Serialize)]
pub struct Reported {
    #[serde(serialize_with = "display")]
    pub site: Site,
    #[serde(serialize_with = "display")]
    pub phase: Phase,
    pub position: u32,
    pub detail: String,
}

fn display<S: serde::Serializer, T: std::fmt::Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn display_opt<S: serde::Serializer, T: std::fmt::Display>(
    v: &Option<T>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

impl GalleryResult {
    pub fn detected(&self) -> bool {
        self.reported.is_some()
    }
}

/// The NMSE a judgement measured, NaN when it failed on non-finite values.
fn nmse_of(j: &Judged) -> Option<f64> {
    if j.outcome == Outcome::Fail(Failure::NonFinite) {
        return Some(f64::NAN);
    }
    j.measure.nmse()
}

/// Runs one gallery case (a case with `fault` and `[expect]`): every prompt's diff, the first
/// divergence of the first prompt that diverges, judged against the expectation.
pub fn gallery_run(runs: &Runs, case: &Case) -> Result<GalleryResult, String> {
    let expect = case
        .expect
        .as_ref()
        .ok_or_else(|| format!("{}: a gallery case needs [expect]", case.file.display()))?;
    // A diverging prompt; in a case that demands exactness, a prompt with any inexact value.
    let mut found = None;
    for p in &case.prompts {
        let d = runs.diff(case, p)?;
        if !d.pass() || (case.exact && judge::first_inexact(&d.judged).is_some()) {
            found = Some((p, d));
            break;
        }
    }
    let prompt = found.as_ref().map_or_else(
        || {
            case.prompts
                .first()
                .map(|p| p.id.clone())
                .unwrap_or_default()
        },
        |(p, _)| p.id.clone(),
    );
    let mut r = GalleryResult {
        case: case.id.clone(),
        fault: case.fault.clone().unwrap_or_default(),
        expected: expect.first_divergence,
        expected_phase: expect.phase,
        expected_position: expect.position,
        prompt,
        reported: None,
        nmse: None,
        first_inexact: None,
        first_inexact_nmse: None,
        expected_inexact: expect.first_inexact,
        prompt_clean: true,
        within_tolerance: true,
        pass: false,
    };
    let Some((_, d)) = found else { return Ok(r) };
    if let Some(x) = judge::first_inexact(&d.judged) {
        r.first_inexact = Some(x.site);
        r.first_inexact_nmse = nmse_of(x);
    }
    let fd = d
        .first_divergence()
        .or_else(|| judge::first_inexact(&d.judged))
        .expect("found diverges");
    r.prompt_clean = fd.phase != Phase::Prompt;
    r.within_tolerance = d.pass();
    r.nmse = nmse_of(fd);
    let phase_ok = expect.phase.is_none_or(|p| p.matches(fd.phase))
        && expect.position.is_none_or(|p| p == fd.position);
    let inexact_ok = expect
        .first_inexact
        .is_none_or(|want| r.first_inexact.is_some_and(|got| got.same_place(want)));
    r.pass = fd.site.same_place(expect.first_divergence) && phase_ok && inexact_ok;
    r.reported = Some(Reported {
        site: fd.site,
        phase: fd.phase,
        position: fd.position,
        detail: d.describe(fd),
    });
    Ok(r)
}

pub(super) fn check_gallery(runs: &Runs, case: &Case) -> Result<(), String> {
    let r = gallery_run(runs, case)?;
    match &r.reported {
        _ if r.pass => Ok(()),
        None => Err(format!(
            "fault {:?} was not detected: every stage and logit stayed within tolerance on {} prompt(s)",
            r.fault,
            case.prompts.len()
        )),
        Some(fd) => {
            let p = case
                .prompts
                .iter()
                .find(|p| p.id == r.prompt)
                .expect("reported prompt exists");
            Err(format!(
                "fault {:?} detected but localized wrongly: expected {} ({}){}, the harness named {}; first stage not bit-exact: {}\nreproduce: {}",
                r.fault,
                r.expected,
                r.expected_phase.map_or("any phase".to_string(), |p| p.to_string()),
                r.expected_inexact
                    .map(|s| format!(", first not bit-exact at {s}"))
                    .unwrap_or_default(),
                fd.detail,
                r.first_inexact.map_or("none".to_string(), |s| s.to_string()),
                super::repro(case, p)
            ))
        }
    }
}

/// The `bitprobe gallery` table: one row per fault, then the count.
pub fn render(results: &[GalleryResult]) -> String {
    use std::fmt::Write;
    let nmse = |x: Option<f64>| x.map_or("-".to_string(), crate::diff::fmt_metric);
    let line = |c: [&str; 8]| {
        format!(
            "{:<22} {:<8} {:<40} {:<9} {:<32} {:<22} {:<9} {}",
            c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]
        )
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{}",
        line([
            "fault",
            "detected",
            "first divergence reported",
            "nmse",
            "expected",
            "first not bit-exact",
            "nmse",
            "result"
        ])
    );
    for r in results {
        let reported = r.reported.as_ref().map_or("-".to_string(), |d| {
            format!("{} @ {} pos {}", d.site, d.phase, d.position)
        });
        let expected = format!(
            "{} ({})",
            r.expected,
            r.expected_phase
                .map_or("any phase".to_string(), |p| p.to_string())
        );
        let inexact = r.first_inexact.map_or("-".to_string(), |s| s.to_string());
        let _ = writeln!(
            s,
            "{}",
            line([
                &r.fault,
                if r.detected() { "yes" } else { "no" },
                &reported,
                &nmse(r.nmse),
                &expected,
                &inexact,
                &nmse(r.first_inexact_nmse),
                if r.pass { "pass" } else { "FAIL" },
            ])
        );
    }
    let n_pass = results.iter().filter(|r| r.pass).count();
    let _ = writeln!(
        s,
        "\n{n_pass}/{} faults detected and localized as expected",
        results.len()
    );
    s
}
