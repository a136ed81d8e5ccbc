//! Compute kernels of the engine's forward pass: matmul drivers over the quant formats,
//! RMSNorm, RoPE, softmax, activations and attention.
//!
//! Every kernel names the vendored bitnet.cpp / ggml function it mirrors and says how
//! closely. Scalar, AVX2 and AVX-512 versions of a kernel are bit-identical to each other
//! ([`simd::Simd`] picks one at run time), and no result depends on the thread count.

// Loops index like the C they mirror; `is_multiple_of` needs Rust 1.87 (workspace: 1.85).
#![allow(
    clippy::needless_range_loop,
    clippy::manual_is_multiple_of,
    clippy::manual_div_ceil
)]

pub mod act;
pub mod attention;
pub mod dot;
pub mod elementwise;
pub mod matmul;
pub mod norm;
pub mod rope;
pub mod sgemm;
pub mod simd;
pub mod softmax;

pub use matmul::WeightView;
pub use simd::Simd;

/// A kernel was handed buffers whose sizes do not fit its dimensions.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KernelError {
    /// A buffer is shorter (or longer) than the dimensions require.
    #[error("{what}: expected {expected} {unit}, got {got}")]
    Size {
        what: &'static str,
        expected: usize,
        got: usize,
        unit: &'static str,
    },
    /// A dimension is not a multiple of the format's block size.
    #[error("{what}: {value} is not a multiple of {multiple}")]
    NotMultiple {
        what: &'static str,
        value: usize,
        multiple: usize,
    },
}

pub(crate) fn check_len(
    what: &'static str,
    got: usize,
    expected: usize,
    unit: &'static str,
) -> Result<(), KernelError> {
    if got == expected {
        Ok(())
    } else {
        Err(KernelError::Size {
            what,
            expected,
            got,
            unit,
        })
    }
}

/// A raw pointer that rayon tasks may share to write disjoint elements of one output.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr<T>(pub *mut T);
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// The pointer (a method, so closures capture the whole wrapper, not the raw field).
    #[inline(always)]
    pub(crate) fn ptr(&self) -> *mut T {
        self.0
    }
}
