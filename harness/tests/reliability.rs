//! Never hang, never mislead (issue 17): each test here failed before its fix, and every run
//! that could hang is bounded in time.

mod common;
use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        // pid (comm) state ppid …: the comm may hold spaces, so read after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|x| x.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}

#[test]
fn threads_beyond_the_cores_are_capped_with_a_warning() {
    let (o, took) = bitprobe(&[
        "run", "--preset", "tiny-i2s", "-p", "Hi", "-n", "2", "-t", "100000", "--probe", "oracle",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("-t 100000: this machine has"), "{err}");
    assert!(took < Duration::from_secs(60), "took {took:?}");
}

#[test]
fn a_fifo_a_folder_or_a_missing_file_as_the_model_is_one_clear_error() {
    let dir = scratch("fifo");
    let fifo = dir.join("model.gguf");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    for cmd in [&["run", "-p", "Hi", "-m"][..], &["inspect"][..]] {
        let mut args: Vec<&str> = cmd.to_vec();
        args.push(fifo.to_str().unwrap());
        let (o, took) = bitprobe(&args);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("not a regular file"),
            "{}",
            text(&o)
        );
        assert!(took < Duration::from_secs(20), "{cmd:?} took {took:?}");
    }
    let (o, _) = bitprobe(&["run", "-p", "Hi", "-m", dir.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        err.contains("not a regular file") && !err.contains("No such device"),
        "{err}"
    );
    let missing = dir.join("nope.gguf");
    let (o, _) = bitprobe(&["run", "-p", "Hi", "-m", missing.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(err.contains("does not exist"), "{err}");
    assert!(
        err.matches("No such file").count() <= 1,
        "said twice: {err}"
    );
}

#[test]
fn a_corrupt_file_gets_bitprobes_precise_error_not_a_reference_abort() {
    let dir = scratch("corrupt");
    let good = engine::forge::forged("tiny-i2s", 1).unwrap();
    let mut bytes = std::fs::read(good).unwrap();
    bytes[4..8].copy_from_slice(&7u32.to_le_bytes()); // GGUF version 7
    let bad = dir.join("v7.gguf");
    std::fs::write(&bad, bytes).unwrap();
    let (o, _) = bitprobe(&["diff", "-m", bad.to_str().unwrap(), "-p", "Hi"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("version 7"), "{err}");
    assert!(
        !err.contains("ggml.c") && !err.contains("[New LWP"),
        "{err}"
    );
}

#[test]
fn non_finite_sampling_settings_are_refused_and_the_server_lives() {
    let (o, _) = bitprobe(&[
        "run", "--preset", "tiny-i2s", "-p", "Hi", "--probe", "oracle", "--temp", "inf",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--temp inf"),
        "{}",
        text(&o)
    );
    // On the wire, a NaN temperature (serialized as null) is an error reply, not a dead server.
    std::env::set_var("BITPROBE_ORACLE_BIN", env!("CARGO_BIN_EXE_bitprobe-oracle"));
    let model = engine::forge::forged("tiny-i2s", 1).unwrap();
    let mut p = harness::probes::open(
        &harness::probes::ProbeSpec::ORACLE,
        &model,
        1,
        &[],
        probe::wire::Watchdog::flat(30.0),
    )
    .unwrap();
    let mut g = probe::GenerateRequest::greedy(vec![1, 2, 3], 2);
    g.sampling = probe::Sampling::Seeded {
        temperature: f32::INFINITY,
        top_k: 4,
        top_p: 0.9,
        seed: 1,
    };
    let e = p.generate(&g).unwrap_err();
    assert!(matches!(e, probe::Error::InvalidRequest(_)), "{e}");
    assert!(
        p.tokenize("Hi", true, false).is_ok(),
        "the server still answers"
    );
}

#[test]
fn printing_into_a_closed_pipe_ends_quietly() {
    let mut child = bin()
        .args(["forge", "--list"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader is gone before anything is printed
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(101), "panicked: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn case_values_that_cannot_run_are_one_trial_with_file_line_col() {
    let dir = scratch("cases");
    std::env::set_var("BITPROBE_ORACLE_BIN", env!("CARGO_BIN_EXE_bitprobe-oracle"));
    let write = |name: &str, body: &str| {
        let f = dir.join(name);
        std::fs::write(&f, body).unwrap();
        f
    };
    let expand = |f: &Path| {
        harness::trials::expand(
            harness::case::load(f, &dir),
            &harness::runs::Runs::default(),
            harness::trials::OracleMode::On,
        )
    };
    let layers = write(
        "layers.toml",
        "model = { preset = \"tiny-i2s\" }\n[compare]\nlayers = [0, 7]\n[[prompts]]\nid = \"a\"\ntext = \"Hi\"\n",
    );
    let t = expand(&layers);
    assert_eq!(t.len(), 1, "one trial, not dozens");
    let harness::trials::Outcome::Fail(m) =
        harness::trials::check(&harness::runs::Runs::default(), &t[0])
    else {
        panic!()
    };
    assert!(
        m.contains("layers.toml:3:10") && m.contains("layer 7 does not exist"),
        "{m}"
    );

    let decode = write(
        "decode.toml",
        "model = { preset = \"tiny-i2s\" }\n\n[[prompts]]\nid = \"a\"\ntext = \"Hi\"\ndecode = 100000\n",
    );
    let t = expand(&decode);
    assert_eq!((t.len(), t[0].name.as_str()), (1, "case::decode"));
    let harness::trials::Outcome::Fail(m) =
        harness::trials::check(&harness::runs::Runs::default(), &t[0])
    else {
        panic!()
    };
    assert!(
        m.contains("decode.toml:3:1") && m.contains("exceed the context"),
        "{m}"
    );

    for (name, body, want) in [
        (
            "empty.toml",
            "model = { preset = \"tiny-i2s\" }\n[[prompts]]\nid = \"a\"\ntext = \"\"\nadd_bos = false\n",
            "empty.toml:2:1",
        ),
        (
            "dup.toml",
            "model = { preset = \"tiny-i2s\" }\n[[prompts]]\nid = \"a\"\ntext = \"x\"\n[[prompts]]\nid = \"a\"\ntext = \"y\"\n",
            "dup.toml:5:1",
        ),
    ] {
        let e = harness::case::load(&write(name, body), &dir).unwrap_err();
        assert!(e.message.contains(want), "{}", e.message);
    }
    let (o, _) = bitprobe(&["diff", "--preset", "tiny-i2s", "-p", "Hi", "--layers", "5"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("the model has 2 layers"));
}

#[test]
fn diff_prints_a_summary_unless_asked_for_every_row() {
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(30);
    let (o, _) = bitprobe(&["diff", "--preset", "tiny-i2s", "-p", &long]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let lines = String::from_utf8_lossy(&o.stdout).lines().count();
    assert!(lines < 80, "{lines} lines for a passing diff");
    let (o, _) = bitprobe(&["diff", "--preset", "tiny-i2s", "-p", &long, "--all"]);
    let all = String::from_utf8_lossy(&o.stdout).lines().count();
    assert!(all > 1000, "--all prints every row: {all}");
}

/// Long work shows progress on a terminal and nothing when its output is not one: `diff`
/// under a pseudo-terminal (util-linux `script`, in Debian's essential bsdutils)
/// draws its spinner; piped, stderr carries none of it.
#[test]
#[cfg_attr(
    not(target_os = "linux"),
    ignore = "needs util-linux `script` for a pseudo-terminal"
)]
fn long_work_shows_progress_on_a_terminal_only() {
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(30);
    let prompt = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bitprobe-progress-{}.txt", std::process::id()));
    std::fs::write(&prompt, &long).unwrap();
    let args = [
        "diff",
        "--preset",
        "tiny-i2s",
        "--prompt-file",
        prompt.to_str().unwrap(),
        "-n",
        "2",
    ];
    let spinner = |out: &[u8]| {
        let t = String::from_utf8_lossy(out);
        t.contains("opening engine and oracle") || t.contains("running both and judging")
    };
    let piped = bin().args(args).output().unwrap();
    assert_eq!(piped.status.code(), Some(0), "{}", text(&piped));
    assert!(
        !spinner(&piped.stderr),
        "a spinner on a pipe: {}",
        text(&piped)
    );
    let exe = bin().get_program().to_string_lossy().into_owned();
    let oracle = env!("CARGO_BIN_EXE_bitprobe-oracle");
    let line = format!(
        "BITPROBE_ORACLE_BIN='{oracle}' '{exe}' {} >/dev/null",
        args.map(|a| format!("'{a}'")).join(" ")
    );
    let tty = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("util-linux `script` runs");
    std::fs::remove_file(&prompt).ok();
    assert_eq!(tty.status.code(), Some(0), "{}", text(&tty));
    assert!(
        spinner(&tty.stdout),
        "no progress on a terminal: {}",
        text(&tty)
    );
}

#[test]
fn ctrl_c_on_bitprobe_alone_stops_its_probe_servers() {
    let spec = format!("cmd:{} --defect hang", broken_probe().display());
    let child = bin()
        .args([
            "diff",
            "--engine",
            &spec,
            "--preset",
            "tiny-i2s",
            "-p",
            "Hi",
            "--timeout",
            "300",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let t = Instant::now();
    let servers = loop {
        let c = children_of(pid);
        if c.len() >= 2 || t.elapsed() > Duration::from_secs(60) {
            break c;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!servers.is_empty(), "no probe server started");
    std::thread::sleep(Duration::from_millis(500));
    assert!(Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = Instant::now();
    while servers.iter().any(|&s| alive(s)) && t.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left: Vec<u32> = servers.into_iter().filter(|&s| alive(s)).collect();
    assert!(left.is_empty(), "servers still running: {left:?}");
}

#[test]
fn an_interrupted_trace_leaves_the_previous_trace_whole() {
    let dir = scratch("trace");
    let out = dir.join("t");
    let (o, _) = bitprobe(&[
        "trace",
        "--preset",
        "tiny-i2s",
        "-p",
        "Hello",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let before = harness::trace::read(&out).unwrap().tensors.len();
    // A second trace into the same folder whose probe hangs in forward; killed meanwhile.
    let spec = format!("cmd:{} --defect hang", broken_probe().display());
    let mut child = bin()
        .args([
            "trace",
            "--probe",
            &spec,
            "--preset",
            "tiny-i2s",
            "-p",
            "Hello",
            "-o",
            out.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(harness::trace::read(&out).unwrap().tensors.len(), before);
}

#[test]
fn a_failing_case_s_reproduce_line_reproduces_its_first_divergence() {
    let dir = scratch("repro");
    std::env::set_var("BITPROBE_ORACLE_BIN", env!("CARGO_BIN_EXE_bitprobe-oracle"));
    // A long repeated prompt, a stage and layer selection, a tolerance override and a fault:
    // everything that changes the verdict must be on the line.
    let f = dir.join("r.toml");
    std::fs::write(
        &f,
        "model = { preset = \"tiny-i2s\", seed = 3 }\nfault = \"ffn_sub_norm_skipped\"\n[compare]\nstages = [\"attn_norm\", \"ffn_sub_norm\", \"l_out\"]\nlayers = [1]\n[tolerance]\nnmse = 1e-3\n[[prompts]]\nid = \"long\"\ntext = \"Twelve cats sat. \"\nrepeat_to = 400\ndecode = 2\n",
    )
    .unwrap();
    let runs = harness::runs::Runs::default();
    let trials = harness::trials::expand(
        harness::case::load(&f, &dir),
        &runs,
        harness::trials::OracleMode::On,
    );
    let failing = trials
        .iter()
        .find_map(|t| match harness::trials::check(&runs, t) {
            harness::trials::Outcome::Fail(m) => Some(m),
            _ => None,
        })
        .expect("the fault makes a trial fail");
    let line = failing
        .lines()
        .find_map(|l| l.strip_prefix("reproduce: bitprobe "))
        .unwrap_or_else(|| panic!("{failing}"));
    let first = failing
        .lines()
        .find_map(|l| l.strip_prefix("first divergence of this prompt: "))
        .unwrap();
    let site = first.split(" at ").next().unwrap();
    assert!(
        line.contains("--prompt-file") && line.contains("--layers 1") && line.contains("--nmse"),
        "{line}"
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("{} {line} --json", env!("CARGO_BIN_EXE_bitprobe")))
        .env("BITPROBE_ORACLE_BIN", env!("CARGO_BIN_EXE_bitprobe-oracle"))
        .output()
        .unwrap();
    let r: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    assert_eq!(
        r["first_divergence"]["stage"], site,
        "{}",
        r["first_divergence"]
    );
    assert_eq!(
        r["first_divergence"]["detail"].as_str().unwrap(),
        first,
        "the same first divergence, word for word"
    );
}

#[test]
fn bitnet_cpp_s_log_streams_live_when_asked() {
    let o = bin()
        .args([
            "run", "--probe", "oracle", "--preset", "tiny-i2s", "-p", "Hi", "-n", "2",
        ])
        .env("BITPROBE_ORACLE_LOG", "1")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("[bitnet.cpp oracle] llama_model_loader"),
        "{err}"
    );
    let quiet = bin()
        .args([
            "run", "--probe", "oracle", "--preset", "tiny-i2s", "-p", "Hi", "-n", "2",
        ])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&quiet.stderr).contains("llama_model_loader"));
}
