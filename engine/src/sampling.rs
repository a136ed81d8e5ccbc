//! Choosing the next token: greedy, or temperature → top-k → top-p → a seeded draw.
//!
//! Written by hand (a few lines) rather than pulled from a crate so that the order of the
//! steps and the RNG stream are pinned: the same seed gives the same tokens on every run.

use probe::{argmax, Sampling, Token};
use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub struct Sampler {
    sampling: Sampling,
    rng: ChaCha8Rng,
    scratch: Vec<(f32, u32)>,
}

impl Sampler {
    pub fn new(sampling: &Sampling) -> Sampler {
        let seed = match sampling {
            Sampling::Seeded { seed, .. } => *seed,
            Sampling::Greedy => 0,
        };
        Sampler {
            sampling: sampling.clone(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            scratch: Vec::new(),
        }
    }

    pub fn choose(&mut self, logits: &[f32]) -> Token {
        let Sampling::Seeded {
            temperature,
            top_k,
            top_p,
            ..
        } = self.sampling
        else {
            return argmax(logits);
        };
        if temperature <= 0.0 {
            return argmax(logits);
        }
        let c = &mut self.scratch;
        c.clear();
        c.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, l)| !l.is_nan())
                .map(|(i, &l)| (l / temperature, i as u32)),
        );
        // Highest first; ties to the lower id so the order is total.
        c.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        if top_k > 0 {
            c.truncate(top_k as usize);
        }
        let max = c[0].0;
        let mut total = 0f64;
        for e in c.iter_mut() {
            e.0 = (e.0 - max).exp();
            total += e.0 as f64;
        }
        if top_p < 1.0 {
            let mut acc = 0f64;
            let mut keep = c.len();
            for (i, e) in c.iter().enumerate() {
                acc += e.0 as f64 / total;
                if acc >= top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            c.truncate(keep);
            total = c.iter().map(|e| e.0 as f64).sum();
        }
        // Uniform in [0, total) from 53 random bits.
        let r = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
        let mut acc = 0f64;
        for e in c.iter() {
            acc += e.0 as f64;
            if r < acc {
                return e.1;
            }
        }
        c.last().map_or(0, |e| e.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_seeded_reproduce() {
        let logits: Vec<f32> = (0..50).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        assert_eq!(
            Sampler::new(&Sampling::Greedy).choose(&logits),
            argmax(&logits)
        );
        let s = Sampling::Seeded {
            temperature: 0.8,
            top_k: 20,
            top_p: 0.95,
            seed: 7,
        };
        let a: Vec<_> = {
            let mut x = Sampler::new(&s);
            (0..20).map(|_| x.choose(&logits)).collect()
        };
        let b: Vec<_> = {
            let mut x = Sampler::new(&s);
            (0..20).map(|_| x.choose(&logits)).collect()
        };
        assert_eq!(a, b);
        assert!(
            a.iter().any(|&t| t != a[0]),
            "sampling at T=0.8 should vary: {a:?}"
        );
        let top1 = Sampling::Seeded {
            temperature: 1.0,
            top_k: 1,
            top_p: 1.0,
            seed: 1,
        };
        assert_eq!(Sampler::new(&top1).choose(&logits), argmax(&logits));
    }
}
