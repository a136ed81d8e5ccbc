//! One module per `bitprobe` command; the argument types live in `main.rs`. Here: what the
//! commands share (threads, specs, progress, signals, error text).

pub(crate) mod bench;
pub(crate) mod conformance;
pub(crate) mod diff;
pub(crate) mod forge;
pub(crate) mod gallery;
pub(crate) mod inspect;
pub(crate) mod probes;
pub(crate) mod run;
pub(crate) mod sweep;
pub(crate) mod tokenize;
pub(crate) mod trace;

use harness::probes::{ProbeSpec, Registry};
use std::io::IsTerminal;

/// `-t N`, capped at the machine's cores: more threads than cores only makes ggml's spinning
/// workers fight (`-t 16` on 2 cores took 54 s for 4 tokens).
pub(crate) fn threads(asked: usize) -> usize {
    static WARNED: std::sync::Once = std::sync::Once::new();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (n, warning) = match asked {
        0 => (
            1,
            Some("-t 0: using 1 thread (give the number of threads you want)".to_string()),
        ),
        n if n > cores => (
            cores,
            Some(format!(
                "-t {n}: this machine has {cores} cores; using {cores}"
            )),
        ),
        n => (n, None),
    };
    if let Some(w) = warning {
        WARNED.call_once(|| eprintln!("warning: {w}"));
    }
    n
}

/// Parses a probe spec against the default `probes.toml`.
pub(crate) fn spec(s: &str) -> anyhow::Result<ProbeSpec> {
    let registry = Registry::global().map_err(anyhow::Error::msg)?;
    ProbeSpec::parse(s, registry).map_err(anyhow::Error::msg)
}

/// A spinner on stderr while long work runs (a terminal only); cleared when dropped.
pub(crate) struct Spinner(Option<indicatif::ProgressBar>);

impl Drop for Spinner {
    fn drop(&mut self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}

impl Spinner {
    pub(crate) fn set(&self, msg: &str) {
        if let Some(b) = &self.0 {
            b.set_message(msg.to_string());
        }
    }
}

pub(crate) fn spinner(msg: &str) -> Spinner {
    if !std::io::stderr().is_terminal() {
        return Spinner(None);
    }
    let b = indicatif::ProgressBar::new_spinner();
    b.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    b.set_message(msg.to_string());
    b.enable_steady_tick(std::time::Duration::from_millis(120));
    Spinner(Some(b))
}

/// Printing into a closed pipe (`bitprobe diff … | head`) ends the program quietly, as in
/// any Unix tool; Ctrl-C or SIGTERM stops the probe servers this process started before it
/// exits, instead of leaving them computing as orphans.
pub(crate) fn install_signal_handlers() {
    // SAFETY: restoring the default disposition of SIGPIPE before any thread exists; the
    // Rust runtime set it to "ignore" at start-up.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let _ = ctrlc::set_handler(|| {
        probe::wire::kill_all_servers();
        std::process::exit(130);
    });
}

/// An error chain as one sentence per distinct cause: a cause whose text is already in what
/// was said is not repeated ("No such file or directory (os error 2): No such file …").
pub(crate) fn error_text(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for part in e.chain().map(|c| c.to_string()) {
        if out.contains(part.trim()) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&part);
    }
    out
}

/// Warns (on stderr, before running) when `spec` cannot take a prompt this long on `model`.
pub(crate) fn warn_long_prompt(
    spec: &ProbeSpec,
    model: &std::path::Path,
    threads: usize,
    n_tokens: usize,
) {
    if let Some(w) = harness::probes::prompt_warning(spec, model, threads, n_tokens) {
        eprintln!("warning: {w}");
    }
}
