//! An implementation of `Probe` for bitnet.cpp, built from source by `build_common.rs`.
//!
//! The same source is compiled into two crates, one per reference (two ggml copies cannot
//! share a process, so each reference is its own library and server binary):
//! - `oracle` (this folder): the default reference `bitnet.cpp-2024`, the vendored late-2024
//!   tree (`oracle/vendor/bitnet`, or `$BITNET_CPP_DIR`) patched by `oracle/patches/`; served
//!   by `bitprobe-oracle`;
//! - `oracle-2026` (its `[lib]` path is this file): `bitnet.cpp-2026`, today's tree
//!   (`oracle/vendor/bitnet-2026`) patched by `oracle/patches-2026/`; served by
//!   `bitprobe-oracle-2026`.
//!
//! What differs between the two at the Rust level is read from the build script's output:
//! [`source_info`] and the `bitnet_flavour` cfg (see `tap::ffn_out_is_sub_out`).
//!
//! [`OracleProbe`] runs a model in-process through `llama.h`; [`serve_stdio`] puts it behind
//! the `probe::wire` protocol for the server binaries ([`server_main`]), which is how the
//! harness uses it (a GGML_ASSERT then kills a child process, not the harness).
//!
//! Only this crate has unsafe FFI. Every C++ failure is translated into a `probe::Error` here,
//! carrying bitnet.cpp's own log lines where it printed any. Inputs bitnet.cpp would assert on
//! (token ids outside the vocabulary, empty or over-long prompts) are refused before the call.

pub mod ffi;
mod oracle_probe;
mod tap;

pub use oracle_probe::OracleProbe;

use probe::{Error, Result};
use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::ffi::{c_char, c_void, CStr, CString};
use std::path::Path;
use std::process::ExitCode;
use std::ptr::NonNull;
use std::sync::Once;

/// Which bitnet.cpp this crate was built from, as recorded by `build_common.rs`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceInfo {
    /// `2024` or `2026`: the layout the build recognised, which chose the patch set.
    pub flavour: &'static str,
    /// The reference's name: `bitnet.cpp-2024` / `bitnet.cpp-2026`.
    pub reference: &'static str,
    /// `bitnet-cpp-sys-0.0.5` / `bitnet-llm-sys-1.0.2` (the crates.io package it was vendored
    /// from), or `BITNET_CPP_DIR=<path>` for an override checkout.
    pub package: &'static str,
    /// sha256 of the source tree as `scripts/setup.sh`'s `tree_sha256` computes it, recomputed
    /// by the build over the files it copied (for a vendored tree also checked against the
    /// stamp setup wrote; for a checkout its `.git`, `build` and `models` are left out).
    pub tree_sha256: &'static str,
    /// The patches actually applied, in order: file name and sha256. A patch the series skips
    /// (its `if-missing` file exists) or that a checkout already contains is not here.
    pub patches: Vec<(&'static str, &'static str)>,
}

/// The source identity of the linked bitnet.cpp.
pub fn source_info() -> SourceInfo {
    let patches = env!("BITPROBE_BITNET_PATCHES")
        .split(';')
        .filter(|s| !s.is_empty())
        .map(|s| s.split_once('=').unwrap_or((s, "")))
        .collect();
    SourceInfo {
        flavour: env!("BITPROBE_BITNET_FLAVOUR"),
        reference: concat!("bitnet.cpp-", env!("BITPROBE_BITNET_FLAVOUR")),
        package: env!("BITPROBE_BITNET_PACKAGE"),
        tree_sha256: env!("BITPROBE_BITNET_TREE_SHA256"),
        patches,
    }
}

/// `ModelInfo::implementation`: reference, package, tree and the patches applied, e.g.
/// `bitnet.cpp-2026 (bitnet-llm-sys-1.0.2, tree c05a3c2ee5ab; patches:
/// 0001-clang-const-y-col.patch)`.
pub fn implementation() -> String {
    let src = source_info();
    let patches = if src.patches.is_empty() {
        "unpatched".to_string()
    } else {
        let names: Vec<&str> = src.patches.iter().map(|(n, _)| *n).collect();
        format!("patches: {}", names.join(", "))
    };
    format!(
        "{} ({}, tree {}; {patches})",
        src.reference,
        src.package,
        &src.tree_sha256[..src.tree_sha256.len().min(12)]
    )
}

/// `--version` text: the first line names the reference and the crate, then one `key: value`
/// line per fact (`patch:` once per patch applied, in order; `patches: none` without any).
pub fn version_text() -> String {
    let src = source_info();
    let mut out = format!(
        "{} ({} {}, wire protocol {})\nflavour: {}\npackage: {}\ntree-sha256: {}\n",
        src.reference,
        env!("CARGO_PKG_NAME"),
        env!("CARGO_PKG_VERSION"),
        probe::PROTOCOL_VERSION,
        src.flavour,
        src.package,
        src.tree_sha256
    );
    if src.patches.is_empty() {
        out.push_str("patches: none\n");
    }
    for (name, sha) in &src.patches {
        out.push_str(&format!("patch: {name} sha256={sha}\n"));
    }
    out
}

/// A reference server's `main`: `--version` / `-V` prints [`version_text`], `--help` says
/// what the binary is; no arguments serves the wire protocol ([`serve_stdio`]).
pub fn server_main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] => serve_stdio(),
        ["--version"] | ["-V"] => {
            print!("{}", version_text());
            ExitCode::SUCCESS
        }
        ["--help"] | ["-h"] => {
            println!(
                "{}: bitnet.cpp behind the bitprobe wire protocol (probe/src/wire.rs) on \
                 stdin/stdout.\nUsage: run without arguments (the harness starts it); \
                 --version prints which bitnet.cpp and patches it was built from.",
                implementation()
            );
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("unexpected arguments {args:?}: try --help");
            ExitCode::from(2)
        }
    }
}

/// Serves the `probe::wire` protocol on stdin/stdout with [`OracleProbe`]s.
///
/// stdout is the protocol channel, so nothing else may write to it. bitnet.cpp's log goes
/// through our logger (captured; echoed to stderr with `BITPROBE_ORACLE_LOG=1`), but C code
/// can still write to file descriptor 1: on a GGML_ASSERT, `ggml_abort` prints the assert line
/// to stderr and then forks `gdb --batch … bt`, whose output goes to the inherited stdout. So
/// the protocol gets a private duplicate of fd 1 and fd 1 itself is pointed at `/dev/null`
/// (at stderr with `BITPROBE_ORACLE_LOG=1`, for the gdb backtrace — which then pushes the
/// assert line out of the client's 30-line stderr tail, hence not the default).
pub fn serve_stdio() -> ExitCode {
    let out = match protocol_stdout() {
        Ok(out) => out,
        Err(e) => {
            eprintln!("bitprobe-oracle: cannot set up stdout: {e}");
            return ExitCode::FAILURE;
        }
    };
    match probe::wire::serve(OracleProbe::open, std::io::stdin().lock(), out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bitprobe-oracle: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A private (close-on-exec) duplicate of fd 1 for the protocol; fd 1 then points at
/// `/dev/null`, or at stderr with `BITPROBE_ORACLE_LOG` set.
fn protocol_stdout() -> std::io::Result<std::fs::File> {
    use std::os::fd::{AsFd, AsRawFd};
    extern "C" {
        fn dup2(oldfd: std::ffi::c_int, newfd: std::ffi::c_int) -> std::ffi::c_int;
    }
    let stdout = std::io::stdout();
    let protocol = stdout.as_fd().try_clone_to_owned()?;
    let sink = if std::env::var_os("BITPROBE_ORACLE_LOG").is_some() {
        std::io::stderr().as_fd().try_clone_to_owned()?
    } else {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")?
            .into()
    };
    // SAFETY: dup2 on two open descriptors we hold; it atomically re-points fd 1, which Rust's
    // `Stdout` (nothing written or buffered yet) and C's stdout keep using.
    if unsafe { dup2(sink.as_raw_fd(), 1) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(std::fs::File::from(protocol))
}

thread_local! {
    /// The last lines bitnet.cpp logged on this thread (llama.cpp's and ggml's logger), newest
    /// last. llama.cpp logs a model load on the loading thread, so a load's error is read
    /// from its own thread's lines: per thread, concurrent loads in one process (the tests)
    /// never read each other's.
    static LOG_TAIL: RefCell<VecDeque<String>> = const { RefCell::new(VecDeque::new()) };
}
const LOG_TAIL_LINES: usize = 64;

/// Receives llama.cpp's log; keeps a tail for error messages, echoes to stderr when
/// `BITPROBE_ORACLE_LOG` is set.
unsafe extern "C" fn log_callback(
    _level: ffi::ggml_log_level,
    text: *const c_char,
    _user: *mut c_void,
) {
    if text.is_null() {
        return;
    }
    // SAFETY: llama.cpp passes a NUL-terminated string valid for the duration of the call.
    let text = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    if std::env::var_os("BITPROBE_ORACLE_LOG").is_some() {
        eprint!("{text}");
    }
    let _ = LOG_TAIL.try_with(|tail| {
        let Ok(mut tail) = tail.try_borrow_mut() else {
            return;
        };
        // llama.cpp sometimes logs one line in pieces; glue pieces until a newline.
        match tail.back_mut() {
            Some(last) if !last.ends_with('\n') => last.push_str(&text),
            _ => tail.push_back(text.into_owned()),
        }
        while tail.len() > LOG_TAIL_LINES {
            tail.pop_front();
        }
    });
}

const LOG_MARK: &str = "\u{0}mark\n";

/// Marks the log so `log_since_mark` returns only what a call printed.
fn log_mark() {
    LOG_TAIL.with_borrow_mut(|tail| tail.push_back(LOG_MARK.to_string()));
}

/// The error lines logged since the last `log_mark`, joined with "; " (or all lines when none
/// look like errors).
fn log_since_mark() -> String {
    LOG_TAIL.with_borrow(since_mark)
}

fn since_mark(tail: &VecDeque<String>) -> String {
    let start = tail
        .iter()
        .rposition(|l| l == LOG_MARK)
        .map_or(0, |i| i + 1);
    let lines: Vec<&str> = tail
        .range(start..)
        .map(|l| l.trim_end())
        .filter(|l| !l.is_empty())
        .collect();
    let errors: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.contains("error") || l.contains("failed") || l.contains("unknown"))
        .collect();
    if errors.is_empty() {
        lines.join("; ")
    } else {
        errors.join("; ")
    }
}

/// One-time process-wide set-up: llama.cpp's backend and our logger.
fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        // SAFETY: plain initialisers without preconditions; called once.
        unsafe {
            ffi::llama_log_set(Some(log_callback), std::ptr::null_mut());
            ffi::llama_backend_init();
        }
    });
}

/// A model loaded by bitnet.cpp (`llama_load_model_from_file`), freed on drop.
pub struct Model {
    ptr: NonNull<ffi::llama_model>,
}

// SAFETY: a loaded llama_model is read-only; llama.cpp shares one across contexts and threads.
unsafe impl Send for Model {}
unsafe impl Sync for Model {}

impl Model {
    /// Loads a GGUF model on the CPU (mmap, no GPU layers).
    pub fn load(path: &Path) -> Result<Model> {
        init();
        let load_err = |message: String| Error::Load {
            path: path.display().to_string(),
            message,
        };
        let c_path = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| load_err("path contains a NUL byte".into()))?;
        log_mark();
        // SAFETY: default params are plain data; c_path outlives the call.
        let ptr = unsafe {
            let params = ffi::llama_model_default_params();
            ffi::llama_load_model_from_file(c_path.as_ptr(), params)
        };
        NonNull::new(ptr).map(|ptr| Model { ptr }).ok_or_else(|| {
            let mut message = log_since_mark();
            if !path.exists() {
                // ggml's gguf reader says why on stderr, not through the log: add the cause.
                message.push_str(" (no such file)");
            }
            load_err(message)
        })
    }

    pub(crate) fn as_ptr(&self) -> *const ffi::llama_model {
        self.ptr.as_ptr()
    }

    /// `llama_n_vocab`.
    pub fn n_vocab(&self) -> u32 {
        // SAFETY: self.ptr is a live model.
        unsafe { ffi::llama_n_vocab(self.as_ptr()) as u32 }
    }

    /// `llama_tokenize` with the caller's flags as given: `add_bos` is llama.cpp's
    /// `add_special` (BOS, and EOS if the vocab asks for it), `parse_special` lets text like
    /// `<|eot_id|>` become its special token.
    pub fn tokenize(&self, text: &str, add_bos: bool, parse_special: bool) -> Result<Vec<i32>> {
        let len = i32::try_from(text.len()).map_err(|_| {
            Error::InvalidRequest(format!(
                "text of {} bytes is too long to tokenize",
                text.len()
            ))
        })?;
        let mut tokens = vec![0i32; text.len() + 2];
        loop {
            // SAFETY: text and tokens are valid for the lengths passed.
            let n = unsafe {
                ffi::llama_tokenize(
                    self.as_ptr(),
                    text.as_ptr().cast(),
                    len,
                    tokens.as_mut_ptr(),
                    tokens.len() as i32,
                    add_bos,
                    parse_special,
                )
            };
            if n >= 0 {
                tokens.truncate(n as usize);
                return Ok(tokens);
            }
            if n == i32::MIN || (-n) as usize <= tokens.len() {
                return Err(Error::Backend(format!(
                    "llama_tokenize failed ({n}) on {text:?}"
                )));
            }
            tokens.resize((-n) as usize, 0);
        }
    }

    /// `llama_model_meta_val_str`: a metadata value as llama.cpp renders it (`None` when absent).
    /// Floats come out as `%f` (six decimals), so read those with [`GgufHeader`] instead.
    pub fn meta(&self, key: &str) -> Option<String> {
        let key = CString::new(key).ok()?;
        let mut buf = vec![0u8; 128];
        loop {
            // SAFETY: key is NUL-terminated, buf is valid for buf.len() bytes; llama.cpp writes at
            // most that many (snprintf) and returns the full length.
            let n = unsafe {
                ffi::llama_model_meta_val_str(
                    self.as_ptr(),
                    key.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            let n = usize::try_from(n).ok()?;
            if n < buf.len() {
                buf.truncate(n);
                return Some(String::from_utf8_lossy(&buf).into_owned());
            }
            buf.resize(n + 1, 0);
        }
    }

    /// A metadata integer (`None` when absent or not a number).
    pub fn meta_u32(&self, key: &str) -> Option<u32> {
        self.meta(key)?.trim().parse().ok()
    }

    /// `llama_token_to_piece` with `special = true` (special tokens render as their text) and
    /// no leading-space stripping. The caller checks `id < n_vocab` (llama.cpp would throw).
    pub fn piece(&self, id: i32) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; 32];
        loop {
            // SAFETY: buf is valid for buf.len() bytes; llama.cpp writes no more than that.
            let n = unsafe {
                ffi::llama_token_to_piece(
                    self.as_ptr(),
                    id,
                    buf.as_mut_ptr().cast(),
                    buf.len() as i32,
                    0,
                    true,
                )
            };
            if n >= 0 {
                buf.truncate(n as usize);
                return Ok(buf);
            }
            // Negative: the buffer is too small; -n is the length it needs.
            let need = n.unsigned_abs() as usize;
            if need <= buf.len() {
                return Err(Error::Backend(format!(
                    "llama_token_to_piece({id}) failed ({n})"
                )));
            }
            buf.resize(need, 0);
        }
    }

    /// `llama_token_bos` / `llama_token_eos` / `llama_token_eot`; llama.cpp's -1 = none.
    pub fn special_tokens(&self) -> (Option<u32>, Option<u32>, Option<u32>) {
        // SAFETY: self.ptr is a live model.
        let (bos, eos, eot) = unsafe {
            (
                ffi::llama_token_bos(self.as_ptr()),
                ffi::llama_token_eos(self.as_ptr()),
                ffi::llama_token_eot(self.as_ptr()),
            )
        };
        let some = |t: i32| u32::try_from(t).ok();
        (some(bos), some(eos), some(eot))
    }
}

/// The GGUF header read by ggml's own reader (`gguf_init_from_file` with `no_alloc`): exact
/// float metadata and the tensor list, which `llama.h` does not expose.
pub struct GgufHeader {
    ptr: NonNull<ffi::gguf_context>,
}

impl GgufHeader {
    pub fn open(path: &Path) -> Result<GgufHeader> {
        let load_err = |message: String| Error::Load {
            path: path.display().to_string(),
            message,
        };
        let c_path = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| load_err("path contains a NUL byte".into()))?;
        let params = ffi::gguf_init_params {
            no_alloc: true,
            ctx: std::ptr::null_mut(),
        };
        // SAFETY: c_path outlives the call; with no_alloc and a null ctx only the header is read.
        let ptr = unsafe { ffi::gguf_init_from_file(c_path.as_ptr(), params) };
        NonNull::new(ptr)
            .map(|ptr| GgufHeader { ptr })
            .ok_or_else(|| load_err("gguf_init_from_file failed".into()))
    }

    /// An f32 value (`None` when absent or of another type).
    pub fn f32(&self, key: &str) -> Option<f32> {
        let key = CString::new(key).ok()?;
        // SAFETY: live context, NUL-terminated key; gguf_get_val_f32 asserts the type, so it is
        // only called after checking it.
        unsafe {
            let id = ffi::gguf_find_key(self.ptr.as_ptr(), key.as_ptr());
            if id < 0 || ffi::gguf_get_kv_type(self.ptr.as_ptr(), id) != ffi::GGUF_TYPE_FLOAT32 {
                return None;
            }
            Some(ffi::gguf_get_val_f32(self.ptr.as_ptr(), id))
        }
    }

    /// Tensor type name (ggml's, e.g. `i2_s`) → number of tensors of that type in the file.
    pub fn tensor_types(&self) -> BTreeMap<String, u32> {
        let mut types = BTreeMap::new();
        // SAFETY: live context; indices are below gguf_get_n_tensors; ggml_type_name returns a
        // static string (or null for an unknown id, handled).
        unsafe {
            for i in 0..ffi::gguf_get_n_tensors(self.ptr.as_ptr()) {
                let ty = ffi::gguf_get_tensor_type(self.ptr.as_ptr(), i);
                let name = ffi::ggml_type_name(ty);
                let name = if name.is_null() {
                    format!("type{ty}")
                } else {
                    CStr::from_ptr(name).to_string_lossy().into_owned()
                };
                *types.entry(name).or_insert(0) += 1;
            }
        }
        types
    }
}

impl Drop for GgufHeader {
    fn drop(&mut self) {
        // SAFETY: we own the context.
        unsafe { ffi::gguf_free(self.ptr.as_ptr()) }
    }
}

impl Drop for Model {
    fn drop(&mut self) {
        // SAFETY: we own the model; nothing borrows it past self.
        unsafe { ffi::llama_free_model(self.ptr.as_ptr()) }
    }
}
