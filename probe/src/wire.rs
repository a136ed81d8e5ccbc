//! The wire protocol: a [`Probe`] in another process, driven over its stdin/stdout.
//!
//! The oracle runs this way so that a bitnet.cpp abort (GGML_ASSERT, a bad model) kills a
//! child process, not the harness. Any engine in any language can join by serving it.
//!
//! ## Framing
//! Every message, request or reply, is one frame:
//!
//! ```text
//! u32 LE  json_len
//! [json_len bytes]  UTF-8 JSON: {"op": "...", "args": ...} or {"reply": "...", "value": ...}
//! u32 LE  n_blobs
//! n_blobs × ( u64 LE n_floats, n_floats × f32 LE )
//! ```
//!
//! Large float arrays (logits, stage data) travel as blobs: inside the JSON they appear as
//! `{"blob": i}`, the index of a blob in the frame. Outside the wire (plain `serde_json`)
//! the same fields serialize as ordinary arrays.
//!
//! ## Conversation
//! The client sends `open` first and gets `opened` (a [`ModelInfo`]) or `error`; then any
//! number of `tokenize`, `pieces`, `forward`, `generate`, each answered by one reply. End of
//! input ends the server. See [`Request`] and [`Response`] for the JSON shapes.

use crate::{
    Capture, Error, Forward, GenerateRequest, Generation, ModelInfo, OpenRequest, Probe, Result,
    Token,
};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A request from client to server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", content = "args", rename_all = "snake_case")]
pub enum Request {
    Open(OpenRequest),
    Tokenize {
        text: String,
        #[serde(default)]
        add_bos: bool,
        #[serde(default)]
        parse_special: bool,
    },
    Pieces {
        ids: Vec<Token>,
    },
    Forward {
        tokens: Vec<Token>,
        #[serde(default)]
        capture: Capture,
    },
    Generate(GenerateRequest),
}

impl Request {
    fn op(&self) -> &'static str {
        match self {
            Request::Open(_) => "open",
            Request::Tokenize { .. } => "tokenize",
            Request::Pieces { .. } => "pieces",
            Request::Forward { .. } => "forward",
            Request::Generate(_) => "generate",
        }
    }
}

/// A reply from server to client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", content = "value", rename_all = "snake_case")]
pub enum Response {
    Opened(ModelInfo),
    Tokens(Vec<Token>),
    Pieces(Vec<Vec<u8>>),
    Forward(Forward),
    Generation(Generation),
    /// Sent before the final `generation` reply, one per token as it is chosen.
    Token(Token),
    Error(Error),
}

// ---------------------------------------------------------------------------------------
// Blobs. Written by hand: serde has no notion of out-of-band binary attachments, and
// JSON arrays of 30M floats would make each oracle call seconds slower.

thread_local! {
    /// While a frame is being written: the blob payload accumulated so far.
    static SINK: RefCell<Option<(u32, Vec<u8>)>> = const { RefCell::new(None) };
    /// While a frame is being read: its blobs, taken as they are referenced.
    static SOURCE: RefCell<Option<Vec<Option<Vec<f32>>>>> = const { RefCell::new(None) };
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum BlobRepr {
    Blob { blob: usize },
    Array(Vec<f32>),
}

fn put_blob(v: &[f32]) -> Option<usize> {
    SINK.with(|s| {
        let mut s = s.borrow_mut();
        let (count, payload) = s.as_mut()?;
        payload.extend_from_slice(&(v.len() as u64).to_le_bytes());
        payload.reserve(v.len() * 4);
        for x in v {
            payload.extend_from_slice(&x.to_le_bytes());
        }
        *count += 1;
        Some(*count as usize - 1)
    })
}

fn take_blob<E: serde::de::Error>(i: usize) -> std::result::Result<Vec<f32>, E> {
    SOURCE.with(|s| {
        let mut s = s.borrow_mut();
        let blobs = s
            .as_mut()
            .ok_or_else(|| E::custom("blob reference outside a wire frame"))?;
        blobs
            .get_mut(i)
            .and_then(Option::take)
            .ok_or_else(|| E::custom(format!("blob {i} missing or referenced twice")))
    })
}

/// `#[serde(with = "crate::wire::blob")]` for `Vec<f32>` fields.
pub mod blob {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[f32], s: S) -> std::result::Result<S::Ok, S::Error> {
        match put_blob(v) {
            Some(i) => BlobRepr::Blob { blob: i }.serialize(s),
            None => v.serialize(s),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<f32>, D::Error> {
        match BlobRepr::deserialize(d)? {
            BlobRepr::Blob { blob } => take_blob(blob),
            BlobRepr::Array(v) => Ok(v),
        }
    }
}

/// `#[serde(with = "crate::wire::blob_opt")]` for `Option<Vec<f32>>` fields.
pub mod blob_opt {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        v: &Option<Vec<f32>>,
        s: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        match v {
            None => s.serialize_none(),
            Some(v) => match put_blob(v) {
                Some(i) => s.serialize_some(&BlobRepr::Blob { blob: i }),
                None => s.serialize_some(v),
            },
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> std::result::Result<Option<Vec<f32>>, D::Error> {
        match Option::<BlobRepr>::deserialize(d)? {
            None => Ok(None),
            Some(BlobRepr::Blob { blob }) => take_blob(blob).map(Some),
            Some(BlobRepr::Array(v)) => Ok(Some(v)),
        }
    }
}

/// `deserialize_with` for float fields: JSON has no NaN or ±Inf, and serde_json writes them
/// as `null`; read `null` back as NaN so a non-finite value is a value the receiver can
/// reject with a reason, not a frame it cannot read.
pub fn float_or_nan<'de, D, F>(d: D) -> std::result::Result<F, D::Error>
where
    D: serde::Deserializer<'de>,
    F: Deserialize<'de> + From<f32>,
{
    Ok(Option::<F>::deserialize(d)?.unwrap_or_else(|| F::from(f32::NAN)))
}

/// Largest JSON part accepted in a frame (token lists and metadata are small; data is in blobs).
const MAX_JSON: u32 = 256 << 20;
/// Largest blob accepted: 4 G floats (16 GiB) — far above any real logits matrix.
const MAX_BLOB_FLOATS: u64 = 1 << 32;

/// Writes one frame.
pub fn write_frame<T: Serialize>(w: &mut impl Write, msg: &T) -> io::Result<()> {
    SINK.with(|s| *s.borrow_mut() = Some((0, Vec::new())));
    let json = serde_json::to_vec(msg);
    let (n_blobs, payload) = SINK.with(|s| s.borrow_mut().take()).unwrap_or_default();
    let json = json.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    w.write_all(&(json.len() as u32).to_le_bytes())?;
    w.write_all(&json)?;
    w.write_all(&n_blobs.to_le_bytes())?;
    w.write_all(&payload)?;
    w.flush()
}

/// Reads one frame; `Ok(None)` at a clean end of input (EOF before the first byte).
pub fn read_frame<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> io::Result<Option<T>> {
    match read_raw_frame(r)? {
        None => Ok(None),
        Some(raw) => raw.parse().map(Some).map_err(invalid),
    }
}

/// One frame read off the wire whose JSON has not been interpreted yet: a reader can tell
/// a broken stream (an `io::Error` from [`read_raw_frame`]) from a well-framed message it does
/// not understand (an `Err` from [`RawFrame::parse`]), and answer the latter.
pub struct RawFrame {
    json: Vec<u8>,
    blobs: Vec<Option<Vec<f32>>>,
}

impl RawFrame {
    /// Interprets the JSON, resolving `{"blob": i}` references against this frame's blobs.
    pub fn parse<T: for<'de> Deserialize<'de>>(self) -> std::result::Result<T, String> {
        SOURCE.with(|s| *s.borrow_mut() = Some(self.blobs));
        let parsed = serde_json::from_slice(&self.json);
        SOURCE.with(|s| *s.borrow_mut() = None);
        parsed.map_err(|e| format!("bad frame JSON: {e}"))
    }

    /// The JSON text, for error messages.
    pub fn json_text(&self) -> String {
        String::from_utf8_lossy(&self.json).into_owned()
    }
}

/// Reads one frame's bytes; `Ok(None)` at a clean end of input.
pub fn read_raw_frame(r: &mut impl Read) -> io::Result<Option<RawFrame>> {
    let mut len = [0u8; 4];
    // EOF before the first byte ends the conversation; EOF inside a frame is an error.
    loop {
        match r.read(&mut len[..1]) {
            Ok(0) => return Ok(None),
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    r.read_exact(&mut len[1..])?;
    let json_len = u32::from_le_bytes(len);
    if json_len > MAX_JSON {
        return Err(invalid(format!(
            "frame JSON length {json_len} exceeds {MAX_JSON}"
        )));
    }
    let mut json = vec![0u8; json_len as usize];
    r.read_exact(&mut json)?;
    r.read_exact(&mut len)?;
    let n_blobs = u32::from_le_bytes(len);
    let mut blobs = Vec::new();
    for i in 0..n_blobs {
        let mut n = [0u8; 8];
        r.read_exact(&mut n)?;
        let n = u64::from_le_bytes(n);
        if n > MAX_BLOB_FLOATS {
            return Err(invalid(format!(
                "blob {i} claims {n} floats, limit {MAX_BLOB_FLOATS}"
            )));
        }
        let mut bytes = vec![0u8; n as usize * 4];
        r.read_exact(&mut bytes)?;
        let floats = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        blobs.push(Some(floats));
    }
    Ok(Some(RawFrame { json, blobs }))
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

// ---------------------------------------------------------------------------------------
// Server side.

/// Serves the protocol until `input` ends. `open` builds a probe from an `open` request;
/// a second `open` replaces the first probe.
pub fn serve<P: Probe>(
    mut open: impl FnMut(&OpenRequest) -> Result<P>,
    input: impl Read,
    output: impl Write,
) -> io::Result<()> {
    let mut input = BufReader::with_capacity(1 << 20, input);
    let mut output = BufWriter::with_capacity(1 << 20, output);
    let mut probe: Option<P> = None;
    while let Some(raw) = read_raw_frame(&mut input)? {
        // A well-framed request this server cannot read is answered, not fatal.
        let req: Request = match raw.parse() {
            Ok(r) => r,
            Err(e) => {
                write_frame(&mut output, &Response::Error(Error::Protocol(e)))?;
                continue;
            }
        };
        let reply = match (&req, probe.as_mut()) {
            (Request::Open(o), _) if o.protocol > crate::PROTOCOL_VERSION => {
                Response::Error(Error::Protocol(format!(
                    "the client speaks protocol {}, this server speaks {}",
                    o.protocol,
                    crate::PROTOCOL_VERSION
                )))
            }
            (Request::Open(o), _) => {
                probe = None; // free the old model before loading the next
                match open(o) {
                    Ok(p) => {
                        let info = p.info().clone();
                        probe = Some(p);
                        Response::Opened(info)
                    }
                    Err(e) => Response::Error(e),
                }
            }
            (_, None) => Response::Error(Error::InvalidRequest(format!(
                "'{}' before 'open'",
                req.op()
            ))),
            (
                Request::Tokenize {
                    text,
                    add_bos,
                    parse_special,
                },
                Some(p),
            ) => reply(p.tokenize(text, *add_bos, *parse_special), Response::Tokens),
            (Request::Pieces { ids }, Some(p)) => reply(p.pieces(ids), Response::Pieces),
            (Request::Forward { tokens, capture }, Some(p)) => {
                reply(p.forward(tokens, capture), Response::Forward)
            }
            (Request::Generate(g), Some(p)) => {
                // Stream each token as a `token` frame; a failed write ends the stream quietly
                // (the final reply's write reports it).
                let out = &mut output;
                let mut on_token = |t: Token| {
                    let _ = write_frame(out, &Response::Token(t));
                };
                reply(p.generate_with(g, &mut on_token), Response::Generation)
            }
        };
        write_frame(&mut output, &reply)?;
    }
    Ok(())
}

fn reply<T>(r: Result<T>, ok: impl FnOnce(T) -> Response) -> Response {
    match r {
        Ok(v) => ok(v),
        Err(e) => Response::Error(e),
    }
}

// ---------------------------------------------------------------------------------------
// Client side.

/// How many stderr lines of a dead server are kept for its error message.
const STDERR_TAIL_LINES: usize = 30;

struct Server {
    child: Arc<Mutex<Child>>,
    pid: u32,
    stdin: BufWriter<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    stderr_thread: Option<std::thread::JoinHandle<()>>,
}

/// How long a server may take before the client gives up on it: `open` gets `open`; any
/// other request `base` plus `per_token` for each token of work it asks for (prompt tokens of
/// a `forward`, prompt plus generated tokens of a `generate`). On expiry the child is killed,
/// the call fails with [`Error::Timeout`], and the next call starts a fresh child.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Watchdog {
    pub open: Duration,
    pub base: Duration,
    pub per_token: Duration,
}

impl Default for Watchdog {
    /// Generous: a 2B-shaped model loads in seconds and runs a few tokens a second on one
    /// slow thread; a converting adapter (ik_llama.cpp requantizing I2_S) may take minutes
    /// to open.
    fn default() -> Self {
        Watchdog {
            open: Duration::from_secs(600),
            base: Duration::from_secs(120),
            per_token: Duration::from_secs(2),
        }
    }
}

impl Watchdog {
    /// Every deadline `seconds` flat (tests of hanging servers; `--timeout`).
    pub fn flat(seconds: f64) -> Watchdog {
        let d = Duration::from_secs_f64(seconds.max(0.001));
        Watchdog {
            open: d,
            base: d,
            per_token: Duration::ZERO,
        }
    }

    /// Scales the default by `base_seconds` / 120 (a case's or model's `timeout`).
    pub fn scaled(base_seconds: f64) -> Watchdog {
        let f = (base_seconds / 120.0).max(1e-3);
        let d = Watchdog::default();
        Watchdog {
            open: d.open.mul_f64(f),
            base: d.base.mul_f64(f),
            per_token: d.per_token.mul_f64(f),
        }
    }

    fn deadline(&self, req: &Request) -> Duration {
        let tokens = match req {
            Request::Open(_) => return self.open,
            Request::Tokenize { .. } | Request::Pieces { .. } => 0,
            Request::Forward { tokens, .. } => tokens.len(),
            Request::Generate(g) => g.prompt.len() + g.max_tokens,
        };
        self.base + self.per_token * tokens as u32
    }
}

/// How to start a probe server.
#[derive(Clone, Debug)]
pub struct Launch {
    /// Names the probe in every error (`bitnet.cpp oracle`, `tritium`).
    pub label: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Working directory (`None`: the caller's).
    pub dir: Option<PathBuf>,
    pub watchdog: Watchdog,
}

impl Launch {
    pub fn new(label: &str, program: impl Into<PathBuf>, args: &[&str]) -> Launch {
        Launch {
            label: label.to_string(),
            program: program.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            dir: None,
            watchdog: Watchdog::default(),
        }
    }

    pub fn watchdog(mut self, w: Watchdog) -> Launch {
        self.watchdog = w;
        self
    }
}

/// Process ids of every running probe server this process started, so an interrupted
/// bitprobe can stop them ([`kill_all_servers`]) instead of leaving them computing.
static LIVE: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn live() -> std::sync::MutexGuard<'static, Vec<u32>> {
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Set for good by [`kill_all_servers`]: the process is about to exit.
static STOPPING: AtomicBool = AtomicBool::new(false);

/// Kills every probe server still running (for a SIGINT/SIGTERM handler: call, then exit).
/// From then on no server starts, and a thread that finds its server dead waits for the
/// exit instead of reporting a crash ([`hold_if_stopping`]).
pub fn kill_all_servers() {
    let mut live = live();
    STOPPING.store(true, Ordering::SeqCst);
    for pid in live.drain(..) {
        // SIGKILL by pid: Child handles live on other threads; the pid is still ours (not
        // reaped), so it cannot have been reused.
        let _ = Command::new("kill")
            .args(["-9", &pid.to_string()])
            .stderr(Stdio::null())
            .status();
    }
}

/// Once [`kill_all_servers`] has run, blocks the calling thread for good: the signal handler
/// is about to exit the process (130), and a server it killed must not come back as a
/// crash — an error that could reach the exit status (2) or a receipt before the handler's
/// exit does — nor a new server be started in its place.
fn hold_if_stopping() {
    if STOPPING.load(Ordering::SeqCst) {
        loop {
            std::thread::park();
        }
    }
}

/// For server binaries: exit as soon as the parent process is gone (bitprobe killed, or
/// interrupted while this server computes), instead of finishing the request first.
pub fn exit_when_orphaned() {
    #[cfg(unix)]
    {
        let parent = std::os::unix::process::parent_id();
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(200));
            if std::os::unix::process::parent_id() != parent {
                std::process::exit(0);
            }
        });
    }
}

/// A [`Probe`] served by a child process. When the child dies mid-request the call returns
/// [`Error::Crashed`] with its exit status and stderr tail; when it does not answer in time,
/// [`Error::Timeout`] (see [`Watchdog`]); either way the next call starts a fresh child and
/// re-opens the model.
pub struct RemoteProbe {
    launch: Launch,
    open: OpenRequest,
    server: Option<Server>,
    info: ModelInfo,
    /// The last request sent, for error messages (`forward of 12 tokens`).
    last: String,
}

impl RemoteProbe {
    /// Starts `program args…` and opens the model. `label` names the probe in errors.
    pub fn spawn(
        label: &str,
        program: impl Into<PathBuf>,
        args: &[&str],
        open: OpenRequest,
    ) -> Result<Self> {
        RemoteProbe::launch(Launch::new(label, program, args), open)
    }

    /// Starts a server as `launch` says and opens the model.
    pub fn launch(launch: Launch, open: OpenRequest) -> Result<Self> {
        let mut rp = RemoteProbe {
            launch,
            open,
            server: None,
            info: placeholder_info(),
            last: String::new(),
        };
        rp.ensure_open()?;
        Ok(rp)
    }

    /// The probe's name in errors.
    pub fn label(&self) -> &str {
        &self.launch.label
    }

    /// Process id of the running server, if one is running.
    pub fn pid(&self) -> Option<u32> {
        self.server.as_ref().map(|s| s.pid)
    }

    fn start(&self) -> Result<Server> {
        let l = &self.launch;
        let mut cmd = Command::new(&l.program);
        cmd.args(&l.args)
            .envs(l.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(d) = &l.dir {
            cmd.current_dir(d);
        }
        let mut child = cmd.spawn().map_err(|e| {
            Error::Io(format!(
                "cannot start {} ({}): {e}",
                l.label,
                l.program.display()
            ))
        })?;
        let pid = child.id();
        let stopping = {
            let mut live = live();
            let stopping = STOPPING.load(Ordering::SeqCst);
            if !stopping {
                live.push(pid);
            }
            stopping
        };
        if stopping {
            // Started while the handler killed the others: not in its list, so killed here.
            let _ = child.kill();
            let _ = child.wait();
            hold_if_stopping();
        }
        let stdin = BufWriter::with_capacity(1 << 20, child.stdin.take().expect("piped stdin"));
        let stdout = BufReader::with_capacity(1 << 20, child.stdout.take().expect("piped stdout"));
        let stderr = child.stderr.take().expect("piped stderr");
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        let tail = stderr_tail.clone();
        // Stream the server's stderr live when asked (`BITPROBE_PROBE_LOG=1`, or the oracle's
        // own `BITPROBE_ORACLE_LOG=1`, which makes bitnet.cpp log to it).
        let echo = ["BITPROBE_PROBE_LOG", "BITPROBE_ORACLE_LOG"]
            .iter()
            .any(|k| std::env::var_os(k).is_some_and(|v| v != "0"));
        let label = l.label.clone();
        let stderr_thread = std::thread::spawn(move || {
            for line in BufReader::new(stderr).split(b'\n') {
                let Ok(line) = line else { break };
                let line = String::from_utf8_lossy(&line).into_owned();
                if echo {
                    eprintln!("[{label}] {line}");
                }
                let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                if t.len() == STDERR_TAIL_LINES {
                    t.pop_front();
                }
                t.push_back(line);
            }
        });
        Ok(Server {
            child: Arc::new(Mutex::new(child)),
            pid,
            stdin,
            stdout,
            stderr_tail,
            stderr_thread: Some(stderr_thread),
        })
    }

    fn ensure_open(&mut self) -> Result<()> {
        if self.server.is_some() {
            return Ok(());
        }
        self.server = Some(self.start()?);
        match self.exchange(&Request::Open(self.open.clone()))? {
            Response::Opened(info) if info.protocol != crate::PROTOCOL_VERSION => {
                self.shutdown();
                Err(Error::Protocol(format!(
                    "{} speaks protocol {}, bitprobe speaks {}: update one of them (docs/wire-protocol.md)",
                    self.launch.label,
                    info.protocol,
                    crate::PROTOCOL_VERSION
                )))
            }
            Response::Opened(info) => {
                self.info = info;
                Ok(())
            }
            other => {
                self.shutdown();
                Err(unexpected(&self.launch.label, other, "opened"))
            }
        }
    }

    /// One request/reply with the running server; on I/O failure, reap it and report a crash.
    fn exchange(&mut self, req: &Request) -> Result<Response> {
        self.exchange_with(req, &mut |_| {})
    }

    /// As `exchange`, passing `token` frames that precede the reply to `on_token`. A
    /// watchdog thread kills the server when the reply does not come in time.
    fn exchange_with(
        &mut self,
        req: &Request,
        on_token: &mut dyn FnMut(Token),
    ) -> Result<Response> {
        self.last = describe_request(req);
        let deadline = self.launch.watchdog.deadline(req);
        let server = self.server.as_mut().expect("server started");
        let fired = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (cancel, cancelled) = std::sync::mpsc::channel::<()>();
        let guard = {
            let (child, fired) = (server.child.clone(), fired.clone());
            std::thread::spawn(move || {
                if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    cancelled.recv_timeout(deadline)
                {
                    fired.store(true, std::sync::atomic::Ordering::SeqCst);
                    let _ = child.lock().unwrap_or_else(|p| p.into_inner()).kill();
                }
            })
        };
        let io = write_frame(&mut server.stdin, req).and_then(|_| loop {
            match read_frame::<Response>(&mut server.stdout)? {
                Some(Response::Token(t)) => on_token(t),
                other => break Ok(other),
            }
        });
        drop(cancel);
        let _ = guard.join();
        if fired.load(std::sync::atomic::Ordering::SeqCst) {
            self.shutdown();
            return Err(Error::Timeout {
                probe: self.launch.label.clone(),
                during: self.last.clone(),
                seconds: deadline.as_secs_f64(),
            });
        }
        match io {
            Ok(Some(Response::Error(e))) => Err(e),
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err(self.crashed()),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                self.shutdown();
                Err(Error::Protocol(format!(
                    "{} replied to {} with an unreadable frame: {e}",
                    self.launch.label, self.last
                )))
            }
            Err(_) => Err(self.crashed()),
        }
    }

    fn crashed(&mut self) -> Error {
        hold_if_stopping();
        let mut server = self.server.take().expect("server started");
        drop(server.stdin);
        let status = match wait_at_most(&server.child, Duration::from_secs(5)) {
            Some(s) => describe_status(s),
            None => "did not exit after closing its input; killed".to_string(),
        };
        forget(server.pid);
        if let Some(t) = server.stderr_thread.take() {
            let _ = t.join();
        }
        let tail = server.stderr_tail.lock().unwrap_or_else(|p| p.into_inner());
        Error::Crashed {
            probe: self.launch.label.clone(),
            status,
            during: self.last.clone(),
            stderr_tail: tail
                .iter()
                .filter(|l| !is_debugger_noise(l))
                .cloned()
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }

    fn shutdown(&mut self) {
        if let Some(s) = self.server.take() {
            let mut c = s.child.lock().unwrap_or_else(|p| p.into_inner());
            let _ = c.kill();
            let _ = c.wait();
            forget(s.pid);
        }
    }

    fn call(&mut self, req: Request) -> Result<Response> {
        self.ensure_open()?;
        self.exchange(&req)
    }
}

/// Lines a crashing ggml prints after the message that matters: `ggml_print_backtrace`
/// attaches gdb (or falls back to `backtrace_symbols_fd`). Kept out of error messages.
fn is_debugger_noise(line: &str) -> bool {
    let l = line.trim_start();
    const PREFIXES: [&str; 9] = [
        "[New LWP",
        "[Thread debugging",
        "Using host libthread_db",
        "[Inferior",
        "warning: ",
        "Download failed",
        "This GDB",
        "(No debugging symbols",
        "Reading symbols",
    ];
    PREFIXES.iter().any(|p| l.starts_with(p))
        || (l.starts_with('#') && l[1..].starts_with(|c: char| c.is_ascii_digit()))
        || (l.starts_with("0x") && l.contains(" in "))
        || (l.contains("(+0x") && l.contains(") [0x"))
}

/// The request as error messages name it: `forward of 12 tokens`.
fn describe_request(req: &Request) -> String {
    match req {
        Request::Open(o) => format!("open of {}", o.model.display()),
        Request::Tokenize { text, .. } => format!("tokenize of {} bytes", text.len()),
        Request::Pieces { ids } => format!("pieces of {} ids", ids.len()),
        Request::Forward { tokens, .. } => format!("forward of {} tokens", tokens.len()),
        Request::Generate(g) => format!(
            "generate of {} tokens after a {}-token prompt",
            g.max_tokens,
            g.prompt.len()
        ),
    }
}

fn forget(pid: u32) {
    live().retain(|&p| p != pid);
}

/// Waits for the child up to `limit`, then kills it; `None` when it had to be killed.
fn wait_at_most(child: &Mutex<Child>, limit: Duration) -> Option<std::process::ExitStatus> {
    let t0 = std::time::Instant::now();
    loop {
        let mut c = child.lock().unwrap_or_else(|p| p.into_inner());
        match c.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if t0.elapsed() < limit => {}
            _ => {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
        }
        drop(c);
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for RemoteProbe {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            drop(s.stdin); // EOF: the server exits on its own, or is killed after a grace time
            let _ = wait_at_most(&s.child, Duration::from_secs(5));
            forget(s.pid);
        }
    }
}

fn describe_status(s: std::process::ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = s.signal() {
            let name = match sig {
                6 => " (SIGABRT)",
                9 => " (SIGKILL)",
                11 => " (SIGSEGV)",
                _ => "",
            };
            return format!("killed by signal {sig}{name}");
        }
    }
    match s.code() {
        Some(c) => format!("exit status {c}"),
        None => s.to_string(),
    }
}

fn unexpected(label: &str, r: Response, wanted: &str) -> Error {
    let got = serde_json::to_value(&r)
        .ok()
        .and_then(|v| v.get("reply").cloned())
        .unwrap_or_default();
    Error::Protocol(format!("{label}: expected reply '{wanted}', got {got}"))
}

fn placeholder_info() -> ModelInfo {
    ModelInfo {
        arch: String::new(),
        name: String::new(),
        n_vocab: 0,
        n_ctx_train: 0,
        n_ctx: 0,
        n_embd: 0,
        n_layer: 0,
        n_head: 0,
        n_head_kv: 0,
        head_dim: 0,
        n_ff: 0,
        rope_freq_base: 0.0,
        rms_eps: 0.0,
        bos: None,
        eos: None,
        weight_types: Default::default(),
        implementation: String::new(),
        threads: 0,
        protocol: crate::PROTOCOL_VERSION,
        capabilities: None,
    }
}

impl Probe for RemoteProbe {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn tokenize(&mut self, text: &str, add_bos: bool, parse_special: bool) -> Result<Vec<Token>> {
        match self.call(Request::Tokenize {
            text: text.to_string(),
            add_bos,
            parse_special,
        })? {
            Response::Tokens(t) => Ok(t),
            other => Err(unexpected(&self.launch.label, other, "tokens")),
        }
    }

    fn pieces(&mut self, ids: &[Token]) -> Result<Vec<Vec<u8>>> {
        match self.call(Request::Pieces { ids: ids.to_vec() })? {
            Response::Pieces(p) => Ok(p),
            other => Err(unexpected(&self.launch.label, other, "pieces")),
        }
    }

    fn forward(&mut self, tokens: &[Token], capture: &Capture) -> Result<Forward> {
        match self.call(Request::Forward {
            tokens: tokens.to_vec(),
            capture: capture.clone(),
        })? {
            Response::Forward(f) => Ok(f),
            other => Err(unexpected(&self.launch.label, other, "forward")),
        }
    }

    fn generate_with(
        &mut self,
        request: &GenerateRequest,
        on_token: &mut dyn FnMut(Token),
    ) -> Result<Generation> {
        self.ensure_open()?;
        match self.exchange_with(&Request::Generate(request.clone()), on_token)? {
            Response::Generation(g) => Ok(g),
            other => Err(unexpected(&self.launch.label, other, "generation")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Stage, StageTensor};

    fn sample_forward() -> Forward {
        Forward {
            n_vocab: 3,
            logits: vec![1.0, f32::NAN, -0.0, f32::INFINITY, 2.5, -7.0],
            stages: vec![StageTensor {
                stage: Stage::AttnQ,
                layer: Some(1),
                position: 0,
                shape: vec![2, 2],
                data: vec![0.1, 0.2, 0.3, 0.4],
            }],
        }
    }

    #[test]
    fn frames_round_trip_bit_exactly_with_blobs() {
        let msg = Response::Forward(sample_forward());
        let mut buf = Vec::new();
        write_frame(&mut buf, &msg).unwrap();
        let back: Response = read_frame(&mut buf.as_slice()).unwrap().unwrap();
        let (Response::Forward(a), Response::Forward(b)) = (&msg, &back) else {
            panic!("wrong variant")
        };
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&a.logits),
            bits(&b.logits),
            "NaN, -0.0 and Inf survive the wire"
        );
        assert_eq!(a.stages, b.stages);
        // The JSON part refers to blobs instead of inlining the floats.
        let json_len = u32::from_le_bytes(buf[..4].try_into().unwrap()) as usize;
        let json = std::str::from_utf8(&buf[4..4 + json_len]).unwrap();
        assert!(json.contains(r#"{"blob":0}"#), "{json}");
    }

    #[test]
    fn plain_json_inlines_arrays() {
        let f = Forward {
            n_vocab: 1,
            logits: vec![0.5],
            stages: vec![],
        };
        let json = serde_json::to_string(&f).unwrap();
        assert!(json.contains("[0.5]"), "{json}");
        let back: Forward = serde_json::from_str(&json).unwrap();
        assert_eq!(back, f);
    }

    #[test]
    fn truncated_and_oversized_frames_are_errors_not_panics() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &Response::Forward(sample_forward())).unwrap();
        for cut in 1..buf.len() {
            assert!(
                read_frame::<Response>(&mut &buf[..cut]).is_err(),
                "prefix of {cut} bytes accepted"
            );
        }
        assert!(
            read_frame::<Response>(&mut &[][..]).unwrap().is_none(),
            "clean EOF"
        );
        let mut huge = (MAX_JSON + 1).to_le_bytes().to_vec();
        huge.extend_from_slice(&[0; 16]);
        assert!(read_frame::<Response>(&mut huge.as_slice()).is_err());
    }

    #[test]
    fn requests_have_readable_json() {
        let r = Request::Tokenize {
            text: "hi".into(),
            add_bos: true,
            parse_special: false,
        };
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"op":"tokenize","args":{"text":"hi","add_bos":true,"parse_special":false}}"#
        );
    }

    struct Mock(ModelInfo);
    impl Probe for Mock {
        fn info(&self) -> &ModelInfo {
            &self.0
        }
        fn tokenize(&mut self, text: &str, add_bos: bool, _: bool) -> Result<Vec<Token>> {
            Ok(add_bos
                .then_some(99)
                .into_iter()
                .chain(text.bytes().map(Token::from))
                .collect())
        }
        fn pieces(&mut self, ids: &[Token]) -> Result<Vec<Vec<u8>>> {
            Ok(ids.iter().map(|&i| vec![i as u8]).collect())
        }
        fn forward(&mut self, tokens: &[Token], _: &Capture) -> Result<Forward> {
            Err(Error::InvalidRequest(format!("{} tokens", tokens.len())))
        }
        fn generate(&mut self, _: &GenerateRequest) -> Result<Generation> {
            Err(Error::Backend("no".into()))
        }
    }

    #[test]
    fn serve_answers_each_request_and_refuses_work_before_open() {
        let mut input = Vec::new();
        write_frame(&mut input, &Request::Pieces { ids: vec![65] }).unwrap();
        write_frame(&mut input, &Request::Open(OpenRequest::new("m.gguf"))).unwrap();
        write_frame(
            &mut input,
            &Request::Tokenize {
                text: "AB".into(),
                add_bos: true,
                parse_special: false,
            },
        )
        .unwrap();
        write_frame(
            &mut input,
            &Request::Forward {
                tokens: vec![1, 2],
                capture: Capture::none(),
            },
        )
        .unwrap();
        let mut output = Vec::new();
        serve(
            |o| {
                let mut info = placeholder_info();
                info.name = o.model.display().to_string();
                Ok(Mock(info))
            },
            input.as_slice(),
            &mut output,
        )
        .unwrap();
        let mut out = output.as_slice();
        let mut replies = Vec::new();
        while let Some(r) = read_frame::<Response>(&mut out).unwrap() {
            replies.push(r);
        }
        assert_eq!(replies.len(), 4);
        assert!(
            matches!(&replies[0], Response::Error(Error::InvalidRequest(m)) if m.contains("before 'open'"))
        );
        assert!(matches!(&replies[1], Response::Opened(i) if i.name == "m.gguf"));
        assert_eq!(replies[2], Response::Tokens(vec![99, 65, 66]));
        assert_eq!(
            replies[3],
            Response::Error(Error::InvalidRequest("2 tokens".into()))
        );
    }
}
