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
/// (`super::pack(n, k, w, LINES)`), for one block of at most [`MC`] rows: `x` is `m × k`
/// ([`pack_rows`]'s block), `out` is `m` rows of stride `n`. Each panel is taken in blocks of
/// [`KC`] steps, every row tile through one block before the next, the partial sums kept in
/// a contiguous `m × 16` buffer (rows of `out` a power-of-two apart would share the level-1
/// cache's sets) and copied to `out` once the panel is done. Each output is summed over `t` in
/// order, in one lane, so its value depends on neither `m`, the tiling, the blocking nor the
/// threading.
///
/// # Safety
/// The CPU has AVX2 and FMA; `m ≤ MC`; `x` holds `m·k` elements ([`pack_rows`]'s layout),
/// `out` holds `(m − 1)·n + n` elements, `w` is `super::pack(n, k, .., LINES)`'s output;
/// `panels` lies within `0..n.div_ceil(PANEL)`; no other thread writes those panels' columns
/// of `out` meanwhile.
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
    assert!(m <= MC);
    let mut acc = [Line([0.0; 16]); MC];
    for p in panels {
        let b = w.add(p * k * LINES) as *const f32;
        let mut t0 = 0;
        while t0 < k {
            let kc = KC.min(k - t0);
            let first = t0 == 0;
            let b = b.add(t0 * PANEL);
            // The row tiles bring in the next block (the next panel's first after the last)
            // between them: tile `j` of `tiles` the lines `j`, `j + tiles`, … one every `tiles`
            // steps, so that the requests are spread over the whole block rather than queued
            // at once. Only addresses: running past the end is harmless.
            let next = b.wrapping_add(kc * PANEL);
            let tiles = m.div_ceil(MR);
            for (j, (i, rows)) in row_tiles(m).enumerate() {
                // The tile's rows of `x`, step-major ([`pack_rows`]), from step `t0` on.
                let (xi, ai) = (
                    x.add(i * k + t0 * rows),
                    acc.as_mut_ptr().add(i) as *mut f32,
                );
                let pf = (next.wrapping_add(j * PANEL), tiles);
                match rows {
                    1 => panel_tile::<1>(kc, xi, b, ai, first, pf),
                    2 => panel_tile::<2>(kc, xi, b, ai, first, pf),
                    3 => panel_tile::<3>(kc, xi, b, ai, first, pf),
                    4 => panel_tile::<4>(kc, xi, b, ai, first, pf),
                    5 => panel_tile::<5>(kc, xi, b, ai, first, pf),
                    _ => panel_tile::<6>(kc, xi, b, ai, first, pf),
                }
            }
            t0 += kc;
        }
        let cols = (n - p * PANEL).min(PANEL);
        let out = out.add(p * PANEL);
        for (r, a) in acc.iter().enumerate().take(m) {
            let (a, o) = (a.0.as_ptr(), out.add(r * n));
            if cols == PANEL {
                _mm256_storeu_ps(o, _mm256_load_ps(a));
                _mm256_storeu_ps(o.add(8), _mm256_load_ps(a.add(8)));
            } else {
                std::ptr::copy_nonoverlapping(a, o, cols);
            }
        }
    }
}

/// `R` rows of `x` against `kc` steps of one panel `b`, added to the partial sums `acc` (`R`
/// rows of [`PANEL`]; zero instead where `first`), while the lines `prefetch.0`,
/// `prefetch.0 + prefetch.1`, … are brought in, one every `prefetch.1` steps.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn panel_tile<const R: usize>(
    kc: usize,
    x: *const f32,
    b: *const f32,
    acc: *mut f32,
    first: bool,
    prefetch: (*const f32, usize),
) {
    let mut a = [[_mm256_setzero_ps(); 2]; R];
    if !first {
        for (r, a) in a.iter_mut().enumerate() {
            a[0] = _mm256_load_ps(acc.add(r * PANEL));
            a[1] = _mm256_load_ps(acc.add(r * PANEL + 8));
        }
    }
    let (mut pf, every) = prefetch;
    let mut wait = 1;
    for t in 0..kc {
        wait -= 1;
        if wait == 0 {
            _mm_prefetch::<_MM_HINT_T0>(pf as *const i8);
            pf = pf.wrapping_add(every * PANEL);
            wait = every;
        }
        step(&mut a, x.add(t * R), b.add(t * PANEL));
    }
    for (r, a) in a.iter().enumerate() {
        _mm256_store_ps(acc.add(r * PANEL), a[0]);
        _mm256_store_ps(acc.add(r * PANEL + 8), a[1]);
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
    for (i, mc) in row_blocks(m) {
        pack_block(
            mc,
            k,
            &x[i * k..(i + mc) * k],
            &mut out[i * k..(i + mc) * k],
        );
    }
    out
}

/// One block of [`pack_rows`]: `m` rows in [`row_tiles`].
fn pack_block(m: usize, k: usize, x: &[f32], out: &mut [f32]) {
    for (i, rows) in row_tiles(m) {
        let (src, dst) = (&x[i * k..(i + rows) * k], &mut out[i * k..(i + rows) * k]);
        match rows {
            1 => dst.copy_from_slice(src),
            2 => pack_tile::<2>(src, dst),
            3 => pack_tile::<3>(src, dst),
            4 => pack_tile::<4>(src, dst),
            5 => pack_tile::<5>(src, dst),
            _ => pack_tile::<6>(src, dst),
        }
    }
}

/// `R` rows of `src` (`R × k`) into `dst` step-major: `dst[t·R + r] = src[r·k + t]`.
fn pack_tile<const R: usize>(src: &[f32], dst: &mut [f32]) {
    let k = src.len() / R;
    let mut rows: [std::slice::Iter<f32>; R] =
        std::array::from_fn(|r| src[r * k..(r + 1) * k].iter());
    for d in dst.chunks_exact_mut(R) {
        for (d, row) in d.iter_mut().zip(rows.iter_mut()) {
            *d = *row.next().expect("k steps in every row");
        }
    }
}

/// Rows in a block of `x`: a block (`MC · k` values, 192 KiB at `k` = 512) stays in the
/// level-2 cache while every panel of the weight multiplies it.
pub(super) const MC: usize = 96;

/// The row blocks of `m` rows, `(first row, rows)`: at most [`MC`] rows each, as even as
/// they go.
pub(super) fn row_blocks(m: usize) -> impl Iterator<Item = (usize, usize)> {
    even_split(m, MC)
}

/// `m` split into `m.div_ceil(most)` runs as even as they go, `(first, len)`.
fn even_split(m: usize, most: usize) -> impl Iterator<Item = (usize, usize)> {
    let parts = m.div_ceil(most);
    (0..parts).scan(0, move |start, part| {
        let len = m / parts + usize::from(part < m % parts);
        let first = *start;
        *start += len;
        Some((first, len))
    })
}

/// The row tiles of `m` rows, `(first row, rows)`: at most [`MR`] rows each, as even as they go
/// (32 rows: 6 6 5 5 5 5), since a short last tile (6 6 6 6 6 2) would leave the FMA units
/// waiting on its few accumulators.
pub(super) fn row_tiles(m: usize) -> impl Iterator<Item = (usize, usize)> {
    even_split(m, MR)
}
