//! `out = x · wᵀ` for few rows of `x`, on AVX-512: dot products along `k` over the weight's own
//! row-major layout, so the weight streams through once per call, in order, with no packing.
//!
//! A tile is [`MR`] rows of `x` by [`NR`] rows of `w`: 24 accumulators of 16 lanes, fed by 10
//! vector loads per 24 fused multiply-adds. Each output is one dot product summed in a fixed
//! order, whatever the tiling or the threading around it.
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::Line;

/// Rows of `x` in a tile.
pub(super) const MR: usize = 6;
/// Rows of `w` (output columns) in a tile.
pub(super) const NR: usize = 4;

/// `out[i, j] = Σ_t x[i, t] · w[j, t]` for the output columns `cols` (a range of `w`'s rows):
/// `x` is `m × k`, `w` is `n × k`, `out` is `m × n`, all row-major.
///
/// # Safety
/// The CPU has AVX-512F (an `Isa` of `Set::Avx512` from `Isa::all()`); `x`, `w` and `out` hold `m·k`,
/// `n·k` and `m·n` elements; `cols` lies within `0..n`; no other thread writes `out`'s columns
/// `cols` meanwhile.
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
    let mask = crate::kernels::vmath::first_lanes(rem);
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

/// Vectors of 16 output columns in a panel of a packed weight.
pub(super) const LINES: usize = 3;
/// Output columns in a panel of a packed weight ([`LINES`] [`Line`]s per step of `k`).
pub(super) const PANEL: usize = 16 * LINES;
/// Rows of `x` in a tile of the packed kernel.
pub(super) const PACKED_MR: usize = 8;
/// Steps of `k` in a block of the packed kernel: a panel's block stays in the level-1 cache
/// while every row tile multiplies by it.
pub(super) const KC: usize = 128;

/// `out[i, j] = Σ_t x[i, t] · w[j, t]` over the panels `panels` of a packed weight
/// (`super::pack(n, k, w, LINES)`): `x` is `m × k`, `out` is `m × n`, row-major. Each panel
/// is taken in blocks of [`KC`] steps, every row tile through one block before the next, the
/// partial sums kept in `out` in between. Each output is summed over `t` in order, in one
/// lane, so its value depends on neither `m`, the tiling, the blocking nor the threading.
///
/// # Safety
/// The CPU has AVX-512F (an `Isa` of `Set::Avx512` from `Isa::all()`); `x` and `out` hold `m·k` and
/// `m·n` elements, `w` is `super::pack(n, k, .., LINES)`'s output; `panels` lies within
/// `0..n.div_ceil(PANEL)`; no other thread writes those panels' columns of `out` meanwhile.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn gemm_packed(
    m: usize,
    n: usize,
    k: usize,
    x: *const f32,
    w: *const Line,
    out: *mut f32,
    panels: std::ops::Range<usize>,
) {
    for p in panels {
        let b = w.add(p * k * LINES) as *const f32;
        let cols = (n - p * PANEL).min(PANEL);
        let masks: [__mmask16; LINES] = std::array::from_fn(|l| {
            crate::kernels::vmath::first_lanes(cols.saturating_sub(16 * l))
        });
        let out = out.add(p * PANEL);
        let mut t0 = 0;
        while t0 < k {
            let kc = KC.min(k - t0);
            let first = t0 == 0;
            let (b, x) = (b.add(t0 * PANEL), x.add(t0));
            // Each step of each row tile prefetches one line ahead: the tiles of this block
            // together request the next block (the next panel's first after the last). One
            // tile alone requests all of it, three lines a step.
            let next = b.wrapping_add(kc * PANEL);
            // `rows` rows from row `i` (a multiple of the tile height) on `panel_tile::<rows, P>`.
            macro_rules! tile {
                ($p:expr, $rows:expr, $i:expr; $($r:literal)*) => {{
                    let (xi, oi) = (x.add($i * k), out.add($i * n));
                    let pf = next.wrapping_add($i / PACKED_MR * kc * 16);
                    match $rows {
                        $($r => panel_tile::<$r, { $p }>(kc, k, xi, b, oi, n, masks, first, pf),)*
                        _ => {}
                    }
                }};
            }
            if m <= PACKED_MR {
                tile!(LINES, m, 0; 1 2 3 4 5 6 7 8);
            } else {
                let mut i = 0;
                while i < m {
                    let rows = (m - i).min(PACKED_MR);
                    tile!(1, rows, i; 1 2 3 4 5 6 7 8);
                    i += rows;
                }
            }
            t0 += kc;
        }
    }
}

/// `R` rows of `x` (row stride `ldx`) against `kc` steps of one panel `b`, added
/// to the partial sums in `out` (row stride `ldo`; zero instead where `first`) where `masks`
/// select the panel's columns, while the lines from `prefetch` on are brought in, `P` a step.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn panel_tile<const R: usize, const P: usize>(
    kc: usize,
    ldx: usize,
    x: *const f32,
    b: *const f32,
    out: *mut f32,
    ldo: usize,
    masks: [__mmask16; LINES],
    first: bool,
    prefetch: *const f32,
) {
    let mut acc = [[_mm512_setzero_ps(); LINES]; R];
    if !first {
        for (r, a) in acc.iter_mut().enumerate() {
            for (l, v) in a.iter_mut().enumerate() {
                // Masked-off lanes are not read, and a masked load does not fault on them.
                *v = _mm512_maskz_loadu_ps(masks[l], out.add(r * ldo).wrapping_add(16 * l));
            }
        }
    }
    let xr: [*const f32; R] = std::array::from_fn(|r| x.add(r * ldx));
    for t in 0..kc {
        let bt = b.add(t * PANEL);
        let bv: [__m512; LINES] = std::array::from_fn(|l| _mm512_load_ps(bt.add(16 * l)));
        // Only an address: prefetching past the weight's end does not fault.
        for q in 0..P {
            _mm_prefetch::<_MM_HINT_T0>(prefetch.wrapping_add((t * P + q) * 16) as *const i8);
        }
        for (r, a) in acc.iter_mut().enumerate() {
            let xv = _mm512_set1_ps(*xr[r].add(t));
            for l in 0..LINES {
                a[l] = _mm512_fmadd_ps(xv, bv[l], a[l]);
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        for (l, v) in a.iter().enumerate() {
            // Masked-off lanes are not written, and a masked store does not fault on them.
            _mm512_mask_storeu_ps(out.add(r * ldo).wrapping_add(16 * l), masks[l], *v);
        }
    }
}
