//! What this machine can do at best, so a speed figure can be read as a share of a limit
//! that holds: the read bandwidth a decode step is bound by, and the int8 dot throughput a
//! ternary prefill is bound by.
//!
//! Both are measured the way the best kernel would work: every thread streams its own part of
//! a buffer far larger than the caches, held in 2 MiB pages as the engine's weights are, with
//! the widest loads the CPU has (AVX-512, else AVX2) and four independent accumulators, in
//! two forms taken in turn — with a software prefetch ahead and with none (the hardware
//! prefetchers alone), since which streams faster depends on the CPU ([`Stream`]) — and the
//! int8 ceiling runs `vpdpbusd` (AVX-512 VNNI) or the AVX2 `maddubs`/`madd` pair on registers
//! only, [`CHAINS`] independent chains deep (more than latency × ports, so it measures
//! throughput). Each figure is the best of several passes (the machine's ceiling, not its
//! average mood); the spread of the passes is reported beside it.

use crate::hugepage::HugeBuffer;
use std::time::Instant;

/// One ceiling: the best pass, the median, and how the passes spread.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Measured {
    pub best: f64,
    pub median: f64,
    /// (max − min) / max over the passes.
    pub spread: f64,
}

fn summarize(mut v: Vec<f64>) -> Measured {
    v.sort_by(f64::total_cmp);
    let (min, max) = (v[0], v[v.len() - 1]);
    Measured {
        best: max,
        median: v[v.len() / 2],
        spread: if max > 0.0 { (max - min) / max } else { 0.0 },
    }
}

/// How the bandwidth probe streams. On the Xeon the software prefetch read faster (the F16
/// head's loop: 13.3–13.6 GB/s without, 14.5–14.9 at 1–2 KiB ahead); on an AMD Zen 4 the
/// hardware prefetchers alone did, and the engine's single-stream kernels prefetch nothing
/// there (`kernels::prefetch_stream`): a probe that always prefetched read 18–20 GB/s on
/// one thread while the engine's F16 head streamed 22–24 (`docs/performance.md`, "The
/// EPYC again"). So the probe measures both and keeps the faster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stream {
    /// `prefetcht0` 2 KiB ahead of the loads.
    Prefetch,
    /// No software prefetch.
    Plain,
}

impl Stream {
    /// The form measured beside this one.
    pub fn other(self) -> Stream {
        match self {
            Stream::Prefetch => Stream::Plain,
            Stream::Plain => Stream::Prefetch,
        }
    }

    /// The form in words, for reports.
    pub fn describe(self) -> &'static str {
        match self {
            Stream::Prefetch => "prefetching 2 KiB ahead",
            Stream::Plain => "no software prefetch",
        }
    }
}

/// [`read_bandwidth`]'s answer: the passes of the faster [`Stream`] form.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Bandwidth {
    pub measured: Measured,
    /// The form whose best pass was the higher.
    pub form: Stream,
    /// The other form's best pass, bytes/s.
    pub other_best: f64,
}

/// Passes per [`Stream`] form in [`read_bandwidth`].
pub const BANDWIDTH_PASSES: usize = 7;

/// Bytes read per second by `threads` threads streaming a 1 GiB buffer: [`BANDWIDTH_PASSES`]
/// passes of each [`Stream`] form, in turn (so a change in the machine's mood hits both),
/// the faster form's passes summarized. The buffer sits in 2 MiB pages where the kernel
/// grants them (`MADV_HUGEPAGE`), as the engine's weights do
/// ([`crate::gguf::GgufFile::open_in_huge_pages`]): with 4 KiB pages every 4 KiB of the
/// stream is a TLB miss and the figure drops by 10–15% on the machines measured.
pub fn read_bandwidth(threads: usize) -> Bandwidth {
    const BYTES: usize = 1 << 30;
    let threads = threads.max(1);
    // Failing to map 1 GiB is out of memory, which the `Vec` this replaced aborted on too.
    let mut block = HugeBuffer::new(BYTES)
        .unwrap_or_else(|e| panic!("bandwidth probe: cannot map {BYTES} bytes: {e}"));
    for (i, v) in block.bytes_mut().chunks_exact_mut(8).enumerate() {
        v.copy_from_slice(&(i as u64).to_le_bytes());
    }
    // SAFETY: `block` holds BYTES initialised bytes starting on a 2 MiB (so 64-byte) boundary
    // and outlives `buf`; `[u64; 8]` has no invalid bit patterns.
    let buf: &[[u64; 8]] = unsafe {
        std::slice::from_raw_parts(block.bytes().as_ptr() as *const [u64; 8], BYTES / 64)
    };
    let chunk = buf.len().div_ceil(threads);
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..BANDWIDTH_PASSES {
        for (form, passes) in [(Stream::Prefetch, &mut with), (Stream::Plain, &mut without)] {
            let t = Instant::now();
            std::thread::scope(|s| {
                for part in buf.chunks(chunk) {
                    s.spawn(move || std::hint::black_box(stream(part, form)));
                }
            });
            passes.push(BYTES as f64 / t.elapsed().as_secs_f64());
        }
    }
    let (with, without) = (summarize(with), summarize(without));
    if with.best >= without.best {
        Bandwidth {
            measured: with,
            form: Stream::Prefetch,
            other_best: without.best,
        }
    } else {
        Bandwidth {
            measured: without,
            form: Stream::Plain,
            other_best: with.best,
        }
    }
}

/// Sums a slice of 64-byte blocks with the widest loads available, in the given form.
fn stream(part: &[[u64; 8]], form: Stream) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F was detected just above; `part` is a live slice of 64-byte
            // blocks, and `stream_avx512` reads exactly `part.len()` blocks from its start.
            return unsafe {
                match form {
                    Stream::Prefetch => x86::stream_avx512::<true>(part),
                    Stream::Plain => x86::stream_avx512::<false>(part),
                }
            };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 was detected; the same slice bound as above.
            return unsafe {
                match form {
                    Stream::Prefetch => x86::stream_avx2::<true>(part),
                    Stream::Plain => x86::stream_avx2::<false>(part),
                }
            };
        }
    }
    let _ = form;
    part.iter().fold(0u64, |a, b| a.wrapping_add(b[0]) ^ b[7])
}

/// int8 multiply-accumulates per second (one u8·i8 product added to an i32 is one MAC) on
/// `threads` threads, registers only (5 passes).
pub fn int8_macs(threads: usize) -> Measured {
    const ITERS: u64 = 10_000_000;
    let threads = threads.max(1);
    let mut passes = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let macs: u64 = std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads).map(|_| s.spawn(|| dot_loop(ITERS))).collect();
            hs.into_iter().map(|h| h.join().unwrap_or(0)).sum()
        });
        passes.push(macs as f64 / t.elapsed().as_secs_f64());
    }
    summarize(passes)
}

/// Independent accumulator chains in the int8 ceiling's loop. `vpdpbusd` has a latency of
/// 5 cycles and issues on two ports on recent Xeons, so fewer than 10 chains measure its
/// latency instead of its throughput: eight reported 362–372 G MAC/s on the 2-vCPU Xeon
/// these numbers come from; sixteen and twenty-four both 480–492 (so sixteen saturate it).
pub const CHAINS: usize = 16;

/// Runs `iters` rounds of [`CHAINS`] independent dot-product chains; returns the MACs done.
fn dot_loop(iters: u64) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::quant::i2s_vnni::has_vnni() {
            // SAFETY: AVX-512F/BW/VL and VNNI were detected by `has_vnni`; the loop touches
            // registers only.
            return unsafe { x86::dot_vnni(iters) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 was detected; registers only.
            return unsafe { x86::dot_avx2(iters) };
        }
    }
    let (mut acc, mut x) = (0i32, 1i8);
    for _ in 0..iters {
        x = x.wrapping_add(1);
        acc = acc.wrapping_add(x as i32 * 3);
    }
    std::hint::black_box(acc);
    iters
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must have AVX-512F. Reads `part.len()` 64-byte blocks from `part`'s start.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn stream_avx512<const PREFETCH: bool>(part: &[[u64; 8]]) -> u64 {
        let p = part.as_ptr() as *const __m512i;
        let n = part.len();
        let (mut a, mut b, mut c, mut d) = (
            _mm512_setzero_si512(),
            _mm512_setzero_si512(),
            _mm512_setzero_si512(),
            _mm512_setzero_si512(),
        );
        let mut i = 0;
        while i + 4 <= n {
            if PREFETCH {
                // 2 KiB ahead; a prefetch never faults, even past the end.
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(i + 32) as *const i8);
            }
            // SAFETY: i + 3 < n, so all four 64-byte loads are inside `part`.
            a = _mm512_add_epi64(a, _mm512_loadu_si512(p.add(i)));
            b = _mm512_add_epi64(b, _mm512_loadu_si512(p.add(i + 1)));
            c = _mm512_add_epi64(c, _mm512_loadu_si512(p.add(i + 2)));
            d = _mm512_add_epi64(d, _mm512_loadu_si512(p.add(i + 3)));
            i += 4;
        }
        while i < n {
            // SAFETY: i < n.
            a = _mm512_add_epi64(a, _mm512_loadu_si512(p.add(i)));
            i += 1;
        }
        let s = _mm512_add_epi64(_mm512_add_epi64(a, b), _mm512_add_epi64(c, d));
        _mm512_reduce_add_epi64(s) as u64
    }

    /// # Safety
    /// The CPU must have AVX2. Reads `part.len()` 64-byte blocks from `part`'s start.
    #[target_feature(enable = "avx2")]
    pub unsafe fn stream_avx2<const PREFETCH: bool>(part: &[[u64; 8]]) -> u64 {
        let p = part.as_ptr() as *const __m256i;
        let n = part.len() * 2;
        let (mut a, mut b, mut c, mut d) = (
            _mm256_setzero_si256(),
            _mm256_setzero_si256(),
            _mm256_setzero_si256(),
            _mm256_setzero_si256(),
        );
        let mut i = 0;
        while i + 4 <= n {
            if PREFETCH {
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(i + 64) as *const i8);
            }
            // SAFETY: i + 3 < n = twice the block count, all loads inside `part`.
            a = _mm256_add_epi64(a, _mm256_loadu_si256(p.add(i)));
            b = _mm256_add_epi64(b, _mm256_loadu_si256(p.add(i + 1)));
            c = _mm256_add_epi64(c, _mm256_loadu_si256(p.add(i + 2)));
            d = _mm256_add_epi64(d, _mm256_loadu_si256(p.add(i + 3)));
            i += 4;
        }
        while i < n {
            // SAFETY: i < n.
            a = _mm256_add_epi64(a, _mm256_loadu_si256(p.add(i)));
            i += 1;
        }
        let s = _mm256_add_epi64(_mm256_add_epi64(a, b), _mm256_add_epi64(c, d));
        let mut out = [0u64; 4];
        _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, s);
        out.iter().fold(0, |x, y| x.wrapping_add(*y))
    }

    /// # Safety
    /// The CPU must have AVX-512F/BW and VNNI. Registers only.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn dot_vnni(iters: u64) -> u64 {
        let u = _mm512_set1_epi8(3);
        let w = _mm512_set1_epi8(-1);
        let mut acc = [_mm512_setzero_si512(); super::CHAINS];
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = _mm512_dpbusd_epi32(*a, u, w);
            }
        }
        let mut s = _mm512_setzero_si512();
        for a in acc {
            s = _mm512_add_epi32(s, a);
        }
        std::hint::black_box(_mm512_reduce_add_epi32(s));
        iters * super::CHAINS as u64 * 64
    }

    /// # Safety
    /// The CPU must have AVX2. Registers only.
    #[target_feature(enable = "avx2")]
    pub unsafe fn dot_avx2(iters: u64) -> u64 {
        let u = _mm256_set1_epi8(3);
        let w = _mm256_set1_epi8(-1);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_si256(); super::CHAINS];
        for _ in 0..iters {
            for a in acc.iter_mut() {
                let p = _mm256_maddubs_epi16(u, w);
                *a = _mm256_add_epi32(*a, _mm256_madd_epi16(p, ones));
            }
        }
        let mut s = _mm256_setzero_si256();
        for a in acc {
            s = _mm256_add_epi32(s, a);
        }
        let mut out = [0i32; 8];
        _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, s);
        std::hint::black_box(out);
        iters * super::CHAINS as u64 * 32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_streams_sum_what_the_scalar_loop_sums() {
        let buf: Vec<[u64; 8]> = (0..1001).map(|i| [i as u64 * 3 + 1; 8]).collect();
        let want = buf
            .iter()
            .flat_map(|b| b.iter())
            .fold(0u64, |a, &x| a.wrapping_add(x));
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: AVX-512F detected; the slice is live.
                assert_eq!(unsafe { x86::stream_avx512::<true>(&buf) }, want);
                // SAFETY: as above.
                assert_eq!(unsafe { x86::stream_avx512::<false>(&buf) }, want);
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: AVX2 detected; the slice is live.
                assert_eq!(unsafe { x86::stream_avx2::<true>(&buf) }, want);
                // SAFETY: as above.
                assert_eq!(unsafe { x86::stream_avx2::<false>(&buf) }, want);
            }
        }
    }
}
