//! An implementation of `Probe` for bitnet.cpp, in-process, over `llama.h`.
//!
//! - `forward`: the KV cache cleared, ONE `llama_decode` of the whole prompt with logits
//!   requested at every position (causal attention as always: bitnet.cpp is never asked to
//!   switch it off), stages captured through the context's eval callback ([`crate::tap`]).
//!   The context is created with `n_batch = n_ubatch = n_ctx`, so a prompt is one graph.
//! - `generate`: the same prefill, then one `llama_decode` per token at the next position
//!   through the KV cache — the structure of the engine's `EngineProbe::generate_with`, step
//!   for step, so the harness can compare the two.
//! - Sampling: greedy is `probe::argmax` (ties to the lowest id). Seeded sampling is
//!   llama.cpp's own sampler chain, in the order `probe::Sampling` names: `temp` → `top_k` →
//!   `top_p` → `dist(seed)`; reproducible for a seed, not equal to the engine's draws. The
//!   seed is folded to the 32 bits `llama_sampler_init_dist` takes.

use crate::tap::{Dims, Tap};
use crate::{ffi, log_mark, log_since_mark, GgufHeader, Model};
use probe::{
    drive_generation, Capture, Decoder, Error, Forward, GenerateRequest, Generation, Limits,
    ModelInfo, OpenRequest, Probe, Result, Sampling, StageTensor, Step, Token,
};
use std::ffi::c_void;
use std::ptr::NonNull;
use std::sync::Mutex;

/// Context used when the caller asks for 0 (= default): the training context, capped.
const DEFAULT_N_CTX: usize = 4096;

/// bitnet.cpp behind the `Probe` trait. Field order matters: the context (which points into
/// the model) is dropped before the model.
pub struct OracleProbe {
    ctx: Context,
    model: Model,
    info: ModelInfo,
    n_ctx: usize,
    /// Tokens that end generation: EOS and, when the vocab has one, EOT (as the engine).
    eos_set: Vec<Token>,
}

impl OracleProbe {
    /// Loads `req.model` and creates a context of `req.n_ctx` tokens (0 = min(training
    /// context, 4096)) computing with `req.threads` threads (0 = all cores). The oracle takes
    /// no options: any key is an `InvalidRequest`.
    ///
    /// Threads: the results do not depend on the count (tests/probe_determinism.rs), but
    /// ggml's workers spin at a barrier after every op, so more threads than idle cores is
    /// ruinous: an 8-token prefill of tiny-i2s took 1 ms with 1 thread and 229 ms with 2 while
    /// a build held the other core. Run parallel trials with 1 thread each.
    pub fn open(req: &OpenRequest) -> Result<OracleProbe> {
        Self::open_with(req, true)
    }

    /// As [`OracleProbe::open`], choosing whether the eval callback is installed at all; only
    /// for measuring what the installed-but-idle callback costs.
    #[doc(hidden)]
    pub fn open_with(req: &OpenRequest, eval_callback: bool) -> Result<OracleProbe> {
        if let Some(key) = req.options.keys().next() {
            return Err(Error::InvalidRequest(format!(
                "oracle: unknown option '{key}' (the oracle takes no options)"
            )));
        }
        let model = Model::load(&req.model)?;
        let header = GgufHeader::open(&req.model)?;
        let arch = model.meta("general.architecture").unwrap_or_default();
        let key = |k: &str| format!("{arch}.{k}");
        // SAFETY: model is live.
        let (n_vocab, n_ctx_train, n_embd, n_layer) = unsafe {
            let m = model.as_ptr();
            (
                ffi::llama_n_vocab(m),
                ffi::llama_n_ctx_train(m),
                ffi::llama_n_embd(m),
                ffi::llama_n_layer(m),
            )
        };
        let (n_vocab, n_ctx_train, n_embd, n_layer) = (
            n_vocab as u32,
            n_ctx_train as u32,
            n_embd as u32,
            n_layer as u32,
        );
        let n_head = model.meta_u32(&key("attention.head_count")).unwrap_or(0);
        let n_head_kv = model
            .meta_u32(&key("attention.head_count_kv"))
            .unwrap_or(n_head);
        // llama.cpp (llm_load_hparams): head size = n_embd / n_head unless key_length says otherwise.
        let head_dim = model
            .meta_u32(&key("attention.key_length"))
            .unwrap_or(n_embd.checked_div(n_head).unwrap_or(0));
        let threads = if req.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            req.threads
        };
        let n_ctx = if req.n_ctx == 0 {
            (n_ctx_train as usize).min(DEFAULT_N_CTX)
        } else {
            req.n_ctx
        };
        let (bos, eos, eot) = model.special_tokens();
        let info = ModelInfo {
            arch: arch.clone(),
            name: model.meta("general.name").unwrap_or_default(),
            n_vocab,
            n_ctx_train,
            n_ctx: n_ctx as u32,
            n_embd,
            n_layer,
            n_head,
            n_head_kv,
            head_dim,
            n_ff: model.meta_u32(&key("feed_forward_length")).unwrap_or(0),
            // llama.cpp: rope_freq_base defaults to 10000 when absent.
            rope_freq_base: header.f32(&key("rope.freq_base")).unwrap_or(10000.0),
            rms_eps: header
                .f32(&key("attention.layer_norm_rms_epsilon"))
                .unwrap_or(0.0),
            bos,
            eos,
            weight_types: header.tensor_types(),
            implementation: crate::implementation(),
            threads: threads as u32,
            protocol: probe::PROTOCOL_VERSION,
            capabilities: Some(probe::Capabilities::full()),
        };
        let dims = Dims {
            n_head: n_head as usize,
            n_head_kv: n_head_kv as usize,
            head_dim: head_dim as usize,
            ffn_out_is_sub_out: crate::tap::ffn_out_is_sub_out(&arch),
        };
        let ctx = Context::new(&model, n_ctx, threads, dims, eval_callback).map_err(|message| {
            Error::Load {
                path: req.model.display().to_string(),
                message,
            }
        })?;
        let eos_set = eos
            .into_iter()
            .chain(eot.filter(|t| Some(*t) != eos))
            .collect();
        Ok(OracleProbe {
            ctx,
            model,
            info,
            n_ctx,
            eos_set,
        })
    }

    /// Refuses what bitnet.cpp would assert on or misread: ids outside the vocabulary, a
    /// batch running past the context.
    fn check_tokens(&self, tokens: &[Token], start: usize) -> Result<()> {
        Limits {
            n_vocab: self.info.n_vocab,
            n_ctx: self.n_ctx,
            eos: &[],
        }
        .check(tokens, start)
    }

    /// The logits rows of `rows` (batch indices) of the last decode, concatenated.
    fn logits_rows(&self, rows: impl IntoIterator<Item = usize>) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        for i in rows {
            out.extend_from_slice(self.ctx.logits(i, self.info.n_vocab as usize)?);
        }
        Ok(out)
    }
}

impl Probe for OracleProbe {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn tokenize(&mut self, text: &str, add_bos: bool, parse_special: bool) -> Result<Vec<Token>> {
        let ids = self.model.tokenize(text, add_bos, parse_special)?;
        Ok(ids.into_iter().map(|t| t as Token).collect())
    }

    fn pieces(&mut self, ids: &[Token]) -> Result<Vec<Vec<u8>>> {
        let nv = self.info.n_vocab;
        if let Some(bad) = ids.iter().find(|&&t| t >= nv) {
            return Err(Error::InvalidRequest(format!(
                "token id {bad} is outside the vocabulary (n_vocab {nv})"
            )));
        }
        ids.iter().map(|&id| self.model.piece(id as i32)).collect()
    }

    fn forward(&mut self, tokens: &[Token], capture: &Capture) -> Result<Forward> {
        if tokens.is_empty() {
            return Err(Error::InvalidRequest(
                "forward of an empty token list".into(),
            ));
        }
        self.check_tokens(tokens, 0)?;
        self.ctx.clear_kv();
        let all: Vec<u32> = (0..tokens.len() as u32).collect();
        let stages = self.ctx.decode(tokens, 0, &all, capture, &all)?;
        let logits = self.logits_rows(0..tokens.len())?;
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
        let eos = self.eos_set.clone();
        let limits = Limits {
            n_vocab: self.info.n_vocab,
            n_ctx: self.n_ctx,
            eos: &eos,
        };
        let sampler = Sampler::new(&req.sampling)?;
        drive_generation(
            &mut OracleDecoder {
                probe: self,
                sampler,
            },
            req,
            limits,
            on_token,
        )
    }
}

/// The oracle's half of generation: bitnet.cpp's decode and llama.cpp's sampler chain.
struct OracleDecoder<'a> {
    probe: &'a mut OracleProbe,
    sampler: Sampler,
}

impl Decoder for OracleDecoder<'_> {
    fn prefill(&mut self, req: &GenerateRequest) -> Result<(Forward, Token)> {
        let p = &mut *self.probe;
        p.ctx.clear_kv();
        // Logits for every prompt position when they are kept, else for the last one; when
        // stages are captured, for every position too, so that bitnet.cpp's last layer keeps
        // all rows (it computes only the output rows from ffn_inp on) and the stages cover
        // every prompt position as the engine's do. Only the kept logits rows, and the
        // `result_output` stage at those positions, are returned.
        let n = req.prompt.len();
        let last = n as u32 - 1;
        let kept: Vec<u32> = if req.keep_logits {
            (0..n as u32).collect()
        } else {
            vec![last]
        };
        let outputs: Vec<u32> = if req.keep_logits || !req.capture.is_empty() {
            (0..n as u32).collect()
        } else {
            vec![last]
        };
        let stages = p
            .ctx
            .decode(&req.prompt, 0, &outputs, &req.capture, &kept)?;
        let logits = p.logits_rows(kept.iter().map(|&x| x as usize))?;
        let nv = p.info.n_vocab as usize;
        let first = self
            .sampler
            .choose(&p.ctx, n - 1, &logits[logits.len() - nv..]);
        Ok((
            Forward {
                n_vocab: nv as u32,
                logits,
                stages,
            },
            first,
        ))
    }

    fn step(&mut self, req: &GenerateRequest, input: Token, position: u32) -> Result<Step> {
        let p = &mut *self.probe;
        let stages = p.ctx.decode(
            &[input],
            position as usize,
            &[position],
            &req.capture,
            &[position],
        )?;
        let logits = p.logits_rows([0])?;
        let chosen = self.sampler.choose(&p.ctx, 0, &logits);
        Ok((chosen, req.keep_logits.then_some(logits), stages))
    }
}

/// A `llama_context` with its eval-callback tap, freed on drop.
struct Context {
    ptr: NonNull<ffi::llama_context>,
    /// The callback's state; `cb_eval_user_data` points at it for the context's whole life
    /// (boxed so it never moves; dropped after the context, see `Drop`).
    tap: Box<Mutex<Tap>>,
}

// SAFETY: a llama_context is used from one thread at a time (every method takes &mut self or
// only reads the logits buffer); it has no thread affinity.
unsafe impl Send for Context {}

impl Context {
    fn new(
        model: &Model,
        n_ctx: usize,
        threads: usize,
        dims: Dims,
        eval_callback: bool,
    ) -> Result<Context, String> {
        let tap = Box::new(Mutex::new(Tap::new(dims)));
        let n = u32::try_from(n_ctx).map_err(|_| format!("n_ctx {n_ctx} is too large"))?;
        let threads =
            i32::try_from(threads).map_err(|_| format!("{threads} threads is too many"))?;
        // SAFETY: default params are plain data.
        let mut p = unsafe { ffi::llama_context_default_params() };
        p.n_ctx = n;
        // One graph per prompt: a prompt up to n_ctx is one batch and one ubatch.
        p.n_batch = n;
        p.n_ubatch = n;
        p.n_seq_max = 1;
        p.n_threads = threads;
        p.n_threads_batch = threads;
        p.logits_all = false;
        p.embeddings = false;
        p.flash_attn = false;
        p.no_perf = true;
        if eval_callback {
            p.cb_eval = Some(eval_callback_fn);
            p.cb_eval_user_data = (&*tap as *const Mutex<Tap>).cast_mut().cast::<c_void>();
        }
        log_mark();
        // SAFETY: model is live and outlives the context (OracleProbe drops ctx first); the
        // user-data pointer stays valid while the context lives (the box is dropped after it).
        let ptr = unsafe { ffi::llama_new_context_with_model(model.as_ptr().cast_mut(), p) };
        let ptr = NonNull::new(ptr)
            .ok_or_else(|| format!("cannot create a context: {}", log_since_mark()))?;
        Ok(Context { ptr, tap })
    }

    fn clear_kv(&mut self) {
        // SAFETY: live context.
        unsafe { ffi::llama_kv_cache_clear(self.ptr.as_ptr()) }
    }

    /// One `llama_decode` of `tokens` at positions `pos0..`, sequence 0, with logits at the
    /// positions `outputs` (ascending); returns the stages `capture` selects, `result_output`
    /// only at the positions `keep_output`.
    fn decode(
        &mut self,
        tokens: &[Token],
        pos0: usize,
        outputs: &[u32],
        capture: &Capture,
        keep_output: &[u32],
    ) -> Result<Vec<StageTensor>> {
        let n = tokens.len();
        let rows: Vec<u32> = (pos0 as u32..(pos0 + n) as u32).collect();
        let mut token: Vec<ffi::llama_token> =
            tokens.iter().map(|&t| t as ffi::llama_token).collect();
        let mut pos: Vec<ffi::llama_pos> = rows.iter().map(|&p| p as ffi::llama_pos).collect();
        let mut n_seq_id = vec![1i32; n];
        let mut seq0: ffi::llama_seq_id = 0;
        let mut seq_id: Vec<*mut ffi::llama_seq_id> = vec![&mut seq0; n];
        let mut logits: Vec<i8> = rows.iter().map(|p| i8::from(outputs.contains(p))).collect();
        let batch = ffi::llama_batch {
            n_tokens: n as i32,
            token: token.as_mut_ptr(),
            embd: std::ptr::null_mut(),
            pos: pos.as_mut_ptr(),
            n_seq_id: n_seq_id.as_mut_ptr(),
            seq_id: seq_id.as_mut_ptr(),
            logits: logits.as_mut_ptr(),
            all_pos_0: 0,
            all_pos_1: 0,
            all_seq_id: 0,
        };
        self.tap_lock()
            .arm(capture, rows, outputs.to_vec(), keep_output.to_vec());
        log_mark();
        // SAFETY: every array the batch points to has n entries and outlives the call; the
        // caller checked ids < n_vocab and pos0 + n <= n_ctx = n_batch, which llama_decode
        // would otherwise assert on.
        let ret = unsafe { ffi::llama_decode(self.ptr.as_ptr(), batch) };
        let stages = self.tap_lock().finish();
        if ret != 0 {
            return Err(Error::Backend(format!(
                "llama_decode returned {ret}: {}",
                log_since_mark()
            )));
        }
        stages.map_err(Error::Backend)
    }

    fn tap_lock(&self) -> std::sync::MutexGuard<'_, Tap> {
        self.tap.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The logits of batch row `i` of the last decode (which must have requested them).
    fn logits(&self, i: usize, n_vocab: usize) -> Result<&[f32]> {
        // SAFETY: live context; llama_get_logits_ith checks `i` and returns null (logging why,
        // after the decode's log mark) instead of throwing.
        let p = unsafe { ffi::llama_get_logits_ith(self.ptr.as_ptr(), i as i32) };
        if p.is_null() {
            return Err(Error::Backend(format!(
                "no logits for batch row {i}: {}",
                log_since_mark()
            )));
        }
        // SAFETY: a non-null row holds n_vocab floats inside the context's output buffer,
        // valid until the next decode, which needs &mut self.
        Ok(unsafe { std::slice::from_raw_parts(p, n_vocab) })
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: we own the context; the tap box is dropped after this returns.
        unsafe { ffi::llama_free(self.ptr.as_ptr()) }
    }
}

/// The eval callback (`ggml_backend_sched_eval_callback`): see [`crate::tap`].
unsafe extern "C" fn eval_callback_fn(
    t: *mut ffi::ggml_tensor,
    ask: bool,
    user: *mut c_void,
) -> bool {
    if t.is_null() || user.is_null() {
        return !ask;
    }
    // SAFETY: `user` is the Mutex<Tap> Context::new registered, alive while the context is;
    // `t` is a graph node the scheduler hands us for the duration of this call.
    let (tap, t) = unsafe { (&*(user as *const Mutex<Tap>), &*t) };
    // A panic must not unwind into C++: catch it and report it through the tap.
    let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut tap = tap.lock().unwrap_or_else(|p| p.into_inner());
        if ask {
            tap.wants(t)
        } else {
            tap.take(t);
            true
        }
    }));
    // After `ask = false`, false would stop the graph computation: always go on.
    answer.unwrap_or(!ask)
}

/// Chooses tokens: `probe::argmax` for greedy (and temperature ≤ 0, as the engine), else
/// llama.cpp's sampler chain.
struct Sampler {
    chain: Option<NonNull<ffi::llama_sampler>>,
}

impl Sampler {
    fn new(sampling: &Sampling) -> Result<Sampler> {
        let Sampling::Seeded {
            temperature,
            top_k,
            top_p,
            seed,
        } = *sampling
        else {
            return Ok(Sampler { chain: None });
        };
        if temperature <= 0.0 {
            return Ok(Sampler { chain: None });
        }
        // llama.cpp's LLAMA_DEFAULT_SEED (u32::MAX) means "random": never pass it.
        let folded = (seed ^ (seed >> 32)) as u32;
        let seed32 = if folded == u32::MAX {
            u32::MAX - 1
        } else {
            folded
        };
        let top_k = i32::try_from(top_k).unwrap_or(i32::MAX);
        // SAFETY: the chain takes ownership of each sampler added to it; freed in Drop.
        let chain = unsafe {
            let chain = ffi::llama_sampler_chain_init(ffi::llama_sampler_chain_default_params());
            ffi::llama_sampler_chain_add(chain, ffi::llama_sampler_init_temp(temperature));
            ffi::llama_sampler_chain_add(chain, ffi::llama_sampler_init_top_k(top_k));
            ffi::llama_sampler_chain_add(chain, ffi::llama_sampler_init_top_p(top_p, 1));
            ffi::llama_sampler_chain_add(chain, ffi::llama_sampler_init_dist(seed32));
            chain
        };
        let chain = NonNull::new(chain)
            .ok_or_else(|| Error::Backend("llama_sampler_chain_init failed".into()))?;
        Ok(Sampler { chain: Some(chain) })
    }

    /// The token for batch row `row` of the last decode, whose logits are `logits`.
    fn choose(&mut self, ctx: &Context, row: usize, logits: &[f32]) -> Token {
        match self.chain {
            None => probe::argmax(logits),
            // SAFETY: live chain and context; `row` requested logits in the last decode.
            Some(chain) => unsafe {
                ffi::llama_sampler_sample(chain.as_ptr(), ctx.ptr.as_ptr(), row as i32) as Token
            },
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        if let Some(chain) = self.chain {
            // SAFETY: we own the chain (and through it its samplers).
            unsafe { ffi::llama_sampler_free(chain.as_ptr()) }
        }
    }
}
