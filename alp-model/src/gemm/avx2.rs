//! `out = x · wᵀ` for few rows of `x` over a packed weight, on AVX2 with FMA: the packed
//! kernel for CPUs without AVX-512 (AMD Zen 1–3 among them).
//!
//! A panel is [`PANEL`] = 16 output columns, one cache line per step of `k` (two 8-lane
//! vectors). A tile is up to [`MR`] = 6 rows of `x` broadcast against it: 12 accumulators,
//! 2 loads and 6 broadcasts per 12 fused multiply-adds, 15 of the 16 vector registers. Each
//! panel is taken in blocks of [`KC`] steps (16 KiB) that stay in the level-1 cache while
//! every row tile uses them; the first tile of a block prefetches the next block, a line a
//! step. Each output is one FMA chain over `k` in order, as in the AVX-512 packed kernel, so
//! the two give the same bits.
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::Line;

/// Cache lines ([`Line`]s) per step of `k` in a panel.
pub(super) const LINES: usize = 1;
/// Output columns in a panel.
pub(super) const PANEL: usize = 16 * LINES;
/// Rows of `x` in a tile.
pub(super) const MR: usize = 6;
/// Steps of `k` in a block: a panel's block (16 KiB) stays in the level-1 cache while every
/// row tile multiplies by it.
pub(super) const KC: usize = 256;

/// `out[i, j] = Σ_t x[i, t] · w[j, t]` over the panels `panels` of a packed weight
/// (`super::pack(n, k, w, LINES)`): `x` is `m × k` ([`pack_rows`]), `out` is `m × n`,
/// row-major. Each panel
/// is taken in blocks of [`KC`] steps, every row tile through one block before the next, the
/// partial sums kept in `out` in between. Each output is summed over `t` in order, in one
/// lane, so its value depends on neither `m`, the tiling, the blocking nor the threading.
///
/// # Safety
/// The CPU has AVX2 and FMA; `x` is [`pack_rows`]`(m, k, ..)`'s output, `out` holds `m·n`
/// elements, `w` is
/// `super::pack(n, k, .., LINES)`'s output; `panels` lies within `0..n.div_ceil(PANEL)`; no
/// other thread writes those panels' columns of `out` meanwhile.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
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
        let out = out.add(p * PANEL);
        let mut t0 = 0;
        while t0 < k {
            let kc = KC.min(k - t0);
            let first = t0 == 0;
            let b = b.add(t0 * PANEL);
            // The first row tile brings in the next block (the next panel's first after the
            // last), one line a step; only an address, so running past the end is harmless.
            let next = b.wrapping_add(kc * PANEL);
            for (i, rows) in row_tiles(m) {
                // The tile's rows of `x`, step-major ([`pack_rows`]), from step `t0` on.
                let (xi, oi) = (x.add(i * k + t0 * rows), out.add(i * n));
                let pf = (i == 0).then_some(next);
                match rows {
                    1 => panel_tile::<1>(kc, xi, b, oi, n, cols, first, pf),
                    2 => panel_tile::<2>(kc, xi, b, oi, n, cols, first, pf),
                    3 => panel_tile::<3>(kc, xi, b, oi, n, cols, first, pf),
                    4 => panel_tile::<4>(kc, xi, b, oi, n, cols, first, pf),
                    5 => panel_tile::<5>(kc, xi, b, oi, n, cols, first, pf),
                    _ => panel_tile::<6>(kc, xi, b, oi, n, cols, first, pf),
                }
            }
            t0 += kc;
        }
    }
}

/// `R` rows of `x` (row stride `ldx`) against `kc` steps of one panel `b`, added to the
/// partial sums in the first `cols` columns of `out` (row stride `ldo`; zero instead where
/// `first`), while the lines from `prefetch` on (if any) are brought in, one a step.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn panel_tile<const R: usize>(
    kc: usize,
    x: *const f32,
    b: *const f32,
    out: *mut f32,
    ldo: usize,
    cols: usize,
    first: bool,
    prefetch: Option<*const f32>,
) {
    // A partial panel (the weight's last) goes through a scratch tile: no masked loads or
    // stores, which AVX2 has only in a slow form.
    let mut scratch = [[0f32; PANEL]; R];
    let whole = cols == PANEL;
    if !whole && !first {
        for (r, s) in scratch.iter_mut().enumerate() {
            std::ptr::copy_nonoverlapping(out.add(r * ldo), s.as_mut_ptr(), cols);
        }
    }
    let (base, stride) = if whole {
        (out, ldo)
    } else {
        (scratch.as_mut_ptr() as *mut f32, PANEL)
    };
    let row = |r: usize| base.wrapping_add(r * stride);
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    if !first {
        for (r, a) in acc.iter_mut().enumerate() {
            a[0] = _mm256_loadu_ps(row(r));
            a[1] = _mm256_loadu_ps(row(r).add(8));
        }
    }
    match prefetch {
        Some(pf) => {
            for t in 0..kc {
                _mm_prefetch::<_MM_HINT_T0>(pf.wrapping_add(t * PANEL) as *const i8);
                step(&mut acc, x.add(t * R), b.add(t * PANEL));
            }
        }
        None => {
            for t in 0..kc {
                step(&mut acc, x.add(t * R), b.add(t * PANEL));
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        _mm256_storeu_ps(row(r), a[0]);
        _mm256_storeu_ps(row(r).add(8), a[1]);
    }
    if !whole {
        for (r, s) in scratch.iter().enumerate() {
            std::ptr::copy_nonoverlapping(s.as_ptr(), out.add(r * ldo), cols);
        }
    }
}

/// One step of a tile: the step's `R` values of `x` (contiguous) each broadcast against the
/// panel's line `bt`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn step<const R: usize>(acc: &mut [[__m256; 2]; R], x: *const f32, bt: *const f32) {
    let (b0, b1) = (_mm256_load_ps(bt), _mm256_load_ps(bt.add(8)));
    for (r, a) in acc.iter_mut().enumerate() {
        let xv = _mm256_broadcast_ss(&*x.add(r));
        a[0] = _mm256_fmadd_ps(xv, b0, a[0]);
        a[1] = _mm256_fmadd_ps(xv, b1, a[1]);
    }
}

/// `x` (`m × k`, row-major) rearranged for [`gemm_packed`]: the rows in [`row_tiles`], a tile of `r` rows from row `i` stored step-major at `i·k`, its step
/// `t` the `r` values `x[i.., t]` at `i·k + t·r`. A step's broadcasts then read one short
/// run of memory at fixed offsets.
pub(super) fn pack_rows(m: usize, k: usize, x: &[f32]) -> Vec<f32> {
    assert_eq!(x.len(), m * k, "pack_rows: {m} rows of {k}");
    let mut out = vec![0f32; m * k];
    for (i, rows) in row_tiles(m) {
        let tile = &mut out[i * k..(i + rows) * k];
        for r in 0..rows {
            for (t, &v) in x[(i + r) * k..(i + r + 1) * k].iter().enumerate() {
                tile[t * rows + r] = v;
            }
        }
    }
    out
}

/// The row tiles of `m` rows, `(first row, rows)`: at most [`MR`] rows each, as even as they go
/// (32 rows: 6 6 5 5 5 5), since a short last tile (6 6 6 6 6 2) would leave the FMA units
/// waiting on its few accumulators.
pub(super) fn row_tiles(m: usize) -> impl Iterator<Item = (usize, usize)> {
    let tiles = m.div_ceil(MR);
    (0..tiles).scan(0, move |start, tile| {
        let rows = m / tiles + usize::from(tile < m % tiles);
        let first = *start;
        *start += rows;
        Some((first, rows))
    })
}
