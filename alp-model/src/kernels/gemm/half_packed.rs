//! `out = x · wᵀ` with bf16 `x` and a bf16 weight packed once ([`super::HalfWeight`]), summed in
//! f32, on AVX-512: no f32 copy of the weight exists. An f16 weight is packed the same way and
//! multiplied by FMAs over its halves widened in registers ([`gemm_packed_f16`]).
//!
//! The packed layout is the one `vdpbf16ps` (AVX512-BF16) multiplies: panels of [`PANEL`]
//! output columns, and for each pair of steps `(2s, 2s + 1)` of `k` three vectors whose 32-bit
//! lane `c` holds `w[c, 2s]` (low half) and `w[c, 2s + 1]` (high half). A pair of `x`'s
//! values is broadcast against them, so each step adds `x[2s+1]·w[2s+1]` then `x[2s]·w[2s]`
//! to a lane's f32 sum (each product of two bf16 values is exact in f32; each addition rounds
//! to nearest even, as `vdpbf16ps` does). On AVX-512 CPUs without AVX512-BF16 the same
//! additions run as two fused multiply-adds over the halves widened in registers
//! ([`Dot::Widen`]), in the same order, so both give the same bits (tested where the CPU has
//! both); `super::linear_half_reference` is the plain loop both are held to. Each output is
//! summed over `k` in order in one lane, so its value depends on neither the number of rows,
//! the tiling nor the threading (batch invariance).
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::LineH;

/// Vectors of 16 output columns in a panel.
pub(super) const LINES: usize = 3;
/// Output columns in a panel.
pub(super) const PANEL: usize = 16 * LINES;
/// Rows of `x` in a tile.
pub(super) const MR: usize = 8;
/// Pairs of steps of `k` in a block: a panel's block (24 KiB) stays in the level-1 cache
/// while every row tile multiplies by it.
pub(super) const KCP: usize = 128;

/// How a step multiplies: AMX tiles, `vdpbf16ps`, or the halves widened to f32 and two
/// fused multiply-adds (AVX-512F alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dot {
    /// AMX-BF16's `tdpbf16ps` on 16-row tiles of `x` against 16-column tiles of a panel, for
    /// `k` a multiple of 32 (the others take [`Dot::Bf16`]): on a CPU with AMX (Intel Xeon
    /// from Sapphire Rapids on) about three times `vdpbf16ps`'s rate. The tile unit sums each
    /// output in its own order, so its bits are not the plain loop's (within rounding of it,
    /// tested); they still depend on neither the rows around nor the threading.
    Amx,
    /// AVX512-BF16's `vdpbf16ps`.
    Bf16,
    /// AVX-512F: shifts and two FMAs, the same additions in the same order.
    Widen,
}

impl Dot {
    /// The best way this CPU has, if it has AVX-512F.
    pub(crate) fn detect() -> Option<Dot> {
        static BEST: std::sync::OnceLock<Option<Dot>> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| Dot::all().into_iter().next())
    }

    /// Every way this CPU can run, best first.
    pub(crate) fn all() -> Vec<Dot> {
        let mut out = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") {
                if std::is_x86_feature_detected!("avx512bf16") {
                    if amx::available() {
                        out.push(Dot::Amx);
                    }
                    out.push(Dot::Bf16);
                }
                out.push(Dot::Widen);
            }
        }
        out
    }
}

/// `w` (`n × k` bf16 bits, row-major) as panels of [`PANEL`] columns in pairs of steps: panel
/// `p`, pair `s`, line `l`, lane `c` holds `w[j, 2s]` in its low and `w[j, 2s + 1]` in its
/// high 16 bits for `j = p·PANEL + 16·l + c`; columns past `n` and the step past an odd `k`
/// are zero.
pub(super) fn pack(n: usize, k: usize, w: &[u16]) -> Vec<LineH> {
    assert_eq!(w.len(), n * k, "pack: a {n}×{k} weight");
    let pairs = k.div_ceil(2);
    let panels = n.div_ceil(PANEL);
    let mut out = vec![LineH([0; 32]); panels * pairs * LINES];
    for (j, row) in w.chunks_exact(k.max(1)).enumerate().take(n) {
        let (p, c) = (j / PANEL, j % PANEL);
        let (line, lane) = (c / 16, c % 16);
        for (t, &v) in row.iter().enumerate() {
            out[(p * pairs + t / 2) * LINES + line].0[2 * lane + t % 2] = v;
        }
    }
    out
}

/// `w` (`n × k` f16 bits) as [`pack`]'s panels and pairs, each line split in halves instead of
/// interleaved: lane `c` of the low 256 bits holds `w[j, 2s]`, of the high 256 bits
/// `w[j, 2s + 1]`, so that each half widens with one `vcvtph2ps` and no shuffle.
pub(super) fn pack_f16(n: usize, k: usize, w: &[u16]) -> Vec<LineH> {
    assert_eq!(w.len(), n * k, "pack_f16: a {n}×{k} weight");
    let pairs = k.div_ceil(2);
    let panels = n.div_ceil(PANEL);
    let mut out = vec![LineH([0; 32]); panels * pairs * LINES];
    for (j, row) in w.chunks_exact(k.max(1)).enumerate().take(n) {
        let (p, c) = (j / PANEL, j % PANEL);
        let (line, lane) = (c / 16, c % 16);
        for (t, &v) in row.iter().enumerate() {
            out[(p * pairs + t / 2) * LINES + line].0[16 * (t % 2) + lane] = v;
        }
    }
    out
}

/// `out[i, j] = Σ_t x[i, t] · w[j, t]` (f32 sums) over the panels `panels` of a packed weight:
/// `x` is `m × k` bf16 bits, `out` is `m × n` f32, row-major. Each panel is taken in blocks of
/// [`KCP`] pairs, every row tile through one block before the next, the partial sums kept in
/// `out` in between.
///
/// # Safety
/// The CPU has what `dot` needs (a `Dot` from `Dot::all()`); `x` and `out` hold `m·k` and `m·n`
/// elements, `w` is [`pack`]`(n, k, ..)`'s output; `panels` lies within
/// `0..n.div_ceil(PANEL)`; no other thread writes those panels' columns of `out` meanwhile.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_packed(
    dot: Dot,
    m: usize,
    n: usize,
    k: usize,
    x: *const u16,
    w: *const LineH,
    out: *mut f32,
    panels: std::ops::Range<usize>,
) {
    match dot {
        Dot::Amx if k.is_multiple_of(32) => amx::gemm_packed(m, n, k, x, w, out, panels),
        Dot::Amx | Dot::Bf16 => gemm_packed_bf16(m, n, k, x, w, out, panels),
        Dot::Widen => gemm_packed_widen(m, n, k, x, w, out, panels),
    }
}

/// The panel loop, one function per [`Dot`] (each compiled with its own target features, which
/// the tile it calls inlines).
macro_rules! panel_loop {
    ($name:ident, $tile:ident, $features:literal, $xt:ty) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name(
            m: usize,
            n: usize,
            k: usize,
            x: *const $xt,
            w: *const LineH,
            out: *mut f32,
            panels: std::ops::Range<usize>,
        ) {
            let pairs = k.div_ceil(2);
            for p in panels {
                let b = w.add(p * pairs * LINES);
                let cols = (n - p * PANEL).min(PANEL);
                let masks: [__mmask16; LINES] = std::array::from_fn(|l| {
                    crate::kernels::vmath::first_lanes(cols.saturating_sub(16 * l))
                });
                let out = out.add(p * PANEL);
                let mut s0 = 0;
                while s0 < pairs {
                    let kcp = KCP.min(pairs - s0);
                    let first = s0 == 0;
                    // A last pair with one step (odd `k`) is read as one value.
                    let odd_end = k % 2 == 1 && s0 + kcp == pairs;
                    let (b, x) = (b.add(s0 * LINES), x.add(2 * s0));
                    let next = b.wrapping_add(kcp * LINES) as *const u8;
                    let mut i = 0;
                    while i < m {
                        let rows = (m - i).min(MR);
                        let (xi, oi) = (x.add(i * k), out.add(i * n));
                        // The first row tile brings the next block in, a line a step.
                        let pf = if i == 0 { next } else { std::ptr::null() };
                        match rows {
                            1 => $tile::<1>(kcp, k, xi, b, oi, n, masks, first, odd_end, pf),
                            2 => $tile::<2>(kcp, k, xi, b, oi, n, masks, first, odd_end, pf),
                            3 => $tile::<3>(kcp, k, xi, b, oi, n, masks, first, odd_end, pf),
                            4 => $tile::<4>(kcp, k, xi, b, oi, n, masks, first, odd_end, pf),
                            5 => $tile::<5>(kcp, k, xi, b, oi, n, masks, first, odd_end, pf),
                            6 => $tile::<6>(kcp, k, xi, b, oi, n, masks, first, odd_end, pf),
                            7 => $tile::<7>(kcp, k, xi, b, oi, n, masks, first, odd_end, pf),
                            8 => $tile::<8>(kcp, k, xi, b, oi, n, masks, first, odd_end, pf),
                            _ => {}
                        }
                        i += rows;
                    }
                    s0 += kcp;
                }
            }
        }
    };
}

panel_loop!(gemm_packed_bf16, tile_bf16, "avx512f,avx512bf16", u16);
panel_loop!(gemm_packed_widen, tile_widen, "avx512f", u16);
panel_loop!(gemm_packed_widen_f16, tile_widen_f16, "avx512f", f32);

/// [`gemm_packed`] for an f16 weight (packed by [`pack_f16`]) and `x` already
/// widened to f32 (`m × k`): each step adds `x[2s+1]·w[2s+1]` then `x[2s]·w[2s]` by fused
/// multiply-adds over the halves widened in registers (a product of two f16 values is exact in
/// f32, so each addition rounds once, as the plain loop's), in order over `k` in one lane.
///
/// # Safety
/// The CPU has AVX-512F; the rest as [`gemm_packed`].
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_packed_f16(
    m: usize,
    n: usize,
    k: usize,
    x: *const f32,
    w: *const LineH,
    out: *mut f32,
    panels: std::ops::Range<usize>,
) {
    gemm_packed_widen_f16(m, n, k, x, w, out, panels)
}

/// The pair of `x`'s values at step pair `s` of a row, as one 32-bit word (low: step `2s`):
/// the second is 0 where `last_single` (an odd `k`'s last step, whose partner is not there).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn x_pair(x: *const u16, s: usize, last_single: bool) -> i32 {
    if last_single {
        *x.add(2 * s) as i32
    } else {
        (x.add(2 * s) as *const u32).read_unaligned() as i32
    }
}

/// Brings pair `s`'s lines of the next block in (nothing where `prefetch` is null: only the
/// first row tile of a block prefetches). Only addresses: prefetching past the end does not
/// fault.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn prefetch_step(prefetch: *const u8, s: usize) {
    if !prefetch.is_null() {
        for l in 0..LINES {
            _mm_prefetch::<_MM_HINT_T0>(prefetch.wrapping_add((s * LINES + l) * 64) as *const i8);
        }
    }
}

/// The accumulators of an `R`-row tile, loaded from `out` unless `first`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn load_acc<const R: usize>(
    out: *const f32,
    ldo: usize,
    masks: [__mmask16; LINES],
    first: bool,
) -> [[__m512; LINES]; R] {
    let mut acc = [[_mm512_setzero_ps(); LINES]; R];
    if !first {
        for (r, a) in acc.iter_mut().enumerate() {
            for (l, v) in a.iter_mut().enumerate() {
                // Masked-off lanes are not read, and a masked load does not fault on them.
                *v = _mm512_maskz_loadu_ps(masks[l], out.add(r * ldo).wrapping_add(16 * l));
            }
        }
    }
    acc
}

/// Writes an `R`-row tile's accumulators to `out` (the panel's columns only).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn store_acc<const R: usize>(
    acc: &[[__m512; LINES]; R],
    out: *mut f32,
    ldo: usize,
    masks: [__mmask16; LINES],
) {
    for (r, a) in acc.iter().enumerate() {
        for (l, v) in a.iter().enumerate() {
            _mm512_mask_storeu_ps(out.add(r * ldo).wrapping_add(16 * l), masks[l], *v);
        }
    }
}

/// One tile on `vdpbf16ps`: `R` rows of `x` (row stride `ldx`) against `kcp` pairs of one
/// panel block `b`, added to the partial sums in `out` (row stride `ldo`; zero where `first`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_bf16<const R: usize>(
    kcp: usize,
    ldx: usize,
    x: *const u16,
    b: *const LineH,
    out: *mut f32,
    ldo: usize,
    masks: [__mmask16; LINES],
    first: bool,
    odd_end: bool,
    prefetch: *const u8,
) {
    let mut acc = load_acc::<R>(out, ldo, masks, first);
    for s in 0..kcp {
        let wl: [__m512bh; LINES] = std::array::from_fn(|l| {
            std::mem::transmute::<__m512i, __m512bh>(_mm512_load_si512(
                b.add(s * LINES + l) as *const __m512i
            ))
        });
        prefetch_step(prefetch, s);
        let single = odd_end && s + 1 == kcp;
        for (r, a) in acc.iter_mut().enumerate() {
            let xp = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(x_pair(
                x.add(r * ldx),
                s,
                single,
            )));
            for l in 0..LINES {
                a[l] = _mm512_dpbf16_ps(a[l], xp, wl[l]);
            }
        }
    }
    store_acc::<R>(&acc, out, ldo, masks);
}

/// One tile on AVX-512F alone: [`tile_bf16`]'s additions, each pair's halves widened to f32 in
/// registers (a bf16 value is an f32's high 16 bits) and added by two fused multiply-adds, the
/// high half first as `vdpbf16ps` adds it.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_widen<const R: usize>(
    kcp: usize,
    ldx: usize,
    x: *const u16,
    b: *const LineH,
    out: *mut f32,
    ldo: usize,
    masks: [__mmask16; LINES],
    first: bool,
    odd_end: bool,
    prefetch: *const u8,
) {
    let mut acc = load_acc::<R>(out, ldo, masks, first);
    let high = _mm512_set1_epi32(0xFFFF_0000u32 as i32);
    for s in 0..kcp {
        let raw: [__m512i; LINES] =
            std::array::from_fn(|l| _mm512_load_si512(b.add(s * LINES + l) as *const __m512i));
        let w_hi: [__m512; LINES] =
            std::array::from_fn(|l| _mm512_castsi512_ps(_mm512_and_si512(raw[l], high)));
        let w_lo: [__m512; LINES] =
            std::array::from_fn(|l| _mm512_castsi512_ps(_mm512_slli_epi32::<16>(raw[l])));
        prefetch_step(prefetch, s);
        let single = odd_end && s + 1 == kcp;
        for (r, a) in acc.iter_mut().enumerate() {
            let pair = x_pair(x.add(r * ldx), s, single) as u32;
            let x_hi = _mm512_set1_ps(f32::from_bits(pair & 0xFFFF_0000));
            let x_lo = _mm512_set1_ps(f32::from_bits(pair << 16));
            for l in 0..LINES {
                a[l] = _mm512_fmadd_ps(x_hi, w_hi[l], a[l]);
                a[l] = _mm512_fmadd_ps(x_lo, w_lo[l], a[l]);
            }
        }
    }
    store_acc::<R>(&acc, out, ldo, masks);
}

/// One tile of an f16 weight on AVX-512F: [`tile_widen`]'s additions, the weight's halves
/// widened by `vcvtph2ps`, `x` read as f32 (widened once before the product).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_widen_f16<const R: usize>(
    kcp: usize,
    ldx: usize,
    x: *const f32,
    b: *const LineH,
    out: *mut f32,
    ldo: usize,
    masks: [__mmask16; LINES],
    first: bool,
    odd_end: bool,
    prefetch: *const u8,
) {
    let mut acc = load_acc::<R>(out, ldo, masks, first);
    for s in 0..kcp {
        // A line of [`pack_f16`]: the pair's first steps in its low half, second in its high.
        let half = |l: usize, h: usize| (b.add(s * LINES + l) as *const __m256i).add(h);
        let w_lo: [__m512; LINES] =
            std::array::from_fn(|l| _mm512_cvtph_ps(_mm256_load_si256(half(l, 0))));
        let w_hi: [__m512; LINES] =
            std::array::from_fn(|l| _mm512_cvtph_ps(_mm256_load_si256(half(l, 1))));
        prefetch_step(prefetch, s);
        // An odd `k`'s last step has no partner: its high half is not there.
        let single = odd_end && s + 1 == kcp;
        for (r, a) in acc.iter_mut().enumerate() {
            let xr = x.add(r * ldx + 2 * s);
            let x_lo = _mm512_set1_ps(*xr);
            if single {
                for l in 0..LINES {
                    a[l] = _mm512_fmadd_ps(x_lo, w_lo[l], a[l]);
                }
            } else {
                let x_hi = _mm512_set1_ps(*xr.add(1));
                for l in 0..LINES {
                    a[l] = _mm512_fmadd_ps(x_hi, w_hi[l], a[l]);
                    a[l] = _mm512_fmadd_ps(x_lo, w_lo[l], a[l]);
                }
            }
        }
    }
    store_acc::<R>(&acc, out, ldo, masks);
}

/// The AMX kernel: the tile configuration, the permission Linux asks for, and the panel loop.
#[cfg(target_arch = "x86_64")]
mod amx {
    use super::{LineH, LINES, PANEL};
    use std::arch::asm;

    /// Rows of `x` in a tile (and pairs of `k`'s steps in a weight tile).
    const TILE: usize = 16;
    /// Rows of `x` taken together through every panel of a thread's share: their tiles
    /// (256 KiB at `k` = 4,096) stay in the level-2 cache while the panels stream by.
    const MC: usize = 128;

    /// Whether the CPU has AMX-BF16 and this process may use it: CPUID leaf 7 lists AMX-TILE
    /// and AMX-BF16, and Linux grants the tile data state on request (`arch_prctl`
    /// `ARCH_REQ_XCOMP_PERM`, once per process; kernels before 5.16 refuse, and so does this).
    pub(super) fn available() -> bool {
        static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *OK.get_or_init(|| {
            // CPUID leaf 7 exists on every x86-64 CPU with AVX-512 (the caller's check).
            let leaf = std::arch::x86_64::__cpuid_count(7, 0);
            let (tile, bf16) = (leaf.edx >> 24 & 1 == 1, leaf.edx >> 22 & 1 == 1);
            if !(tile && bf16) || std::env::var_os("ALP_NO_AMX").is_some() {
                return false;
            }
            let ret: i64;
            // SAFETY: `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`: a system call that
            // reads no memory; rcx and r11 are the ones `syscall` clobbers.
            unsafe {
                asm!("syscall", inlateout("rax") 158i64 => ret, in("rdi") 0x1023i64,
                     in("rsi") 18i64, lateout("rcx") _, lateout("r11") _, options(nostack));
            }
            ret == 0
        })
    }

    /// The 64-byte tile configuration `ldtilecfg` reads (palette 1).
    #[repr(C, align(64))]
    struct Config {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        colsb: [u16; 16],
        rows: [u8; 16],
    }

    /// Configures this thread's tiles for `rows` rows of `x`: tmm0–2 the sums (`rows` × 16
    /// f32), tmm3 `x` (`rows` × 32 bf16), tmm4–6 the weight (16 pairs × 16 columns).
    ///
    /// # Safety
    /// AMX is [`available`]; `rows` is 1 to 16.
    #[inline]
    unsafe fn configure(rows: usize) {
        let mut c = Config {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb: [0; 16],
            rows: [0; 16],
        };
        for t in 0..4 {
            c.colsb[t] = 64;
            c.rows[t] = rows as u8;
        }
        for t in 4..7 {
            c.colsb[t] = 64;
            c.rows[t] = TILE as u8;
        }
        asm!("ldtilecfg [{}]", in(reg) &c as *const Config, options(nostack, readonly));
    }

    /// [`super::gemm_packed`] on AMX tiles, for `k` a multiple of 32.
    ///
    /// # Safety
    /// As [`super::gemm_packed`], with AMX [`available`] and `k % 32 == 0`.
    pub(super) unsafe fn gemm_packed(
        m: usize,
        n: usize,
        k: usize,
        x: *const u16,
        w: *const LineH,
        out: *mut f32,
        panels: std::ops::Range<usize>,
    ) {
        let pairs = k / 2;
        let mut sums = [0f32; TILE * PANEL];
        let mut configured = 0;
        let mut i0 = 0;
        while i0 < m {
            let mc = MC.min(m - i0);
            for p in panels.clone() {
                let b = w.add(p * pairs * LINES) as *const u8;
                let cols = (n - p * PANEL).min(PANEL);
                let mut i = i0;
                while i < i0 + mc {
                    let rows = TILE.min(i0 + mc - i);
                    if rows != configured {
                        configure(rows);
                        configured = rows;
                    }
                    tile(k, x.add(i * k), b, sums.as_mut_ptr());
                    for r in 0..rows {
                        std::ptr::copy_nonoverlapping(
                            sums.as_ptr().add(r * PANEL),
                            out.add((i + r) * n + p * PANEL),
                            cols,
                        );
                    }
                    i += rows;
                }
            }
            i0 += mc;
        }
        if configured != 0 {
            asm!("tilerelease", options(nostack, nomem));
        }
    }

    /// The configured rows of `x` (row stride `k`) against one whole panel `b`, the sums
    /// written to `sums` (`rows × PANEL`, row stride `PANEL`).
    #[inline]
    unsafe fn tile(k: usize, x: *const u16, b: *const u8, sums: *mut f32) {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            options(nostack, nomem)
        );
        let (xs, bs) = (2 * k, LINES * 64);
        let mut s = 0;
        while s < k / 2 {
            let a = x.add(2 * s);
            let b = b.add(s * LINES * 64);
            asm!(
                "tileloadd tmm3, [{a} + {xs}*1]",
                "tileloadd tmm4, [{b0} + {bs}*1]",
                "tileloadd tmm5, [{b1} + {bs}*1]",
                "tileloadd tmm6, [{b2} + {bs}*1]",
                "tdpbf16ps tmm0, tmm3, tmm4",
                "tdpbf16ps tmm1, tmm3, tmm5",
                "tdpbf16ps tmm2, tmm3, tmm6",
                a = in(reg) a,
                xs = in(reg) xs,
                b0 = in(reg) b,
                b1 = in(reg) b.add(64),
                b2 = in(reg) b.add(128),
                bs = in(reg) bs,
                options(nostack, readonly)
            );
            s += TILE;
        }
        let st = PANEL * 4;
        asm!(
            "tilestored [{o0} + {st}*1], tmm0",
            "tilestored [{o1} + {st}*1], tmm1",
            "tilestored [{o2} + {st}*1], tmm2",
            o0 = in(reg) sums,
            o1 = in(reg) sums.add(16),
            o2 = in(reg) sums.add(32),
            st = in(reg) st,
            options(nostack)
        );
    }
}
