//! The canonical stage vocabulary: one name per intermediate tensor of a BitNet forward pass,
//! in the order bitnet.cpp's `build_bitnet` evaluates them (`../shared/BITNET_NOTES.md` §1).
//!
//! Names follow the GGUF tensor names where a stage is the output of a weight (`attn_q` is
//! `x · blk.N.attn_q.weight`) and bitnet.cpp's eval-callback names otherwise (`kqv_out`,
//! `ffn_inp`, `l_out`). A stage of layer 3 prints as `blk.3.attn_q`; global stages print bare
//! (`inp_embd`, `result_norm`, `result_output`). Trial names, report rows and trace files all
//! use these strings.

use serde::{Deserialize, Serialize};
use std::fmt;

/// One intermediate tensor of the forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Token embedding lookup (`token_embd.weight` rows) — callback `inp_embd`.
    InpEmbd,
    /// RMSNorm(x)·attn_norm — callback `attn_norm-L`.
    AttnNorm,
    /// Q after RoPE, `[n_head, head_dim]` per position — callback `Qcur-L` (the 3-D one).
    AttnQ,
    /// K after RoPE, `[n_head_kv, head_dim]` — callback `Kcur-L` (the 3-D one).
    AttnK,
    /// V, `[n_head_kv · head_dim]` — callback `Vcur-L`.
    AttnV,
    /// Attention output before the sub-norm, `[n_head · head_dim]` — callback `kqv_out-L`.
    KqvOut,
    /// RMSNorm(kqv_out)·attn_sub_norm — callback `attn_sub_norm-L`.
    AttnSubNorm,
    /// `attn_sub_norm · blk.N.attn_output.weight` — callback `attn_o_out-L`.
    AttnOutput,
    /// Residual: attn_output + layer input — callback `ffn_inp-L`.
    FfnInp,
    /// RMSNorm(ffn_inp)·ffn_norm — callback `ffn_norm-L`.
    FfnNorm,
    /// Gate projection before the activation — callback `ffn_gate-L`.
    FfnGate,
    /// Up projection — callback `ffn_up-L`.
    FfnUp,
    /// act(gate) ⊙ up (act = SiLU for `bitnet`, ReLU² for `bitnet-b1.58`) — callback `ffn_sub_out-L`.
    FfnSubOut,
    /// RMSNorm(ffn_sub_out)·ffn_sub_norm — callback `ffn_sub_norm-L`.
    FfnSubNorm,
    /// `ffn_sub_norm · blk.N.ffn_down.weight` — callback `ffn_down-L`.
    FfnDown,
    /// Residual: ffn_down + ffn_inp, the layer output — callback `l_out-L`.
    LOut,
    /// RMSNorm(last l_out)·output_norm — callback `result_norm`.
    ResultNorm,
    /// Logits — callback `result_output`.
    ResultOutput,
}

impl Stage {
    /// Every stage in evaluation order (per-layer stages once; they repeat per layer).
    pub const ALL: [Stage; 18] = [
        Stage::InpEmbd,
        Stage::AttnNorm,
        Stage::AttnQ,
        Stage::AttnK,
        Stage::AttnV,
        Stage::KqvOut,
        Stage::AttnSubNorm,
        Stage::AttnOutput,
        Stage::FfnInp,
        Stage::FfnNorm,
        Stage::FfnGate,
        Stage::FfnUp,
        Stage::FfnSubOut,
        Stage::FfnSubNorm,
        Stage::FfnDown,
        Stage::LOut,
        Stage::ResultNorm,
        Stage::ResultOutput,
    ];

    /// The canonical name (`attn_q`, `ffn_sub_norm`, …).
    pub fn name(self) -> &'static str {
        match self {
            Stage::InpEmbd => "inp_embd",
            Stage::AttnNorm => "attn_norm",
            Stage::AttnQ => "attn_q",
            Stage::AttnK => "attn_k",
            Stage::AttnV => "attn_v",
            Stage::KqvOut => "kqv_out",
            Stage::AttnSubNorm => "attn_sub_norm",
            Stage::AttnOutput => "attn_output",
            Stage::FfnInp => "ffn_inp",
            Stage::FfnNorm => "ffn_norm",
            Stage::FfnGate => "ffn_gate",
            Stage::FfnUp => "ffn_up",
            Stage::FfnSubOut => "ffn_sub_out",
            Stage::FfnSubNorm => "ffn_sub_norm",
            Stage::FfnDown => "ffn_down",
            Stage::LOut => "l_out",
            Stage::ResultNorm => "result_norm",
            Stage::ResultOutput => "result_output",
        }
    }

    /// The name bitnet.cpp's eval callback gives this stage's tensor (without the `-L` suffix).
    /// `attn_q`/`attn_k` are emitted twice under `Qcur`/`Kcur`; the post-RoPE one is 3-D.
    pub fn callback_name(self) -> &'static str {
        match self {
            Stage::AttnQ => "Qcur",
            Stage::AttnK => "Kcur",
            Stage::AttnV => "Vcur",
            Stage::AttnOutput => "attn_o_out",
            other => other.name(),
        }
    }

    /// Parses a canonical name (`attn_q`) — the inverse of [`Stage::name`].
    pub fn from_name(name: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Whether the stage exists once per layer (`blk.N.*`) rather than once per pass.
    pub fn is_per_layer(self) -> bool {
        !matches!(
            self,
            Stage::InpEmbd | Stage::ResultNorm | Stage::ResultOutput
        )
    }

    /// Position in evaluation order within one layer (or of the global stages).
    pub fn order(self) -> usize {
        Stage::ALL
            .iter()
            .position(|s| *s == self)
            .unwrap_or(usize::MAX)
    }

    /// The comma-separated list of valid names, for error messages.
    pub fn valid_names() -> String {
        Stage::ALL
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A stage at a layer: `blk.3.attn_q`, or a global stage (`result_norm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StageId {
    pub stage: Stage,
    /// `None` for the global stages.
    pub layer: Option<u32>,
}

impl StageId {
    pub fn new(stage: Stage, layer: Option<u32>) -> Self {
        StageId { stage, layer }
    }

    /// Sort key in evaluation order: embedding, then each layer's stages, then the head.
    pub fn eval_key(&self) -> (u32, usize) {
        match (self.stage, self.layer) {
            (Stage::InpEmbd, _) => (0, 0),
            (Stage::ResultNorm | Stage::ResultOutput, _) => (u32::MAX, self.stage.order()),
            (s, Some(l)) => (l + 1, s.order()),
            (s, None) => (u32::MAX - 1, s.order()),
        }
    }
}

impl fmt::Display for StageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.layer {
            Some(l) => write!(f, "blk.{l}.{}", self.stage.name()),
            None => f.write_str(self.stage.name()),
        }
    }
}

impl std::str::FromStr for StageId {
    type Err = String;
    /// Parses `blk.3.attn_q` or `result_norm`.
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(rest) = s.strip_prefix("blk.") {
            let (layer, name) = rest
                .split_once('.')
                .ok_or_else(|| format!("'{s}': expected blk.N.<stage>"))?;
            let layer: u32 = layer
                .parse()
                .map_err(|_| format!("'{s}': layer '{layer}' is not a number"))?;
            let stage = Stage::from_name(name).ok_or_else(|| {
                format!(
                    "'{s}': unknown stage '{name}' (valid: {})",
                    Stage::valid_names()
                )
            })?;
            if !stage.is_per_layer() {
                return Err(format!(
                    "'{s}': stage '{name}' is not per-layer; write it bare"
                ));
            }
            Ok(StageId::new(stage, Some(layer)))
        } else {
            let stage = Stage::from_name(s)
                .ok_or_else(|| format!("unknown stage '{s}' (valid: {})", Stage::valid_names()))?;
            if stage.is_per_layer() {
                return Err(format!("'{s}' is per-layer: write blk.N.{s}"));
            }
            Ok(StageId::new(stage, None))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        for s in Stage::ALL {
            assert_eq!(Stage::from_name(s.name()), Some(s));
        }
        let mut names: Vec<_> = Stage::ALL.iter().map(|s| s.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Stage::ALL.len());
    }

    #[test]
    fn stage_id_display_and_parse() {
        let id = StageId::new(Stage::AttnQ, Some(3));
        assert_eq!(id.to_string(), "blk.3.attn_q");
        assert_eq!("blk.3.attn_q".parse::<StageId>().unwrap(), id);
        assert_eq!(
            "result_norm".parse::<StageId>().unwrap(),
            StageId::new(Stage::ResultNorm, None)
        );
        assert!("blk.x.attn_q".parse::<StageId>().is_err());
        assert!("blk.1.nonsense"
            .parse::<StageId>()
            .unwrap_err()
            .contains("valid:"));
        assert!("attn_q".parse::<StageId>().is_err());
    }

    #[test]
    fn eval_order_puts_layers_between_embedding_and_head() {
        let mut ids = [
            StageId::new(Stage::ResultOutput, None),
            StageId::new(Stage::LOut, Some(1)),
            StageId::new(Stage::AttnNorm, Some(1)),
            StageId::new(Stage::FfnDown, Some(0)),
            StageId::new(Stage::InpEmbd, None),
            StageId::new(Stage::ResultNorm, None),
        ];
        ids.sort_by_key(|i| i.eval_key());
        let names: Vec<_> = ids.iter().map(|i| i.to_string()).collect();
        assert_eq!(
            names,
            [
                "inp_embd",
                "blk.0.ffn_down",
                "blk.1.attn_norm",
                "blk.1.l_out",
                "result_norm",
                "result_output"
            ]
        );
    }
}
