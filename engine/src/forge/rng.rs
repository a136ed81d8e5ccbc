//! Seeded, order-independent random streams for forged weights.
//!
//! Every tensor gets its own ChaCha8 key derived from (seed, tensor name, purpose), and each
//! 64 Ki-value chunk of it its own ChaCha stream, so tensors can be generated in any order
//! and chunks in parallel while the output stays a pure function of the seed. Samples are
//! built from raw `u32`/`u64` outputs with integer arithmetic only (no `ln`/`cos`, no
//! `rand` distributions whose algorithms may change between versions), so the bytes are the
//! same on every platform and toolchain.

use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

const CHUNK: usize = 1 << 16;

/// FNV-1a, 64-bit: a stable string hash (std's `DefaultHasher` is not guaranteed stable).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// SplitMix64 step, used to expand a 64-bit value into a 256-bit ChaCha key.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A named random stream: `Stream::new(seed, "blk.0.attn_q.weight")`.
#[derive(Clone, Copy, Debug)]
pub struct Stream {
    key: [u8; 32],
}

impl Stream {
    /// The stream for `name` under `seed`.
    pub fn new(seed: u64, name: &str) -> Stream {
        let mut state = seed ^ fnv1a64(name.as_bytes()).rotate_left(17);
        let mut key = [0u8; 32];
        for part in key.chunks_exact_mut(8) {
            part.copy_from_slice(&splitmix64(&mut state).to_le_bytes());
        }
        Stream { key }
    }

    fn chunk_rng(&self, chunk: usize) -> ChaCha8Rng {
        let mut rng = ChaCha8Rng::from_seed(self.key);
        rng.set_stream(chunk as u64);
        rng
    }

    /// Fills `out` chunk by chunk (in parallel) with `f(rng)` per value.
    fn fill<T: Send>(&self, out: &mut [T], f: impl Fn(&mut ChaCha8Rng) -> T + Sync) {
        out.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(c, chunk)| {
                let mut rng = self.chunk_rng(c);
                for v in chunk {
                    *v = f(&mut rng);
                }
            });
    }

    /// `n` ternary values in {−1, 0, +1}, each with probability ≈ 1/3.
    pub fn ternary(&self, n: usize) -> Vec<i8> {
        let mut out = vec![0i8; n];
        // Lemire's multiply-shift maps a u32 to 0..3 (bias < 1e-9).
        self.fill(&mut out, |rng| {
            ((u64::from(rng.next_u32()) * 3) >> 32) as i8 - 1
        });
        out
    }

    /// `n` approximately standard-normal values: Irwin–Hall sum of four 16-bit uniforms,
    /// centred and scaled to unit variance (range ±3.46).
    pub fn normal(&self, n: usize) -> Vec<f32> {
        let mut out = vec![0f32; n];
        self.fill(&mut out, |rng| {
            let r = rng.next_u64();
            let s = (r & 0xffff) + ((r >> 16) & 0xffff) + ((r >> 32) & 0xffff) + (r >> 48);
            let u = s as f64 / 65536.0; // sum of four U[0,1): mean 2, variance 1/3
            ((u - 2.0) * 3f64.sqrt()) as f32
        });
        out
    }

    /// One uniform value in [0, 1) (from chunk stream `u64::MAX`, apart from the bulk data).
    pub fn uniform(&self) -> f64 {
        let mut rng = ChaCha8Rng::from_seed(self.key);
        rng.set_stream(u64::MAX);
        (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}
