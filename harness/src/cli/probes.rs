//! `bitprobe probes`: what `--probe`, `--engine` and `--reference` can name.

use crate::*;
use harness::probes::{Reference, Registry};

pub(crate) fn list() -> Result<ExitCode> {
    println!("built in:");
    println!("  {:<18} bitprobe's Rust engine, in-process", "engine");
    for r in [Reference::Bitnet2024, Reference::Bitnet2026] {
        let (name, what) = match r {
            Reference::Bitnet2024 => (
                "oracle",
                "the vendored bitnet.cpp (crates.io bitnet-cpp-sys 0.0.5) + oracle/patches; also bitnet.cpp-2024",
            ),
            Reference::Bitnet2026 => (
                "bitnet.cpp-2026",
                "today's bitnet.cpp (crates.io bitnet-llm-sys 1.0.2) + its build patches",
            ),
        };
        let state = match r.binary() {
            Ok(p) => format!("({})", p.display()),
            Err(_) => format!("(not built: {} is missing)", r.binary_name()),
        };
        println!("  {name:<18} {what} {state}");
    }
    println!(
        "  {:<18} any program speaking docs/wire-protocol.md",
        "cmd:PROGRAM ARG…"
    );
    let r = Registry::global().map_err(anyhow::Error::msg)?;
    match &r.file {
        None => println!(
            "\nno probes.toml (set BITPROBE_PROBES or add probes.toml at the workspace root)"
        ),
        Some(f) => {
            println!("\nfrom {}:", f.display());
            for (name, e) in &r.probes {
                println!("  {name:<18} {}", e.description);
                println!("  {:<18} command: {}", "", e.command.join(" "));
                if let Some(check) = &e.available_if {
                    let verdict = match ProbeSpec::External(e.clone()).unavailable() {
                        None => "available".to_string(),
                        Some(why) => format!("NOT AVAILABLE — {why}"),
                    };
                    println!("  {:<18} {} → {verdict}", "", check.join(" "));
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
