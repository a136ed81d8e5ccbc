//! `bitprobe-oracle`: bitnet.cpp behind the probe wire protocol on stdin/stdout.
//! The harness starts it as a child process so that a bitnet.cpp abort cannot take it down.

fn main() -> std::process::ExitCode {
    oracle::serve_stdio()
}
