//! Matrix products of the inference path, with the SIMD kernel chosen by shape.
//!
//! candle's CPU matmul calls the `gemm` crate, which picks one kernel family for the whole
//! process at its first call. alp builds it with its AVX-512 kernels (`x86-v4`), which it
//! picks on every CPU that has AVX-512: on a 2-core Intel Xeon they made the 25M training step
//! 1.4× faster than the AVX2/FMA kernels. Decode's products have few rows (one per sequence),
//! where gemm's AVX-512 kernels ran at less than half the speed of its FMA kernels, which in
//! turn ran at about half the CPU's peak. [`linear`] therefore sends an inference product with
//! at most [`SMALL_M_ROWS`] rows to a kernel made for few rows: alp's own AVX-512 kernel
//! (`avx512`: dot products over the weight's own layout, streamed once and prefetched) where
//! the CPU has AVX-512, gemm's AVX2/FMA kernels elsewhere; everything else goes to candle's
//! matmul.
//!
//! A weight that cannot change (the rollout engine's snapshot) can be packed once
//! ([`PackedWeight`], [`linear_packed`]) for a kernel that multiplies it as an outer product:
//! contiguous panels of output columns, rows of `x` broadcast against them, no lane
//! reductions, taken in blocks of `k` that stay in the level-1 cache while every row tile
//! uses them. There is one for AVX-512 (`avx512`: 48-column panels, 8-row tiles, blocks of
//! 128 steps) and one for AVX2 with FMA (`avx2`: 16-column panels, 6-row tiles, blocks of
//! 256 steps), and both sum each output in the same order, so they give the same bits. The
//! decoder packs each projection on its first decode step.
//!
//! A small product splits its output columns across candle's threads, unless the calling
//! thread asked for one ([`single_threaded`]): the rollout engine's shards, which already
//! run one per core, do, and their larger products (candle's matmul) then stay on the shard's
//! thread too.
//!
//! [`linear_reference`] is the candle composition that [`linear`] is tested against.
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};

mod avx2;
mod avx512;
mod half_packed;

use crate::kernels::vmath::{Isa, Set};

/// Inference products with at most this many rows take the small-product kernels.
///
/// Placed by `cargo bench --bench model -- linear` on a 2-core Intel Xeon (two threads,
/// 512 → 1408): gemm's FMA kernels ran 91, 104, 110, 114 and 116 GFLOP/s at 16, 32, 64, 128
/// and 256 rows, its AVX-512 kernels 32, 49, 80, 119 and 157.
pub const SMALL_M_ROWS: usize = 128;

/// Runs `f` with this thread's products computed on this thread alone (the small-product
/// kernels of [`linear`], and, with the workspace's patched candle-core, candle's matmul
/// through its `utils::matmul_on_this_thread`), and its row-wise kernels (`fused`,
/// `attention`) and (patched candle) candle's large element-wise ops too, for callers that
/// already keep every core busy (one decode shard per core): splitting each op across the
/// thread pool as well only adds hand-offs. With the registry's candle-core, candle's own
/// matmuls and element-wise ops still split across its pool: the same numbers, a slower
/// prefill (ARCHITECTURE.md, "candle-core patches").
pub fn single_threaded<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(candle_patched)]
    {
        candle_core::utils::matmul_on_this_thread(f)
    }
    #[cfg(not(candle_patched))]
    {
        struct Restore(bool);
        impl Drop for Restore {
            fn drop(&mut self) {
                ON_THIS_THREAD.with(|c| c.set(self.0));
            }
        }
        let _restore = Restore(ON_THIS_THREAD.with(|c| c.replace(true)));
        f()
    }
}

#[cfg(not(candle_patched))]
thread_local! {
    /// Inside [`single_threaded`] (without the patched candle-core, which keeps this flag).
    static ON_THIS_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Threads an inference op may use here (a small product, a row-wise kernel, attention): the
/// same as candle's matmul (1 inside [`single_threaded`]).
pub(crate) fn threads() -> usize {
    #[cfg(candle_patched)]
    {
        candle_core::utils::matmul_threads()
    }
    #[cfg(not(candle_patched))]
    {
        if ON_THIS_THREAD.with(|c| c.get()) {
            1
        } else {
            candle_core::utils::get_num_threads()
        }
    }
}

/// `x · wᵀ` for `x` of shape `[..., k]` and `w` of shape `[n, k]` (a `Linear` layer without
/// bias, as `candle_nn::Linear` computes it): a small-product kernel for f32 products of at
/// most [`SMALL_M_ROWS`] rows on an x86-64 CPU, candle's matmul otherwise. No backward: for
/// inference only.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let k = x.dim(candle_core::D::Minus1)?;
    let m = x.elem_count() / k.max(1);
    match Kernel::detect() {
        Some(kernel) if small_m_path(x, w) && m <= SMALL_M_ROWS && m > 0 => {
            let x = x.contiguous()?;
            x.apply_op2_no_bwd(w, &SmallM(kernel))
        }
        _ => linear_reference(x, w),
    }
}

/// A `[n, k]` weight laid out once for alp's packed kernels: panels of output columns, each
/// contiguous along `k` (48 columns for the AVX-512 kernel, 16 for the AVX2 one), so that a
/// decode step's product streams the weight in order and multiplies it as an outer product
/// (one broadcast of `x` per panel step, no reductions). It is a copy, as large as the weight:
/// the rollout engine's immutable snapshot makes one per projection on first use and reuses
/// it for every decode step.
///
/// Its measured rate against the dot-product kernel of [`linear`]: `docs/benchmarks.md`.
#[derive(Debug)]
pub struct PackedWeight {
    n: usize,
    k: usize,
    isa: Isa,
    lines: Vec<Line>,
}

impl PackedWeight {
    /// Packs `w` (`[n, k]`, f32 on the CPU) for the best packed kernel this CPU has (AVX-512F,
    /// or AVX2 with FMA); `None` on other CPUs, dtypes and devices, where [`linear`] is the
    /// path.
    pub fn new(w: &Tensor) -> Result<Option<Self>> {
        match crate::kernels::vmath::isa() {
            Some(isa) => Self::new_on(isa, w),
            None => Ok(None),
        }
    }

    /// [`PackedWeight::new`] for the kernel of `isa`, which this CPU must have.
    fn new_on(isa: Isa, w: &Tensor) -> Result<Option<Self>> {
        if !w.device().is_cpu() || w.dtype() != DType::F32 {
            return Ok(None);
        }
        let (n, k) = w.dims2()?;
        let rows = w.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        Ok(Some(PackedWeight {
            n,
            k,
            isa,
            lines: pack(n, k, &rows, panel_lines(isa)),
        }))
    }

    /// `dst[m×n] = lhs[m×k] · wᵀ`, the panels split across threads.
    fn run(&self, m: usize, dst: &mut [f32], lhs: &[f32]) {
        packed_gemm(self.isa, m, self.n, self.k, dst, lhs, &self.lines)
    }
}

/// A bf16 (`[n, k]`) weight laid out once for the half-precision kernel (`half_packed`): panels of 48
/// output columns, each step of the panel a pair of `k`'s steps as `vdpbf16ps` reads them. It
/// is bf16 like the weight (half an f32 copy's size) and is the only copy the inference path
/// makes of a bf16 weight on an AVX-512 CPU: every product over it, decode's few rows and
/// prefill's many alike, multiplies bf16 values and sums them in f32 ([`linear_half`]), on
/// AVX512-BF16 where the CPU has it and on AVX-512F alone with the same bits elsewhere. An
/// f16 weight is laid out the same way in f16 (each line's halves split) and multiplied by
/// FMAs over its values widened in registers. [`linear_half_reference`] is the plain loop it
/// is held to.
#[derive(Debug)]
pub struct HalfWeight {
    n: usize,
    k: usize,
    dot: half_packed::Dot,
    /// An f16 weight (multiplied by FMAs over its widened halves whatever `dot` says).
    f16: bool,
    lines: Vec<LineH>,
}

impl HalfWeight {
    /// Packs `w` (`[n, k]`, bf16 or f16 on the CPU) where the CPU has AVX-512F; `None` on
    /// other CPUs, dtypes and devices.
    pub fn new(w: &Tensor) -> Result<Option<Self>> {
        match half_packed::Dot::detect() {
            Some(dot) => Self::new_on(dot, w),
            None => Ok(None),
        }
    }

    fn new_on(dot: half_packed::Dot, w: &Tensor) -> Result<Option<Self>> {
        if !w.device().is_cpu() {
            return Ok(None);
        }
        let (n, k) = w.dims2()?;
        let w = w.contiguous()?.flatten_all()?;
        let (bits, f16): (Vec<u16>, bool) = match w.dtype() {
            DType::BF16 => (
                w.to_vec1::<::half::bf16>()?
                    .iter()
                    .map(|v| v.to_bits())
                    .collect(),
                false,
            ),
            DType::F16 => (
                w.to_vec1::<::half::f16>()?
                    .iter()
                    .map(|v| v.to_bits())
                    .collect(),
                true,
            ),
            _ => return Ok(None),
        };
        Ok(Some(Self::from_bits(dot, n, k, &bits, f16)))
    }

    /// Packs the `n × k` weight whose values have these bits (f16 where `f16`, else bf16).
    fn from_bits(dot: half_packed::Dot, n: usize, k: usize, bits: &[u16], f16: bool) -> Self {
        let lines = if f16 {
            half_packed::pack_f16(n, k, bits)
        } else {
            half_packed::pack(n, k, bits)
        };
        HalfWeight {
            n,
            k,
            dot,
            f16,
            lines,
        }
    }

    /// The dtype of the weight it was packed from.
    fn dtype(&self) -> DType {
        if self.f16 {
            DType::F16
        } else {
            DType::BF16
        }
    }

    /// Bytes the packed copy holds.
    pub fn bytes(&self) -> usize {
        std::mem::size_of_val(self.lines.as_slice())
    }

    /// The products of the rows of `lhs` (half-precision bits, rows of `k`), rounded by `round`.
    fn rounded<T>(&self, lhs: &[u16], round: impl Fn(f32) -> T) -> Vec<T> {
        self.sums(lhs.len() / self.k.max(1), lhs)
            .into_iter()
            .map(round)
            .collect()
    }

    /// The f32 sums `lhs[m×k] · wᵀ` (`lhs` bf16 bits), the panels split across threads.
    fn sums(&self, m: usize, lhs: &[u16]) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        assert_eq!(lhs.len(), m * k, "HalfWeight: {m} rows of {k}");
        let mut dst = vec![0f32; m * n];
        let panels = n.div_ceil(half_packed::PANEL);
        let out = SharedOut(dst.as_mut_ptr());
        // An f16 weight's kernel reads `x` widened to f32, once here.
        let wide: Vec<f32> = if self.f16 {
            lhs.iter()
                .map(|&b| ::half::f16::from_bits(b).to_f32())
                .collect()
        } else {
            Vec::new()
        };
        for_each_share(panels, |mine| {
            // SAFETY: a `HalfWeight` is made only with a `Dot` this CPU has; `lines` is
            // `half_packed::pack(n, k, ..)`'s output, `lhs` and `dst` hold m·k and m·n values; each
            // share writes only its own panels' columns.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                if self.f16 {
                    half_packed::gemm_packed_f16(
                        m,
                        n,
                        k,
                        wide.as_ptr(),
                        self.lines.as_ptr(),
                        out.ptr(),
                        mine,
                    )
                } else {
                    half_packed::gemm_packed(
                        self.dot,
                        m,
                        n,
                        k,
                        lhs.as_ptr(),
                        self.lines.as_ptr(),
                        out.ptr(),
                        mine,
                    )
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = mine;
        });
        dst
    }
}

/// Which kernel multiplies a frozen bf16 weight (the bf16 rollout engine's) on this CPU, in
/// words: AMX tiles, `vdpbf16ps`, widened FMAs (all three over a bf16 packed copy), or an f32
/// copy where the CPU has no AVX-512.
pub fn half_precision_kernel() -> &'static str {
    match half_packed::Dot::detect() {
        Some(half_packed::Dot::Amx) => "AMX-BF16 tiles over bf16 packed weights",
        Some(half_packed::Dot::Bf16) => "AVX512-BF16 vdpbf16ps over bf16 packed weights",
        Some(half_packed::Dot::Widen) => {
            "AVX-512F FMAs over bf16 packed weights widened in registers"
        }
        None => "f32 copies of the weights (no AVX-512)",
    }
}

/// `x · wᵀ` over a packed half-precision weight for an `x` of the weight's dtype (bf16 or
/// f16) and shape `[..., k]`: the f32 sums rounded to that dtype (to nearest even, as candle's
/// `to_dtype` rounds), shape `[..., n]`. No backward.
pub fn linear_half(x: &Tensor, w: &HalfWeight) -> Result<Tensor> {
    let k = x.dim(candle_core::D::Minus1)?;
    if k != w.k || x.dtype() != w.dtype() || !x.device().is_cpu() {
        candle_core::bail!(
            "linear_half: a {:?} CPU input with rows of {} (got {:?} rows of {k}, {:?})",
            w.dtype(),
            w.k,
            x.dtype(),
            x.device()
        );
    }
    x.contiguous()?.apply_op1_no_bwd(&Half(w))
}

/// The plain loop [`linear_half`] is held to: for each output, f32 sums over `k` in order,
/// each pair of steps adding the second product then the first (the products of bf16 values,
/// and of f16 values, are exact in f32; each addition rounds to nearest), rounded to the
/// dtype at the end. `x` and `w` bf16 (or both f16) on the CPU.
pub fn linear_half_reference(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (n, k) = w.dims2()?;
    // bf16 and f16 values widen to f32 exactly; the sums round back as `to_dtype` rounds.
    let wide = |t: &Tensor| -> Result<Vec<f32>> {
        t.contiguous()?
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()
    };
    let mut shape = x.dims().to_vec();
    *shape.last_mut().expect("rank ≥ 1") = n;
    Tensor::from_vec(pair_sums(&wide(x)?, &wide(w)?, n, k), shape, x.device())?.to_dtype(w.dtype())
}

/// [`linear_half_reference`]'s f32 sums.
fn half_reference_sums(xs: &[::half::bf16], ws: &[::half::bf16], n: usize, k: usize) -> Vec<f32> {
    let f = |v: &[::half::bf16]| v.iter().map(|x| x.to_f32()).collect::<Vec<f32>>();
    pair_sums(&f(xs), &f(ws), n, k)
}

/// The plain loop over values already widened to f32: each pair of steps adds the second
/// product, then the first.
fn pair_sums(xs: &[f32], ws: &[f32], n: usize, k: usize) -> Vec<f32> {
    let m = xs.len() / k.max(1);
    let mut out = vec![0f32; m * n];
    for i in 0..m {
        let x = &xs[i * k..(i + 1) * k];
        for j in 0..n {
            let w = &ws[j * k..(j + 1) * k];
            let mut acc = 0f32;
            for t in (0..k).step_by(2) {
                if t + 1 < k {
                    acc += x[t + 1] * w[t + 1];
                }
                acc += x[t] * w[t];
            }
            out[i * n + j] = acc;
        }
    }
    out
}

struct Half<'a>(&'a HalfWeight);

impl CustomOp1 for Half<'_> {
    fn name(&self) -> &'static str {
        "alp-linear-half"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let mut shape = l.dims().to_vec();
        *shape.last_mut().expect("rank ≥ 1") = self.0.n;
        let out = if self.0.f16 {
            let x = crate::kernels::contiguous::<::half::f16>(s, l, self.name())?;
            // SAFETY: `f16` is a `repr(transparent)` wrapper of its `u16` bits.
            let bits = unsafe { std::slice::from_raw_parts(x.as_ptr() as *const u16, x.len()) };
            CpuStorage::F16(self.0.rounded(bits, ::half::f16::from_f32))
        } else {
            let x = crate::kernels::contiguous::<::half::bf16>(s, l, self.name())?;
            // SAFETY: `bf16` is a `repr(transparent)` wrapper of its `u16` bits.
            let bits = unsafe { std::slice::from_raw_parts(x.as_ptr() as *const u16, x.len()) };
            CpuStorage::BF16(self.0.rounded(bits, ::half::bf16::from_f32))
        };
        Ok((out, Shape::from(shape)))
    }
}

/// Thirty-two bf16 values (sixteen 32-bit lanes of pairs) on a cache line: the unit of a
/// [`HalfWeight`].
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct LineH([u16; 32]);

/// Sixteen f32 lanes on a cache line: the unit of a packed weight.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// Cache lines per step of `k` in a panel of `isa`'s packed kernel.
fn panel_lines(isa: Isa) -> usize {
    match isa.set() {
        Set::Avx512 => avx512::LINES,
        Set::Avx2 => avx2::LINES,
    }
}

/// `w` (`n × k`, row-major) as panels of `16 · lines` output columns: panel `p`, step `t`
/// holds `w[p·16·lines .. (p + 1)·16·lines, t]` on `lines` [`Line`]s, columns past `n` zero.
/// Each panel is contiguous, so a kernel streams it in order.
fn pack(n: usize, k: usize, w: &[f32], lines: usize) -> Vec<Line> {
    assert_eq!(w.len(), n * k, "pack: a {n}×{k} weight");
    let panel = 16 * lines;
    let panels = n.div_ceil(panel);
    let mut out = vec![Line([0.0; 16]); panels * k * lines];
    for (j, row) in w.chunks_exact(k.max(1)).enumerate().take(n) {
        let (p, c) = (j / panel, j % panel);
        let (line, lane) = (c / 16, c % 16);
        for (t, &v) in row.iter().enumerate() {
            out[(p * k + t) * lines + line].0[lane] = v;
        }
    }
    out
}

/// `x · wᵀ` as [`linear`] computes it, through `packed` (made from `w` by
/// [`PackedWeight::new`]) for f32 products of at most [`SMALL_M_ROWS`] rows; larger products
/// (prefill) go to candle's matmul over `w`.
pub fn linear_packed(x: &Tensor, w: &Tensor, packed: &PackedWeight) -> Result<Tensor> {
    let k = x.dim(candle_core::D::Minus1)?;
    if w.dims() != [packed.n, packed.k] || k != packed.k {
        candle_core::bail!(
            "linear_packed: input rows of {k}, weight {:?}, packed weight [{}, {}]",
            w.dims(),
            packed.n,
            packed.k
        );
    }
    let m = x.elem_count() / k.max(1);
    if small_m_path(x, w) && m <= SMALL_M_ROWS && m > 0 {
        x.contiguous()?.apply_op1_no_bwd(&Packed(packed))
    } else {
        linear_reference(x, w)
    }
}

/// `x · wᵀ` for the exact numerics ([`crate::Numerics::Exact`]): every output is summed over
/// `k` in order from zero, one fused multiply-add a step (`y = fma(x_t, w_t, y)`), for any
/// number of rows. The packed kernels ([`PackedWeight`]: AVX-512 and AVX2 give the same bits)
/// compute exactly that, so a row's result depends on neither the rows around it, their
/// number, the thread count nor the instruction set: the rollout engine's decode step and
/// the trainer's full-sequence forward get the same bits. `packed` (made from `w` by
/// [`PackedWeight::new`]) is used where nothing needs a gradient; otherwise `w` is packed on
/// every call (a weight-sized copy), and the backward hands `x` (and `w`, where it tracks a
/// gradient) the usual products. f32 CPU tensors only; [`linear_exact_reference`] is the
/// plain loop it is held to.
pub fn linear_exact(x: &Tensor, w: &Tensor, packed: Option<&PackedWeight>) -> Result<Tensor> {
    if x.dtype() == DType::BF16 && w.dtype() == DType::BF16 {
        return linear_exact_half(x, w, None);
    }
    let kept = packed.filter(|p| w.dims() == [p.n, p.k]).map(PackedAnyRows);
    exact_product(x, w, DType::F32, kept)
}

/// [`linear_exact`] for bf16 `x` and `w` on the CPU: the half-precision product of
/// [`linear_half`] (bf16 values, f32 sums, rounded to bf16), whose result for a row does not
/// depend on the rows around it (AMX tiles, `vdpbf16ps` or widened FMAs, as this CPU has;
/// [`linear_half_reference`]'s plain loop on CPUs without AVX-512). `packed` (made from `w`
/// by [`HalfWeight::new`]) is used where nothing needs a gradient; otherwise `w` is packed on
/// every call and the backward hands `x` (and `w`, where it tracks a gradient) candle's
/// products.
pub fn linear_exact_half(x: &Tensor, w: &Tensor, packed: Option<&HalfWeight>) -> Result<Tensor> {
    let kept = packed.filter(|p| w.dims() == [p.n, p.k]).map(Half);
    exact_product(x, w, DType::BF16, kept)
}

/// The exact product of `x` (`[.., k]`) and `w` (`[n, k]`), both `dtype` on the CPU: the rows
/// of `x` through `kept` (the op over a kept packed copy of `w`) where nothing needs a
/// gradient and one is given, through [`ExactLinear`] otherwise; the leading dims restored.
fn exact_product(
    x: &Tensor,
    w: &Tensor,
    dtype: DType,
    kept: Option<impl CustomOp1>,
) -> Result<Tensor> {
    let k = x.dim(candle_core::D::Minus1)?;
    let ok = |t: &Tensor| t.device().is_cpu() && t.dtype() == dtype;
    if !ok(x) || !ok(w) || w.rank() != 2 || w.dim(1)? != k {
        candle_core::bail!(
            "linear_exact: needs {dtype:?} CPU tensors, rows of the weight's width; got x {:?} {:?}, w {:?} {:?}",
            x.dims(),
            x.dtype(),
            w.dims(),
            w.dtype()
        );
    }
    let m = x.elem_count() / k.max(1);
    let n = w.dim(0)?;
    let x2 = x.reshape((m, k))?.contiguous()?;
    let y = match kept {
        Some(op) if !x.track_op() && !w.track_op() => x2.apply_op1_no_bwd(&op)?,
        _ => x2.apply_op2_arc(
            &w.contiguous()?,
            std::sync::Arc::new(Box::new(ExactLinear {
                w_grad: w.track_op(),
            })),
        )?,
    };
    let mut dims = x.dims().to_vec();
    *dims.last_mut().expect("rank ≥ 1") = n;
    y.reshape(dims)
}

/// [`linear_exact`] and [`linear_exact_half`] with a backward: `x` `[m, k]` against `w`
/// `[n, k]`, f32 or bf16 (`w` packed on every call).
struct ExactLinear {
    w_grad: bool,
}

impl CustomOp2 for ExactLinear {
    fn name(&self) -> &'static str {
        "alp-linear-exact"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (m, k) = l1.shape().dims2()?;
        let (n, wk) = l2.shape().dims2()?;
        if wk != k {
            candle_core::bail!("linear_exact: x {:?}, w {:?}", l1.dims(), l2.dims());
        }
        let out = if let CpuStorage::BF16(_) = s1 {
            let x = crate::kernels::contiguous::<::half::bf16>(s1, l1, self.name())?;
            let w = crate::kernels::contiguous::<::half::bf16>(s2, l2, self.name())?;
            CpuStorage::BF16(match half_packed::Dot::detect() {
                Some(dot) if m > 0 && n > 0 && k > 0 => {
                    let bits: Vec<u16> = w.iter().map(|v| v.to_bits()).collect();
                    // SAFETY: `bf16` is a `repr(transparent)` wrapper of its `u16` bits.
                    let xb =
                        unsafe { std::slice::from_raw_parts(x.as_ptr() as *const u16, x.len()) };
                    HalfWeight::from_bits(dot, n, k, &bits, false)
                        .rounded(xb, ::half::bf16::from_f32)
                }
                _ => half_reference_sums(x, w, n, k)
                    .into_iter()
                    .map(::half::bf16::from_f32)
                    .collect(),
            })
        } else {
            let x = crate::kernels::contiguous::<f32>(s1, l1, self.name())?;
            let w = crate::kernels::contiguous::<f32>(s2, l2, self.name())?;
            CpuStorage::F32(exact_sums(m, n, k, x, w))
        };
        Ok((out, Shape::from((m, n))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = grad.matmul(w)?;
        let dw = if self.w_grad {
            Some(grad.t()?.matmul(x)?)
        } else {
            None
        };
        Ok((Some(dx), dw))
    }
}

/// The reference of [`linear_exact`]: a plain loop, `y = x_t.mul_add(w_t, y)` over `t` in
/// order from zero (f32 CPU tensors, `x` `[.., k]`, `w` `[n, k]`).
pub fn linear_exact_reference(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let k = x.dim(candle_core::D::Minus1)?;
    let (n, wk) = w.dims2()?;
    if wk != k {
        candle_core::bail!("linear_exact_reference: x {:?}, w {:?}", x.dims(), w.dims());
    }
    let m = x.elem_count() / k.max(1);
    let xs = x.flatten_all()?.to_vec1::<f32>()?;
    let ws = w.flatten_all()?.to_vec1::<f32>()?;
    let y = exact_reference_sums(m, n, k, &xs, &ws);
    let mut dims = x.dims().to_vec();
    *dims.last_mut().expect("rank ≥ 1") = n;
    Tensor::from_vec(y, dims, x.device())
}

fn exact_reference_sums(m: usize, n: usize, k: usize, x: &[f32], w: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    for (xr, o) in x.chunks_exact(k.max(1)).zip(out.chunks_exact_mut(n.max(1))) {
        for (j, o) in o.iter_mut().enumerate() {
            let wr = &w[j * k..(j + 1) * k];
            *o = xr
                .iter()
                .zip(wr)
                .fold(0f32, |acc, (a, b)| a.mul_add(*b, acc));
        }
    }
    out
}

/// [`linear_exact`]'s sums of `x` (`m × k`) against the row-major `w` (`n × k`): the packed
/// kernel of the best instruction set this CPU has (packing `w` first), the plain loop on
/// others.
fn exact_sums(m: usize, n: usize, k: usize, x: &[f32], w: &[f32]) -> Vec<f32> {
    match crate::kernels::vmath::isa() {
        Some(isa) if m > 0 && n > 0 && k > 0 => {
            let lines = pack(n, k, w, panel_lines(isa));
            let mut out = vec![0f32; m * n];
            packed_gemm(isa, m, n, k, &mut out, x, &lines);
            out
        }
        _ => exact_reference_sums(m, n, k, x, w),
    }
}

/// The packed kernel at any row count (what [`linear_exact`] runs over a kept packed weight).
struct PackedAnyRows<'a>(&'a PackedWeight);

impl CustomOp1 for PackedAnyRows<'_> {
    fn name(&self) -> &'static str {
        "alp-linear-exact-packed"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = crate::kernels::contiguous::<f32>(s, l, self.name())?;
        let (m, k) = l.shape().dims2()?;
        let n = self.0.n;
        if k != self.0.k {
            candle_core::bail!(
                "linear_exact: rows of {k} against a packed [{n}, {}]",
                self.0.k
            );
        }
        let mut out = vec![0f32; m * n];
        if m > 0 {
            self.0.run(m, &mut out, x);
        }
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}

/// The reference: `candle_nn::Linear::forward` without bias.
pub fn linear_reference(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    use candle_core::Module;
    candle_nn::Linear::new(w.clone(), None).forward(x)
}

/// Whether `t` is a half-precision (bf16/f16) CPU tensor: candle's CPU matmul has no kernel
/// for those and widens both operands to f32 on every call, so the inference path keeps f32
/// copies instead (the decoder's projections and the KV cache).
pub(crate) fn half_on_cpu(t: &Tensor) -> bool {
    t.device().is_cpu() && matches!(t.dtype(), DType::BF16 | DType::F16)
}

/// Whether a small-product kernel may take these tensors: f32 on the CPU, a contiguous weight.
fn small_m_path(x: &Tensor, w: &Tensor) -> bool {
    x.device().is_cpu()
        && x.dtype() == DType::F32
        && w.dtype() == DType::F32
        && w.rank() == 2
        && w.is_contiguous()
}

/// The small-product kernel of an instruction set this CPU has: alp's AVX-512 kernel
/// (`avx512`) or gemm's AVX2/FMA microkernels. Made only from an [`Isa`] (a CPU check).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Kernel(Isa);

impl Kernel {
    /// The best kernel this CPU has, if any (looked up once: `linear` asks on every product).
    fn detect() -> Option<Kernel> {
        static BEST: std::sync::OnceLock<Option<Kernel>> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| Kernel::all().into_iter().next())
    }

    /// Every kernel this CPU can run, best first.
    fn all() -> Vec<Kernel> {
        Isa::all().into_iter().map(Kernel).collect()
    }

    /// `dst[m×n] = lhs[m×k] · rhsᵀ` for a row-major `rhs` of `[n, k]`; every element of `dst`
    /// is written.
    fn run(self, m: usize, n: usize, k: usize, dst: &mut [f32], lhs: &[f32], rhs: &[f32]) {
        // SAFETY: `self.0` is an `Isa` a CPU check made: this CPU has that instruction set.
        unsafe {
            match self.0.set() {
                Set::Avx512 => avx512_gemm(m, n, k, dst, lhs, rhs),
                Set::Avx2 => fma_gemm(m, n, k, dst, lhs, rhs),
            }
        }
    }
}

struct SmallM(Kernel);

impl CustomOp2 for SmallM {
    fn name(&self) -> &'static str {
        "alp-linear-small-m"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = crate::kernels::contiguous::<f32>(s1, l1, self.name())?;
        let w = crate::kernels::contiguous::<f32>(s2, l2, self.name())?;
        let dims = l1.dims();
        let k = *dims.last().unwrap_or(&0);
        let (n, wk) = l2.shape().dims2()?;
        if wk != k {
            candle_core::bail!("linear: input rows of {k}, weight {:?}", l2.dims());
        }
        let m = x.len() / k.max(1);
        let mut out = vec![0f32; m * n];
        self.0.run(m, n, k, &mut out, x, w);
        let mut shape = dims.to_vec();
        *shape.last_mut().expect("rank ≥ 1") = n;
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }
}

struct Packed<'a>(&'a PackedWeight);

impl CustomOp1 for Packed<'_> {
    fn name(&self) -> &'static str {
        "alp-linear-packed"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = crate::kernels::contiguous::<f32>(s, l, self.name())?;
        let (n, k) = (self.0.n, self.0.k);
        let m = x.len() / k.max(1);
        let mut out = vec![0f32; m * n];
        self.0.run(m, &mut out, x);
        let mut shape = l.dims().to_vec();
        *shape.last_mut().expect("rank ≥ 1") = n;
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }
}

/// A raw output pointer shared by tasks that write disjoint columns.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: tasks write disjoint columns of the output only (see `avx512_gemm`).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The pointer (a method, so that closures capture the wrapper, not its field).
    fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// Runs `run` over `0..units` in contiguous shares, one per thread this product may use
/// ([`threads`]), on the calling thread where that is one.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn for_each_share(units: usize, run: impl Fn(std::ops::Range<usize>) + Sync) {
    use rayon::prelude::*;
    let tasks = threads().min(units).max(1);
    let per = units.div_ceil(tasks);
    let share = |t: usize| run((t * per).min(units)..((t + 1) * per).min(units));
    if tasks == 1 {
        share(0)
    } else {
        (0..tasks).into_par_iter().for_each(share)
    }
}

/// `dst[m×n] = lhs[m×k] · rhsᵀ` on [`avx512`]'s kernel, the columns split across threads.
///
/// # Safety
/// The CPU has AVX-512F (a `Kernel` of an `Isa` of `Set::Avx512` says so).
#[cfg(target_arch = "x86_64")]
unsafe fn avx512_gemm(m: usize, n: usize, k: usize, dst: &mut [f32], lhs: &[f32], rhs: &[f32]) {
    assert!(dst.len() == m * n && lhs.len() == m * k && rhs.len() == n * k);
    let out = SharedOut(dst.as_mut_ptr());
    // Shares of whole tiles of `NR` columns.
    for_each_share(n.div_ceil(avx512::NR), |tiles| {
        let cols = (tiles.start * avx512::NR).min(n)..(tiles.end * avx512::NR).min(n);
        // SAFETY: `Kernel::all` lists it only where `Isa::all` found AVX-512F; the lengths
        // are asserted above; each share writes only its own columns.
        unsafe { avx512::gemm_nt(m, n, k, lhs.as_ptr(), rhs.as_ptr(), out.ptr(), cols) }
    })
}

/// `dst[m×n] = lhs[m×k] · wᵀ` on `isa`'s packed kernel (`w` from [`pack`] with
/// [`panel_lines`]`(isa)`), the panels split across threads.
#[cfg(target_arch = "x86_64")]
fn packed_gemm(isa: Isa, m: usize, n: usize, k: usize, dst: &mut [f32], lhs: &[f32], w: &[Line]) {
    let lines = panel_lines(isa);
    let panels = n.div_ceil(16 * lines);
    assert!(dst.len() == m * n && lhs.len() == m * k && w.len() == panels * k * lines);
    let out = SharedOut(dst.as_mut_ptr());
    // The AVX2 kernel reads `x` rearranged ([`avx2::pack_rows`]), in blocks of `avx2::MC`
    // rows that stay in the level-2 cache while every panel multiplies them.
    let rows = match isa.set() {
        Set::Avx2 => Some(avx2::pack_rows(m, k, lhs)),
        Set::Avx512 => None,
    };
    for_each_share(panels, |mine| {
        let (w, o) = (w.as_ptr(), out.ptr());
        // SAFETY: a `PackedWeight` is made only for an `isa` this CPU has; the lengths are
        // asserted above; each share writes only its own panels' columns.
        unsafe {
            match &rows {
                None => avx512::gemm_packed(m, n, k, lhs.as_ptr(), w, o, mine),
                Some(x) => {
                    for (i, mc) in avx2::row_blocks(m) {
                        let (x, o) = (x.as_ptr().add(i * k), o.add(i * n));
                        avx2::gemm_packed(mc, n, k, x, w, o, mine.clone())
                    }
                }
            }
        }
    })
}

#[cfg(not(target_arch = "x86_64"))]
fn packed_gemm(_: Isa, _: usize, _: usize, _: usize, _: &mut [f32], _: &[f32], _: &[Line]) {
    unreachable!("a packed weight exists on x86-64 only")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn avx512_gemm(_: usize, _: usize, _: usize, _: &mut [f32], _: &[f32], _: &[f32]) {
    unreachable!("the AVX-512 path is taken on x86-64 only")
}

/// `dst[m×n] = lhs[m×k] · rhsᵀ` for a row-major `rhs` of `[n, k]`, on gemm's AVX2/FMA kernels
/// whatever kernel family the process picked for candle.
///
/// # Safety
/// The CPU has AVX2 and FMA (a `Kernel` of an `Isa` of `Set::Avx2` or `Set::Avx512` says so).
#[cfg(target_arch = "x86_64")]
unsafe fn fma_gemm(m: usize, n: usize, k: usize, dst: &mut [f32], lhs: &[f32], rhs: &[f32]) {
    use gemm_f32::microkernel::fma::f32 as uk;
    const LANES: usize = 8; // f32 lanes of an AVX2 register
    assert!(dst.len() == m * n && lhs.len() == m * k && rhs.len() == n * k);
    let threads = threads();
    let parallelism = if threads > 1 {
        gemm_common::Parallelism::Rayon(threads)
    } else {
        gemm_common::Parallelism::None
    };
    let simd = gemm_common::simd::V3::try_new().expect("checked: the CPU has AVX2 and FMA");
    // SAFETY: the CPU has the kernels' instructions (checked by the caller and by `try_new`);
    // the strides describe the three slices, whose lengths are asserted above: dst and lhs
    // row-major, rhs read as its transpose (row stride 1, column stride k).
    unsafe {
        gemm_common::gemm::gemm_basic_generic::<
            _,
            f32,
            LANES,
            { uk::MR_DIV_N * LANES },
            { uk::NR },
            { uk::MR_DIV_N },
            { uk::H_M },
            { uk::H_N },
        >(
            simd,
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.as_ptr(),
            1,
            k as isize,
            rhs.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            |a, b, c| a * b + c,
            &uk::UKR,
            &uk::H_UKR,
            false,
            parallelism,
        );
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn fma_gemm(_: usize, _: usize, _: usize, _: &mut [f32], _: &[f32], _: &[f32]) {
    unreachable!("the small-M path is taken on x86-64 only")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::Device;

    fn abs_max(t: &Tensor) -> f32 {
        t.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Largest |a − b| over the largest |b|.
    pub(crate) fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
        abs_max(&(a - b).unwrap()) / abs_max(b).max(1e-6)
    }

    /// The bits of every value of an f32 tensor.
    pub(crate) fn bits(t: &Tensor) -> Vec<u32> {
        t.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect()
    }

    /// The exact product is the plain loop bit for bit, on every instruction set this CPU
    /// has, over a kept packed weight and packed per call, whatever the rows around a row,
    /// their number and the thread count; its gradients are the usual products.
    #[test]
    fn exact_products_are_the_plain_loop_bit_for_bit_whatever_the_rows_around_them() {
        let dev = Device::Cpu;
        for &(m, n, k) in &[
            (1, 5, 3),
            (7, 49, 130),
            (19, 97, 257),
            (130, 64, 128),
            (3, 200, 896),
        ] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            let want = bits(&linear_exact_reference(&x, &w).unwrap());
            // Every instruction set's packed kernel, and the plain loop where there is none.
            let (xs, ws) = (
                x.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                w.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            for isa in crate::kernels::vmath::Isa::all() {
                let lines = pack(n, k, &ws, panel_lines(isa));
                let mut out = vec![0f32; m * n];
                packed_gemm(isa, m, n, k, &mut out, &xs, &lines);
                let got: Vec<u32> = out.iter().map(|v| v.to_bits()).collect();
                assert_eq!(got, want, "{isa:?} {m}×{n}×{k}");
            }
            let packed = PackedWeight::new(&w).unwrap();
            for threads in [1, 2] {
                let run = |x: &Tensor, p: Option<&PackedWeight>| {
                    let f = || linear_exact(x, &w, p).unwrap();
                    if threads == 1 {
                        single_threaded(f)
                    } else {
                        f()
                    }
                };
                assert_eq!(bits(&run(&x, None)), want, "packed per call, {m}×{n}×{k}");
                assert_eq!(bits(&run(&x, packed.as_ref())), want, "kept packed copy");
                // A row alone, and inside a batch of other rows, gives the same bits.
                let r = m / 2;
                let alone = run(&x.narrow(0, r, 1).unwrap(), packed.as_ref());
                assert_eq!(bits(&alone), want[r * n..(r + 1) * n], "row {r} alone");
                let other = Tensor::randn(0f32, 1.0, (m + 5, k), &dev).unwrap();
                let mixed = Tensor::cat(&[&other.narrow(0, 0, 3).unwrap(), &x, &other], 0).unwrap();
                let y = run(&mixed, None).narrow(0, 3, m).unwrap();
                assert_eq!(bits(&y), want, "among {} other rows", m + 8);
            }
        }
        // bf16: the half-precision product, kept packed or packed per call, a row alone or
        // among others: the same bits.
        for &(m, n, k) in &[(1, 5, 3), (9, 97, 64), (40, 50, 130)] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev)
                .unwrap()
                .to_dtype(DType::BF16)
                .unwrap();
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev)
                .unwrap()
                .to_dtype(DType::BF16)
                .unwrap();
            let hbits = |t: &Tensor| -> Vec<u16> {
                t.flatten_all()
                    .unwrap()
                    .to_vec1::<::half::bf16>()
                    .unwrap()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect()
            };
            let per_call = linear_exact(&x, &w, None).unwrap();
            let want = hbits(&per_call);
            if let Some(hw) = HalfWeight::new(&w).unwrap() {
                assert_eq!(hbits(&linear_exact_half(&x, &w, Some(&hw)).unwrap()), want);
                assert_eq!(hbits(&linear_half(&x, &hw).unwrap()), want);
            }
            let r = m - 1;
            let alone = linear_exact(&x.narrow(0, r, 1).unwrap(), &w, None).unwrap();
            assert_eq!(
                hbits(&alone),
                want[r * n..(r + 1) * n],
                "bf16 row {r} alone"
            );
            let reference = linear_half_reference(&x, &w).unwrap();
            let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            assert!(
                max_rel(&f(&per_call), &f(&reference)) < 1e-2,
                "bf16 {m}×{n}×{k}"
            );
        }
        // Gradients: those of candle's product (to rounding).
        let x = candle_core::Var::randn(0f32, 1.0, (6, 40), &dev).unwrap();
        let w = candle_core::Var::randn(0f32, 1.0, (33, 40), &dev).unwrap();
        let g = Tensor::randn(0f32, 1.0, (6, 33), &dev).unwrap();
        let exact = (linear_exact(x.as_tensor(), w.as_tensor(), None).unwrap() * &g)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let plain = (x.as_tensor().matmul(&w.as_tensor().t().unwrap()).unwrap() * &g)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for v in [x.as_tensor(), w.as_tensor()] {
            let (a, b) = (exact.get(v).unwrap(), plain.get(v).unwrap());
            assert!(max_rel(a, b) < 1e-5, "gradient {:?}", v.dims());
        }
        // Bad input is an error naming the product.
        let e = linear_exact(
            &x.as_tensor().to_dtype(DType::BF16).unwrap(),
            w.as_tensor(),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("linear_exact") && e.contains("F32") && e.contains("BF16"),
            "{e}"
        );
    }

    #[test]
    fn small_m_products_match_candles_matmul() {
        let dev = Device::Cpu;
        // Odd sizes: rows that fill no tile, k and n off the SIMD width, 3-d inputs.
        for (dims, n) in [
            (vec![1usize, 64], 96usize),
            (vec![3, 1, 37], 29),
            (vec![17, 130], 257),
            (vec![2, 32, 512], 1408),
            (vec![SMALL_M_ROWS, 24], 8),
            (vec![SMALL_M_ROWS + 1, 24], 8),
        ] {
            let k = *dims.last().unwrap();
            let x = Tensor::randn(0f32, 1.0, dims.as_slice(), &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            let got = linear(&x, &w).unwrap();
            let want = linear_reference(&x, &w).unwrap();
            assert_eq!(got.dims(), want.dims());
            let r = max_rel(&got, &want);
            assert!(r < 1e-5, "{dims:?}×{n}: relative difference {r}");
        }
    }

    /// The packed path against candle's matmul through the public API, on the same odd shapes,
    /// and each row of a batch bit-identical to that row alone (a decode step's outputs do not
    /// depend on which other sequences share it).
    #[test]
    fn packed_products_match_candles_matmul_and_do_not_depend_on_the_batch() {
        let dev = Device::Cpu;
        for (dims, n) in [
            (vec![1usize, 64], 96usize),
            (vec![3, 1, 37], 29),
            (vec![17, 130], 257),
            (vec![2, 16, 512], 1408),
            (vec![SMALL_M_ROWS + 1, 24], 8),
        ] {
            let k = *dims.last().unwrap();
            let x = Tensor::randn(0f32, 1.0, dims.as_slice(), &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            let Some(packed) = PackedWeight::new(&w).unwrap() else {
                return; // no AVX-512 here: `linear` is the path, tested above
            };
            let got = linear_packed(&x, &w, &packed).unwrap();
            let want = linear_reference(&x, &w).unwrap();
            assert_eq!(got.dims(), want.dims());
            let r = max_rel(&got, &want);
            assert!(r < 1e-5, "{dims:?}×{n}: relative difference {r}");
            let rows = x.flatten_to(candle_core::D::Minus2).unwrap();
            let all = got.flatten_to(candle_core::D::Minus2).unwrap();
            if rows.dim(0).unwrap() <= SMALL_M_ROWS {
                for i in [0, rows.dim(0).unwrap() - 1] {
                    let one = linear_packed(&rows.narrow(0, i, 1).unwrap(), &w, &packed).unwrap();
                    let a = all.get(i).unwrap().to_vec1::<f32>().unwrap();
                    assert_eq!(one.squeeze(0).unwrap().to_vec1::<f32>().unwrap(), a);
                }
            }
        }
        let w = Tensor::zeros((4, 8), DType::F32, &dev).unwrap();
        if let Some(p) = PackedWeight::new(&w).unwrap() {
            let x = Tensor::zeros((2, 9), DType::F32, &dev).unwrap();
            let err = linear_packed(&x, &w, &p).unwrap_err().to_string();
            assert!(err.contains("input rows of 9"), "{err}");
        }
    }

    #[test]
    fn small_m_path_is_taken_where_it_should_be() {
        let dev = Device::Cpu;
        let w = Tensor::zeros((4, 8), DType::F32, &dev).unwrap();
        let x = Tensor::zeros((2, 8), DType::F32, &dev).unwrap();
        assert!(small_m_path(&x, &w));
        assert!(!small_m_path(&x.to_dtype(DType::BF16).unwrap(), &w));
        assert!(!small_m_path(&x, &w.t().unwrap()));
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512f") {
            assert_eq!(Kernel::detect().map(|k| k.0.set()), Some(Set::Avx512));
        }
    }

    /// Every kernel this CPU has (the packed ones included), on one thread and split across
    /// threads, against a plain f64 triple loop: rows that fill no tile or span several row
    /// blocks, `k` off the vector width (masked tails) and over several k-blocks, columns off
    /// the tile and panel widths, and a prefetch that runs past the weight's end.
    #[test]
    fn every_kernel_matches_a_plain_loop() {
        let mut rng = 0x2545_f491_u32;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 17;
            rng ^= rng << 5;
            (rng as f32 / u32::MAX as f32) - 0.5
        };
        let kernels = Kernel::all();
        for (m, n, k) in [
            (1, 1, 1),
            (1, 5, 16),
            (5, 7, 17),
            (6, 4, 33),
            (7, 9, 31),
            (13, 130, 64),
            (32, 1408, 512),
            (64, 96, 1408),
            (25, 33, 40),
            (12, 31, 7),
            (9, 50, 129),
            (100, 40, 300),
            (SMALL_M_ROWS, 17, 520),
        ] {
            let x: Vec<f32> = (0..m * k).map(|_| next()).collect();
            let w: Vec<f32> = (0..n * k).map(|_| next()).collect();
            let want: Vec<f64> = (0..m * n)
                .map(|o| {
                    let (i, j) = (o / n, o % n);
                    (0..k)
                        .map(|t| x[i * k + t] as f64 * w[j * k + t] as f64)
                        .sum()
                })
                .collect();
            let wt = Tensor::from_slice(&w, (n, k), &Device::Cpu).unwrap();
            let packed: Vec<PackedWeight> = Isa::all()
                .into_iter()
                .map(|isa| {
                    PackedWeight::new_on(isa, &wt)
                        .unwrap()
                        .expect("f32 on the CPU")
                })
                .collect();
            let mut bits: Option<Vec<f32>> = None;
            for kernel in kernels.iter().map(Ok).chain(packed.iter().map(Err)) {
                for single in [true, false] {
                    let mut got = vec![f32::NAN; m * n];
                    let mut run = || match kernel {
                        Ok(kernel) => kernel.run(m, n, k, &mut got, &x, &w),
                        Err(packed) => packed.run(m, &mut got, &x),
                    };
                    if single {
                        single_threaded(run)
                    } else {
                        #[allow(clippy::redundant_closure_call)]
                        run()
                    }
                    let name = match kernel {
                        Ok(k) => format!("{k:?}"),
                        Err(p) => format!("packed {:?}", p.isa),
                    };
                    for (o, (g, w)) in got.iter().zip(&want).enumerate() {
                        let tol = 1e-5 * (k as f64).sqrt().max(1.0);
                        assert!(
                            (*g as f64 - w).abs() <= tol,
                            "{name} single={single} {m}x{n}x{k} at {o}: {g} vs {w}"
                        );
                    }
                    // Every packed kernel sums each output in the same order: same bits on
                    // one thread or several, on AVX-512 or AVX2.
                    if kernel.is_err() {
                        match &bits {
                            None => bits = Some(got.clone()),
                            Some(b) => assert!(b == &got, "{name} single={single} {m}x{n}x{k}"),
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn single_threaded_is_scoped_to_its_closure() {
        let all = candle_core::utils::get_num_threads();
        assert_eq!(threads(), all);
        let inner = single_threaded(|| {
            let nested = single_threaded(threads);
            (nested, threads())
        });
        assert_eq!(inner, (1, 1));
        assert_eq!(threads(), all);
        // candle's matmuls follow it (the vendored candle-core's patch), and only inside.
        #[cfg(candle_patched)]
        {
            assert_eq!(candle_core::utils::matmul_threads(), all);
            assert_eq!(single_threaded(candle_core::utils::matmul_threads), 1);
            assert_eq!(candle_core::utils::matmul_threads(), all);
        }
    }

    /// A product too large for the small-product kernels (prefill's), computed on the calling
    /// thread alone inside [`single_threaded`], against the same product split across the
    /// pool.
    #[test]
    fn a_large_product_on_one_thread_matches_the_pooled_one() {
        let x = Tensor::randn(0f32, 1.0, (300, 96), &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 1.0, (70, 96), &Device::Cpu).unwrap();
        let pooled = linear(&x, &w).unwrap();
        let alone = single_threaded(|| linear(&x, &w)).unwrap();
        assert!(max_rel(&alone, &pooled) < 1e-5);
        assert!(max_rel(&alone, &linear_reference(&x, &w).unwrap()) < 1e-5);
    }

    #[test]
    fn a_non_contiguous_input_is_read_as_its_values() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (24, 5), &dev)
            .unwrap()
            .t()
            .unwrap();
        let w = Tensor::randn(0f32, 1.0, (7, 24), &dev).unwrap();
        let r = max_rel(&linear(&x, &w).unwrap(), &linear_reference(&x, &w).unwrap());
        assert!(r < 1e-5, "relative difference {r}");
    }

    fn bf16_randn(shape: &[usize], seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<::half::bf16> = (0..n)
            .map(|_| ::half::bf16::from_f32(rng.random_range(-2.0f32..2.0)))
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// An f16 weight: its kernel's sums equal the plain loop's bit for bit (odd `k`, shapes
    /// that fill no panel or block), a row alone equals the row in its batch, threads change
    /// no bit, and the op is within rounding of today's path (an f32 copy, candle's matmul,
    /// rounded to f16); no f32 copy is made.
    #[test]
    #[allow(clippy::print_stderr)]
    fn f16_products_equal_the_plain_loop_bit_for_bit_and_do_not_depend_on_the_batch() {
        if half_packed::Dot::detect().is_none() {
            eprintln!("skipped: no AVX-512F");
            return;
        }
        for (m, n, k) in [
            (1usize, 96usize, 64usize),
            (3, 29, 37),
            (17, 257, 130),
            (9, 49, 2 * half_packed::KCP + 3),
            (40, 100, 512),
        ] {
            let f16 = |t: Tensor| t.to_dtype(DType::F16).unwrap();
            let x = f16(bf16_randn(&[m, k], 7 + m as u64)
                .to_dtype(DType::F32)
                .unwrap());
            let w = f16(bf16_randn(&[n, k], 8 + n as u64)
                .to_dtype(DType::F32)
                .unwrap());
            let hw = HalfWeight::new(&w).unwrap().expect("AVX-512F packs f16");
            let xb: Vec<u16> = x
                .flatten_all()
                .unwrap()
                .to_vec1::<::half::f16>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect();
            let wide = |t: &Tensor| {
                t.flatten_all()
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            };
            let want = pair_sums(&wide(&x), &wide(&w), n, k);
            let pooled = hw.sums(m, &xb);
            let alone = single_threaded(|| hw.sums(m, &xb));
            let b = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(b(&pooled), b(&want), "f16 {m}x{n}x{k}: the plain loop");
            assert_eq!(b(&alone), b(&want), "f16 {m}x{n}x{k}: one thread");
            for i in [0, m - 1] {
                let row = hw.sums(1, &xb[i * k..(i + 1) * k]);
                assert_eq!(b(&row), b(&pooled[i * n..(i + 1) * n]), "f16 row {i} alone");
            }
            let got = linear_half(&x, &hw).unwrap();
            assert_eq!(got.dtype(), DType::F16);
            let reference = linear_half_reference(&x, &w).unwrap();
            let h = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<::half::f16>().unwrap();
            assert_eq!(
                h(&got),
                h(&reference),
                "f16 {m}x{n}x{k}: the op and its reference"
            );
            let today = f16(linear_reference(
                &x.to_dtype(DType::F32).unwrap(),
                &w.to_dtype(DType::F32).unwrap(),
            )
            .unwrap());
            let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            assert!(
                max_rel(&f(&got), &f(&today)) < 2e-3,
                "f16 {m}x{n}x{k} vs today's path"
            );
        }
        // A bf16 input against an f16 weight is an error naming the dtypes.
        let w = bf16_randn(&[4, 8], 1).to_dtype(DType::F16).unwrap();
        let hw = HalfWeight::new(&w).unwrap().unwrap();
        let e = linear_half(&bf16_randn(&[2, 8], 2), &hw)
            .unwrap_err()
            .to_string();
        assert!(e.contains("F16") && e.contains("BF16"), "{e}");
    }

    fn bits_of(t: &Tensor) -> Vec<u16> {
        t.flatten_all()
            .unwrap()
            .to_vec1::<::half::bf16>()
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect()
    }

    /// The half-precision kernel's f32 sums equal the plain loop's bit for bit for the
    /// `vdpbf16ps` and AVX-512F ways this CPU runs (they give the same bits) and are within
    /// rounding of it on AMX tiles, on shapes that fill no tile, no panel and no block (odd `k`
    /// included), on one thread and several; each row of a batch equals that row alone bit
    /// for bit (batch invariance), for every way; and the result is within rounding of
    /// today's f32 product over a widened copy.
    #[test]
    #[allow(clippy::print_stderr)]
    fn half_products_equal_the_plain_loop_bit_for_bit_and_do_not_depend_on_the_batch() {
        let dots = half_packed::Dot::all();
        if dots.is_empty() {
            eprintln!("skipped: no AVX-512F");
            return;
        }
        eprintln!("half-precision ways on this CPU: {dots:?}");
        for (m, n, k) in [
            (1usize, 96usize, 64usize),
            (3, 29, 37),
            (17, 257, 130),
            (9, 49, 2 * half_packed::KCP + 3),
            (40, 100, 2 * half_packed::KCP * 2),
            (2, 1408, 512),
            (33, 200, 96),
            (300, 50, 64),
        ] {
            let x = bf16_randn(&[m, k], 1 + m as u64);
            let w = bf16_randn(&[n, k], 2 + n as u64);
            let xs = x.flatten_all().unwrap().to_vec1::<::half::bf16>().unwrap();
            let ws = w.flatten_all().unwrap().to_vec1::<::half::bf16>().unwrap();
            let want = half_reference_sums(&xs, &ws, n, k);
            let scale = half_reference_sums(
                &xs.iter()
                    .map(|v| ::half::bf16::from_f32(v.to_f32().abs()))
                    .collect::<Vec<_>>(),
                &ws.iter()
                    .map(|v| ::half::bf16::from_f32(v.to_f32().abs()))
                    .collect::<Vec<_>>(),
                n,
                k,
            );
            let xb = bits_of(&x);
            for dot in &dots {
                let exact = *dot != half_packed::Dot::Amx || !k.is_multiple_of(32);
                let hw = HalfWeight::new_on(*dot, &w).unwrap().unwrap();
                let pooled = hw.sums(m, &xb);
                let alone = single_threaded(|| hw.sums(m, &xb));
                assert!(
                    pooled
                        .iter()
                        .zip(&alone)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{dot:?} {m}x{n}x{k}: threads change the bits"
                );
                for (o, ((g, r), s)) in pooled.iter().zip(&want).zip(&scale).enumerate() {
                    if exact {
                        assert_eq!(
                            g.to_bits(),
                            r.to_bits(),
                            "{dot:?} {m}x{n}x{k} at {o}: {g} vs {r}"
                        );
                    } else {
                        let bound = 2.0 * k as f32 * f32::EPSILON * s;
                        assert!(
                            (g - r).abs() <= bound,
                            "{dot:?} {m}x{n}x{k} at {o}: {g} vs {r}"
                        );
                    }
                }
                // Each row alone, as a decode step with one sequence computes it.
                for i in [0, m / 2, m - 1] {
                    let row = hw.sums(1, &xb[i * k..(i + 1) * k]);
                    assert!(
                        row.iter()
                            .zip(&pooled[i * n..(i + 1) * n])
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{dot:?} {m}x{n}x{k}: row {i} alone differs from its batch"
                    );
                }
            }
            // Through the op, against the reference op and against today's path (both
            // operands widened to f32, candle's matmul, rounded to bf16): the sums differ by
            // rounding of the additions only, at most a few f32 ulps of Σ|x·w| per step.
            let hw = HalfWeight::new(&w).unwrap().unwrap();
            let got = linear_half(&x, &hw).unwrap();
            let sums = hw.sums(m, &xb);
            let rounded: Vec<u16> = sums
                .iter()
                .map(|v| ::half::bf16::from_f32(*v).to_bits())
                .collect();
            assert_eq!(bits_of(&got), rounded);
            let wide = linear_reference(
                &x.to_dtype(DType::F32).unwrap(),
                &w.to_dtype(DType::F32).unwrap(),
            )
            .unwrap();
            let scale = linear_reference(
                &x.to_dtype(DType::F32).unwrap().abs().unwrap(),
                &w.to_dtype(DType::F32).unwrap().abs().unwrap(),
            )
            .unwrap();
            let wide = wide.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let scale = scale.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for ((a, b), s) in sums.iter().zip(&wide).zip(&scale) {
                let bound = 2.0 * k as f32 * f32::EPSILON * s;
                assert!(
                    (a - b).abs() <= bound,
                    "{m}x{n}x{k}: {a} vs {b} (bound {bound})"
                );
            }
        }
        // Bad input is named.
        let w = bf16_randn(&[8, 16], 9);
        let hw = HalfWeight::new(&w).unwrap().unwrap();
        let e = linear_half(&bf16_randn(&[2, 15], 3), &hw)
            .unwrap_err()
            .to_string();
        assert!(e.contains("rows of 16"), "{e}");
        let e = linear_half(
            &Tensor::zeros((2, 16), DType::F32, &Device::Cpu).unwrap(),
            &hw,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("BF16") && e.contains("F32"), "{e}");
        assert!(HalfWeight::new(&w.to_dtype(DType::F32).unwrap())
            .unwrap()
            .is_none());
        assert_eq!(hw.bytes(), 8usize.div_ceil(48) * 48 * 16 * 2);
    }
}
