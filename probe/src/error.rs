//! Errors a probe returns. They cross process boundaries, so they are plain data.

use serde::{Deserialize, Serialize};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Clone, Debug, PartialEq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum Error {
    /// The model could not be loaded; `message` is the implementation's own words.
    #[error("cannot load model {path}: {message}")]
    Load { path: String, message: String },
    /// A request the probe cannot serve as asked (token id outside the vocabulary, prompt
    /// longer than the context, unknown option, …).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The implementation failed while computing.
    #[error("{0}")]
    Backend(String),
    /// The probe's process died. `stderr_tail` holds its last lines (a GGML_ASSERT, say).
    #[error(
        "{probe} exited ({status}) during the {during}; {}",
        stderr_said(stderr_tail)
    )]
    Crashed {
        probe: String,
        status: String,
        during: String,
        stderr_tail: String,
    },
    /// The probe's process did not answer in time; it was killed (see `wire::Watchdog`).
    #[error("{probe} did not answer the {during} within {seconds:.1} s: the watchdog stopped it (the next request starts it again; a case's `timeout` or `--timeout` sets the limit)")]
    Timeout {
        probe: String,
        during: String,
        seconds: f64,
    },
    /// The two sides of the wire protocol misunderstood each other.
    #[error("wire protocol: {0}")]
    Protocol(String),
    #[error("{0}")]
    Io(String),
}

/// A crashed probe's last words, or that there were none.
fn stderr_said(tail: &str) -> String {
    if tail.trim().is_empty() {
        "it wrote nothing to stderr".into()
    } else {
        format!("its stderr ends with:\n{tail}")
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e.to_string())
    }
}
