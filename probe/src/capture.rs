//! Which stage tensors a forward pass should keep.
//!
//! A 2B-shaped pass over 256 tokens produces ~30 layers × 16 stages × 256 positions × up to
//! 6912 floats: gigabytes. A `Capture` narrows that to the stages, layers and positions a
//! comparison needs. The default captures nothing (logits only).

use crate::stage::Stage;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Capture {
    /// Stages to keep; empty = none.
    #[serde(default)]
    pub stages: Vec<Stage>,
    /// Layers to keep for per-layer stages; `None` = all layers.
    #[serde(default)]
    pub layers: Option<Vec<u32>>,
    /// Absolute positions to keep; `None` = all positions.
    #[serde(default)]
    pub positions: Option<Vec<u32>>,
}

impl Capture {
    /// Capture nothing: only logits come back.
    pub fn none() -> Self {
        Capture::default()
    }

    /// Every stage, every layer, every position.
    pub fn all() -> Self {
        Capture {
            stages: Stage::ALL.to_vec(),
            layers: None,
            positions: None,
        }
    }

    pub fn stages(stages: impl IntoIterator<Item = Stage>) -> Self {
        Capture {
            stages: stages.into_iter().collect(),
            layers: None,
            positions: None,
        }
    }

    pub fn with_layers(mut self, layers: impl IntoIterator<Item = u32>) -> Self {
        self.layers = Some(layers.into_iter().collect());
        self
    }

    pub fn with_positions(mut self, positions: impl IntoIterator<Item = u32>) -> Self {
        self.positions = Some(positions.into_iter().collect());
        self
    }

    pub fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }

    /// Whether any position of this stage at this layer is wanted.
    pub fn wants_stage(&self, stage: Stage, layer: Option<u32>) -> bool {
        if !self.stages.contains(&stage) {
            return false;
        }
        match (layer, &self.layers) {
            (Some(l), Some(ls)) => ls.contains(&l),
            _ => true,
        }
    }

    pub fn wants_position(&self, position: u32) -> bool {
        self.positions
            .as_ref()
            .is_none_or(|ps| ps.contains(&position))
    }

    pub fn wants(&self, stage: Stage, layer: Option<u32>, position: u32) -> bool {
        self.wants_stage(stage, layer) && self.wants_position(position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection() {
        let c = Capture::stages([Stage::AttnQ, Stage::ResultNorm])
            .with_layers([1])
            .with_positions([0, 2]);
        assert!(c.wants(Stage::AttnQ, Some(1), 2));
        assert!(!c.wants(Stage::AttnQ, Some(0), 2));
        assert!(!c.wants(Stage::AttnQ, Some(1), 1));
        assert!(
            c.wants(Stage::ResultNorm, None, 0),
            "global stages ignore the layer filter"
        );
        assert!(!c.wants(Stage::FfnUp, Some(1), 0));
        assert!(Capture::none().is_empty());
        assert!(Capture::all().wants(Stage::LOut, Some(29), 4000));
    }
}
