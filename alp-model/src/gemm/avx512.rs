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
    crate::vmath::available()
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
    let mask = crate::vmath::first_lanes(rem);
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

/// Output columns in a panel of a packed weight ([`Line`]s of two vectors per step of `k`).
pub(super) const PANEL: usize = 32;
/// Rows of `x` in a tile of the packed kernel.
pub(super) const PACKED_MR: usize = 12;

/// Sixteen f32 lanes on a cache line: the unit of a packed weight.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct Line(pub(super) [f32; 16]);

/// `w` (`n × k`, row-major) as panels of [`PANEL`] output columns: panel `p`, step `t` holds
/// `w[p·32 .. p·32 + 32, t]` on two [`Line`]s, columns past `n` zero. Each panel is contiguous,
/// so the kernel streams it in order.
pub(super) fn pack(n: usize, k: usize, w: &[f32]) -> Vec<Line> {
    assert_eq!(w.len(), n * k, "pack: a {n}×{k} weight");
    let panels = n.div_ceil(PANEL);
    let mut out = vec![Line([0.0; 16]); panels * k * 2];
    for (j, row) in w.chunks_exact(k.max(1)).enumerate().take(n) {
        let (p, c) = (j / PANEL, j % PANEL);
        let (half, lane) = (c / 16, c % 16);
        for (t, &v) in row.iter().enumerate() {
            out[(p * k + t) * 2 + half].0[lane] = v;
        }
    }
    out
}

/// `out[i, j] = Σ_t x[i, t] · w[j, t]` over the panels `panels` of a packed weight ([`pack`]):
/// `x` is `m × k`, `out` is `m × n`, row-major. Each output is summed over `t` in order, in
/// one lane, so its value depends on neither `m`, the tiling nor the threading.
///
/// # Safety
/// The CPU has AVX-512F ([`available`]); `x` and `out` hold `m·k` and `m·n` elements, `w`
/// is `pack(n, k, ..)`'s output; `panels` lies within `0..n.div_ceil(PANEL)`; no other thread
/// writes those panels' columns of `out` meanwhile.
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
        let b = w.add(p * k * 2) as *const f32;
        let cols = (n - p * PANEL).min(PANEL);
        let lo = crate::vmath::first_lanes(cols);
        let hi = crate::vmath::first_lanes(cols.saturating_sub(16));
        let out = out.add(p * PANEL);
        let mut i = 0;
        while i + PACKED_MR <= m {
            panel_tile::<PACKED_MR>(k, x.add(i * k), b, out.add(i * n), n, lo, hi, i == 0);
            i += PACKED_MR;
        }
        let (x, out, pf) = (x.add(i * k), out.add(i * n), i == 0);
        macro_rules! rest {
            ($($r:literal)*) => {
                match m - i {
                    $($r => panel_tile::<$r>(k, x, b, out, n, lo, hi, pf),)*
                    _ => {}
                }
            };
        }
        rest!(1 2 3 4 5 6 7 8 9 10 11);
    }
}

/// `R` rows of `x` (stride `k`) against one panel `b` ([`pack`]), written to `out` (row stride
/// `ldo`) where the masks `lo`, `hi` select the panel's columns. The first row tile of a panel
/// (`prefetch`) brings the panel in from memory ahead of use; later tiles find it in cache.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn panel_tile<const R: usize>(
    k: usize,
    x: *const f32,
    b: *const f32,
    out: *mut f32,
    ldo: usize,
    lo: __mmask16,
    hi: __mmask16,
    prefetch: bool,
) {
    /// How far ahead the first tile prefetches: 4 KiB of the panel, 32 steps of `k`.
    const AHEAD: usize = 1024;
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    for t in 0..k {
        let b0 = _mm512_load_ps(b.add(t * PANEL));
        let b1 = _mm512_load_ps(b.add(t * PANEL + 16));
        if prefetch {
            // Only an address: prefetching past the weight's end does not fault.
            let ahead = b.wrapping_add(t * PANEL + AHEAD);
            _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(16) as *const i8);
        }
        for (r, a) in acc.iter_mut().enumerate() {
            let xv = _mm512_set1_ps(*x.add(r * k + t));
            a[0] = _mm512_fmadd_ps(xv, b0, a[0]);
            a[1] = _mm512_fmadd_ps(xv, b1, a[1]);
        }
    }
    for (r, a) in acc.iter().enumerate() {
        let o = out.add(r * ldo);
        _mm512_mask_storeu_ps(o, lo, a[0]);
        // Masked-off lanes are not written, and a masked store does not fault on them.
        _mm512_mask_storeu_ps(o.wrapping_add(16), hi, a[1]);
    }
}
