//! `bitprobe-oracle`: the vendored 2024 bitnet.cpp behind the probe wire protocol on
//! stdin/stdout (`--version`: which tree and patches). The harness starts it as a child
//! process so that a bitnet.cpp abort cannot take it down. Today's tree is the same code
//! built by the `oracle-2026` crate: `bitprobe-oracle-2026`.

fn main() -> std::process::ExitCode {
    oracle::server_main()
}
