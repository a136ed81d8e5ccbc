//! An implementation of `Probe` for bitprobe's own Rust engine, in-process.

use crate::faults::Fault;
use crate::forward::{Logits, Session, Tap};
use crate::gguf::GgufFile;
use crate::kernels::workers::kept_awake;
use crate::model::{Arch, Model};
use crate::sampling::Sampler;
use crate::tokenizer::{truth::Truth, Tokenizer, TokenizerError};
use probe::{
    drive_generation, Capture, Decoder, Error, Forward, GenerateRequest, Generation, Limits,
    ModelInfo, OpenRequest, Probe, Result, Step, Token,
};

/// Context used when the caller asks for 0 (= default): the training context, capped.
const DEFAULT_N_CTX: usize = 4096;

pub struct EngineProbe {
    model: Model,
    session: Session,
    tokenizer: TokenizerSet,
    info: ModelInfo,
    pool: rayon::ThreadPool,
    fault: Fault,
}

impl EngineProbe {
    /// Opens a model. Options: `tokenizer` = `gguf` (default: the GGUF vocab as llama.cpp
    /// reads it), `truth` (the trained Llama-3 tokenizer) or a `tokenizer.json` path;
    /// `fault` = a gallery fault name (builds with the `faults` feature).
    pub fn open(req: &OpenRequest) -> Result<EngineProbe> {
        let path = req.model.display().to_string();
        let load = |message: String| Error::Load {
            path: path.clone(),
            message,
        };
        let mut fault = Fault::None;
        let mut tokenizer_mode = "gguf".to_string();
        for (k, v) in &req.options {
            match k.as_str() {
                "tokenizer" => tokenizer_mode = v.clone(),
                "fault" => fault = Fault::from_name(v).map_err(Error::InvalidRequest)?,
                other => {
                    return Err(Error::InvalidRequest(format!(
                        "engine: unknown option '{other}' (known: tokenizer, fault)"
                    )))
                }
            }
        }
        let model = Model::load(&req.model).map_err(|e| load(e.to_string()))?;
        let tokenizer =
            TokenizerSet::open(&model.file, &tokenizer_mode).map_err(|e| load(e.to_string()))?;
        let threads = if req.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            req.threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| Error::Backend(format!("cannot start {threads} threads: {e}")))?;
        let n_ctx = if req.n_ctx == 0 {
            model.hp.n_ctx_train.min(DEFAULT_N_CTX)
        } else {
            req.n_ctx
        };
        let mut session = Session::new(&model, n_ctx);
        session.fault = fault;
        let hp = &model.hp;
        let info = ModelInfo {
            arch: hp.arch_name.clone(),
            name: hp.name.clone(),
            n_vocab: hp.n_vocab as u32,
            n_ctx_train: hp.n_ctx_train as u32,
            n_ctx: n_ctx as u32,
            n_embd: hp.n_embd as u32,
            n_layer: hp.n_layer as u32,
            n_head: hp.n_head as u32,
            n_head_kv: hp.n_head_kv as u32,
            head_dim: hp.head_dim as u32,
            n_ff: hp.n_ff as u32,
            rope_freq_base: hp.rope_freq_base,
            rms_eps: hp.rms_eps,
            bos: tokenizer.bos(),
            eos: tokenizer.eos(),
            weight_types: model.weight_types(),
            implementation: format!(
                "bitprobe engine {} ({})",
                env!("CARGO_PKG_VERSION"),
                crate::kernels::Simd::current().name()
            ),
            threads: threads as u32,
            protocol: probe::PROTOCOL_VERSION,
            capabilities: Some(probe::Capabilities::full()),
        };
        let _ = Arch::Bitnet;
        Ok(EngineProbe {
            model,
            session,
            tokenizer,
            info,
            pool,
            fault,
        })
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    fn check_tokens(&self, tokens: &[Token], start: usize) -> Result<()> {
        Limits {
            n_vocab: self.info.n_vocab,
            n_ctx: self.session.n_ctx,
            eos: &[],
        }
        .check(tokens, start)
    }

    /// One batch at the session's current position; returns the logits rows and the stages.
    fn run(
        &mut self,
        tokens: &[Token],
        logits: Logits,
        capture: &Capture,
    ) -> (Vec<f32>, Vec<probe::StageTensor>) {
        let (model, session) = (&self.model, &mut self.session);
        let mut pass = || {
            let mut tap = Tap::new(capture, session.n_past);
            let l = session.forward(model, tokens, logits, &mut tap).to_vec();
            (l, tap.out)
        };
        // Other threads polling between matmuls pays at decode only (`kernels::workers`).
        self.pool.install(|| {
            if tokens.len() == 1 {
                kept_awake(pass)
            } else {
                pass()
            }
        })
    }
}

impl Probe for EngineProbe {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn tokenize(&mut self, text: &str, add_bos: bool, parse_special: bool) -> Result<Vec<Token>> {
        let mut ids = self
            .tokenizer
            .encode(text, add_bos, parse_special)
            .map_err(|e| Error::Backend(e.to_string()))?;
        if add_bos && self.fault.double_bos() {
            if let Some(b) = self.tokenizer.bos() {
                ids.insert(0, b);
            }
        }
        Ok(ids)
    }

    fn pieces(&mut self, ids: &[Token]) -> Result<Vec<Vec<u8>>> {
        self.tokenizer
            .pieces(ids)
            .map_err(|e| Error::InvalidRequest(e.to_string()))
    }

    fn forward(&mut self, tokens: &[Token], capture: &Capture) -> Result<Forward> {
        if tokens.is_empty() {
            return Err(Error::InvalidRequest(
                "forward of an empty token list".into(),
            ));
        }
        self.check_tokens(tokens, 0)?;
        self.session.reset();
        let (logits, stages) = self.run(tokens, Logits::All, capture);
        Ok(Forward {
            n_vocab: self.info.n_vocab,
            logits,
            stages,
        })
    }

    fn generate_with(
        &mut self,
        req: &GenerateRequest,
        on_token: &mut dyn FnMut(Token),
    ) -> Result<Generation> {
        let eos = self.tokenizer.eos_set();
        let limits = Limits {
            n_vocab: self.info.n_vocab,
            n_ctx: self.session.n_ctx,
            eos: &eos,
        };
        let mut d = EngineDecoder {
            sampler: Sampler::new(&req.sampling),
            probe: self,
        };
        drive_generation(&mut d, req, limits, on_token)
    }
}

/// The engine's half of generation: its forward pass and its sampler.
struct EngineDecoder<'a> {
    probe: &'a mut EngineProbe,
    sampler: Sampler,
}

impl Decoder for EngineDecoder<'_> {
    fn prefill(&mut self, req: &GenerateRequest) -> Result<(Forward, Token)> {
        self.probe.session.reset();
        let mode = if req.keep_logits {
            Logits::All
        } else {
            Logits::Last
        };
        let (logits, stages) = self.probe.run(&req.prompt, mode, &req.capture);
        let nv = self.probe.info.n_vocab as usize;
        let first = self.sampler.choose(&logits[logits.len() - nv..]);
        Ok((
            Forward {
                n_vocab: nv as u32,
                logits,
                stages,
            },
            first,
        ))
    }

    fn step(&mut self, req: &GenerateRequest, input: Token, _position: u32) -> Result<Step> {
        // Sample straight from the session's logits buffer: nothing is allocated per token
        // unless the caller keeps logits or captures stages.
        let p = &mut *self.probe;
        let (model, session, sampler, keep) =
            (&p.model, &mut p.session, &mut self.sampler, req.keep_logits);
        Ok(p.pool.install(|| {
            kept_awake(|| {
                let mut tap = Tap::new(&req.capture, session.n_past);
                let l = session.forward(model, &[input], Logits::Last, &mut tap);
                (sampler.choose(l), keep.then(|| l.to_vec()), tap.out)
            })
        }))
    }
}

/// The engine's tokenizer, by mode: `gguf` (the file's vocab as llama.cpp reads it, so
/// engine-vs-oracle comparisons are like for like), `truth` (the trained Llama-3 tokenizer,
/// tiktoken over the pinned ranks) or a `tokenizer.json` path.
// One per open probe, so the variants' size difference costs nothing worth boxing.
#[allow(clippy::large_enum_variant)]
enum TokenizerSet {
    Gguf(Tokenizer),
    Truth(Truth),
}

impl TokenizerSet {
    fn open(file: &GgufFile, mode: &str) -> std::result::Result<TokenizerSet, TokenizerError> {
        match mode {
            "gguf" => Ok(TokenizerSet::Gguf(Tokenizer::from_gguf(file)?)),
            "truth" => {
                let path =
                    crate::forge::vocab::assets_dir().join(crate::forge::vocab::LLAMA3_ASSET);
                let t = Truth::from_ranks_file(&path)?;
                let n_model = file
                    .get_arr("tokenizer.ggml.tokens")
                    .map(|a| a.len())
                    .unwrap_or(0);
                if n_model != t.n_vocab() {
                    return Err(TokenizerError::Build(format!(
                        "tokenizer mode 'truth' is the Llama-3 tokenizer ({} tokens) but this model's vocab has {n_model}",
                        t.n_vocab()
                    )));
                }
                Ok(TokenizerSet::Truth(t))
            }
            path => Ok(TokenizerSet::Gguf(Tokenizer::from_file(path)?)),
        }
    }

    fn encode(
        &self,
        text: &str,
        add_bos: bool,
        parse_special: bool,
    ) -> std::result::Result<Vec<Token>, TokenizerError> {
        match self {
            TokenizerSet::Gguf(t) => t.encode(text, add_bos, parse_special),
            TokenizerSet::Truth(t) => t.encode(text, add_bos, parse_special),
        }
    }

    fn pieces(&self, ids: &[Token]) -> std::result::Result<Vec<Vec<u8>>, TokenizerError> {
        Ok(match self {
            TokenizerSet::Gguf(t) => t.pieces(ids),
            TokenizerSet::Truth(t) => t.pieces(ids),
        })
    }

    fn bos(&self) -> Option<Token> {
        match self {
            TokenizerSet::Gguf(t) => t.bos(),
            TokenizerSet::Truth(t) => Some(t.bos()),
        }
    }

    fn eos(&self) -> Option<Token> {
        match self {
            TokenizerSet::Gguf(t) => t.eos(),
            TokenizerSet::Truth(_) => Some(crate::tokenizer::truth::EOS),
        }
    }

    /// Tokens that end generation: EOS and, when the vocab has it, `<|eot_id|>`.
    fn eos_set(&self) -> Vec<Token> {
        match self {
            TokenizerSet::Gguf(t) => t.eos().into_iter().chain(t.eot()).collect(),
            TokenizerSet::Truth(_) => {
                vec![crate::tokenizer::truth::EOS, crate::tokenizer::truth::EOT]
            }
        }
    }
}
