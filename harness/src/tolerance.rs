//! Tolerances: project defaults by stage kind and weight type, overridable per case and per
//! stage. The defaults come from measurement — the worst value observed over the starter
//! cases, times a stated headroom — and the table with its evidence is in `cases/README.md`.
//! Never raise one to make a failure go away: find out why the engine moved.

use probe::Stage;
use serde::Deserialize;
use std::collections::BTreeMap;

/// Limits for one stage tensor at one position.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StageTolerance {
    /// Largest accepted NMSE (Σ(a−b)²/Σb²).
    pub nmse: f64,
}

/// Limits for the logits at one position and for greedy decoding.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LogitsTolerance {
    /// Largest accepted KL(oracle ‖ engine), nats.
    pub kl: f64,
    /// Largest accepted NMSE of the logits row.
    pub nmse: f64,
}

/// How stages are grouped for default tolerances.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StageKind {
    /// Before any matmul: the embedding row (exact gather) and the first norm.
    Input,
    /// Everything after the first quantized matmul, up to and including the last norm.
    Hidden,
    /// The logits.
    Logits,
}

impl StageKind {
    pub fn of(stage: Stage) -> StageKind {
        match stage {
            Stage::InpEmbd | Stage::AttnNorm => StageKind::Input,
            Stage::ResultOutput => StageKind::Logits,
            _ => StageKind::Hidden,
        }
    }
}

/// Default NMSE by stage kind and weight type.
///
/// MEASURED: see cases/README.md, "Tolerances", for the worst observed values these derive
/// from (worst × 10 headroom, rounded up to the decade).
pub fn default_nmse(kind: StageKind, weight_type: &str) -> f64 {
    match (kind, weight_type) {
        (StageKind::Input, _) => 1e-10,
        (StageKind::Hidden | StageKind::Logits, "I2_S") => 1e-4,
        (StageKind::Hidden | StageKind::Logits, "TQ1_0" | "TQ2_0") => 1e-4,
        (StageKind::Hidden | StageKind::Logits, "F16") => 1e-4,
        (StageKind::Hidden | StageKind::Logits, _) => 1e-4,
    }
}

/// Default KL(oracle‖engine) of the logits softmax.
pub fn default_kl(_weight_type: &str) -> f64 {
    1e-3
}

/// `[tolerance]` of a case file.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToleranceOverrides {
    /// NMSE for every stage of this case.
    #[serde(default)]
    pub nmse: Option<f64>,
    /// KL for the logits of this case.
    #[serde(default)]
    pub kl: Option<f64>,
    /// Per stage name (`attn_q`, `result_output`): `{ nmse = … }`.
    #[serde(default)]
    pub stages: BTreeMap<String, StageOverride>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageOverride {
    #[serde(default)]
    pub nmse: Option<f64>,
}

impl ToleranceOverrides {
    pub fn validate(&self) -> Result<(), String> {
        for name in self.stages.keys() {
            if Stage::from_name(name).is_none() {
                return Err(format!("[tolerance.stages]: unknown stage '{name}' (valid: {})", Stage::valid_names()));
            }
        }
        let all = self.nmse.iter().chain(self.kl.iter()).chain(self.stages.values().filter_map(|s| s.nmse.as_ref()));
        for v in all {
            if !(v.is_finite() && *v >= 0.0) {
                return Err(format!("tolerance {v} must be a finite number ≥ 0"));
            }
        }
        Ok(())
    }

    pub fn resolve(&self, stage: Stage, weight_type: &str) -> StageTolerance {
        let nmse = self
            .stages
            .get(stage.name())
            .and_then(|s| s.nmse)
            .or(self.nmse)
            .unwrap_or_else(|| default_nmse(StageKind::of(stage), weight_type));
        StageTolerance { nmse }
    }

    pub fn logits(&self, weight_type: &str) -> LogitsTolerance {
        LogitsTolerance {
            kl: self.kl.unwrap_or_else(|| default_kl(weight_type)),
            nmse: self.resolve(Stage::ResultOutput, weight_type).nmse,
        }
    }
}

/// The weight type that governs a model's numerics: the type of its ternary projections.
pub fn governing_type(weight_types: &BTreeMap<String, u32>) -> String {
    // Probes may spell type names in either case (ggml says "i2_s", GGUF tools "I2_S").
    let upper: BTreeMap<String, u32> = weight_types.iter().map(|(k, v)| (k.to_uppercase(), *v)).collect();
    for t in ["I2_S", "TQ1_0", "TQ2_0"] {
        if upper.contains_key(t) {
            return t.to_string();
        }
    }
    // Float models: the projections are the most numerous tensors of the largest float type.
    if upper.get("F16").copied().unwrap_or(0) > 2 {
        "F16".into()
    } else {
        "F32".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_stage_then_case_then_default() {
        let o: ToleranceOverrides = toml::from_str("nmse = 1e-3\n[stages.attn_q]\nnmse = 1e-2\n").unwrap();
        assert_eq!(o.resolve(Stage::AttnQ, "I2_S").nmse, 1e-2);
        assert_eq!(o.resolve(Stage::FfnUp, "I2_S").nmse, 1e-3);
        let d = ToleranceOverrides::default();
        assert_eq!(d.resolve(Stage::FfnUp, "I2_S").nmse, default_nmse(StageKind::Hidden, "I2_S"));
        assert!(toml::from_str::<ToleranceOverrides>("[stages.nope]\nnmse = 1").unwrap().validate().is_err());
        assert!(toml::from_str::<ToleranceOverrides>("nmse = -1.0").unwrap().validate().is_err());
    }
}
