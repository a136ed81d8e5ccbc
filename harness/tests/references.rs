//! Where today's bitnet.cpp (`bitnet.cpp-2026`, crates.io bitnet-llm-sys 1.0.2) parts from
//! the vendored 2024 tree in ways a case file cannot hold: it refuses a file, it crashes. The
//! bit-identical rest is `cases/references/`. Each test needs the 2026 server, which
//! `cargo test` builds (the `oracle-2026` workspace member) and scripts/setup.sh vendors.

mod common;

use common::{bin, text};
use harness::case;
use harness::runs::Runs;

/// Sets this process's soft stack limit to 8 MiB (the Linux default) so the servers it
/// starts inherit it, whatever the shell's `ulimit -s` says: the crash point depends on it.
fn stack_8_mib() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write one rlimit through valid pointers.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_STACK, &mut lim), 0);
        lim.rlim_cur = 8 << 20;
        if lim.rlim_max != libc::RLIM_INFINITY && lim.rlim_max < lim.rlim_cur {
            panic!(
                "the hard stack limit ({} bytes) is below 8 MiB: raise it (ulimit -Hs)",
                lim.rlim_max
            );
        }
        assert_eq!(libc::setrlimit(libc::RLIMIT_STACK, &lim), 0);
    }
}

/// The stack crash on a long prompt: a failed trial that names the reference, the prompt
/// length and the cause — the harness itself carries on (the next request restarts the
/// server) — and `bitprobe diff` warns before it runs such a prompt.
#[test]
fn bitnet_2026_stack_crash_is_a_clear_failed_trial_and_diff_warns_first() {
    stack_8_mib();
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bitprobe-ref-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("references")).unwrap();
    let file = dir.join("references/long.toml");
    // ≈ 10 tokens per sentence: ~1550 tokens, past the measured 1363 at 1 thread, 8 MiB.
    std::fs::write(
        &file,
        r#"
description = "long prompt"
model = { preset = "small-llama3-i2s", seed = 1 }
engine = "bitnet.cpp-2026"
reference = "oracle"
snapshot = false

[[prompts]]
id = "long"
text = "The quick brown fox jumps over the lazy dog. "
repeat_to = 7000
"#,
    )
    .unwrap();
    let c = case::load(&file, &dir).unwrap_or_else(|e| panic!("{}", e.message));
    let runs = Runs::default();
    let err = runs
        .diff(&c, &c.prompts[0])
        .expect_err("bitnet.cpp-2026 must crash on this prompt");
    assert!(
        err.contains("bitnet.cpp-2026 exited")
            && err.contains("SIGSEGV")
            && err.contains("prompt has 15")
            && err.contains("overflows its stack"),
        "{err}"
    );
    // The harness goes on: the same pool answers a short prompt right after.
    let mut short = c.prompts[0].clone();
    short.id = "short".into();
    short.text = "The capital of France is".into();
    let d = runs
        .diff(&c, &short)
        .expect("a short prompt runs after the crash");
    assert!(d.pass(), "{}", harness::diff::render_summary(&d));

    // `bitprobe diff` says so before running (stderr), then fails with the crash.
    let prompt_file = dir.join("long.txt");
    std::fs::write(&prompt_file, &c.prompts[0].text).unwrap();
    let o = bin()
        .args([
            "diff",
            "--engine",
            "bitnet.cpp-2026",
            "--preset",
            "small-llama3-i2s",
            "--prompt-file",
        ])
        .arg(&prompt_file)
        .output()
        .unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    let warn = t
        .find("warning: bitnet.cpp-2026 overflows its stack")
        .expect(&t);
    let crash = t.find("SIGSEGV").expect(&t);
    assert!(warn < crash, "{t}");
    std::fs::remove_dir_all(&dir).ok();
}

/// `*.scale` tensors under arch bitnet-b1.58: the 2026 tree's loader refuses the file, and
/// bitprobe passes its words on.
#[test]
fn bitnet_2026_refuses_scale_tensors_under_bitnet_b158() {
    let o = bin()
        .args([
            "run",
            "--probe",
            "bitnet.cpp-2026",
            "--preset",
            "pin158-scales-i2s",
            "-p",
            "Hello",
            "-n",
            "1",
        ])
        .output()
        .unwrap();
    let t = text(&o);
    assert_ne!(o.status.code(), Some(0), "{t}");
    assert!(t.contains("wrong number of tensors"), "{t}");
    // The 2024 tree with our patch loads it.
    let o = bin()
        .args([
            "run",
            "--probe",
            "oracle",
            "--preset",
            "pin158-scales-i2s",
            "-p",
            "Hello",
            "-n",
            "1",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}
