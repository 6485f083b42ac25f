//! Vectorised math for the inference kernels: `exp` and SwiGLU's `silu(g) · u` on AVX-512.
//!
//! `exp` is Cephes' `expf` (range reduction by `ln 2` in two parts, a degree-7 polynomial,
//! `2ⁿ` applied with `vscalefps`), within a few ulp of the exact value over the whole f32
//! range where the result is normal; tests hold it to an f64 `exp`. Libm's `expf` is a
//! function call per element and was 6% of a rollout's samples (decode's SwiGLU).
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Whether this CPU has the vector kernels (AVX-512F).
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The mask of the first `n` of 16 lanes (all of them from 16 on): a loop's tail, or the
/// columns of a partial panel.
pub(crate) fn first_lanes(n: usize) -> u16 {
    ((1u32 << n.min(16)) - 1) as u16
}

/// `e^x` on 16 lanes; inputs are clamped to ±88.376 (the result saturates near `f32::MAX`
/// and near 0, where the exact value overflows or is subnormal).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn exp16(x: __m512) -> __m512 {
    let x = _mm512_min_ps(
        _mm512_max_ps(x, _mm512_set1_ps(-88.376)),
        _mm512_set1_ps(88.376),
    );
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    // r = x − n·ln 2, with ln 2 in two parts so that r is exact to about 2⁻³².
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm512_set1_ps(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let r2 = _mm512_mul_ps(r, r);
    let p = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0)));
    _mm512_scalef_ps(p, n)
}

/// `e^x` for each element of `xs`, into `out` (same length): the tests' window on `exp16`.
///
/// # Safety
/// The CPU has AVX-512F ([`available`]).
#[cfg(all(test, target_arch = "x86_64"))]
#[target_feature(enable = "avx512f")]
unsafe fn exp(xs: &[f32], out: &mut [f32]) {
    assert_eq!(xs.len(), out.len());
    let mut i = 0;
    while i < xs.len() {
        let mask = first_lanes(xs.len() - i);
        let x = _mm512_maskz_loadu_ps(mask, xs.as_ptr().add(i));
        _mm512_mask_storeu_ps(out.as_mut_ptr().add(i), mask, exp16(x));
        i += 16;
    }
}

/// `out = silu(g) · u = g · u / (1 + e^(−g))`, elementwise over slices of one length.
///
/// # Safety
/// The CPU has AVX-512F ([`available`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn silu_mul(g: &[f32], u: &[f32], out: &mut [f32]) {
    assert!(g.len() == out.len() && u.len() == out.len());
    let one = _mm512_set1_ps(1.0);
    let mut i = 0;
    while i < g.len() {
        let mask = first_lanes(g.len() - i);
        let gv = _mm512_maskz_loadu_ps(mask, g.as_ptr().add(i));
        let uv = _mm512_maskz_loadu_ps(mask, u.as_ptr().add(i));
        let e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), gv));
        let y = _mm512_div_ps(_mm512_mul_ps(gv, uv), _mm512_add_ps(one, e));
        _mm512_mask_storeu_ps(out.as_mut_ptr().add(i), mask, y);
        i += 16;
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_a_few_ulp_of_f64() {
        if !available() {
            return;
        }
        // A sweep across the normal range (and past it, where the result saturates), plus
        // the points where the range reduction switches n.
        let mut xs: Vec<f32> = (-870_000..=880_000).map(|i| i as f32 * 1e-4).collect();
        xs.extend([0.0, -0.0, 0.346_573_6, -0.346_573_6, 1e-8, -1e-8]);
        let mut out = vec![0f32; xs.len()];
        unsafe { exp(&xs, &mut out) };
        let mut worst = 0f64;
        for (&x, &y) in xs.iter().zip(&out) {
            let want = (x as f64).exp();
            let rel = ((y as f64 - want) / want).abs();
            worst = worst.max(rel);
            assert!(
                rel < 4.0 * f32::EPSILON as f64,
                "exp({x}) = {y}, want {want}: {rel}"
            );
        }
        assert!(worst > 0.0, "compared against something");
        // Beyond the clamp: finite and saturated, never NaN.
        let far = [
            -1000.0f32,
            -100.0,
            100.0,
            1000.0,
            f32::NEG_INFINITY,
            f32::INFINITY,
        ];
        let mut o = [0f32; 6];
        unsafe { exp(&far, &mut o) };
        assert!(o[..2].iter().all(|&v| (0.0..1e-37).contains(&v)), "{o:?}");
        assert!(o[2..4].iter().all(|&v| v > 1e38 && v.is_finite()), "{o:?}");
        assert!(o[4] < 1e-37 && o[5] > 1e38, "{o:?}");
    }

    #[test]
    fn silu_mul_matches_the_scalar_formula_on_every_length() {
        if !available() {
            return;
        }
        for len in [1usize, 15, 16, 17, 33, 1408] {
            let g: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin() * 12.0).collect();
            let u: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos() * 3.0).collect();
            let mut out = vec![f32::NAN; len];
            unsafe { silu_mul(&g, &u, &mut out) };
            for i in 0..len {
                let (gv, uv) = (g[i] as f64, u[i] as f64);
                let want = gv * uv / (1.0 + (-gv).exp());
                let err = (out[i] as f64 - want).abs();
                assert!(
                    err <= 4e-7 * want.abs().max(1e-6),
                    "{len} at {i}: {} vs {want}",
                    out[i]
                );
            }
        }
        // A large negative gate gives (about) −0, not NaN; a large positive one gives g·u.
        let mut out = [0f32; 2];
        unsafe { silu_mul(&[-1000.0, 1000.0], &[2.0, 2.0], &mut out) };
        assert!(out[0] <= 0.0 && out[0] > -1e-30, "{}", out[0]);
        assert_eq!(out[1], 2000.0);
    }
}
