//! Compute kernels of the engine's forward pass: matmul drivers over the quant formats,
//! RMSNorm, RoPE, softmax, activations and attention.
//!
//! Every kernel names the vendored bitnet.cpp / ggml function it mirrors and says how
//! closely. Scalar, AVX2 and AVX-512 versions of a kernel are bit-identical to each other
//! ([`simd::Simd`] picks one at run time), and no result depends on the thread count.

// Loops index like the C they mirror.
#![allow(clippy::needless_range_loop)]

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
pub mod workers;

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

/// How far ahead of its reads a streaming kernel prefetches (decode matmuls, which read
/// each weight byte once). Measured with the F16 head's row loop (2560 × 128256) on weights
/// in 2 MiB pages, one thread, best of 5: no prefetch 13.3–13.6 GB/s, 512 B 14.3, 1–2 KiB
/// 14.5–14.9, 3 KiB 14.3, 4 KiB 11.1–11.3, 8 KiB 10.4; the 2B-4T TQ1_0 decode 8.2–8.3 tok/s
/// at 2 KiB against 7.9–8.0 at 4 KiB (the value before the weights moved to huge pages).
/// (All on the Xeon. On a Zen 4 the single-stream kernels do not prefetch at all:
/// `prefetch_stream`.)
pub const PREFETCH_BYTES: usize = 2048;

/// Prefetches the cache line at `p` into L1 (`prefetcht0`): a hint, it never faults, so `p`
/// may point past the end of an allocation. No-op off x86_64.
#[inline(always)]
pub(crate) fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `prefetcht0` is SSE, part of the x86_64 baseline, and a prefetch is only a
    // hint: it never faults and never reads into the program, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// [`prefetch`] for a memory-bound weight stream read front to back (the I2_S one-row
/// kernel, the f16 and f32 stream dots, a task's first lines, the K rows of decode
/// attention): nothing on an AMD Zen 4 ([`Simd::zen4`]), where the hardware prefetchers
/// alone kept these streams fuller. On the 2-vCPU EPYC, `bitprobe run -n 64`, alternating
/// with the same code prefetching (session 10, the row kernels of then): 2B-4T I2_S decode
/// one thread 11.3–11.5 → 12.3–13.0 tok/s, two threads 17.7–19.4 against 17.6–18.7 (the
/// spread); TQ1_0 8.3–8.6 → 10.0–10.8; TQ2_0 12.6–13.2 against 12.8–13.3
/// (`docs/performance.md`, "The EPYC"). The row kernels that read four rows side by side
/// (I2_S, TQ1_0, TQ2_0) call [`prefetch`] itself, for the next rows in memory order: their
/// interleaved reads are what the hardware prefetchers do not follow ("The EPYC again").
#[inline(always)]
pub(crate) fn prefetch_stream(p: *const u8) {
    use std::sync::atomic::{AtomicU8, Ordering};
    // 0: not decided yet, 1: prefetch, 2: do not (a relaxed load per call, not a OnceLock:
    // this is in the innermost loops).
    static STREAMS: AtomicU8 = AtomicU8::new(0);
    let mut on = STREAMS.load(Ordering::Relaxed);
    if on == 0 {
        on = if Simd::zen4() { 2 } else { 1 };
        STREAMS.store(on, Ordering::Relaxed);
    }
    if on == 1 {
        prefetch(p);
    }
}

/// `p`, unknown to the optimizer from here on: no instruction, but LLVM can no longer
/// rewrite a pointer walked in a loop as another pointer plus a shared index. A kernel
/// that walks its weight and activation rows calls this on one of them each step, so its
/// multiply-adds keep a plain `[reg + disp]` memory operand. Intel cores split a
/// three-operand instruction with an indexed operand (`[reg + reg·s]`) into two µops at
/// rename, and the F16 head's loop streamed slower that way: 2B-4T, one thread, the
/// model's own map, 14.2–15.1 GB/s indexed against 16.1–16.9 walked, which is what the
/// same loop compiled from C by gcc (walked pointers) reaches (`docs/performance.md`).
#[inline(always)]
pub(crate) fn opaque<T>(p: *const T) -> *const T {
    #[cfg(target_arch = "x86_64")]
    {
        let mut p = p;
        // SAFETY: an empty template: no instruction runs and nothing is read or written;
        // the register comes back as it went in. (Hence `nomem` with a pointer operand: it
        // is never dereferenced here.)
        #[allow(clippy::pointers_in_nomem_asm_block)]
        unsafe {
            std::arch::asm!("/* {0} */", inout(reg) p, options(pure, nomem, nostack, preserves_flags))
        };
        p
    }
    #[cfg(not(target_arch = "x86_64"))]
    p
}

/// Prefetches `len` bytes from `p` (see [`prefetch_stream`]: nothing on a Zen 4): the
/// start of a stream, before the kernel's own prefetches [`PREFETCH_BYTES`] ahead take over.
#[inline]
pub(crate) fn prefetch_range(p: *const u8, len: usize) {
    for o in (0..len).step_by(64) {
        prefetch_stream(p.wrapping_add(o));
    }
}

/// A raw pointer that rayon tasks may share to write disjoint elements of one output.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr<T>(pub *mut T);
// SAFETY: the wrapper only lets the address cross threads; it does no access itself. Every
// dereference is an `unsafe` block in a kernel (matmul, attention) whose own SAFETY comment
// shows that concurrent rayon tasks touch disjoint elements, and the pointee (the kernel's
// `&mut` output) outlives the parallel loop, which joins before the kernel returns. Values
// of T are written from other threads, hence `T: Send`.
unsafe impl<T: Send> Send for SendPtr<T> {}
// SAFETY: as for Send: shared `&SendPtr` only hands out the pointer (`ptr`); the disjoint
// writes through it are argued at each use.
unsafe impl<T: Send> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// The pointer (a method, so closures capture the whole wrapper, not the raw field).
    #[inline(always)]
    pub(crate) fn ptr(&self) -> *mut T {
        self.0
    }
}
