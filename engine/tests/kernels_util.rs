//! Helpers shared by the `kernels_*` tests (included with `#[path]`; on its own it tests
//! nothing).
#![allow(dead_code)]

use engine::kernels::Simd;

/// xorshift64*: deterministic test data without a dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [-1, 1).
    pub fn f32(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    pub fn vec(&mut self, n: usize, amp: f32) -> Vec<f32> {
        (0..n).map(|_| self.f32() * amp).collect()
    }
    /// Ternary values times `scale`.
    pub fn ternary(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| (self.below(3) as i32 - 1) as f32 * scale)
            .collect()
    }
}

/// The SIMD levels this CPU can run (the others clamp down and would test nothing new).
pub fn levels() -> Vec<Simd> {
    Simd::ALL.into_iter().filter(|s| s.is_supported()).collect()
}

pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

pub fn pool(n: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build()
        .unwrap()
}

/// `matmul_with(view, x)` at every level this CPU runs and on one to three threads, each
/// result bit-equal to `want`; `case` names the case in a failure.
pub fn matmul_everywhere_equals(
    view: &engine::kernels::matmul::WeightView,
    x: &[f32],
    want: &[f32],
    case: &str,
) {
    use engine::kernels::matmul::{matmul_with, Scratch};
    for simd in levels() {
        for threads in 1..=3 {
            let mut got = vec![f32::NAN; want.len()];
            pool(threads)
                .install(|| matmul_with(simd, view, x, &mut got, &mut Scratch::default()))
                .unwrap();
            assert_eq!(bits(&got), bits(want), "{case} {simd:?} threads={threads}");
        }
    }
}
