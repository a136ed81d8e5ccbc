//! `bitprobe-oracle-2026`: today's bitnet.cpp (`bitnet.cpp-2026`) behind the probe wire
//! protocol on stdin/stdout, as `bitprobe-oracle` serves the default reference. The harness
//! starts it as a child process (`BITPROBE_ORACLE_BIN`), so a bitnet.cpp abort or crash
//! cannot take the harness down; `--version` prints which tree and patches it was built from.

fn main() -> std::process::ExitCode {
    oracle_2026::server_main()
}
