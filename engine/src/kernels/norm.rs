//! RMSNorm as ggml computes it.

/// `y = x · 1/sqrt(mean(x²) + eps)`, mirroring `ggml_compute_forward_rms_norm_f32`
/// (ggml.c): `sum += (ggml_float)(x*x)` in double, in order (f32 squares — nothing fuses
/// across the conversion); `mean = (float)(sum/n)`; `scale = 1.0f/sqrtf(mean + eps)`;
/// `y = x·scale`. This is the `norm-L` stage, before gamma.
pub fn rms_norm_raw(x: &[f32], eps: f32, out: &mut [f32]) {
    assert_eq!(x.len(), out.len());
    let mut sum = 0f64;
    for &v in x {
        sum += (v * v) as f64;
    }
    let mean = (sum / x.len() as f64) as f32;
    let scale = 1.0f32 / (mean + eps).sqrt();
    for (o, &v) in out.iter_mut().zip(x) {
        *o = v * scale;
    }
}

/// RMSNorm times gamma: [`rms_norm_raw`] then `y·gamma` (the separate `ggml_mul` that
/// `llm_build_norm` adds), i.e. `(x·scale)·gamma`, two f32 roundings as in ggml.
pub fn rms_norm(x: &[f32], gamma: &[f32], eps: f32, out: &mut [f32]) {
    assert_eq!(gamma.len(), x.len());
    rms_norm_raw(x, eps, out);
    for (o, &g) in out.iter_mut().zip(gamma) {
        *o *= g;
    }
}
