//! `bitprobe bench` runs every probe in a child process and reports every figure. Speed is
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
    let sides = r["sides"].as_array().expect("sides");
    let names: Vec<&str> = sides.iter().map(|s| s["probe"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["engine", "oracle"],
        "ours first, the reference last"
    );
    for side in sides {
        let probe = side["probe"].as_str().unwrap();
        assert!(!side["implementation"].as_str().unwrap().is_empty());
        for figure in [
            "load_seconds",
            "prefill_tok_s",
            "decode_tok_s",
            "peak_rss_bytes",
        ] {
            let v = side["series"][figure]
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
