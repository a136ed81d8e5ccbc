//! Stage capture through bitnet.cpp's eval callback (`llama_context_params.cb_eval`).
//!
//! ggml's scheduler (`ggml_backend_sched_compute_splits` in `ggml-backend.cpp`) calls the
//! callback twice per graph node it may hand out: first with `ask = true` ("do you want this
//! tensor?"), and, if we said yes, again with `ask = false` once the graph has been computed
//! up to that node, when the data is ready to copy. Answering `false` to the second call
//! stops the computation, so we never do.
//!
//! Nodes are picked by the name `build_bitnet` gives them (`cb(cur, "ffn_up", il)` names the
//! tensor `ffn_up-<il>`; global ones are bare): [`Stage::callback_name`]. Two names need care:
//! - `Qcur-L` / `Kcur-L` are set twice, on the projection (2-D) and on the RoPE output
//!   (3-D, `ne = [head_dim, n_head, n_tokens]`); the stage is the RoPE output, told apart by
//!   its op (`GGML_OP_ROPE`), which also works for one-token batches where `ne[2] = 1`.
//! - when a model carries `*.scale` tensors, `llm_build_ffn` names the scaled up/gate
//!   products `ffn_up_s-L` / `ffn_gate_s-L`; those are the stages and win over the unscaled
//!   ones (forged models have no scales). For q/k/v, o and down the scale multiply happens
//!   before the name is set, so the named tensor already is the stage.
//!
//! - the FFN activation product (`act(gate) ⊙ up`, our `ffn_sub_out`) is `ffn_sub_out-L` in
//!   the 2024 tree's `build_bitnet` (which our patch also uses for arch `bitnet-b1.58`) and in
//!   the 2026 tree's `build_bitnet`, but `ffn_out-L` in the 2026 tree's `build_bitnet_158`
//!   (archs `bitnet-b1.58`, `bitnet-25`): see [`ffn_out_is_sub_out`].
//!
//! Other names (`norm-L`, `ffn_silu-L`, `ffn_relu-L`, `Qcur-L (reshaped)`, …) are declined.

use crate::ffi;
use probe::{Capture, Stage, StageTensor};
use std::ffi::CStr;

/// Model dimensions the callback checks stage shapes against, and how this bitnet.cpp names
/// the model's nodes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dims {
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    /// `ffn_out-L` is the FFN activation product (`ffn_sub_out`): [`ffn_out_is_sub_out`].
    pub ffn_out_is_sub_out: bool,
}

/// Whether this build's graph for `arch` names the FFN activation product `ffn_out-L`.
///
/// Only in the 2026 tree's `build_bitnet_158` (`cb(cur, "ffn_out", il)` right after
/// `llm_build_ffn(.., LLM_FFN_RELU_SQR, LLM_FFN_PAR, ..)`, which renames the product node
/// `ffn_gate_par-L`), used for archs `bitnet-b1.58` and `bitnet-25`. Nowhere else is it
/// that: neither tree's `build_bitnet` nor `llm_build_ffn` uses the name `ffn_out`, and the
/// 2024 tree has no `build_bitnet_158` (our patch sends `bitnet-b1.58` to `build_bitnet`);
/// in the other archs' graphs of both trees (`build_llama`, …) `ffn_out-L` is the FFN's
/// *output*, so the alias is limited to these two archs of the 2026 build.
pub(crate) fn ffn_out_is_sub_out(arch: &str) -> bool {
    cfg!(bitnet_flavour = "2026") && matches!(arch, "bitnet-b1.58" | "bitnet-25")
}

/// What the callback collects during one `llama_decode`. Lives in a `Mutex` behind the
/// context's `cb_eval_user_data` for the context's whole life.
pub(crate) struct Tap {
    dims: Dims,
    capture: Capture,
    /// Absolute position of each row of the batch being decoded.
    rows: Vec<u32>,
    /// Positions whose logits the batch requested, in batch order: the rows bitnet.cpp keeps
    /// in the last layer from `ffn_inp` on (`ggml_get_rows` on `inp_out_ids`).
    outputs: Vec<u32>,
    /// Positions whose `result_output` rows the caller gets back (the others are dropped,
    /// as the engine returns only the logits rows it was asked for).
    keep_output: Vec<u32>,
    found: Vec<Found>,
    error: Option<String>,
}

struct Found {
    /// Higher wins when one stage is named twice (`ffn_up_s` over `ffn_up`).
    priority: u8,
    tensor: StageTensor,
}

impl Tap {
    pub fn new(dims: Dims) -> Tap {
        Tap {
            dims,
            capture: Capture::none(),
            rows: Vec::new(),
            outputs: Vec::new(),
            keep_output: Vec::new(),
            found: Vec::new(),
            error: None,
        }
    }

    /// Arms the tap for one batch. With an empty `capture` every question is answered "no".
    pub fn arm(
        &mut self,
        capture: &Capture,
        rows: Vec<u32>,
        outputs: Vec<u32>,
        keep_output: Vec<u32>,
    ) {
        self.capture.clone_from(capture);
        self.rows = rows;
        self.outputs = outputs;
        self.keep_output = keep_output;
        self.found.clear();
        self.error = None;
    }

    /// Disarms the tap and returns what it collected, in evaluation order (stage by stage as
    /// `StageId::eval_key` orders them, positions ascending within a stage — the order the
    /// engine's `Tap` produces), or the first error met inside the callback.
    pub fn finish(&mut self) -> Result<Vec<StageTensor>, String> {
        self.capture = Capture::none();
        if let Some(e) = self.error.take() {
            self.found.clear();
            return Err(e);
        }
        let mut found = std::mem::take(&mut self.found);
        found.sort_by(|a, b| {
            let (x, y) = (&a.tensor, &b.tensor);
            (x.id().eval_key(), x.position, std::cmp::Reverse(a.priority)).cmp(&(
                y.id().eval_key(),
                y.position,
                std::cmp::Reverse(b.priority),
            ))
        });
        found.dedup_by(|later, kept| {
            later.tensor.id() == kept.tensor.id() && later.tensor.position == kept.tensor.position
        });
        Ok(found.into_iter().map(|f| f.tensor).collect())
    }

    /// The `ask = true` answer: whether this node is a stage the armed capture wants.
    pub fn wants(&self, t: &ffi::ggml_tensor) -> bool {
        if self.capture.is_empty() || self.error.is_some() {
            return false;
        }
        let Some((stage, layer, _)) = stage_of(t, self.dims.ffn_out_is_sub_out) else {
            return false;
        };
        // A node whose rows cannot be placed is taken anyway, so that `take` reports it.
        self.capture.wants_stage(stage, layer)
            && self.rows_of(t, stage).map_or(true, |rows| {
                rows.iter().any(|&p| self.capture.wants_position(p))
            })
    }

    /// The `ask = false` call: copies the node's rows at the wanted positions.
    pub fn take(&mut self, t: &ffi::ggml_tensor) {
        if let Err(e) = self.try_take(t) {
            self.error.get_or_insert(e);
        }
    }

    fn try_take(&mut self, t: &ffi::ggml_tensor) -> Result<(), String> {
        let Some((stage, layer, priority)) = stage_of(t, self.dims.ffn_out_is_sub_out) else {
            return Ok(());
        };
        let name = tensor_name(t);
        let positions = self.rows_of(t, stage)?.to_vec();
        let ne = t.ne.map(|n| n as usize);
        let shape = self
            .shape_of(stage, &ne)
            .map_err(|e| format!("eval callback: {name} {ne:?}: {e}"))?;
        let width: usize = shape.iter().product();
        let data = read_f32(t).map_err(|e| format!("eval callback: {name}: {e}"))?;
        debug_assert_eq!(data.len(), width * positions.len());
        for (row, &position) in data.chunks_exact(width).zip(&positions) {
            let keep = self.capture.wants_position(position)
                && (stage != Stage::ResultOutput || self.keep_output.contains(&position));
            if keep {
                let tensor = StageTensor {
                    stage,
                    layer,
                    position,
                    shape: shape.clone(),
                    data: row.to_vec(),
                };
                self.found.push(Found { priority, tensor });
            }
        }
        Ok(())
    }

    /// The absolute positions of the node's rows: all rows of the batch, or, in the last
    /// layer from `ffn_inp` on and in the head, the rows whose logits were requested.
    fn rows_of(&self, t: &ffi::ggml_tensor, stage: Stage) -> Result<&[u32], String> {
        let n = t.ne[token_dim(stage)] as usize;
        if n == self.rows.len() {
            Ok(&self.rows)
        } else if n == self.outputs.len() {
            Ok(&self.outputs)
        } else {
            Err(format!(
                "eval callback: {} has {n} rows; the batch has {} tokens and {} outputs",
                tensor_name(t),
                self.rows.len(),
                self.outputs.len()
            ))
        }
    }

    /// Shape of one position's slice, as the engine's `tap.take` calls give it; checks the
    /// node's layout against the model's dimensions.
    fn shape_of(&self, stage: Stage, ne: &[usize; 4]) -> Result<Vec<usize>, String> {
        let Dims {
            n_head,
            n_head_kv,
            head_dim,
            ..
        } = self.dims;
        let tok = token_dim(stage);
        if ne[tok + 1..].iter().any(|&n| n != 1) {
            return Err(format!("expected the tokens in dimension {tok}"));
        }
        let shape = match stage {
            // ne = [head_dim, n_head(_kv), n_tokens] → per position [n_head(_kv), head_dim]
            Stage::AttnQ | Stage::AttnK => {
                let heads = if stage == Stage::AttnQ {
                    n_head
                } else {
                    n_head_kv
                };
                if ne[0] != head_dim || ne[1] != heads {
                    return Err(format!("expected ne = [{head_dim}, {heads}, n_tokens]"));
                }
                vec![ne[1], ne[0]]
            }
            // ne = [n_head_kv·head_dim, n_tokens]
            Stage::AttnV if ne[0] != n_head_kv * head_dim => {
                return Err(format!(
                    "expected ne = [{}, n_tokens]",
                    n_head_kv * head_dim
                ));
            }
            // ne = [n_head·head_dim, n_tokens] (`ggml_cont_2d` of the merged heads in llm_build_kqv)
            Stage::KqvOut if ne[0] != n_head * head_dim => {
                return Err(format!("expected ne = [{}, n_tokens]", n_head * head_dim));
            }
            _ => vec![ne[0]],
        };
        Ok(shape)
    }
}

/// The dimension that indexes tokens: 2 for the 3-D RoPE outputs, 1 for everything else.
fn token_dim(stage: Stage) -> usize {
    match stage {
        Stage::AttnQ | Stage::AttnK => 2,
        _ => 1,
    }
}

fn tensor_name(t: &ffi::ggml_tensor) -> &str {
    // SAFETY: ggml keeps `name` NUL-terminated (ggml_set_name/ggml_format_name truncate to
    // fit); the array is 64 bytes inside the tensor we borrow.
    let name = unsafe { CStr::from_ptr(t.name.as_ptr()) };
    name.to_str().unwrap_or("")
}

/// (stage, layer, priority) of a node, from its name (and op, for Qcur/Kcur).
fn stage_of(t: &ffi::ggml_tensor, ffn_out_is_sub_out: bool) -> Option<(Stage, Option<u32>, u8)> {
    let name = tensor_name(t);
    let (stage, layer, priority) = parse_name(name, ffn_out_is_sub_out)?;
    if matches!(stage, Stage::AttnQ | Stage::AttnK) && t.op != ffi::GGML_OP_ROPE {
        return None; // the pre-RoPE projection
    }
    Some((stage, layer, priority))
}

/// `inp_embd` → (InpEmbd, None); `ffn_up-3` → (FfnUp, Some(3), 0); `ffn_up_s-3` → priority 1;
/// `ffn_out-3` → (FfnSubOut, Some(3), 0) when `ffn_out_is_sub_out`, else declined.
fn parse_name(name: &str, ffn_out_is_sub_out: bool) -> Option<(Stage, Option<u32>, u8)> {
    if let Some(s) = Stage::ALL
        .into_iter()
        .find(|s| !s.is_per_layer() && s.callback_name() == name)
    {
        return Some((s, None, 0));
    }
    let (base, layer) = name.rsplit_once('-')?;
    if layer.is_empty() || !layer.bytes().all(|b| b.is_ascii_digit()) {
        return None; // `Qcur-0 (reshaped)` and friends
    }
    let layer: u32 = layer.parse().ok()?;
    let (base, priority) = match base {
        "ffn_up_s" => ("ffn_up", 1),
        "ffn_gate_s" => ("ffn_gate", 1),
        "ffn_out" if ffn_out_is_sub_out => (Stage::FfnSubOut.callback_name(), 0),
        "ffn_out" => return None,
        other => (other, 0),
    };
    let stage = Stage::ALL
        .into_iter()
        .find(|s| s.is_per_layer() && s.callback_name() == base)?;
    Some((stage, Some(layer), priority))
}

/// The node's values as f32 in ggml's logical order (`ne[0]` fastest), whatever its strides.
fn read_f32(t: &ffi::ggml_tensor) -> Result<Vec<f32>, String> {
    let elt = match t.type_ {
        ffi::GGML_TYPE_F32 => 4,
        ffi::GGML_TYPE_F16 => 2,
        other => {
            // SAFETY: ggml_type_name returns a static NUL-terminated string for any type id.
            let name = unsafe { CStr::from_ptr(ffi::ggml_type_name(other)) };
            return Err(format!(
                "type {} (only f32 and f16 stages are read)",
                name.to_string_lossy()
            ));
        }
    };
    if t.buffer.is_null() || t.data.is_null() {
        return Err("no data (not allocated)".into());
    }
    // SAFETY: `t` is a live node the scheduler just computed; ggml_nbytes covers the span its
    // strides address (for a non-contiguous view too), which is what ggml_backend_tensor_get
    // accepts (offset 0, size nbytes), and `raw` has exactly that many bytes.
    let (raw, contiguous) = unsafe {
        let nbytes = ffi::ggml_nbytes(t);
        let mut raw = vec![0u8; nbytes];
        ffi::ggml_backend_tensor_get(t, raw.as_mut_ptr().cast(), 0, nbytes);
        (raw, ffi::ggml_is_contiguous(t))
    };
    let value = |off: usize| -> f32 {
        if elt == 4 {
            f32::from_le_bytes([raw[off], raw[off + 1], raw[off + 2], raw[off + 3]])
        } else {
            // SAFETY: a pure conversion function without preconditions.
            unsafe { ffi::ggml_fp16_to_fp32(u16::from_le_bytes([raw[off], raw[off + 1]])) }
        }
    };
    let ne = t.ne.map(|n| n as usize);
    let n: usize = ne.iter().product();
    if contiguous {
        return Ok((0..n).map(|i| value(i * elt)).collect());
    }
    // Non-contiguous view: walk the strides element by element.
    let nb = t.nb;
    let mut out = Vec::with_capacity(n);
    for i3 in 0..ne[3] {
        for i2 in 0..ne[2] {
            for i1 in 0..ne[1] {
                let base = i1 * nb[1] + i2 * nb[2] + i3 * nb[3];
                out.extend((0..ne[0]).map(|i0| value(base + i0 * nb[0])));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_stages() {
        assert_eq!(
            parse_name("inp_embd", false),
            Some((Stage::InpEmbd, None, 0))
        );
        assert_eq!(
            parse_name("result_output", false),
            Some((Stage::ResultOutput, None, 0))
        );
        assert_eq!(
            parse_name("Qcur-12", false),
            Some((Stage::AttnQ, Some(12), 0))
        );
        assert_eq!(
            parse_name("attn_o_out-0", false),
            Some((Stage::AttnOutput, Some(0), 0))
        );
        assert_eq!(
            parse_name("ffn_up_s-1", false),
            Some((Stage::FfnUp, Some(1), 1))
        );
        assert_eq!(
            parse_name("ffn_gate_s-1", false),
            Some((Stage::FfnGate, Some(1), 1))
        );
        for declined in [
            "Qcur-0 (reshaped)",
            "norm-0",
            "ffn_silu-1",
            "ffn_sqr(relu)-1",
            "kqv_merged_cont-0",
            "l_out",
            "inp_embd-0",
            "l_out-",
        ] {
            assert_eq!(parse_name(declined, false), None, "{declined}");
        }
        // The 2026 tree's build_bitnet_158 names the activation product `ffn_out-L`; elsewhere
        // `ffn_out` is no stage of ours (in other archs it is the FFN's output).
        assert_eq!(parse_name("ffn_out-3", false), None);
        assert_eq!(
            parse_name("ffn_out-3", true),
            Some((Stage::FfnSubOut, Some(3), 0))
        );
        assert_eq!(
            parse_name("ffn_sub_out-3", true),
            Some((Stage::FfnSubOut, Some(3), 0))
        );
        assert_eq!(parse_name("ffn_out", true), None);
        for s in Stage::ALL {
            let name = if s.is_per_layer() {
                format!("{}-7", s.callback_name())
            } else {
                s.callback_name().to_string()
            };
            assert_eq!(parse_name(&name, false).map(|p| p.0), Some(s), "{name}");
            assert_eq!(parse_name(&name, true).map(|p| p.0), Some(s), "{name}");
        }
    }

    #[test]
    fn ffn_out_alias_only_for_the_2026_b158_graph() {
        // The cfg build_common.rs sets agrees with the flavour it recorded.
        let want = env!("BITPROBE_BITNET_FLAVOUR") == "2026";
        assert_eq!(cfg!(bitnet_flavour = "2026"), want);
        assert_eq!(cfg!(bitnet_flavour = "2024"), !want);
        assert_eq!(ffn_out_is_sub_out("bitnet-b1.58"), want);
        assert_eq!(ffn_out_is_sub_out("bitnet-25"), want);
        assert!(!ffn_out_is_sub_out("bitnet"));
        assert!(!ffn_out_is_sub_out("llama"));
    }
}
