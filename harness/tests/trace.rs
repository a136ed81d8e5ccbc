//! `bitprobe trace` and `trace-diff`: a trace folder holds what the format promises, two
//! traces of one probe are bit-exact, and `trace-diff` between an engine trace and an oracle
//! trace names the same first divergence as `bitprobe diff` (`run_diff`) on the live probes.

use harness::case::Prompt;
use harness::diff::{run_diff, DiffReport, DiffRequest};
use harness::judge::{Labels, Phase};
use harness::probes::{self, ProbeSpec};
use harness::tolerance::ToleranceOverrides;
use harness::trace::{self, read, record, trace_diff, CompareMode, TraceDiffOptions, TraceRequest};
use probe::{
    Capture, Forward, GenerateRequest, Generation, ModelInfo, Probe, Stage, StageTensor, Token,
};
use std::path::{Path, PathBuf};
use std::process::Command;

const PROMPT: &str = "Hello world";

fn scratch(test: &str) -> PathBuf {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bitprobe-trace-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn oracle_off() -> bool {
    std::env::var("BITPROBE_ORACLE").is_ok_and(|v| v == "off")
}

fn open(kind: ProbeSpec, model: &Path) -> Box<dyn Probe> {
    std::env::set_var("BITPROBE_ORACLE_BIN", env!("CARGO_BIN_EXE_bitprobe-oracle"));
    probes::open(&kind, model, 1, &[], Default::default()).unwrap()
}

fn request(decode: usize, raw: bool) -> TraceRequest {
    TraceRequest {
        prompt: Prompt {
            decode,
            ..Prompt::text(PROMPT)
        },
        raw,
    }
}

/// The engine with stage tensors scaled: one stage (a stand-in for an engine bug at a known
/// place), or every stage and the logits (an engine that rounds a little differently).
struct Perturbed {
    inner: Box<dyn Probe>,
    /// (stage, layer, position), or `None` for everything.
    target: Option<(Stage, Option<u32>, u32)>,
    factor: f32,
}

impl Perturbed {
    fn touch(&self, stages: &mut [StageTensor], logits: Option<&mut Vec<f32>>) {
        for t in stages.iter_mut().filter(|t| {
            self.target
                .is_none_or(|k| k == (t.stage, t.layer, t.position))
        }) {
            t.data.iter_mut().for_each(|x| *x *= self.factor);
        }
        if let (None, Some(l)) = (self.target, logits) {
            l.iter_mut().for_each(|x| *x *= self.factor);
        }
    }
}

impl Probe for Perturbed {
    fn info(&self) -> &ModelInfo {
        self.inner.info()
    }
    fn tokenize(
        &mut self,
        text: &str,
        add_bos: bool,
        parse_special: bool,
    ) -> probe::Result<Vec<Token>> {
        self.inner.tokenize(text, add_bos, parse_special)
    }
    fn pieces(&mut self, ids: &[Token]) -> probe::Result<Vec<Vec<u8>>> {
        self.inner.pieces(ids)
    }
    fn forward(&mut self, tokens: &[Token], capture: &Capture) -> probe::Result<Forward> {
        let mut f = self.inner.forward(tokens, capture)?;
        self.touch(&mut f.stages, Some(&mut f.logits));
        Ok(f)
    }
    fn generate(&mut self, request: &GenerateRequest) -> probe::Result<Generation> {
        let mut g = self.inner.generate(request)?;
        self.touch(&mut g.prefill.stages, Some(&mut g.prefill.logits));
        for s in &mut g.steps {
            self.touch(&mut s.stages, s.logits.as_mut());
        }
        Ok(g)
    }
}

/// `run_diff` and `trace_diff` agree: the same rows (keys, verdicts, NMSE), the same logits
/// verdicts and the same first divergence.
fn assert_same_report(live: &DiffReport, traced: &DiffReport) {
    let rows = |r: &DiffReport| -> Vec<(Phase, u32, String, bool, Option<f64>)> {
        r.stages()
            .map(|x| {
                (
                    x.phase,
                    x.position,
                    x.site.to_string(),
                    x.pass(),
                    x.measure.nmse(),
                )
            })
            .collect()
    };
    assert_eq!(rows(live), rows(traced));
    let logits = |r: &DiffReport| -> Vec<(Phase, u32, bool, Option<f64>)> {
        r.logits()
            .map(|l| {
                (
                    l.phase,
                    l.position,
                    l.pass(),
                    l.measure.logits().map(|m| m.kl),
                )
            })
            .collect()
    };
    assert_eq!(logits(live), logits(traced));
    // The same place and numbers; the labels differ (engine/oracle vs A/B).
    let first = |r: &DiffReport| {
        r.first_divergence()
            .map(|d| (d.phase, d.position, d.site, d.measure.clone()))
    };
    assert_eq!(first(live), first(traced));
    assert_eq!(live.greedy_b, traced.greedy_b);
}

#[test]
fn a_trace_holds_every_stage_with_its_manifest() {
    let dir = scratch("files");
    let model = engine::forge::forged("tiny-i2s", 1).unwrap();
    let mut e = open(ProbeSpec::Engine, &model);
    let m = record(e.as_mut(), "engine", &model, &request(2, true), &dir).unwrap();
    let n_tokens = m.tokens.len();
    // Per position: inp_embd, 15 stages × 2 layers, result_norm, result_output.
    let per_position = 1 + 15 * 2 + 2;
    let files = m.files.clone().unwrap();
    assert_eq!(files.len(), per_position * (n_tokens + 2));
    assert_eq!(m.decode.len(), 2);
    assert_eq!(m.decode[0].position as usize, n_tokens);
    assert_eq!(m.generated.len(), 3);
    assert_eq!(m.weight_type, Some(harness::tolerance::WeightType::I2S));
    let model_ref = m.model.as_ref().unwrap();
    assert_eq!(
        model_ref.blake3,
        blake3::hash(&std::fs::read(&model).unwrap())
            .to_hex()
            .to_string()
    );

    let q: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("pos0001.blk.1.attn_q.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(q["stage"], "blk.1.attn_q");
    assert_eq!(
        (
            q["phase"].as_str(),
            q["position"].as_u64(),
            q["layer"].as_u64()
        ),
        (Some("prompt"), Some(1), Some(1))
    );
    assert_eq!(q["shape"], serde_json::json!([8, 32]));
    let (shape, data) = trace::read_npy(&dir.join("pos0001.blk.1.attn_q.npy")).unwrap();
    assert_eq!(shape, vec![8, 32]);
    assert_eq!(q["blake3"].as_str().unwrap(), probe::blake3_f32(&data));
    let s = probe::Stats::of(&data);
    assert!((q["rms"].as_f64().unwrap() - s.rms).abs() <= 1e-12 * s.rms);
    let step = format!("pos{:04}.result_output.json", n_tokens + 1);
    let d: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(step)).unwrap()).unwrap();
    assert_eq!(
        (d["phase"].as_str(), d["step"].as_u64()),
        (Some("decode"), Some(2))
    );

    let t = read(&dir).unwrap();
    assert_eq!(t.tensors.len(), files.len());
    assert!(t.has_data());

    // Tracing again into the same folder replaces the trace; a foreign folder is refused.
    record(e.as_mut(), "engine", &model, &request(0, false), &dir).unwrap();
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        per_position * n_tokens + 1
    );
    let foreign = scratch("foreign");
    std::fs::write(foreign.join("notes.txt"), "mine").unwrap();
    let err = record(e.as_mut(), "engine", &model, &request(0, false), &foreign)
        .unwrap_err()
        .to_string();
    assert!(err.contains("refusing"), "{err}");
}

#[test]
fn two_traces_of_one_probe_are_bit_exact() {
    let (da, db, dh) = (scratch("same-a"), scratch("same-b"), scratch("same-h"));
    let model = engine::forge::forged("tiny-tq2", 1).unwrap();
    let mut e = open(ProbeSpec::Engine, &model);
    record(e.as_mut(), "engine", &model, &request(2, true), &da).unwrap();
    let mut e2 = open(ProbeSpec::Engine, &model);
    record(e2.as_mut(), "engine", &model, &request(2, true), &db).unwrap();
    record(e2.as_mut(), "engine", &model, &request(2, false), &dh).unwrap();
    let tol = TraceDiffOptions::default();

    let d = trace_diff(&read(&da).unwrap(), &read(&db).unwrap(), &tol);
    assert_eq!(d.mode, CompareMode::Values);
    assert!(
        d.pass() && d.warnings.is_empty(),
        "{:?} {:?}",
        d.report.first_divergence(),
        d.warnings
    );
    assert!(d
        .report
        .stages()
        .all(|r| r.measure.bit_exact() == Some(true)));

    let d = trace_diff(&read(&dh).unwrap(), &read(&da).unwrap(), &tol);
    assert_eq!(d.mode, CompareMode::HashOnly);
    assert!(d.pass());
    assert_eq!(
        d.report.stages().count(),
        33 * (read(&da).unwrap().manifest.tokens.len() + 2)
    );
    assert!(harness::trace::render(&d, false).contains("PASS (hash-only)"));
}

#[test]
fn trace_diff_names_what_changed() {
    let (da, db) = (scratch("changed-a"), scratch("changed-b"));
    let model = engine::forge::forged("tiny-i2s", 1).unwrap();
    let mut e = open(ProbeSpec::Engine, &model);
    record(e.as_mut(), "engine", &model, &request(2, true), &da).unwrap();
    record(e.as_mut(), "engine", &model, &request(2, true), &db).unwrap();
    let tol = TraceDiffOptions::default();

    // Values changed (and rehashed, as a third-party writer would): that row, nothing earlier.
    let (npy, json) = (
        db.join("pos0002.blk.0.attn_v.npy"),
        db.join("pos0002.blk.0.attn_v.json"),
    );
    let (shape, mut data) = trace::read_npy(&npy).unwrap();
    data.iter_mut().for_each(|x| *x *= 1.5);
    trace::write_npy(&npy, &shape, &data).unwrap();
    let mut j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    j["blake3"] = probe::blake3_f32(&data).into();
    std::fs::write(&json, j.to_string()).unwrap();
    let d = trace_diff(&read(&da).unwrap(), &read(&db).unwrap(), &tol);
    let first = d.report.first_divergence().unwrap();
    assert_eq!(
        (first.phase, first.position, first.site.to_string()),
        (Phase::Prompt, 2, "blk.0.attn_v".to_string())
    );
    assert_eq!(d.report.judged.iter().filter(|r| !r.pass()).count(), 1);

    // A hash that does not match the values is a broken trace, not a divergence.
    j["blake3"] = "00".into();
    std::fs::write(&json, j.to_string()).unwrap();
    assert!(read(&db).unwrap_err().to_string().contains("do not hash"));

    // A decode step fed a different token: the divergence is the decode step itself.
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(da.join("trace.json")).unwrap()).unwrap();
    m["decode"][1]["input"] = 7.into();
    let dc = scratch("changed-c");
    for f in std::fs::read_dir(&da).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dc.join(f.file_name().unwrap())).unwrap();
    }
    std::fs::write(dc.join("trace.json"), m.to_string()).unwrap();
    let d = trace_diff(&read(&dc).unwrap(), &read(&da).unwrap(), &tol);
    let first = d.report.first_divergence().unwrap();
    assert_eq!(
        (first.phase, first.site.to_string()),
        (Phase::Decode(2), "decode".to_string())
    );
    assert!(
        d.report.stages().all(|r| r.phase < Phase::Decode(2)),
        "later steps are not compared"
    );

    // Different prompt tokens: tokenization is the first divergence, as in `diff`.
    let dn = scratch("changed-nobos");
    let mut req = request(2, true);
    req.prompt.add_bos = false;
    record(e.as_mut(), "engine", &model, &req, &dn).unwrap();
    let d = trace_diff(&read(&dn).unwrap(), &read(&da).unwrap(), &tol);
    assert_eq!(
        d.report.first_divergence().unwrap().site,
        harness::judge::Site::Tokenize
    );
}

#[test]
fn a_third_party_trace_needs_only_the_required_fields() {
    // Rewrite an engine trace the way a minimal writer would: manifest {format, version,
    // tokens}; stage files {stage, position, shape, blake3} (+ phase/step for decode), values
    // beside them as <name>.npy, no file list.
    let (full, minimal) = (scratch("third-party-full"), scratch("third-party-min"));
    let model = engine::forge::forged("tiny-i2s", 1).unwrap();
    let mut e = open(ProbeSpec::Engine, &model);
    let m = record(e.as_mut(), "engine", &model, &request(1, true), &full).unwrap();
    let manifest =
        serde_json::json!({ "format": "bitprobe-trace", "version": 1, "tokens": m.tokens });
    std::fs::write(minimal.join("trace.json"), manifest.to_string()).unwrap();
    for name in m.files.as_ref().unwrap() {
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(full.join(name)).unwrap()).unwrap();
        let mut min = serde_json::json!({ "stage": r["stage"], "position": r["position"], "shape": r["shape"], "blake3": r["blake3"] });
        if r["phase"] == "decode" {
            min["phase"] = r["phase"].clone();
            min["step"] = r["step"].clone();
        }
        let out = format!("t{}", name.replace("pos", "_"));
        std::fs::write(minimal.join(&out), min.to_string()).unwrap();
        let npy = r["data"].as_str().unwrap();
        std::fs::copy(
            full.join(npy),
            minimal.join(Path::new(&out).with_extension("npy")),
        )
        .unwrap();
    }
    let t = read(&minimal).unwrap();
    assert!(t.has_data());
    let d = trace_diff(&t, &read(&full).unwrap(), &TraceDiffOptions::default());
    assert_eq!(d.mode, CompareMode::Values);
    assert!(d.pass(), "{:?}", d.report.first_divergence());
    assert!(d
        .report
        .stages()
        .all(|r| r.measure.bit_exact() == Some(true)));
    assert_eq!(d.report.stages().count(), m.files.as_ref().unwrap().len());
}

#[test]
fn trace_diff_engine_vs_oracle_names_the_same_divergence_as_diff() {
    if oracle_off() {
        eprintln!("BITPROBE_ORACLE=off: skipped");
        return;
    }
    let model = engine::forge::forged("tiny-i2s", 1).unwrap();
    let tol = ToleranceOverrides::default();
    let topts = TraceDiffOptions::default();
    let labels = || Labels::new("engine", "oracle");
    let req = DiffRequest {
        prompt: Prompt {
            decode: 2,
            ..Prompt::text(PROMPT)
        },
        stages: Stage::ALL.to_vec(),
        layers: None,
    };
    let mut o = open(ProbeSpec::ORACLE, &model);
    let od = scratch("vs-oracle-o");
    record(o.as_mut(), "oracle", &model, &request(2, true), &od).unwrap();
    let oracle_trace = read(&od).unwrap();

    // As built the engine is bit-exact with the oracle; both reports say so row for row.
    let mut e = open(ProbeSpec::Engine, &model);
    let live = run_diff(e.as_mut(), o.as_mut(), labels(), &req, &tol).unwrap();
    let ed = scratch("vs-oracle-e");
    record(e.as_mut(), "engine", &model, &request(2, true), &ed).unwrap();
    let traced = trace_diff(&read(&ed).unwrap(), &oracle_trace, &topts);
    assert_same_report(&live, &traced.report);
    assert!(
        traced.pass()
            && traced
                .report
                .stages()
                .all(|r| r.measure.bit_exact() == Some(true))
    );

    // Every value 1e-6 off: within tolerance, NMSE > 0 in every row, the same NMSE in both.
    let mut close = Perturbed {
        inner: open(ProbeSpec::Engine, &model),
        target: None,
        factor: 1.0 + 1e-6,
    };
    let live = run_diff(&mut close, o.as_mut(), labels(), &req, &tol).unwrap();
    let cd = scratch("vs-oracle-close");
    record(&mut close, "engine", &model, &request(2, true), &cd).unwrap();
    let traced = trace_diff(&read(&cd).unwrap(), &oracle_trace, &topts);
    assert_same_report(&live, &traced.report);
    assert!(traced.pass(), "{:?}", traced.report.first_divergence());
    assert!(traced.report.stages().all(|r| r
        .measure
        .tensor()
        .is_some_and(|m| m.nmse > 0.0 || m.len == 0)));

    // With one stage 50% off at layer 1, position 1: both name it.
    let mut bad = Perturbed {
        inner: open(ProbeSpec::Engine, &model),
        target: Some((Stage::FfnUp, Some(1), 1)),
        factor: 1.5,
    };
    let live = run_diff(&mut bad, o.as_mut(), labels(), &req, &tol).unwrap();
    let first = live
        .first_divergence()
        .expect("a 50% error is a divergence");
    assert_eq!(
        (first.phase, first.position, first.site.to_string()),
        (Phase::Prompt, 1, "blk.1.ffn_up".to_string())
    );
    let bd = scratch("vs-oracle-bad");
    record(&mut bad, "engine", &model, &request(2, true), &bd).unwrap();
    let traced = trace_diff(&read(&bd).unwrap(), &oracle_trace, &topts);
    assert_same_report(&live, &traced.report);
}

#[test]
fn the_cli_writes_and_compares_traces() {
    let dir = scratch("cli");
    let bin = env!("CARGO_BIN_EXE_bitprobe");
    let run = |args: &[&str]| Command::new(bin).args(args).output().unwrap();
    let (a, b) = (dir.join("a"), dir.join("b"));
    for d in [&a, &b] {
        let out = run(&[
            "trace",
            "--preset",
            "tiny-i2s",
            "--prompt",
            PROMPT,
            "--out",
            d.to_str().unwrap(),
            "--raw",
            "--decode",
            "1",
        ]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = run(&["trace-diff", a.to_str().unwrap(), b.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("verdict   PASS"), "{stdout}");
    let out = run(&[
        "trace-diff",
        "--json",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
    ]);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["mode"], "values");
    assert!(j["report"]["first_divergence"].is_null());

    // A changed tensor: exit 1, named.
    let npy = b.join("pos0000.inp_embd.npy");
    let (shape, mut data) = trace::read_npy(&npy).unwrap();
    data[0] += 1.0;
    trace::write_npy(&npy, &shape, &data).unwrap();
    let json = b.join("pos0000.inp_embd.json");
    let mut r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    r["blake3"] = probe::blake3_f32(&data).into();
    std::fs::write(&json, r.to_string()).unwrap();
    let out = run(&[
        "trace-diff",
        "--failures",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FIRST DIVERGENCE: inp_embd at prompt, position 0"),
        "{stdout}"
    );

    // Not a trace: exit 2 with the reason.
    let out = run(&[
        "trace-diff",
        a.to_str().unwrap(),
        dir.join("nothing").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("trace.json"));
}

#[test]
fn the_numpy_snippet_in_trace_format_md_writes_a_valid_trace() {
    // The snippet as printed, driven by a few lines that feed it an engine trace's values.
    let doc =
        std::fs::read_to_string(harness::snapshot::workspace_root().join("docs/trace-format.md"))
            .unwrap();
    let start = doc.find("## Writing a trace from numpy").unwrap();
    let code = &doc[start..];
    let code = &code[code.find("```python\n").unwrap() + 10..];
    let code = &code[..code.find("```").unwrap()];
    let (src, out) = (scratch("snippet-src"), scratch("snippet-out"));
    let model = engine::forge::forged("tiny-i2s", 1).unwrap();
    let mut e = open(ProbeSpec::Engine, &model);
    let m = record(e.as_mut(), "engine", &model, &request(2, true), &src).unwrap();
    let driver = format!(
        "{code}\nimport glob, sys\nsrc, out = sys.argv[1], sys.argv[2]\nm = json.load(open(os.path.join(src, 'trace.json')))\nprompt, dec = {{}}, {{}}\nfor name in m['files']:\n    r = json.load(open(os.path.join(src, name)))\n    a = np.load(os.path.join(src, r['data']))\n    st = r['stage'].split('.')\n    stage, layer = (st[2], int(st[1])) if st[0] == 'blk' else (st[0], None)\n    if r.get('phase') == 'decode':\n        dec.setdefault(r['step'], {{}})[(stage, layer)] = a\n    else:\n        prompt[(stage, layer, r['position'])] = a\nsteps = [(d['step'], d['position'], d['input'], d['chosen'], dec.get(d['step'], {{}})) for d in m['decode']]\nwrite_trace(out, m['tokens'], prompt, steps, weight_type='I2_S')\n"
    );
    let script = src.join("drive.py");
    std::fs::write(&script, driver).unwrap();
    let numpy = harness::snapshot::workspace_root().join(".cache/python/numpy");
    let o = Command::new("python3")
        .arg(&script)
        .arg(&src)
        .arg(&out)
        .env("PYTHONPATH", &numpy)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "numpy from scripts/setup.sh ({}):\n{}",
        numpy.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    let d = trace_diff(
        &read(&out).unwrap(),
        &read(&src).unwrap(),
        &TraceDiffOptions::default(),
    );
    assert!(d.pass(), "{:?}", d.report.first_divergence());
    assert_eq!(d.report.stages().count(), m.files.as_ref().unwrap().len());
}
