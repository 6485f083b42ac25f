//! Matrix products of the inference path, with the SIMD kernel family chosen by shape.
//!
//! candle's CPU matmul calls the `gemm` crate, which picks one kernel family for the whole
//! process at its first call. alp builds it with its AVX-512 kernels (`x86-v4`), which it
//! picks on every CPU that has AVX-512: on a 2-core Intel Xeon they made the 25M training step
//! 1.4× faster than the AVX2/FMA kernels. The same kernels made batched decoding 18% slower:
//! decode's products have few rows (one per sequence), where the AVX-512 kernels ran at less
//! than half the FMA kernels' speed. [`linear`] therefore sends an inference product with at most
//! [`SMALL_M_ROWS`] rows straight to the AVX2/FMA kernels, and everything else to candle's
//! matmul. On CPUs without AVX-512 both are the same kernels.
//!
//! [`linear_reference`] is the candle composition that [`linear`] is tested against.
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

/// Inference products with at most this many rows take the AVX2/FMA kernels.
///
/// Placed by `cargo bench --bench model -- linear` on a 2-core Intel Xeon (one thread,
/// 512 → 1408): the FMA kernels ran 91, 104, 110, 114 and 116 GFLOP/s at 16, 32, 64, 128 and
/// 256 rows, the AVX-512 kernels 32, 49, 80, 119 and 157.
pub const SMALL_M_ROWS: usize = 128;

/// `x · wᵀ` for `x` of shape `[..., k]` and `w` of shape `[n, k]` (a `Linear` layer without
/// bias, as `candle_nn::Linear` computes it): the AVX2/FMA kernels for small f32 products on
/// an x86-64 CPU, candle's matmul otherwise. No backward: for inference only.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let k = x.dim(candle_core::D::Minus1)?;
    let m = x.elem_count() / k.max(1);
    if small_m_path(x, w) && m <= SMALL_M_ROWS && m > 0 {
        let x = x.contiguous()?;
        x.apply_op2_no_bwd(w, &SmallM)
    } else {
        linear_reference(x, w)
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

/// Whether the FMA path applies: f32 CPU tensors, a contiguous weight, an x86-64 CPU with FMA.
fn small_m_path(x: &Tensor, w: &Tensor) -> bool {
    let cpu_f32 = x.device().is_cpu()
        && x.dtype() == DType::F32
        && w.dtype() == DType::F32
        && w.rank() == 2
        && w.is_contiguous();
    #[cfg(target_arch = "x86_64")]
    {
        cpu_f32 && std::is_x86_feature_detected!("fma") && std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = cpu_f32;
        false
    }
}

struct SmallM;

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
        let x = crate::fused::contiguous::<f32>(s1, l1, self.name())?;
        let w = crate::fused::contiguous::<f32>(s2, l2, self.name())?;
        let dims = l1.dims();
        let k = *dims.last().unwrap_or(&0);
        let (n, wk) = l2.shape().dims2()?;
        if wk != k {
            candle_core::bail!("linear: input rows of {k}, weight {:?}", l2.dims());
        }
        let m = x.len() / k.max(1);
        let mut out = vec![0f32; m * n];
        fma_gemm(m, n, k, &mut out, x, w);
        let mut shape = dims.to_vec();
        *shape.last_mut().expect("rank ≥ 1") = n;
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }
}

/// `dst[m×n] = lhs[m×k] · rhsᵀ` for a row-major `rhs` of `[n, k]`, on gemm's AVX2/FMA kernels
/// whatever kernel family the process picked for candle.
#[cfg(target_arch = "x86_64")]
fn fma_gemm(m: usize, n: usize, k: usize, dst: &mut [f32], lhs: &[f32], rhs: &[f32]) {
    use gemm_f32::microkernel::fma::f32 as uk;
    const LANES: usize = 8; // f32 lanes of an AVX2 register
    assert!(dst.len() == m * n && lhs.len() == m * k && rhs.len() == n * k);
    let threads = candle_core::utils::get_num_threads();
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
fn fma_gemm(_: usize, _: usize, _: usize, _: &mut [f32], _: &[f32], _: &[f32]) {
    unreachable!("the small-M path is taken on x86-64 only")
}

#[cfg(test)]
mod tests {
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

    fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
        abs_max(&(a - b).unwrap()) / abs_max(b).max(1e-6)
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

    #[test]
    fn small_m_path_is_taken_where_it_should_be() {
        let dev = Device::Cpu;
        let w = Tensor::zeros((4, 8), DType::F32, &dev).unwrap();
        let x = Tensor::zeros((2, 8), DType::F32, &dev).unwrap();
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("fma") && std::is_x86_feature_detected!("avx2") {
            assert!(small_m_path(&x, &w));
        }
        assert!(!small_m_path(&x.to_dtype(DType::BF16).unwrap(), &w));
        assert!(!small_m_path(&x, &w.t().unwrap()));
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
}
