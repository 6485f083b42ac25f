//! Vectorised math for the inference kernels: `exp` and SwiGLU's `silu(g) · u`, on AVX-512 or
//! on AVX2 with FMA, whichever this CPU has ([`isa`]).
//!
//! `exp` (for a softmax: [`exp_in_place`]) is Cephes' `expf` (range reduction by `ln 2` in two parts, a degree-7 polynomial,
//! then `2ⁿ`: `vscalefps` on AVX-512, the exponent field built from `n` on AVX2), within a few
//! ulp of the exact value over the whole f32 range where the result is normal; tests hold
//! each instruction set's version to an f64 `exp`. Libm's `expf` is a function call per
//! element and was 6% of a rollout's samples (decode's SwiGLU).
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// A vector instruction set this CPU has. Only [`Isa::all`] makes one, after a CPU check
/// (its field is private to this module), so holding one is the proof that the kernels
/// written for that set may run: the safe functions that take an `Isa` rely on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Isa(Set);

/// The instruction sets the kernels are written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Set {
    /// AVX-512F: 16 lanes, masked tails.
    Avx512,
    /// AVX2 with FMA: 8 lanes (AMD Zen 1–3, Intel before Skylake-SP, most laptops).
    Avx2,
}

impl Isa {
    /// Every instruction set this CPU can run, best first.
    pub(crate) fn all() -> Vec<Isa> {
        let mut out = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") {
                out.push(Isa(Set::Avx512));
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                out.push(Isa(Set::Avx2));
            }
        }
        out
    }

    /// Which set it is.
    pub(crate) fn set(self) -> Set {
        self.0
    }
}

/// The best vector instruction set this CPU has, if any (looked up once).
pub(crate) fn isa() -> Option<Isa> {
    static BEST: std::sync::OnceLock<Option<Isa>> = std::sync::OnceLock::new();
    *BEST.get_or_init(|| Isa::all().into_iter().next())
}

/// Whether this CPU has the vector kernels (AVX-512F, or AVX2 with FMA).
pub(crate) fn available() -> bool {
    isa().is_some()
}

/// Whether this CPU has AVX2 and FMA (the 8-lane kernels; AVX-512 CPUs have them too).
pub(crate) fn avx2() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| Isa::all().iter().any(|i| i.set() == Set::Avx2))
}

/// The mask of the first `n` of 16 lanes (all of them from 16 on): a loop's tail, or the
/// columns of a partial panel.
pub(crate) fn first_lanes(n: usize) -> u16 {
    ((1u32 << n.min(16)) - 1) as u16
}

/// Cephes' `expf` constants: `ln 2` in two parts and the polynomial's coefficients (highest
/// degree first), shared by both instruction sets.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
const POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    0.166_666_65,
    0.5,
];
/// Inputs are clamped to `±CLAMP`: `n = round(x·log₂e)` then stays within `±127`.
const CLAMP: f32 = 88.376;

/// `e^x` on 16 lanes; inputs are clamped to ±88.376 (the result saturates near `f32::MAX`
/// where the exact value overflows), and a result below `f32::MIN_POSITIVE` is 0 ([`flush`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn exp16(x: __m512) -> __m512 {
    let x = _mm512_min_ps(
        _mm512_max_ps(x, _mm512_set1_ps(-CLAMP)),
        _mm512_set1_ps(CLAMP),
    );
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    // r = x − n·ln 2, with ln 2 in two parts so that r is exact to about 2⁻³².
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
    let mut p = _mm512_set1_ps(POLY[0]);
    for c in &POLY[1..] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
    }
    let r2 = _mm512_mul_ps(r, r);
    let p = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0)));
    let e = _mm512_scalef_ps(p, n);
    _mm512_maskz_mov_ps(
        _mm512_cmp_ps_mask::<_CMP_GE_OQ>(e, _mm512_set1_ps(f32::MIN_POSITIVE)),
        e,
    )
}

/// `e^x` on 8 lanes, as [`exp16`] computes it (subnormal results 0 as there); `2ⁿ` is built in
/// the exponent field (`n` lies within ±127 after the clamp, where `2⁻¹²⁷` reads as 0).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn exp8(x: __m256) -> __m256 {
    let x = _mm256_min_ps(
        _mm256_max_ps(x, _mm256_set1_ps(-CLAMP)),
        _mm256_set1_ps(CLAMP),
    );
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
    let mut p = _mm256_set1_ps(POLY[0]);
    for c in &POLY[1..] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*c));
    }
    let r2 = _mm256_mul_ps(r, r);
    let p = _mm256_fmadd_ps(p, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0)));
    let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(n),
        _mm256_set1_epi32(127),
    ));
    let e = _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
    _mm256_and_ps(
        e,
        _mm256_cmp_ps::<_CMP_GE_OQ>(e, _mm256_set1_ps(f32::MIN_POSITIVE)),
    )
}

/// `x`, or 0 where `x` is subnormal (nonzero, of magnitude below `f32::MIN_POSITIVE`).
///
/// The softmax family's kernels write their results through it (and [`exp_in_place`] and
/// [`exp_sum`] never produce one): on Intel CPUs a multiply-add with a subnormal operand takes
/// a microcode assist, about 100× slower, and the products downstream of a softmax (attention's
/// `P·V` and its backward, the LM head's backward) read millions of them when probabilities
/// underflow. The change to any result is below `f32::MIN_POSITIVE` in absolute value.
#[inline]
pub(crate) fn flush(x: f32) -> f32 {
    if x.abs() < f32::MIN_POSITIVE {
        0.0
    } else {
        x
    }
}

/// `silu(g) · u = g · u / (1 + e^(−g))` for one element (the vector loops' tails, and CPUs
/// without either instruction set).
fn silu_mul_one(g: f32, u: f32) -> f32 {
    g * u / (1.0 + (-g).exp())
}

/// `out = silu(g) · u = g · u / (1 + e^(−g))`, elementwise over slices of one length, on the
/// best instruction set this CPU has ([`isa`]; a scalar loop where it has neither).
pub(crate) fn silu_mul(g: &[f32], u: &[f32], out: &mut [f32]) {
    silu_mul_on(isa(), g, u, out)
}

/// [`silu_mul`] on the instruction set `isa` (which this CPU must have).
fn silu_mul_on(isa: Option<Isa>, g: &[f32], u: &[f32], out: &mut [f32]) {
    assert!(g.len() == out.len() && u.len() == out.len());
    match isa {
        // SAFETY: `isa` is one this CPU has (`Isa::all`).
        #[cfg(target_arch = "x86_64")]
        Some(Isa(Set::Avx512)) => unsafe { silu_mul_avx512(g, u, out) },
        #[cfg(target_arch = "x86_64")]
        Some(Isa(Set::Avx2)) => unsafe { silu_mul_avx2(g, u, out) },
        _ => {
            for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
                *o = silu_mul_one(g, u);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn silu_mul_avx512(g: &[f32], u: &[f32], out: &mut [f32]) {
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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn silu_mul_avx2(g: &[f32], u: &[f32], out: &mut [f32]) {
    let one = _mm256_set1_ps(1.0);
    let full = g.len() - g.len() % 8;
    let mut i = 0;
    while i < full {
        let gv = _mm256_loadu_ps(g.as_ptr().add(i));
        let uv = _mm256_loadu_ps(u.as_ptr().add(i));
        let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), gv));
        let y = _mm256_div_ps(_mm256_mul_ps(gv, uv), _mm256_add_ps(one, e));
        _mm256_storeu_ps(out.as_mut_ptr().add(i), y);
        i += 8;
    }
    // The tail through one padded vector, so that every element takes the same arithmetic.
    if full < g.len() {
        let (mut gt, mut ut, mut ot) = ([0f32; 8], [0f32; 8], [0f32; 8]);
        let rest = g.len() - full;
        gt[..rest].copy_from_slice(&g[full..]);
        ut[..rest].copy_from_slice(&u[full..]);
        silu_mul_avx2(&gt, &ut, &mut ot);
        out[full..].copy_from_slice(&ot[..rest]);
    }
}

/// `x ← e^x` for each element of `xs`, on the best instruction set this CPU has ([`isa`]; libm's
/// `expf` where it has neither): a softmax's exponentials. A result that would be subnormal
/// is 0 ([`flush`]).
pub(crate) fn exp_in_place(xs: &mut [f32]) {
    exp_in_place_on(isa(), xs)
}

/// [`exp_in_place`] on the instruction set `isa` (which this CPU must have).
fn exp_in_place_on(isa: Option<Isa>, xs: &mut [f32]) {
    match isa {
        // SAFETY: `isa` is one this CPU has (`Isa::all`).
        #[cfg(target_arch = "x86_64")]
        Some(Isa(Set::Avx512)) => unsafe { exp_avx512(xs) },
        #[cfg(target_arch = "x86_64")]
        Some(Isa(Set::Avx2)) => unsafe { exp_avx2(xs) },
        _ => xs.iter_mut().for_each(|x| *x = flush(x.exp())),
    }
}

/// `Σ e^(x − shift)` over `xs` (a log-sum-exp's sum), on the best instruction set this CPU
/// has, without writing the exponentials anywhere.
pub(crate) fn exp_sum(xs: &[f32], shift: f32) -> f32 {
    exp_sum_on(isa(), xs, shift)
}

/// [`exp_sum`] on the instruction set `isa` (which this CPU must have): blocks of 64 through
/// [`exp_in_place_on`] on the stack.
fn exp_sum_on(isa: Option<Isa>, xs: &[f32], shift: f32) -> f32 {
    let mut buf = [0f32; 64];
    let mut sum = 0f32;
    for c in xs.chunks(64) {
        let b = &mut buf[..c.len()];
        b.iter_mut().zip(c).for_each(|(b, x)| *b = x - shift);
        exp_in_place_on(isa, b);
        sum += b.iter().sum::<f32>();
    }
    sum
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp_avx512(xs: &mut [f32]) {
    let mut i = 0;
    while i < xs.len() {
        let mask = first_lanes(xs.len() - i);
        let x = _mm512_maskz_loadu_ps(mask, xs.as_ptr().add(i));
        _mm512_mask_storeu_ps(xs.as_mut_ptr().add(i), mask, exp16(x));
        i += 16;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_avx2(xs: &mut [f32]) {
    let mut chunks = xs.chunks_exact_mut(8);
    for c in &mut chunks {
        _mm256_storeu_ps(c.as_mut_ptr(), exp8(_mm256_loadu_ps(c.as_ptr())));
    }
    let rest = chunks.into_remainder();
    if !rest.is_empty() {
        let mut buf = [0f32; 8];
        buf[..rest.len()].copy_from_slice(rest);
        _mm256_storeu_ps(buf.as_mut_ptr(), exp8(_mm256_loadu_ps(buf.as_ptr())));
        let n = rest.len();
        rest.copy_from_slice(&buf[..n]);
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_a_few_ulp_of_f64_on_every_instruction_set_and_saturates() {
        // A sweep across the normal range (and past it, where the result saturates), plus
        // the points where the range reduction switches n.
        let mut xs: Vec<f32> = (-870_000..=880_000).map(|i| i as f32 * 1e-4).collect();
        xs.extend([0.0, -0.0, 0.346_573_6, -0.346_573_6, 1e-8, -1e-8]);
        for isa in Isa::all().into_iter().map(Some).chain([None]) {
            let mut out = xs.clone();
            exp_in_place_on(isa, &mut out);
            let mut worst = 0f64;
            for (&x, &y) in xs.iter().zip(&out) {
                let want = (x as f64).exp();
                let rel = ((y as f64 - want) / want).abs();
                worst = worst.max(rel);
                assert!(
                    rel < 4.0 * f32::EPSILON as f64,
                    "{isa:?}: exp({x}) = {y}, want {want}: {rel}"
                );
            }
            assert!(worst > 0.0, "compared against something");
            if isa.is_none() {
                continue; // libm: overflows to infinity, as it should
            }
            // Beyond the clamp: finite and saturated, never NaN.
            let far = [
                -1000.0f32,
                -100.0,
                100.0,
                1000.0,
                f32::NEG_INFINITY,
                f32::INFINITY,
            ];
            let mut o = far;
            exp_in_place_on(isa, &mut o);
            assert!(
                o[..2].iter().all(|&v| (0.0..1e-37).contains(&v)),
                "{isa:?}: {o:?}"
            );
            assert!(
                o[2..4].iter().all(|&v| v > 1e38 && v.is_finite()),
                "{isa:?}: {o:?}"
            );
            assert!(o[4] < 1e-37 && o[5] > 1e38, "{isa:?}: {o:?}");
        }
    }

    #[test]
    fn exp_sum_matches_f64_on_every_length_and_instruction_set() {
        for isa in Isa::all().into_iter().map(Some).chain([None]) {
            for len in [1usize, 7, 63, 64, 65, 2048, 2049] {
                let xs: Vec<f32> = (0..len).map(|i| (i as f32 * 0.71).sin() * 9.0).collect();
                let want: f64 = xs.iter().map(|&x| (x as f64 - 3.5).exp()).sum();
                let got = exp_sum_on(isa, &xs, 3.5) as f64;
                assert!(
                    ((got - want) / want).abs() < 1e-5,
                    "{isa:?} {len}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn silu_mul_matches_the_scalar_formula_on_every_length_and_instruction_set() {
        let isas = Isa::all().into_iter().map(Some).chain([None]);
        for isa in isas {
            for len in [1usize, 7, 8, 9, 15, 16, 17, 33, 1408] {
                let g: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin() * 12.0).collect();
                let u: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos() * 3.0).collect();
                let mut out = vec![f32::NAN; len];
                silu_mul_on(isa, &g, &u, &mut out);
                for i in 0..len {
                    let (gv, uv) = (g[i] as f64, u[i] as f64);
                    let want = gv * uv / (1.0 + (-gv).exp());
                    let err = (out[i] as f64 - want).abs();
                    assert!(
                        err <= 4e-7 * want.abs().max(1e-6),
                        "{isa:?} {len} at {i}: {} vs {want}",
                        out[i]
                    );
                }
            }
            // A large negative gate gives (about) −0, not NaN; a large positive one gives g·u.
            let mut out = [0f32; 2];
            silu_mul_on(isa, &[-1000.0, 1000.0], &[2.0, 2.0], &mut out);
            assert!(out[0] <= 0.0 && out[0] > -1e-30, "{isa:?}: {}", out[0]);
            assert_eq!(out[1], 2000.0, "{isa:?}");
        }
    }
}
