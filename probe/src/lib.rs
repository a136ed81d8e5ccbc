//! The contract between bitprobe and an inference engine under test.
//!
//! A [`Probe`] is anything that can run a BitNet b1.58 model: our Rust engine in-process, the
//! bitnet.cpp oracle in a child process, or a third-party engine speaking the [`wire`]
//! protocol. The one design choice that matters: **a probe must expose every intermediate
//! stage, not only logits.** Logits tell you *that* two engines disagree; the stage tensors
//! ([`Stage`], in bitnet.cpp's evaluation order) tell you *where* — the first (position,
//! layer, stage) at which they part is the bug's address.
//!
//! So [`Probe::forward`] takes a whole prompt as one batch and returns logits for **every**
//! position plus the stage tensors selected by a [`Capture`]; [`Probe::generate`] goes on
//! token by token through the KV cache, capturing the same stages at each decode step.
//!
//! This crate knows nothing about FFI, kernels or GGUF. Its only dependencies are serde,
//! serde_json, blake3 and thiserror.

pub mod capture;
pub mod error;
pub mod stage;
pub mod tensor;
pub mod wire;

pub use capture::Capture;
pub use error::{Error, Result};
pub use stage::{Stage, StageId};
pub use tensor::{blake3_f32, StageTensor, Stats};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A token id. bitnet.cpp's `llama_token` is i32; ids are never negative in a valid vocab.
pub type Token = u32;

/// The wire protocol version this crate speaks (sent in `open`, answered in `opened`).
/// A server that does not say is taken to speak version 1.
pub const PROTOCOL_VERSION: u32 = 1;

fn protocol_v1() -> u32 {
    1
}

fn greedy() -> Sampling {
    Sampling::Greedy
}

/// How a probe is opened: the model file, threads, context size and probe-specific options.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpenRequest {
    pub model: PathBuf,
    /// Worker threads for compute; 0 = the probe's default.
    #[serde(default)]
    pub threads: usize,
    /// Context size (KV cache length) in tokens; 0 = min(model's training context, 4096).
    #[serde(default)]
    pub n_ctx: usize,
    /// Probe-specific settings (for the engine: `tokenizer = gguf|truth|<path>`,
    /// `fault = <name>`). A probe rejects keys it does not know.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// The protocol version the client speaks ([`PROTOCOL_VERSION`]); absent means 1.
    #[serde(default = "protocol_v1")]
    pub protocol: u32,
}

impl OpenRequest {
    pub fn new(model: impl Into<PathBuf>) -> Self {
        OpenRequest {
            model: model.into(),
            threads: 0,
            n_ctx: 0,
            options: BTreeMap::new(),
            protocol: PROTOCOL_VERSION,
        }
    }

    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }

    pub fn option(mut self, key: &str, value: &str) -> Self {
        self.options.insert(key.to_string(), value.to_string());
        self
    }
}

/// What a probe reports about its loaded model. Only `n_vocab` is required on the wire; a
/// probe that cannot say the rest (a generate-only engine) may leave it out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// `general.architecture`: `bitnet` or `bitnet-b1.58`.
    #[serde(default)]
    pub arch: String,
    #[serde(default)]
    pub name: String,
    pub n_vocab: u32,
    #[serde(default)]
    pub n_ctx_train: u32,
    /// The context this probe was opened with.
    #[serde(default)]
    pub n_ctx: u32,
    #[serde(default)]
    pub n_embd: u32,
    #[serde(default)]
    pub n_layer: u32,
    #[serde(default)]
    pub n_head: u32,
    #[serde(default)]
    pub n_head_kv: u32,
    #[serde(default)]
    pub head_dim: u32,
    #[serde(default)]
    pub n_ff: u32,
    #[serde(default, deserialize_with = "wire::float_or_nan")]
    pub rope_freq_base: f32,
    #[serde(default, deserialize_with = "wire::float_or_nan")]
    pub rms_eps: f32,
    #[serde(default)]
    pub bos: Option<Token>,
    #[serde(default)]
    pub eos: Option<Token>,
    /// Tensor type name (`I2_S`, `F16`, …) → number of tensors of that type.
    #[serde(default)]
    pub weight_types: BTreeMap<String, u32>,
    /// Who computed this: `engine 0.1.0`, `bitnet.cpp (bitnet-cpp-sys 0.0.5)`, ….
    #[serde(default)]
    pub implementation: String,
    #[serde(default)]
    pub threads: u32,
    /// The protocol version the probe speaks; absent means 1.
    #[serde(default = "protocol_v1")]
    pub protocol: u32,
    /// What the probe can give. `None` (a server that declares nothing) means everything:
    /// [`Capabilities::full`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,
}

impl ModelInfo {
    /// The declared capabilities, or [`Capabilities::full`] when none were declared.
    pub fn caps(&self) -> Capabilities {
        self.capabilities.clone().unwrap_or_else(Capabilities::full)
    }
}

/// What a probe can give, declared in its `opened` reply. Fields a probe leaves out are
/// false (or empty): declaring anything means declaring everything you have.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Capabilities {
    /// `tokenize` and `pieces`.
    pub tokenize: bool,
    /// `forward`: one batched pass over a prompt with logits at every position.
    pub forward: bool,
    /// Stages `forward` can capture (and `generate`, at prompt positions).
    pub stages: Vec<Stage>,
    /// `generate`: prefill, then one token at a time through a KV cache.
    pub generate: bool,
    /// `generate` honours `forced` (teacher forcing: step i feeds `forced[i]`).
    pub teacher_forced: bool,
    /// `generate` returns each step's logits (and every prompt row) when `keep_logits`.
    pub decode_logits: bool,
    /// `generate` captures `stages` at decode steps too.
    pub decode_stages: bool,
}

impl Capabilities {
    /// Everything protocol 1 offers: what bitprobe's engine and the oracle give, and what a
    /// server that declares nothing is assumed to give.
    pub fn full() -> Capabilities {
        Capabilities {
            tokenize: true,
            forward: true,
            stages: Stage::ALL.to_vec(),
            generate: true,
            teacher_forced: true,
            decode_logits: true,
            decode_stages: true,
        }
    }

    /// Greedy generation only (token ids in, token ids out).
    pub fn generate_only() -> Capabilities {
        Capabilities {
            generate: true,
            ..Capabilities::default()
        }
    }
}

/// Result of one batched forward pass over a prompt.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Forward {
    pub n_vocab: u32,
    /// `n_tokens × n_vocab`, row-major: the logits at every position.
    #[serde(with = "crate::wire::blob")]
    pub logits: Vec<f32>,
    /// Captured stages, in evaluation order within each position.
    pub stages: Vec<StageTensor>,
}

impl Forward {
    pub fn n_tokens(&self) -> usize {
        self.logits.len() / (self.n_vocab.max(1) as usize)
    }

    /// The logits row of position `i`.
    pub fn logits_at(&self, i: usize) -> &[f32] {
        let n = self.n_vocab as usize;
        &self.logits[i * n..(i + 1) * n]
    }
}

/// How the next token is chosen.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Sampling {
    /// Highest logit; ties go to the lowest id.
    Greedy,
    /// Temperature → top-k → top-p → draw with a seeded RNG. Reproducible for one probe;
    /// two probes need not draw the same tokens.
    Seeded {
        #[serde(deserialize_with = "wire::float_or_nan")]
        temperature: f32,
        top_k: u32,
        #[serde(deserialize_with = "wire::float_or_nan")]
        top_p: f32,
        seed: u64,
    },
}

/// A generation request: prefill `prompt`, then decode up to `max_tokens` one at a time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    pub prompt: Vec<Token>,
    pub max_tokens: usize,
    /// Absent: greedy.
    #[serde(default = "greedy")]
    pub sampling: Sampling,
    /// Teacher forcing: when set, decode step `i` feeds `forced[i]` whatever was chosen, so
    /// two probes stay on the same sequence and their steps stay comparable.
    #[serde(default)]
    pub forced: Option<Vec<Token>>,
    /// Stages to capture at prompt positions and at each decode step.
    #[serde(default)]
    pub capture: Capture,
    /// Return each decode step's logits (and the prompt's, in `prefill`).
    #[serde(default)]
    pub keep_logits: bool,
    /// Stop when the end-of-generation token is chosen.
    #[serde(default)]
    pub stop_at_eos: bool,
}

impl GenerateRequest {
    pub fn greedy(prompt: Vec<Token>, max_tokens: usize) -> Self {
        GenerateRequest {
            prompt,
            max_tokens,
            sampling: Sampling::Greedy,
            forced: None,
            capture: Capture::none(),
            keep_logits: false,
            stop_at_eos: false,
        }
    }
}

/// One decode step: the token fed at `position` and what came out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecodeStep {
    pub position: u32,
    /// The token fed at this position (the previous choice, or the forced token).
    pub input: Token,
    /// The token chosen from this step's logits.
    pub chosen: Token,
    #[serde(default, with = "crate::wire::blob_opt")]
    pub logits: Option<Vec<f32>>,
    pub stages: Vec<StageTensor>,
}

/// Result of [`Probe::generate`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    /// The prompt pass: logits of every prompt position when `keep_logits`, else of the last
    /// one only; stages as captured. A generate-only probe may leave it out.
    #[serde(default)]
    pub prefill: Forward,
    /// The token chosen from the prompt's last position (the first generated token).
    pub first: Token,
    /// One entry per decode step after the first token.
    #[serde(default)]
    pub steps: Vec<DecodeStep>,
    /// All generated tokens in order (`first`, then each step's `chosen`).
    pub tokens: Vec<Token>,
    #[serde(default, deserialize_with = "wire::float_or_nan")]
    pub prefill_seconds: f64,
    #[serde(default, deserialize_with = "wire::float_or_nan")]
    pub decode_seconds: f64,
}

/// An inference engine under test. See the crate docs for why stages are part of the contract.
pub trait Probe {
    fn info(&self) -> &ModelInfo;

    /// Text → ids. `add_bos` adds exactly one BOS (never a second); `parse_special` makes
    /// `<|eot_id|>`-style text map to special ids instead of plain bytes.
    fn tokenize(&mut self, text: &str, add_bos: bool, parse_special: bool) -> Result<Vec<Token>>;

    /// Each id's piece as raw bytes (a piece may be a partial UTF-8 sequence). Special tokens
    /// render as their text.
    fn pieces(&mut self, ids: &[Token]) -> Result<Vec<Vec<u8>>>;

    /// Ids → text (the pieces concatenated, decoded lossily).
    fn detokenize(&mut self, ids: &[Token]) -> Result<String> {
        let bytes: Vec<u8> = self.pieces(ids)?.concat();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// One batched pass over `tokens` from an empty KV cache: logits for every position and
    /// the captured stages.
    fn forward(&mut self, tokens: &[Token], capture: &Capture) -> Result<Forward>;

    /// Prefill then decode token by token through the KV cache.
    fn generate(&mut self, request: &GenerateRequest) -> Result<Generation> {
        self.generate_with(request, &mut |_| {})
    }

    /// [`Probe::generate`], calling `on_token` with each token as soon as it is chosen (for
    /// streaming output). Implementations override one of the two.
    fn generate_with(
        &mut self,
        request: &GenerateRequest,
        on_token: &mut dyn FnMut(Token),
    ) -> Result<Generation> {
        let g = self.generate(request)?;
        g.tokens.iter().for_each(|&t| on_token(t));
        Ok(g)
    }
}

/// Index of the largest value; ties go to the lowest index. NaN never wins.
pub fn argmax(values: &[f32]) -> Token {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in values.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    best as Token
}

/// One implementation's half of [`Probe::generate_with`]: the prompt pass and one decode step.
/// [`drive_generation`] does the rest, so every probe means the same thing by "step".
pub trait Decoder {
    /// Runs the whole prompt from an empty KV cache; returns the prefill (logits rows as
    /// `GenerateRequest::keep_logits` asks, last row last) and the first chosen token.
    fn prefill(&mut self, req: &GenerateRequest) -> Result<(Forward, Token)>;
    /// Feeds `input` at `position` through the KV cache; returns the chosen token, this step's
    /// logits when `req.keep_logits`, and the captured stages.
    fn step(&mut self, req: &GenerateRequest, input: Token, position: u32) -> Result<Step>;
}

/// One decode step's outcome: the chosen token, its logits (when kept), the captured stages.
pub type Step = (Token, Option<Vec<f32>>, Vec<StageTensor>);

/// What [`drive_generation`] checks requests against.
pub struct Limits<'a> {
    pub n_vocab: u32,
    pub n_ctx: usize,
    /// Tokens that end generation when `stop_at_eos`.
    pub eos: &'a [Token],
}

impl Limits<'_> {
    /// `tokens` are valid ids and fit in the context from position `start`.
    pub fn check(&self, tokens: &[Token], start: usize) -> Result<()> {
        if let Some(bad) = tokens.iter().find(|&&t| t >= self.n_vocab) {
            return Err(Error::InvalidRequest(format!(
                "token id {bad} is outside the vocabulary (n_vocab {})",
                self.n_vocab
            )));
        }
        if start + tokens.len() > self.n_ctx {
            return Err(Error::InvalidRequest(format!(
                "{} tokens from position {start} exceed the context of {} (open with a larger n_ctx)",
                tokens.len(),
                self.n_ctx
            )));
        }
        Ok(())
    }
}

/// Validates a request, then prefills and decodes step by step with the same semantics for
/// every probe: `first` comes from the prompt's last logits; step `i` feeds `forced[i]` (or
/// the previous choice) at the next position; `tokens` = `first` + each step's choice;
/// `max_tokens` counts generated tokens; generation stops at EOS when asked.
pub fn drive_generation(
    d: &mut impl Decoder,
    req: &GenerateRequest,
    limits: Limits,
    on_token: &mut dyn FnMut(Token),
) -> Result<Generation> {
    if req.prompt.is_empty() {
        return Err(Error::InvalidRequest(
            "generate with an empty prompt".into(),
        ));
    }
    if let Sampling::Seeded {
        temperature, top_p, ..
    } = req.sampling
    {
        if !(temperature.is_finite() && temperature >= 0.0) {
            return Err(Error::InvalidRequest(format!(
                "temperature {temperature}: give a finite value ≥ 0"
            )));
        }
        if !(top_p.is_finite() && (0.0..=1.0).contains(&top_p)) {
            return Err(Error::InvalidRequest(format!(
                "top_p {top_p}: give a probability in [0, 1]"
            )));
        }
    }
    let steps_wanted = req.max_tokens.saturating_sub(1);
    limits.check(&req.prompt, 0)?;
    if let Some(f) = &req.forced {
        limits.check(f, req.prompt.len())?;
    }
    if req.prompt.len() + steps_wanted > limits.n_ctx {
        return Err(Error::InvalidRequest(format!(
            "prompt {} + {} decode steps exceed the context of {}",
            req.prompt.len(),
            steps_wanted,
            limits.n_ctx
        )));
    }
    let t0 = std::time::Instant::now();
    let (prefill, first) = d.prefill(req)?;
    if req.max_tokens > 0 {
        on_token(first);
    }
    let prefill_seconds = t0.elapsed().as_secs_f64();

    let t1 = std::time::Instant::now();
    let mut tokens = vec![first];
    let mut steps = Vec::new();
    let mut chosen = first;
    for (i, position) in (0..steps_wanted).zip(req.prompt.len() as u32..) {
        if req.max_tokens == 0 || (req.stop_at_eos && limits.eos.contains(&chosen)) {
            break;
        }
        let input = match &req.forced {
            Some(f) => match f.get(i) {
                Some(&t) => t,
                None => break,
            },
            None => chosen,
        };
        let (c, logits, stages) = d.step(req, input, position)?;
        chosen = c;
        on_token(chosen);
        tokens.push(chosen);
        steps.push(DecodeStep {
            position,
            input,
            chosen,
            logits,
            stages,
        });
    }
    let tokens = if req.max_tokens == 0 {
        Vec::new()
    } else {
        tokens
    };
    Ok(Generation {
        prefill,
        first,
        steps,
        tokens,
        prefill_seconds,
        decode_seconds: t1.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_ties_go_low_and_nan_never_wins() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 0.5, f32::NAN]), 1);
    }
}
