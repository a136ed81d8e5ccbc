//! `bitprobe bench` runs both probes in child processes and reports every figure. Speed is
//! measured, never asserted: this test checks that the report is complete and sane, not fast.

use std::process::Command;

#[test]
fn bench_reports_every_figure_for_both_probes() {
    let out = Command::new(env!("CARGO_BIN_EXE_bitprobe"))
        .args([
            "bench",
            "--preset",
            "tiny-i2s",
            "-t",
            "1",
            "--prompt-tokens",
            "16",
            "--decode-tokens",
            "4",
            "--reps",
            "2",
            "--json",
        ])
        .env("BITPROBE_ORACLE_BIN", env!("CARGO_BIN_EXE_bitprobe-oracle"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for probe in ["engine", "oracle"] {
        for figure in [
            "load_seconds",
            "prefill_tok_s",
            "decode_tok_s",
            "peak_rss_bytes",
        ] {
            let v = r[probe][figure]
                .as_array()
                .unwrap_or_else(|| panic!("{probe}.{figure} missing: {r}"));
            assert_eq!(v.len(), 2, "{probe}.{figure}: one value per rep");
            assert!(
                v.iter().all(|x| x.as_f64().is_some_and(|x| x > 0.0)),
                "{probe}.{figure}: {v:?}"
            );
        }
    }
    // The tiny model's tensors, read once per decode step.
    assert!(r["bytes_per_decode_step"].as_u64().unwrap() > 400_000);
    assert!(r["read_bandwidth"].as_f64().unwrap() > 1e8);
}
