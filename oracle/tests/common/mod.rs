//! Shared by the in-process `OracleProbe` tests: forged tiny models and a prompt.
#![allow(dead_code)]

use oracle::OracleProbe;
use probe::{OpenRequest, Probe, Token};

/// Tiny presets of every weight type, both archs (`bitnet`: SiLU; `bitnet-b1.58`: ReLU²).
pub const TINY: [&str; 10] = [
    "tiny-f32",
    "tiny-f16",
    "tiny-i2s",
    "tiny-tq1",
    "tiny-tq2",
    "tiny158-f32",
    "tiny158-f16",
    "tiny158-i2s",
    "tiny158-tq1",
    "tiny158-tq2",
];

pub const PROMPT: &str = "Hello world, the quick brown fox";

pub fn open(preset: &str, threads: usize) -> OracleProbe {
    let path = engine::forge::forged(preset, 1).unwrap_or_else(|e| panic!("forge {preset}: {e}"));
    OracleProbe::open(&OpenRequest::new(path).threads(threads))
        .unwrap_or_else(|e| panic!("{preset}: {e}"))
}

/// The prompt with one BOS.
pub fn prompt(p: &mut OracleProbe) -> Vec<Token> {
    p.tokenize(PROMPT, true, false).unwrap()
}

pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Largest |a − b| over two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
