//! RoPE, NEOX layout (rotate halves), as `ggml_compute_forward_rope_f32` computes it.

/// Rotates each of the `x.len() / head_dim` heads of one token at position `pos` in place.
///
/// Mirrors ggml.c: `theta_scale = powf(freq_base, -2.0f/n_rot)`; the cache
/// (`ggml_rope_cache_init`) starts at `theta = (float)pos` and steps `theta *= theta_scale`
/// per pair; `rope_yarn` with `freq_scale = 1`, `ext_factor = 0`, `attn_factor = 1` gives
/// `cos = cosf(theta)`, `sin = sinf(theta)` (the oracle calls glibc's `sincosf`, same
/// results). Pair `(i, i + n_rot/2)` for `i < n_rot/2` uses the `i`-th theta. The update
/// `x0*cos - x1*sin`, `x0*sin + x1*cos` is one expression each, so the oracle's clang build
/// (default `-ffp-contract=on`) fuses it: `vfmsub231ss` / `vfmadd231ss` in its
/// `ggml_compute_forward_rope_f32`, i.e. `fma(x0, cos, -(x1*sin))` and
/// `fma(x0, sin, x1*cos)`; we do the same.
/// Dimensions past `n_rot` are left as they are.
pub fn rope_neox(x: &mut [f32], head_dim: usize, pos: i32, n_rot: usize, freq_base: f32) {
    assert!(
        n_rot.is_multiple_of(2) && n_rot <= head_dim,
        "rope: n_rot {n_rot}, head_dim {head_dim}"
    );
    assert!(
        x.len().is_multiple_of(head_dim),
        "rope: {} not a multiple of head_dim {head_dim}",
        x.len()
    );
    let half = n_rot / 2;
    let mut cs = [(0f32, 0f32); 256];
    let mut cache: Vec<(f32, f32)>;
    let cache: &mut [(f32, f32)] = if half <= cs.len() {
        &mut cs[..half]
    } else {
        cache = vec![(0.0, 0.0); half];
        &mut cache
    };
    rope_cache(pos, n_rot, freq_base, cache);
    for head in x.chunks_exact_mut(head_dim) {
        rotate(head, cache);
    }
}

/// The per-pair `(cos, sin)` of `ggml_rope_cache_init` for `pos`.
pub fn rope_cache(pos: i32, n_rot: usize, freq_base: f32, cache: &mut [(f32, f32)]) {
    let theta_scale = freq_base.powf(-2.0f32 / n_rot as f32);
    let mut theta = pos as f32;
    for c in cache.iter_mut() {
        *c = (theta.cos(), theta.sin());
        theta *= theta_scale;
    }
}

#[inline]
fn rotate(head: &mut [f32], cache: &[(f32, f32)]) {
    let half = cache.len();
    for (i, &(cos, sin)) in cache.iter().enumerate() {
        let x0 = head[i];
        let x1 = head[i + half];
        head[i] = x0.mul_add(cos, -(x1 * sin));
        head[i + half] = x0.mul_add(sin, x1 * cos);
    }
}
