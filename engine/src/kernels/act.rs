//! Feed-forward activations.

/// SiLU over a row, as ggml computes it (see [`super::softmax::silu_row`]).
pub fn silu(x: &[f32], out: &mut [f32]) {
    super::softmax::silu_row_fast(x, out)
}

/// ReLU² over a row: `ggml_relu` (`x > 0.f ? x : 0.f`, `ggml_vec_relu_f32`) then `ggml_sqr`
/// (`x·x`), the `LLM_FFN_RELU_SQR` path of llama.cpp's `llm_build_ffn`.
pub fn relu_sqr(x: &[f32], out: &mut [f32]) {
    assert_eq!(x.len(), out.len());
    for (o, &v) in out.iter_mut().zip(x) {
        let r = if v > 0.0 { v } else { 0.0 };
        *o = r * r;
    }
}

/// `out = a ⊙ b` (`ggml_mul`, `ggml_vec_mul_f32`).
pub fn mul(a: &[f32], b: &[f32], out: &mut [f32]) {
    assert_eq!(a.len(), out.len());
    assert_eq!(b.len(), out.len());
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = x * y;
    }
}

/// `out = a + b` (`ggml_add`).
pub fn add(a: &[f32], b: &[f32], out: &mut [f32]) {
    assert_eq!(a.len(), out.len());
    assert_eq!(b.len(), out.len());
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = x + y;
    }
}
