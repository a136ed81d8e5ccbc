//! `bitprobe-oxbitnet`: oxbitnet 0.5.2 (crates.io, a Rust + wgpu BitNet engine) served over
//! the bitprobe wire protocol on stdin/stdout, so bitprobe can compare it with bitnet.cpp.
//!
//! This is the path a Rust engine author takes: depend on bitprobe's `probe` crate, implement
//! [`Probe`], call [`probe::wire::serve`]. Everything below uses oxbitnet's *public* API as
//! published; nothing in the engine is patched or second-guessed. What oxbitnet computes is
//! what bitprobe sees, wrong or right.
//!
//! What oxbitnet's API gives, and therefore what this probe declares (`capabilities`):
//! - `BitNetModel::forward(ids)` runs a batch through the KV cache and computes the LM head
//!   for the **last** position only; `read_logits` copies that row back. So: `generate` with
//!   greedy choice (argmax, ties to the lowest id, over oxbitnet's logits), `teacher_forced`
//!   (we choose what is fed), `decode_logits`. No batched `forward` with every position's
//!   logits, and no stages (the engine exposes no intermediate tensor).
//! - With `keep_logits`, the prefill's row i (i < n−1) is the last row of a prefill over the
//!   prompt's first i+1 tokens, each from an empty cache. Attention is causal, so this is the
//!   row a single batched pass would give; the same batched kernels run (oxbitnet switches
//!   to its GEMV kernels when a batch has one token, so row 0 comes from those). The last row
//!   is the real prefill over the whole prompt, and decoding goes on from its KV cache.
//! - `tokenize`/`pieces` are oxbitnet's own tokenizer (`Tokenizer::from_gguf_metadata`: a
//!   byte-level BPE built from the GGUF vocab and merges). It has no special-token parsing,
//!   so `parse_special: true` is refused; pieces are `decode_one`'s UTF-8 text (a piece that
//!   is part of a multi-byte character comes back as U+FFFD, as oxbitnet prints it).
//! - Only greedy sampling: oxbitnet's sampler draws from an unseeded RNG.
//!
//! The GPU is whatever `wgpu` picks (oxbitnet's `init_gpu`: high-performance adapter). On
//! machines without a GPU that is Mesa's lavapipe (Debian `mesa-vulkan-drivers`), a software
//! Vulkan device; `threads` > 0 sets `LP_NUM_THREADS` for it before the device is made.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::{Arc, Mutex};

use oxbitnet::model::gguf::GgufParser;
use oxbitnet::model::loader::{load_model, LoadOptions};
use oxbitnet::nn::model::BitNetModel;
use oxbitnet::{Activation, Tokenizer};
use probe::{
    argmax, drive_generation, Capabilities, Capture, Decoder, Error, Forward, GenerateRequest,
    Generation, Limits, ModelInfo, OpenRequest, Probe, Result, Sampling, Step, Token,
};

const OXBITNET_VERSION: &str = "0.5.2";

/// Errors wgpu reports outside a call's return value (validation, out of memory). wgpu's
/// default handler panics; this one keeps them so the request that caused them fails.
type ErrorSink = Arc<Mutex<Vec<String>>>;

struct OxProbe {
    rt: tokio::runtime::Runtime,
    model: BitNetModel,
    tokenizer: Tokenizer,
    info: ModelInfo,
    n_ctx: usize,
    eos: Vec<Token>,
    wgpu_errors: ErrorSink,
    /// Set when oxbitnet panicked mid-request: its GPU state is then unknown.
    broken: Option<String>,
    /// Tokens in the KV cache (oxbitnet keeps the count privately; we mirror it).
    cached: usize,
}

fn load_err(path: &Path, message: impl Into<String>) -> Error {
    Error::Load {
        path: path.display().to_string(),
        message: message.into(),
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_string()
    }
}

/// ggml's name for the tensor types oxbitnet's GGUF parser knows (`type_traits` in ggml.c).
fn ggml_type_name(ty: u32) -> String {
    match ty {
        0 => "f32".into(),
        1 => "f16".into(),
        16 => "i8".into(),
        17 => "i16".into(),
        18 => "i32".into(),
        27 => "i64".into(),
        28 => "f64".into(),
        30 => "bf16".into(),
        34 => "tq1_0".into(),
        35 => "tq2_0".into(),
        36 => "i2_s".into(),
        other => format!("type{other}"),
    }
}

/// Parses the GGUF header (metadata and tensor table) with oxbitnet's own parser, reading
/// only as much of the file as it needs.
fn read_header(path: &Path) -> Result<oxbitnet::model::gguf::GgufFile> {
    use std::io::Read;
    let size = std::fs::metadata(path)
        .map_err(|e| load_err(path, e.to_string()))?
        .len() as usize;
    let mut want = (16usize << 20).min(size);
    loop {
        let mut buf = vec![0u8; want];
        std::fs::File::open(path)
            .and_then(|mut f| f.read_exact(&mut buf))
            .map_err(|e| load_err(path, e.to_string()))?;
        match GgufParser::new(&buf).parse() {
            Ok(f) => return Ok(f),
            Err(e) if want < size && e.to_string().contains("Unexpected EOF") => {
                want = (want * 4).min(size)
            }
            Err(e) => return Err(load_err(path, format!("oxbitnet's GGUF parser: {e}"))),
        }
    }
}

impl OxProbe {
    fn open(req: &OpenRequest) -> Result<OxProbe> {
        let path = req.model.as_path();
        if let Some(k) = req.options.keys().next() {
            return Err(Error::InvalidRequest(format!(
                "unknown option '{k}': the oxbitnet probe takes no options"
            )));
        }
        if !path.is_file() {
            return Err(load_err(path, "no such file"));
        }
        if req.threads > 0 {
            // lavapipe (llvmpipe) sizes its compute thread pool from this when the device is
            // made; other Vulkan drivers ignore it.
            std::env::set_var("LP_NUM_THREADS", req.threads.to_string());
        }
        let threads = std::env::var("LP_NUM_THREADS")
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
            .unwrap_or(0);
        // oxbitnet's parser trusts the file's lengths (a bad one panics): keep that an error.
        let header = catch_unwind(|| read_header(path)).unwrap_or_else(|p| {
            Err(load_err(
                path,
                format!("oxbitnet's GGUF parser panicked: {}", panic_text(&*p)),
            ))
        })?;
        let meta_str = |k: &str| {
            header
                .metadata
                .get(k)
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        let arch = meta_str("general.architecture").unwrap_or_default();
        let name = meta_str("general.name").unwrap_or_default();
        let mut weight_types = BTreeMap::new();
        for t in &header.tensors {
            *weight_types.entry(ggml_type_name(t.tensor_type)).or_insert(0u32) += 1;
        }
        drop(header);

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| load_err(path, format!("tokio runtime: {e}")))?;
        let wgpu_errors: ErrorSink = Arc::new(Mutex::new(Vec::new()));
        let source = path
            .to_str()
            .ok_or_else(|| load_err(path, "path is not UTF-8"))?
            .to_string();
        let n_ctx_req = req.n_ctx;
        let sink = wgpu_errors.clone();
        let loaded = catch_unwind(AssertUnwindSafe(|| {
            rt.block_on(async {
                // The adapter oxbitnet's init_gpu will pick (same request), for the report.
                let instance = wgpu::Instance::default();
                let adapter = instance
                    .request_adapter(&wgpu::RequestAdapterOptions {
                        power_preference: wgpu::PowerPreference::HighPerformance,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| {
                        format!(
                            "no GPU adapter for wgpu ({e}); on a machine without a GPU install \
                             Mesa's software Vulkan driver (Debian: mesa-vulkan-drivers libvulkan1)"
                        )
                    })?;
                let ai = adapter.get_info();
                let gpu_desc = format!("{:?}: {}, {}", ai.backend, ai.name, ai.driver_info);
                drop(adapter);
                drop(instance);

                let gpu = oxbitnet::gpu::init_gpu().await.map_err(|e| e.to_string())?;
                let s = sink.clone();
                gpu.device.on_uncaptured_error(Box::new(move |e| {
                    s.lock().unwrap().push(e.to_string());
                }));
                let res = load_model(
                    &source,
                    gpu.device.clone(),
                    gpu.queue.clone(),
                    LoadOptions::default(),
                )
                .await
                .map_err(|e| e.to_string())?;
                let meta = res
                    .metadata
                    .as_ref()
                    .ok_or_else(|| "oxbitnet returned no GGUF metadata".to_string())?;
                let tokenizer = Tokenizer::from_gguf_metadata(meta).map_err(|e| e.to_string())?;
                let cfg = res.config.clone();
                let n_ctx = if n_ctx_req == 0 {
                    cfg.max_position_embeddings.min(4096)
                } else {
                    n_ctx_req
                };
                let model = BitNetModel::build(
                    gpu.device.clone(),
                    gpu.queue.clone(),
                    cfg,
                    &res.weights,
                    n_ctx,
                )
                .map_err(|e| e.to_string())?;
                Ok::<_, String>((model, tokenizer, n_ctx, gpu_desc))
            })
        }));
        let (model, tokenizer, n_ctx, gpu_desc) = match loaded {
            Ok(Ok(v)) => v,
            Ok(Err(msg)) => return Err(load_err(path, msg)),
            Err(p) => {
                return Err(load_err(
                    path,
                    format!("oxbitnet panicked while loading: {}", panic_text(&*p)),
                ))
            }
        };
        if let Some(e) = wgpu_errors.lock().unwrap().first() {
            return Err(load_err(path, format!("wgpu error while loading: {e}")));
        }

        let cfg = &model.config;
        let act = match cfg.activation {
            Activation::Relu2 => "ReLU²",
            Activation::Silu => "SiLU",
            Activation::Swiglu => "SwiGLU",
        };
        let mut eos = vec![tokenizer.eos_token_id()];
        eos.extend(tokenizer.eot_token_id());
        eos.extend(tokenizer.im_end_token_id());
        let info = ModelInfo {
            arch,
            name,
            n_vocab: cfg.vocab_size as u32,
            n_ctx_train: cfg.max_position_embeddings as u32,
            n_ctx: n_ctx as u32,
            n_embd: cfg.hidden_size as u32,
            n_layer: cfg.num_hidden_layers as u32,
            n_head: cfg.num_attention_heads as u32,
            n_head_kv: cfg.num_key_value_heads as u32,
            head_dim: cfg.head_dim() as u32,
            n_ff: cfg.intermediate_size as u32,
            rope_freq_base: cfg.rope_theta,
            rms_eps: cfg.rms_norm_eps,
            bos: Some(tokenizer.bos_token_id()),
            eos: Some(tokenizer.eos_token_id()),
            weight_types,
            implementation: format!(
                "oxbitnet {OXBITNET_VERSION} (wgpu 26, {gpu_desc}; FFN activation chosen by \
                 oxbitnet: {act})"
            ),
            threads,
            protocol: probe::PROTOCOL_VERSION,
            capabilities: Some(Capabilities {
                tokenize: true,
                forward: false,
                stages: Vec::new(),
                generate: true,
                teacher_forced: true,
                decode_logits: true,
                decode_stages: false,
            }),
        };
        Ok(OxProbe {
            rt,
            model,
            tokenizer,
            info,
            n_ctx,
            eos,
            wgpu_errors,
            broken: None,
            cached: 0,
        })
    }

    /// Runs `f` on oxbitnet, turning a panic or an uncaptured wgpu error into a `backend`
    /// error. After a panic the probe refuses further work (the client re-opens it).
    fn guarded<T>(&mut self, what: &str, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        if let Some(b) = &self.broken {
            return Err(Error::Backend(format!(
                "oxbitnet is unusable after an earlier failure ({b}); open the model again"
            )));
        }
        let r = catch_unwind(AssertUnwindSafe(|| f(&mut *self)));
        let r = match r {
            Ok(r) => r,
            Err(p) => {
                let msg = format!("oxbitnet panicked during {what}: {}", panic_text(&*p));
                self.broken = Some(msg.clone());
                return Err(Error::Backend(msg));
            }
        };
        let errs: Vec<String> = std::mem::take(&mut *self.wgpu_errors.lock().unwrap());
        if let Some(e) = errs.first() {
            let msg = format!("wgpu error during {what}: {e}");
            self.broken = Some(msg.clone());
            return Err(Error::Backend(msg));
        }
        r
    }

    /// Feeds `ids` through the KV cache and returns the logits of the last one.
    fn run(&mut self, ids: &[Token]) -> Result<Vec<f32>> {
        let buf = self.model.forward(ids);
        self.cached += ids.len();
        let model = &self.model;
        let logits = self
            .rt
            .block_on(model.read_logits(&buf))
            .map_err(|e| Error::Backend(format!("oxbitnet read_logits: {e}")))?;
        if logits.len() != self.info.n_vocab as usize {
            return Err(Error::Backend(format!(
                "oxbitnet returned {} logits, expected n_vocab {}",
                logits.len(),
                self.info.n_vocab
            )));
        }
        Ok(logits)
    }

    fn reset(&mut self) {
        self.model.reset_kv_cache();
        self.cached = 0;
    }

    fn check_ids(&self, ids: &[Token]) -> Result<()> {
        match ids.iter().find(|&&t| t >= self.info.n_vocab) {
            Some(bad) => Err(Error::InvalidRequest(format!(
                "token id {bad} is outside the vocabulary (n_vocab {})",
                self.info.n_vocab
            ))),
            None => Ok(()),
        }
    }
}

/// The capability a request needs that this probe does not have, if any.
fn unsupported(req: &GenerateRequest) -> Option<String> {
    if !matches!(req.sampling, Sampling::Greedy) {
        return Some(
            "only greedy sampling: oxbitnet's sampler draws from an unseeded RNG, so seeded \
             sampling cannot be reproduced"
                .into(),
        );
    }
    if !req.capture.is_empty() {
        return Some(format!(
            "capability 'stages' is empty: oxbitnet exposes no intermediate tensors (asked for {})",
            req.capture
                .stages
                .iter()
                .map(|s| s.name())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    None
}

impl Decoder for OxProbe {
    fn prefill(&mut self, req: &GenerateRequest) -> Result<(Forward, Token)> {
        let prompt = &req.prompt;
        let mut rows: Vec<f32> = Vec::new();
        if req.keep_logits {
            // Row i of a causal batched pass = last row of a pass over the first i+1 tokens.
            for i in 1..prompt.len() {
                self.reset();
                rows.extend(self.run(&prompt[..i])?);
            }
        }
        self.reset();
        let last = self.run(prompt)?;
        let first = argmax(&last);
        rows.extend(last);
        Ok((
            Forward {
                n_vocab: self.info.n_vocab,
                logits: rows,
                stages: Vec::new(),
            },
            first,
        ))
    }

    fn step(&mut self, req: &GenerateRequest, input: Token, position: u32) -> Result<Step> {
        if position as usize != self.cached {
            return Err(Error::Backend(format!(
                "decode at position {position} but the KV cache holds {} tokens",
                self.cached
            )));
        }
        let logits = self.run(&[input])?;
        let chosen = argmax(&logits);
        Ok((chosen, req.keep_logits.then_some(logits), Vec::new()))
    }
}

impl Probe for OxProbe {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn tokenize(&mut self, text: &str, add_bos: bool, parse_special: bool) -> Result<Vec<Token>> {
        if parse_special {
            return Err(Error::InvalidRequest(
                "parse_special: oxbitnet's tokenizer has no special-token parsing (its \
                 Tokenizer::encode takes only add_bos)"
                    .into(),
            ));
        }
        let text = text.to_string();
        self.guarded("tokenize", |p| {
            p.tokenizer
                .encode(&text, add_bos)
                .map_err(|e| Error::Backend(e.to_string()))
        })
    }

    fn pieces(&mut self, ids: &[Token]) -> Result<Vec<Vec<u8>>> {
        self.check_ids(ids)?;
        let ids = ids.to_vec();
        self.guarded("pieces", |p| {
            ids.iter()
                .map(|&id| {
                    p.tokenizer
                        .decode_one(id)
                        .map(String::into_bytes)
                        .map_err(|e| Error::Backend(e.to_string()))
                })
                .collect()
        })
    }

    fn forward(&mut self, _tokens: &[Token], _capture: &Capture) -> Result<Forward> {
        Err(Error::InvalidRequest(
            "capability 'forward' is false: oxbitnet's BitNetModel::forward computes the LM head \
             for the last position only, so there is no batched pass with logits at every \
             position (use generate with keep_logits)"
                .into(),
        ))
    }

    fn generate_with(
        &mut self,
        request: &GenerateRequest,
        on_token: &mut dyn FnMut(Token),
    ) -> Result<Generation> {
        if let Some(why) = unsupported(request) {
            return Err(Error::InvalidRequest(why));
        }
        let eos = self.eos.clone();
        let n_vocab = self.info.n_vocab;
        let n_ctx = self.n_ctx;
        self.guarded("generate", |p| {
            drive_generation(
                p,
                request,
                Limits {
                    n_vocab,
                    n_ctx,
                    eos: &eos,
                },
                on_token,
            )
        })
    }
}

/// `--gpu`: the adapter oxbitnet's `init_gpu` would get (same request), or why there is none.
fn print_gpu() -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bitprobe-oxbitnet: tokio runtime: {e}");
            return 1;
        }
    };
    rt.block_on(async {
        let instance = wgpu::Instance::default();
        match instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            })
            .await
        {
            Ok(a) => {
                let i = a.get_info();
                println!("{:?} {:?}: {} ({})", i.backend, i.device_type, i.name, i.driver_info);
                0
            }
            Err(e) => {
                println!("no wgpu adapter: {e}");
                1
            }
        }
    })
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None => {}
        Some("--version") => {
            println!("bitprobe-oxbitnet {} (oxbitnet {OXBITNET_VERSION})", env!("CARGO_PKG_VERSION"));
            return;
        }
        Some("--gpu") => std::process::exit(print_gpu()),
        Some(_) => {
            eprintln!(
                "usage: bitprobe-oxbitnet [--version | --gpu]\n\
                 Serves oxbitnet {OXBITNET_VERSION} over the bitprobe wire protocol on stdin/stdout \
                 (see docs/wire-protocol.md). --gpu prints the adapter wgpu would use (exit 1: none)."
            );
            std::process::exit(2);
        }
    }
    // Exit as soon as bitprobe is gone instead of finishing a long GPU request first.
    probe::wire::exit_when_orphaned();
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    if let Err(e) = probe::wire::serve(OxProbe::open, stdin.lock(), stdout.lock()) {
        eprintln!("bitprobe-oxbitnet: {e}");
        std::process::exit(1);
    }
}
