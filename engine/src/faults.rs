//! Fault injection points of the forward pass.
//!
//! Every step of [`crate::forward`] that a real BitNet engine got wrong goes through a method
//! of [`Fault`]. Without the `faults` cargo feature `Fault` has one variant, `None`, and each
//! method is the correct computation, inlined: the engine contains no fault code paths. With
//! the feature, the known-bug gallery (`bitprobe gallery`) can switch one fault on at a time.

use crate::kernels::act::{relu_sqr, silu};
use crate::kernels::attention::{attention, AttnShape};
use crate::kernels::elementwise::rms_norm_rows;
use crate::kernels::matmul::{matmul, Scratch, WeightView};
use crate::kernels::rope::rope_neox;
use half::f16;
use crate::model::{Arch, Model};
use probe::Stage;

#[cfg(not(feature = "faults"))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fault {
    #[default]
    None,
}

#[cfg(not(feature = "faults"))]
impl Fault {
    /// Names of the faults this build can inject (none without the `faults` feature).
    pub const NAMES: &'static [&'static str] = &[];

    pub fn from_name(name: &str) -> Result<Fault, String> {
        match name {
            "none" => Ok(Fault::None),
            _ => Err(format!("fault '{name}': this build has no fault injection (rebuild with --features faults)")),
        }
    }

    /// Whether BOS is added twice (a tokenizer-level fault).
    #[inline(always)]
    pub fn double_bos(self) -> bool {
        false
    }
    #[inline(always)]
    pub fn rms_eps(self, eps: f32) -> f32 {
        eps
    }
    #[inline(always)]
    pub fn embed(self, _m: &Model, _tokens: &[u32], _x: &mut [f32]) {}
    #[inline(always)]
    pub fn norm(self, x: &[f32], gamma: &[f32], eps: f32, out: &mut [f32], width: usize) {
        rms_norm_rows(x, gamma, eps, out, width)
    }
    #[inline(always)]
    pub fn sub_norm(self, _stage: Stage, x: &[f32], gamma: &[f32], eps: f32, out: &mut [f32], width: usize) {
        rms_norm_rows(x, gamma, eps, out, width)
    }
    #[inline(always)]
    pub fn matmul(self, w: &WeightView, x: &[f32], out: &mut [f32], mm: &mut Scratch) {
        // Shapes and block multiples were validated when the model was loaded.
        matmul(w, x, out, mm).expect("matmul shapes are validated at load")
    }
    #[inline(always)]
    pub fn rope(self, x: &mut [f32], head_dim: usize, pos: u32, n_rot: usize, base: f32) {
        rope_neox(x, head_dim, pos as i32, n_rot, base)
    }
    #[inline(always)]
    pub fn kv_position(self, pos: usize, _pos0: usize) -> usize {
        pos
    }
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub fn attention(self, q: &[f32], k: &[f16], v: &[f16], n_past: usize, shape: AttnShape, n_kv: usize, out: &mut [f32]) {
        attention(q, k, v, n_past, shape, n_kv, out, None).expect("attention shapes follow the model")
    }
    #[inline(always)]
    pub fn act(self, arch: Arch, gate: &[f32], out: &mut [f32]) {
        match arch {
            Arch::Bitnet => silu(gate, out),
            Arch::Bitnet158 => relu_sqr(gate, out),
        }
    }
}
