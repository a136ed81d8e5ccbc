//! Causal grouped-query attention over an f16 KV cache, as llama.cpp's `llm_build_kqv`
//! (non-flash path, the default: `flash_attn = false`) evaluates it.
//!
//! bitnet.cpp's llama.cpp defaults `type_k = type_v = GGML_TYPE_F16`
//! (`llama_context_default_params`), so the cache holds f16; we store K and V as f16 too.
//! Per token and head, as ggml does it:
//! 1. `kq = ggml_mul_mat(k, q)`: F16 "weights" (the K cache). `q` is a permuted view, not
//!    contiguous unless `n_head == 1`, so `llamafile_sgemm` is not offered it (see
//!    [`super::sgemm`]): q is rounded to f16 and each score is `ggml_vec_dot_f16` over
//!    `head_dim` ([`super::dot`] order). With one head and ≥ 2 tokens tinyBLAS takes it
//!    (f32 q, 16 lanes).
//! 2. `ggml_soft_max_ext(kq, mask, 1/sqrt(head_dim), 0)` ([`super::softmax`]) over a row of
//!    ggml's `n_kv` (see [`ggml_n_kv`]), masked entries exactly 0.
//! 3. `kqv = ggml_mul_mat(v, kq)`: V is cached transposed, so each output component is a
//!    dot over `n_kv` positions. The probabilities are contiguous F32, so with ≥ 2 tokens
//!    (prompt) tinyBLAS computes it from the f32 probabilities, 16 lanes
//!    ([`super::sgemm`]); with one token (decode) `llamafile_sgemm` declines (`n < 2`) and
//!    it is `ggml_vec_dot_f16` of the f16-rounded probabilities.
//!
//! Query head `h` reads KV head `h / (n_head / n_head_kv)` (ggml's broadcast
//! `i02 = i12 / r2`: grouped, not modular).

use super::dot::{self, reduce16};
use super::{check_len, sgemm, KernelError, SendPtr, Simd};
use half::f16;
use rayon::prelude::*;
use std::cell::RefCell;

/// Head counts and sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    /// Query heads.
    pub n_head: usize,
    /// KV heads (divides `n_head`).
    pub n_head_kv: usize,
    /// Dimensions per head.
    pub head_dim: usize,
}

/// The row length llama.cpp gives the attention ops: `kv_self.n = min(n_ctx,
/// max(32, GGML_PAD(cell_max, 32)))` (`llama_decode_internal`, padding 32 without flash
/// attention), `cell_max = n_past + n_tokens` for one sequence.
pub fn ggml_n_kv(n_used: usize, n_ctx: usize) -> usize {
    n_ctx.min(32.max(n_used.div_ceil(32) * 32))
}

/// Optional copies of the intermediate tensors, laid out as ggml's: `[head][token][n_kv]`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AttnTrace {
    /// Scores before softmax (`kq-L`): every cached position `< n_past + n_tokens` (ggml
    /// computes those too, the mask comes later), 0 beyond.
    pub kq: Vec<f32>,
    /// Probabilities (`kq_soft_max_ext-L`), 0 where masked.
    pub probs: Vec<f32>,
    /// The `n_kv` used.
    pub n_kv: usize,
}

/// Attention for `n_tokens = q.len() / (n_head·head_dim)` new tokens at positions
/// `n_past ..`, whose K and V are already in the caches.
///
/// `q`: `n_tokens × n_head × head_dim` (after RoPE). `k_cache`, `v_cache`:
/// `[pos][n_head_kv][head_dim]` f16, at least `n_past + n_tokens` positions. `n_kv` is
/// ggml's row length ([`ggml_n_kv`]); it decides which terms ggml sums in SIMD lanes and
/// which in its scalar tail, so it matters for bit-exactness (not for the math).
/// `out`: `n_tokens × n_head × head_dim`. Parallel over (token, head).
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    k_cache: &[f16],
    v_cache: &[f16],
    n_past: usize,
    shape: AttnShape,
    n_kv: usize,
    out: &mut [f32],
    trace: Option<&mut AttnTrace>,
) -> Result<(), KernelError> {
    attention_with(
        Simd::current(),
        q,
        k_cache,
        v_cache,
        n_past,
        shape,
        n_kv,
        out,
        trace,
    )
}

/// [`attention`] at an explicit SIMD level (all levels are bit-identical).
#[allow(clippy::too_many_arguments)]
pub fn attention_with(
    simd: Simd,
    q: &[f32],
    k_cache: &[f16],
    v_cache: &[f16],
    n_past: usize,
    shape: AttnShape,
    n_kv: usize,
    out: &mut [f32],
    trace: Option<&mut AttnTrace>,
) -> Result<(), KernelError> {
    let simd = simd.clamp();
    let AttnShape {
        n_head,
        n_head_kv,
        head_dim,
    } = shape;
    if n_head_kv == 0 || n_head % n_head_kv != 0 {
        return Err(KernelError::NotMultiple {
            what: "n_head",
            value: n_head,
            multiple: n_head_kv,
        });
    }
    // Sizes are checked products: outputs and the trace are written through raw pointers,
    // so none of them may wrap.
    let overflow = || -> usize { panic!("attention: sizes of {shape:?} overflow usize") };
    let qrow = n_head.checked_mul(head_dim).unwrap_or_else(overflow);
    if qrow == 0 || !q.len().is_multiple_of(qrow) {
        return Err(KernelError::NotMultiple {
            what: "q length",
            value: q.len(),
            multiple: qrow,
        });
    }
    let nt = q.len() / qrow;
    check_len("attention output", out.len(), q.len(), "f32")?;
    let kvrow = n_head_kv * head_dim; // ≤ qrow: n_head_kv divides n_head
    let n_used = n_past.checked_add(nt).unwrap_or_else(overflow);
    let n_cache = n_used.checked_mul(kvrow).unwrap_or_else(overflow);
    for (what, c) in [("k_cache", k_cache), ("v_cache", v_cache)] {
        if c.len() < n_cache {
            return Err(KernelError::Size {
                what,
                expected: n_cache,
                got: c.len(),
                unit: "f16",
            });
        }
    }
    if n_kv < n_used {
        return Err(KernelError::Size {
            what: "n_kv",
            expected: n_used,
            got: n_kv,
            unit: "positions",
        });
    }
    let group = n_head / n_head_kv;
    let scale = 1.0f32 / (head_dim as f32).sqrt();
    let kb = bytes_of(k_cache);
    let vb = bytes_of(v_cache);

    let (kq_ptr, pr_ptr) = match trace {
        Some(t) => {
            // n_head·nt ≤ q.len(); the product with n_kv is checked.
            let n_trace = (n_head * nt).checked_mul(n_kv).unwrap_or_else(overflow);
            t.n_kv = n_kv;
            t.kq.clear();
            t.kq.resize(n_trace, 0.0);
            t.probs.clear();
            t.probs.resize(n_trace, 0.0);
            (
                Some(SendPtr(t.kq.as_mut_ptr())),
                Some(SendPtr(t.probs.as_mut_ptr())),
            )
        }
        None => (None, None),
    };
    let optr = SendPtr(out.as_mut_ptr());
    // Which of ggml's two matmul paths each product takes (`ggml_compute_forward_mul_mat`):
    // tinyBLAS when `llamafile_sgemm` accepts it (src1 contiguous F32, n = nt ≥ 2,
    // k % 16 == 0), else `vec_dot_f16` on f16-rounded src1.
    let kq_sgemm = n_head == 1 && sgemm::accepts(nt, head_dim);
    let kqv_order = if sgemm::accepts(nt, n_kv) {
        KqvOrder::TinyBlas
    } else {
        KqvOrder::VecDotF16
    };

    (0..nt * n_head).into_par_iter().for_each(|task| {
        let (t, h) = (task / n_head, task % n_head);
        let kvh = h / group;
        let visible = n_past + t + 1;
        let krow = |j: usize| {
            &kb[2 * (j * kvrow + kvh * head_dim)..2 * (j * kvrow + (kvh + 1) * head_dim)]
        };
        BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            let Buf { qh, row, acc } = &mut *buf;
            let qt = &q[t * qrow + h * head_dim..t * qrow + (h + 1) * head_dim];
            let n_scores = if kq_ptr.is_some() { n_used } else { visible };
            row.resize(n_scores, 0.0);
            if kq_sgemm {
                for (j, s) in row.iter_mut().enumerate() {
                    *s = sgemm::dot_f16_with(simd, krow(j), qt);
                }
            } else {
                qh.resize(head_dim, 0.0);
                dot::round_to_f16(qt, qh);
                let j0 = row.len() & !3;
                for (q, s) in row[..j0].chunks_exact_mut(4).enumerate() {
                    let j = 4 * q;
                    // The cache rows were last touched a whole step ago: from memory.
                    prefetch_rows(
                        kb,
                        2 * (kvrow * (j + AHEAD) + kvh * head_dim),
                        2 * kvrow,
                        2 * head_dim,
                    );
                    let rows = [krow(j), krow(j + 1), krow(j + 2), krow(j + 3)];
                    s.copy_from_slice(&dot::vec_dot_f16_x4_with(simd, rows, qh));
                }
                for (j, s) in row.iter_mut().enumerate().skip(j0) {
                    *s = dot::vec_dot_f16_with(simd, krow(j), qh);
                }
            }
            let tbase = (h * nt + t) * n_kv;
            if let Some(p) = kq_ptr {
                // SAFETY: the trace buffers were resized to n_head·nt·n_kv above, and
                // tbase + n_scores ≤ (h·nt + t + 1)·n_kv ≤ n_head·nt·n_kv because
                // n_scores ≤ n_used ≤ n_kv (checked); `row` holds n_scores values. Row
                // (h, t) of the trace belongs to this task alone (one task per (t, h)), and
                // `row` is thread-local, so the ranges do not overlap.
                unsafe {
                    std::ptr::copy_nonoverlapping(row.as_ptr(), p.ptr().add(tbase), n_scores)
                };
            }
            let probs = &mut row[..visible];
            super::softmax::soft_max_ext_row_with(simd, probs, None, scale, n_kv);
            if let Some(p) = pr_ptr {
                // SAFETY: as above, with visible ≤ n_used ≤ n_kv values from `probs`.
                unsafe {
                    std::ptr::copy_nonoverlapping(probs.as_ptr(), p.ptr().add(tbase), visible)
                };
            }
            if kqv_order == KqvOrder::VecDotF16 {
                dot::round_to_f16_in_place(probs);
            }
            // SAFETY: t < nt and h < n_head, so the slice ends at most at nt·qrow =
            // q.len() = out.len() (checked); the (t, h) slice is this task's alone (one task
            // per (t, h), head_dim apart), and `out` is otherwise unused until the parallel
            // loop has joined.
            let o = unsafe {
                std::slice::from_raw_parts_mut(optr.ptr().add(t * qrow + h * head_dim), head_dim)
            };
            kqv(
                simd,
                kqv_order,
                vb,
                kvrow,
                kvh * head_dim,
                head_dim,
                probs,
                n_kv,
                acc,
                o,
            );
        });
    });
    Ok(())
}

/// K rows the scores prefetch ahead of the ones they read: a decode step reads every cached
/// position once per layer, long after writing it (the weights streamed through the caches
/// since), so the rows come from memory, 1280 bytes apart (2B-4T). 2B-4T decode, one
/// thread, 30-token prompt + 128 steps: the scores took 1.71–1.75 ms per token one dot at a
/// time, 1.58–1.60 with these prefetches, 1.06–1.12 four positions per call
/// ([`dot::vec_dot_f16_x4_with`]) with them. (V rows, read the same way, gained nothing.)
const AHEAD: usize = 8;

/// Prefetches four rows of `len` bytes, `stride` apart from byte `at` of `b`. Addresses past
/// `b` are only computed and prefetched, never read.
#[inline(always)]
fn prefetch_rows(b: &[u8], at: usize, stride: usize, len: usize) {
    for r in 0..4 {
        super::prefetch_range(b.as_ptr().wrapping_add(at + r * stride), len);
    }
}

struct Buf {
    qh: Vec<f32>,
    row: Vec<f32>,
    acc: Vec<f32>,
}

thread_local! {
    static BUF: RefCell<Buf> = const { RefCell::new(Buf { qh: Vec::new(), row: Vec::new(), acc: Vec::new() }) };
}

pub(crate) fn bytes_of(c: &[f16]) -> &[u8] {
    // SAFETY: `f16` is a `repr(transparent)` u16, so `len` values are exactly `2·len`
    // initialised bytes at the same address; u8 needs no alignment, and the result borrows
    // `c` (same lifetime, shared), so it cannot outlive or alias a write to it.
    unsafe { std::slice::from_raw_parts(c.as_ptr() as *const u8, c.len() * 2) }
}

/// The summation order of `kqv = ggml_mul_mat(v, kq)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KqvOrder {
    /// `ggml_vec_dot_f16` (one token): position `j < n_kv & !63` into lane `j % 64` by FMA,
    /// lanes reduced as in [`dot::reduce64`], positions past that added in double; the
    /// probabilities were rounded to f16.
    VecDotF16,
    /// tinyBLAS (two or more tokens, `n_kv % 16 == 0`): every position into lane `j % 16` by
    /// FMA, lanes reduced by [`reduce16`]; f32 probabilities.
    TinyBlas,
}

/// `out[d] = Σ_j p[j]·V[j][off + d]` over a row of `n_kv` in `order`. Entries past
/// `p.len()` are 0 (masked) and skipped: an FMA with a zero product leaves a lane as it
/// is (lanes start at +0 and, summing in round-to-nearest, never become −0).
#[allow(clippy::too_many_arguments)]
pub(crate) fn kqv(
    simd: Simd,
    order: KqvOrder,
    vb: &[u8],
    kvrow: usize,
    off: usize,
    hd: usize,
    p: &[f32],
    n_kv: usize,
    acc: &mut Vec<f32>,
    out: &mut [f32],
) {
    let (lanes, np) = match order {
        KqvOrder::VecDotF16 => (64, n_kv & !63),
        KqvOrder::TinyBlas => (sgemm::KN, n_kv),
    };
    // Callers pass clamped levels already; clamping again (idempotent) keeps this
    // crate-visible safe function sound for any `simd` a caller might hand it.
    let simd = simd.clamp();
    let lanes_used = p.len().min(np);
    acc.clear();
    acc.resize(lanes * hd, 0.0);
    let vrow = |j: usize| &vb[2 * (j * kvrow + off)..2 * (j * kvrow + off + hd)];
    match simd {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `simd` is clamped, so Avx512 means AVX-512 F and F16C are present. Each
        // `acc` slice is hd floats, `vrow(j)` 2·hd bytes (both bounds-checked slices), and
        // hd % 16 == 0, as `fma_row_avx512` requires.
        Simd::Avx512 if hd.is_multiple_of(16) => unsafe {
            for (j, &pj) in p[..lanes_used].iter().enumerate() {
                let l = j % lanes;
                fma_row_avx512(&mut acc[l * hd..(l + 1) * hd], vrow(j), pj);
            }
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `simd` is clamped, and every level from Avx2 up has AVX2/FMA/F16C. Each
        // `acc` slice is hd floats, `vrow(j)` 2·hd bytes (both bounds-checked slices), and
        // hd % 8 == 0, as `fma_row_avx2` requires.
        Simd::Avx2 | Simd::Avx512 if hd.is_multiple_of(8) => unsafe {
            for (j, &pj) in p[..lanes_used].iter().enumerate() {
                let l = j % lanes;
                fma_row_avx2(&mut acc[l * hd..(l + 1) * hd], vrow(j), pj);
            }
        },
        _ => {
            for (j, &pj) in p[..lanes_used].iter().enumerate() {
                let l = j % lanes;
                let v = vrow(j);
                for (d, a) in acc[l * hd..(l + 1) * hd].iter_mut().enumerate() {
                    *a = f16_le(v, d).mul_add(pj, *a);
                }
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    if matches!(simd, Simd::Avx2 | Simd::Avx512) && hd.is_multiple_of(8) {
        // SAFETY: AVX2/FMA/F16C are implied by the clamped level; hd % 8 == 0 as tested;
        // the buffer sizes it relies on are asserted on entry to `reduce_lanes_avx2`.
        unsafe { reduce_lanes_avx2(order, acc, hd, p, lanes_used, vb, kvrow, off, out) };
        return;
    }
    for (d, o) in out.iter_mut().enumerate() {
        let mut v = [0f32; 16];
        for (l, vl) in v.iter_mut().enumerate() {
            *vl = match order {
                KqvOrder::VecDotF16 => {
                    (acc[l * hd + d] + acc[(32 + l) * hd + d])
                        + (acc[(16 + l) * hd + d] + acc[(48 + l) * hd + d])
                }
                KqvOrder::TinyBlas => acc[l * hd + d],
            };
        }
        *o = match order {
            KqvOrder::VecDotF16 => {
                let mut s = reduce16(&v) as f64;
                for (j, &pj) in p.iter().enumerate().skip(lanes_used) {
                    s += (f16_le(vrow(j), d) * pj) as f64;
                }
                s as f32
            }
            KqvOrder::TinyBlas => reduce16(&v),
        };
    }
}

#[inline(always)]
fn f16_le(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[2 * i], b[2 * i + 1]])).to_f32()
}

/// The end of [`kqv`] for eight dimensions at a time: the same lane sums, the same
/// [`reduce16`] tree and (for [`KqvOrder::VecDotF16`]) the same f64 tail, each an
/// elementwise operation across dimensions, so the bits equal the scalar loop's.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C, and `hd % 8 == 0`: the 8-wide steps at `d` then stay
/// below `hd`. The buffer sizes the loads rely on (`acc` lanes·hd, `out` hd, `vb` up to row
/// `p.len() − 1` plus `off + hd` halves) are asserted here, so they need not be trusted.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn reduce_lanes_avx2(
    order: KqvOrder,
    acc: &[f32],
    hd: usize,
    p: &[f32],
    lanes_used: usize,
    vb: &[u8],
    kvrow: usize,
    off: usize,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let lanes = match order {
        KqvOrder::VecDotF16 => 64,
        KqvOrder::TinyBlas => sgemm::KN,
    };
    // Checked arithmetic: these asserts are what keep the raw loads below in bounds.
    assert!(lanes.checked_mul(hd).is_some_and(|n| acc.len() >= n) && out.len() >= hd);
    let v_end = (p.len().saturating_sub(1).checked_mul(kvrow))
        .and_then(|n| n.checked_add(off)?.checked_add(hd)?.checked_mul(2));
    assert!(v_end.is_some_and(|n| vb.len() >= n));
    for d in (0..hd).step_by(8) {
        let a = |l: usize| _mm256_loadu_ps(acc.as_ptr().add(l * hd + d));
        let v: [__m256; 16] = std::array::from_fn(|l| match order {
            KqvOrder::VecDotF16 => _mm256_add_ps(
                _mm256_add_ps(a(l), a(32 + l)),
                _mm256_add_ps(a(16 + l), a(48 + l)),
            ),
            KqvOrder::TinyBlas => a(l),
        });
        let t3: [__m256; 8] = std::array::from_fn(|i| _mm256_add_ps(v[i + 8], v[i]));
        let t6: [__m256; 4] = std::array::from_fn(|i| _mm256_add_ps(t3[i + 4], t3[i]));
        let r = _mm256_add_ps(_mm256_add_ps(t6[0], t6[2]), _mm256_add_ps(t6[1], t6[3]));
        let o = out.as_mut_ptr().add(d);
        match order {
            KqvOrder::VecDotF16 => {
                let mut lo = _mm256_cvtps_pd(_mm256_castps256_ps128(r));
                let mut hi = _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(r));
                for (j, &pj) in p.iter().enumerate().skip(lanes_used) {
                    let w = vb.as_ptr().add(2 * (j * kvrow + off + d));
                    let prod = _mm256_mul_ps(
                        _mm256_cvtph_ps(_mm_loadu_si128(w as *const __m128i)),
                        _mm256_set1_ps(pj),
                    );
                    lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(prod)));
                    hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(prod)));
                }
                _mm_storeu_ps(o, _mm256_cvtpd_ps(lo));
                _mm_storeu_ps(o.add(4), _mm256_cvtpd_ps(hi));
            }
            KqvOrder::TinyBlas => _mm256_storeu_ps(o, r),
        }
    }
}

/// `acc[d] = fma(v[d], p, acc[d])`, sixteen at a time (elementwise: same bits as scalar).
/// Half the instructions of [`fma_row_avx2`]: one position of one head's V row per call,
/// every position of every head in a decode step.
///
/// # Safety
/// The CPU has AVX-512 F and F16C; `acc.len() % 16 == 0` and `v.len() ≥ 2·acc.len()` (the
/// loop reads 32 bytes of `v` and 16 floats of `acc` at each `d < acc.len()`, step 16).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
unsafe fn fma_row_avx512(acc: &mut [f32], v: &[u8], p: f32) {
    use std::arch::x86_64::*;
    let pv = _mm512_set1_ps(p);
    for d in (0..acc.len()).step_by(16) {
        let w = _mm512_cvtph_ps(_mm256_loadu_si256(v.as_ptr().add(2 * d) as *const __m256i));
        let a = _mm512_loadu_ps(acc.as_ptr().add(d));
        _mm512_storeu_ps(acc.as_mut_ptr().add(d), _mm512_fmadd_ps(w, pv, a));
    }
}

/// `acc[d] = fma(v[d], p, acc[d])`, eight at a time (elementwise: same bits as scalar).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `acc.len() % 8 == 0` and `v.len() ≥ 2·acc.len()` (the
/// loop reads 16 bytes of `v` and 8 floats of `acc` at each `d < acc.len()`, step 8).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn fma_row_avx2(acc: &mut [f32], v: &[u8], p: f32) {
    use std::arch::x86_64::*;
    let pv = _mm256_set1_ps(p);
    for d in (0..acc.len()).step_by(8) {
        let w = _mm256_cvtph_ps(_mm_loadu_si128(v.as_ptr().add(2 * d) as *const __m128i));
        let a = _mm256_loadu_ps(acc.as_ptr().add(d));
        _mm256_storeu_ps(acc.as_mut_ptr().add(d), _mm256_fmadd_ps(w, pv, a));
    }
}
