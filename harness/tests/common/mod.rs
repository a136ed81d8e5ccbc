//! What the CLI-driving integration tests share: running `bitprobe`, describing its output,
//! the `broken_probe` example's path, whether a process runs, scratch folders.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// `bitprobe` with this build's oracle server.
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bitprobe"));
    c.env("BITPROBE_ORACLE_BIN", env!("CARGO_BIN_EXE_bitprobe-oracle"));
    c
}

/// Runs `bitprobe args…`; its output and how long it took.
pub fn bitprobe(args: &[&str]) -> (Output, Duration) {
    let t = Instant::now();
    let o = bin().args(args).output().unwrap();
    (o, t.elapsed())
}

/// Status, stdout and stderr, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `target/<profile>/examples/broken_probe`, built by `cargo test` with the other examples.
pub fn broken_probe() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join("broken_probe");
    assert!(
        p.is_file(),
        "{} is missing: `cargo test` builds the examples (cargo build -p harness --example broken_probe)",
        p.display()
    );
    p
}

/// Whether process `pid` runs: it exists and is not a zombie left for its parent to reap.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
    })
}

/// A fresh folder under the temp dir, named for this process and `name`.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bitprobe-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
