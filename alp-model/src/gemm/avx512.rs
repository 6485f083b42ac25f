//! `out = x · wᵀ` for few rows of `x`, on AVX-512: dot products along `k` over the weight's own
//! row-major layout, so the weight streams through once per call, in order, with no packing.
//!
//! A tile is [`MR`] rows of `x` by [`NR`] rows of `w`: 24 accumulators of 16 lanes, fed by 10
//! vector loads per 24 fused multiply-adds. Each output is one dot product summed in a fixed
//! order, whatever the tiling or the threading around it.
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Rows of `x` in a tile.
pub(super) const MR: usize = 6;
/// Rows of `w` (output columns) in a tile.
pub(super) const NR: usize = 4;

/// Whether this CPU has the kernel's instructions.
pub(super) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `out[i, j] = Σ_t x[i, t] · w[j, t]` for the output columns `cols` (a range of `w`'s rows):
/// `x` is `m × k`, `w` is `n × k`, `out` is `m × n`, all row-major.
///
/// # Safety
/// The CPU has AVX-512F ([`available`]); `x`, `w` and `out` hold `m·k`, `n·k` and `m·n` elements;
/// `cols` lies within `0..n`; no other thread writes `out`'s columns `cols` meanwhile.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn gemm_nt(
    m: usize,
    n: usize,
    k: usize,
    x: *const f32,
    w: *const f32,
    out: *mut f32,
    cols: std::ops::Range<usize>,
) {
    let rem = k % 16;
    let mask: __mmask16 = ((1u32 << rem) - 1) as u16;
    let mut j = cols.start;
    while j + NR <= cols.end {
        rows::<NR>(m, n, k, mask, x, w.add(j * k), out.add(j));
        j += NR;
    }
    while j < cols.end {
        rows::<1>(m, n, k, mask, x, w.add(j * k), out.add(j));
        j += 1;
    }
}

/// All rows of `x` against `C` rows of `w` (starting at `w`), written to `C` columns of `out`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn rows<const C: usize>(
    m: usize,
    n: usize,
    k: usize,
    mask: __mmask16,
    x: *const f32,
    w: *const f32,
    out: *mut f32,
) {
    // The first tile of the block prefetches the next block's weights (`C` rows further on),
    // which come from memory: a decode step's weights are far larger than the caches.
    let mut i = 0;
    while i + MR <= m {
        tile::<MR, C>(k, mask, x.add(i * k), w, out.add(i * n), n, i == 0);
        i += MR;
    }
    let (x, out, pf) = (x.add(i * k), out.add(i * n), i == 0);
    match m - i {
        0 => {}
        1 => tile::<1, C>(k, mask, x, w, out, n, pf),
        2 => tile::<2, C>(k, mask, x, w, out, n, pf),
        3 => tile::<3, C>(k, mask, x, w, out, n, pf),
        4 => tile::<4, C>(k, mask, x, w, out, n, pf),
        _ => tile::<5, C>(k, mask, x, w, out, n, pf),
    }
}

/// One `R × C` tile: `R` rows of `x` (stride `k`) against `C` rows of `w` (stride `k`), written
/// to `out` (row stride `ldo`). `mask` selects the last `k % 16` lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn tile<const R: usize, const C: usize>(
    k: usize,
    mask: __mmask16,
    x: *const f32,
    w: *const f32,
    out: *mut f32,
    ldo: usize,
    prefetch: bool,
) {
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    let full = k - k % 16;
    let mut t = 0;
    while t < full {
        let mut wv = [_mm512_setzero_ps(); C];
        for (q, v) in wv.iter_mut().enumerate() {
            *v = _mm512_loadu_ps(w.add(q * k + t));
        }
        if prefetch {
            // Only an address: prefetching past the weight's end does not fault.
            for q in 0..C {
                _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add((C + q) * k + t) as *const i8);
            }
        }
        for (r, a) in acc.iter_mut().enumerate() {
            let xv = _mm512_loadu_ps(x.add(r * k + t));
            for q in 0..C {
                a[q] = _mm512_fmadd_ps(xv, wv[q], a[q]);
            }
        }
        t += 16;
    }
    if mask != 0 {
        let mut wv = [_mm512_setzero_ps(); C];
        for (q, v) in wv.iter_mut().enumerate() {
            *v = _mm512_maskz_loadu_ps(mask, w.add(q * k + t));
        }
        for (r, a) in acc.iter_mut().enumerate() {
            let xv = _mm512_maskz_loadu_ps(mask, x.add(r * k + t));
            for q in 0..C {
                a[q] = _mm512_fmadd_ps(xv, wv[q], a[q]);
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        let o = out.add(r * ldo);
        if C == 4 {
            _mm_storeu_ps(o, reduce4(a[0], a[1], a[2], a[3]));
        } else {
            for (q, v) in a.iter().enumerate() {
                *o.add(q) = _mm512_reduce_add_ps(*v);
            }
        }
    }
}

/// The lane sums of four vectors, `[Σa, Σb, Σc, Σd]`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn reduce4(a: __m512, b: __m512, c: __m512, d: __m512) -> __m128 {
    // In each 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3], and the same for c, d.
    let ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    let cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
    // In each 128-bit lane: [a, b, c, d] partial sums.
    let (ab, cd) = (_mm512_castps_pd(ab), _mm512_castps_pd(cd));
    let abcd = _mm512_add_ps(
        _mm512_castpd_ps(_mm512_unpacklo_pd(ab, cd)),
        _mm512_castpd_ps(_mm512_unpackhi_pd(ab, cd)),
    );
    // The four 128-bit lanes summed.
    let lo = _mm512_castps512_ps256(abcd);
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(abcd)));
    let s = _mm256_add_ps(lo, hi);
    _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s))
}
