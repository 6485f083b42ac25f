//! Grouped-query attention for inference in one pass over f32 CPU tensors: scores, mask,
//! softmax and the weighted sum of values for one query at a time, written straight into the
//! `[batch, t, heads · head_dim]` layout that the output projection reads.
//!
//! candle's composition (the reference, [`attention_reference`]) is two batched matmuls over
//! tiny matrices (one query row per head at a decode step) with a scale, a mask add, a softmax,
//! dtype casts and a transposing copy between them, each a pass of its own with a fresh
//! allocation; on a 2-core AMD EPYC (AVX2) its two products alone were 11% of a rollout's
//! samples. Here each query reads its KV head's keys and values in place, from the cache's
//! views, with no copy.
//!
//! Used by the decoder's inference numerics ([`crate::Numerics::Inference`]); no backward.
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

/// Whether [`attention`] takes these tensors: f32 on the CPU, keys and values with their last
/// two dimensions contiguous (a [`crate::KvCache`] view is).
pub fn fusable(q: &Tensor, k: &Tensor, v: &Tensor) -> bool {
    let rows_contiguous = |t: &Tensor| {
        let (dims, strides) = (t.dims(), t.stride());
        t.rank() == 4 && strides[3] == 1 && strides[2] == dims[3]
    };
    [q, k, v]
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
        && rows_contiguous(k)
        && rows_contiguous(v)
}

/// `softmax(q·kᵀ · scale + mask) · v` for `q` of `[b, heads, t, hd]`, `k` and `v` of
/// `[b, kv_heads, l, hd]` (query head `h` reads KV head `h / (heads / kv_heads)`, as
/// transformers does) and an additive `mask` of `[1 or b, 1, 1, t, l]` (`-inf` hides a key);
/// the result is `[b, t, heads · hd]`. Tensors that are not [`fusable`] go to
/// [`attention_reference`].
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    if !fusable(q, k, v) {
        return attention_reference(q, k, v, mask, scale);
    }
    let (b, nh, t, hd) = q.dims4()?;
    let (kb, nkv, l, khd) = k.dims4()?;
    if kb != b || khd != hd || v.dims() != k.dims() || nkv == 0 || nh % nkv != 0 {
        candle_core::bail!(
            "attention: queries {:?}, keys {:?}, values {:?}",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    let mask = match mask {
        None => None,
        Some(m) => {
            let mb = m.dim(0)?;
            if m.dims() != [mb, 1, 1, t, l] || (mb != 1 && mb != b) {
                candle_core::bail!("attention: mask {:?} for {b} rows of {t} × {l}", m.dims());
            }
            Some((m.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?, mb))
        }
    };
    q.contiguous()?.apply_op3_no_bwd(
        k,
        v,
        &Attention {
            mask,
            scale: scale as f32,
        },
    )
}

/// The reference: candle's composition, as the decoder computed it before [`attention`].
pub fn attention_reference(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    let (b, nh, t, hd) = q.dims4()?;
    let (nkv, l) = (k.dim(1)?, k.dim(2)?);
    let rep = nh / nkv;
    let q = q.reshape((b, nkv, rep * t, hd))?;
    let scores = (q.matmul(&k.t()?)? * scale)?.reshape((b, nkv, rep, t, l))?;
    let scores = match mask {
        Some(m) => scores.broadcast_add(m)?,
        None => scores,
    };
    let probs = candle_nn::ops::softmax_last_dim(&scores.contiguous()?)?;
    let out = probs.reshape((b, nkv, rep * t, l))?.matmul(v)?;
    out.reshape((b, nh, t, hd))?
        .transpose(1, 2)?
        .reshape((b, t, nh * hd))
}

/// Attention for the exact numerics ([`crate::Numerics::Exact`]), differentiable: each
/// query reads only the keys it may see (row `b`'s query at position `start + i` sees keys
/// `left_pad[b] ..= start + i`; a padding query sees only itself, as the decoder's masks say),
/// in order: scores as dot products in eight interleaved partial sums, their maximum, `exp`
/// per score, the sum in key order, then `Σ_j p_j · v_j` in key order over `1 / Σ p`. No masked key enters any sum, so a query's
/// output does not depend on how many keys follow it (the trainer's whole sequence against
/// the engine's cache at that step), on its padding, or on the batch. `q` is
/// `[b, heads, t, hd]`, `k` and `v` `[b, kv_heads, start + t, hd]`; the result is
/// `[b, t, heads · hd]`. The backward is candle's composition over the same mask.
pub fn attention_exact(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    left_pad: &[usize],
    start: usize,
    scale: f64,
) -> Result<Tensor> {
    let (b, nh, t, hd) = q.dims4()?;
    let (kb, nkv, l, khd) = k.dims4()?;
    if [q, k, v]
        .iter()
        .any(|x| !x.device().is_cpu() || x.dtype() != DType::F32)
        || kb != b
        || khd != hd
        || v.dims() != k.dims()
        || nkv == 0
        || nh % nkv != 0
        || l != start + t
        || !(left_pad.is_empty() || left_pad.len() == b)
    {
        candle_core::bail!(
            "attention_exact: f32 CPU queries {:?}, keys {:?}, values {:?} from position {start}, left padding {left_pad:?}",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    let op = ExactAttention {
        left_pad: if left_pad.is_empty() {
            vec![0; b]
        } else {
            left_pad.to_vec()
        },
        start,
        scale,
    };
    q.contiguous()?.apply_op3_arc(
        &k.contiguous()?,
        &v.contiguous()?,
        std::sync::Arc::new(Box::new(op)),
    )
}

struct ExactAttention {
    left_pad: Vec<usize>,
    start: usize,
    scale: f64,
}

impl ExactAttention {
    /// The keys query `i` (position `start + i`) of a row padded by `pad` sees.
    fn window(&self, pad: usize, i: usize) -> std::ops::RangeInclusive<usize> {
        let qi = self.start + i;
        (if qi >= pad { pad } else { qi })..=qi
    }
}

impl CustomOp3 for ExactAttention {
    fn name(&self) -> &'static str {
        "alp-attention-exact"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let q = super::contiguous::<f32>(s1, l1, self.name())?;
        let k = super::contiguous::<f32>(s2, l2, self.name())?;
        let v = super::contiguous::<f32>(s3, l3, self.name())?;
        let (b, nh, t, hd) = l1.shape().dims4()?;
        let (nkv, l) = (l2.dims()[1], l2.dims()[2]);
        let rep = nh / nkv;
        let scale = self.scale as f32;
        let mut out = vec![0f32; b * t * nh * hd];
        let row = |bi: usize, out: &mut [f32]| {
            let mut p = Vec::with_capacity(l);
            for h in 0..nh {
                let at = (bi * nkv + h / rep) * l * hd;
                let (kr, vr) = (&k[at..at + l * hd], &v[at..at + l * hd]);
                for i in 0..t {
                    let qv = &q[((bi * nh + h) * t + i) * hd..][..hd];
                    let o = &mut out[(i * nh + h) * hd..][..hd];
                    let keys = self.window(self.left_pad[bi], i);
                    p.clear();
                    p.extend(
                        keys.clone()
                            .map(|j| dot(qv, &kr[j * hd..(j + 1) * hd]) * scale),
                    );
                    let max = p.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    p.iter_mut().for_each(|s| *s -= max);
                    crate::kernels::vmath::exp_in_place(&mut p);
                    let inv = 1.0 / p.iter().sum::<f32>();
                    o.fill(0.0);
                    for (j, &w) in keys.zip(&p) {
                        o.iter_mut()
                            .zip(&vr[j * hd..(j + 1) * hd])
                            .for_each(|(o, x)| *o += w * x);
                    }
                    o.iter_mut().for_each(|o| *o *= inv);
                }
            }
        };
        for_each_batch_row(&mut out, b, row);
        Ok((CpuStorage::F32(out), Shape::from((b, t, nh * hd))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        use candle_core::D;
        let (b, nh, t, hd) = q.dims4()?;
        let (nkv, l) = (k.dim(1)?, k.dim(2)?);
        let rep = nh / nkv;
        let mask = crate::mask::padded_mask(&self.left_pad, self.start, t, q.device())
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let qg = q.reshape((b, nkv, rep * t, hd))?;
        let s = (qg.matmul(&k.t()?)? * self.scale)?
            .reshape((b, nkv, rep, t, l))?
            .broadcast_add(&mask)?;
        let p =
            candle_nn::ops::softmax_last_dim(&s.contiguous()?)?.reshape((b, nkv, rep * t, l))?;
        let go = grad
            .reshape((b, t, nh, hd))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, nkv, rep * t, hd))?;
        let dv = p.t()?.matmul(&go)?;
        let dp = go.matmul(&v.t()?)?;
        let ds = (&p * dp.broadcast_sub(&(&dp * &p)?.sum_keepdim(D::Minus1)?)?)?;
        let dq = (ds.matmul(k)? * self.scale)?.reshape((b, nh, t, hd))?;
        let dk = (ds.t()?.matmul(&qg)? * self.scale)?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

struct Attention {
    /// The additive mask's values (`[mb, t, l]`) and its batch size `mb` (1 or `b`).
    mask: Option<(Vec<f32>, usize)>,
    scale: f32,
}

/// A key or value tensor's elements: `rows(b, h)` is the `l × hd` block of row `b`, head `h`.
struct Heads<'a> {
    data: &'a [f32],
    start: usize,
    batch_stride: usize,
    head_stride: usize,
    len: usize,
}

impl<'a> Heads<'a> {
    fn new(s: &'a CpuStorage, l: &Layout) -> Result<Self> {
        let (dims, strides) = (l.dims(), l.stride());
        Ok(Heads {
            data: s.as_slice::<f32>()?,
            start: l.start_offset(),
            batch_stride: strides[0],
            head_stride: strides[1],
            len: dims[2] * dims[3],
        })
    }

    fn rows(&self, b: usize, h: usize) -> &'a [f32] {
        let at = self.start + b * self.batch_stride + h * self.head_stride;
        &self.data[at..at + self.len]
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "alp-attention-inference"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let q = super::contiguous::<f32>(s1, l1, self.name())?;
        let (b, nh, t, hd) = l1.shape().dims4()?;
        let (nkv, l) = (l2.dims()[1], l2.dims()[2]);
        let (keys, values) = (Heads::new(s2, l2)?, Heads::new(s3, l3)?);
        let rep = nh / nkv;
        // Output row (b, i) holds every head's hd values: one task per batch row.
        let mut out = vec![0f32; b * t * nh * hd];
        let row = |bi: usize, out: &mut [f32]| {
            let mut p = vec![0f32; l];
            for h in 0..nh {
                let (kr, vr) = (keys.rows(bi, h / rep), values.rows(bi, h / rep));
                for i in 0..t {
                    let qv = &q[((bi * nh + h) * t + i) * hd..][..hd];
                    let mask = self.mask.as_ref().map(|(m, mb)| {
                        let mrow = if *mb == 1 { 0 } else { bi };
                        &m[(mrow * t + i) * l..][..l]
                    });
                    let o = &mut out[(i * nh + h) * hd..][..hd];
                    one_query(qv, kr, vr, mask, self.scale, &mut p, o);
                }
            }
        };
        for_each_batch_row(&mut out, b, row);
        Ok((CpuStorage::F32(out), Shape::from((b, t, nh * hd))))
    }
}

/// Runs `row(b, out_b)` for each of the `b` equal rows of `out`: on the thread pool where this
/// op may use several threads ([`crate::kernels::gemm::threads`]), on this thread otherwise.
fn for_each_batch_row(out: &mut [f32], b: usize, row: impl Fn(usize, &mut [f32]) + Sync) {
    let per_row = out.len() / b.max(1);
    if crate::kernels::gemm::threads() > 1 && b > 1 {
        use rayon::prelude::*;
        out.par_chunks_mut(per_row)
            .enumerate()
            .for_each(|(bi, o)| row(bi, o));
    } else {
        for (bi, o) in out.chunks_mut(per_row.max(1)).enumerate() {
            row(bi, o);
        }
    }
}

/// One query `q` (`hd` values) against the keys `k` and values `v` (`l × hd` each, row-major):
/// `out = Σ_j softmax(q·k_j · scale + mask_j) v_j`, with `p` (`l` values) as scratch. On
/// AVX2 with FMA (head sizes a multiple of 8) the scores take four keys at a time and the
/// weighted sum keeps `out` in registers; elsewhere plain loops.
fn one_query(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: Option<&[f32]>,
    scale: f32,
    p: &mut [f32],
    out: &mut [f32],
) {
    let hd = q.len();
    #[cfg(target_arch = "x86_64")]
    let simd = crate::kernels::vmath::avx2() && hd.is_multiple_of(8);
    #[cfg(not(target_arch = "x86_64"))]
    let simd = false;
    if simd {
        // SAFETY: the CPU has AVX2 and FMA; `k` holds `p.len()` rows of `hd`, a multiple of 8.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            simd::scores(q, k, scale, p)
        }
    } else {
        for (j, s) in p.iter_mut().enumerate() {
            *s = dot(q, &k[j * hd..(j + 1) * hd]) * scale;
        }
    }
    if let Some(m) = mask {
        p.iter_mut().zip(m).for_each(|(s, m)| *s += m);
    }
    let max = p.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        // Every key hidden: candle's softmax gives NaN here; no row of a real batch has it.
        out.fill(f32::NAN);
        return;
    }
    p.iter_mut().for_each(|s| *s -= max);
    crate::kernels::vmath::exp_in_place(p);
    let inv = 1.0 / p.iter().sum::<f32>();
    if simd {
        // SAFETY: as above; `v` holds `p.len()` rows of `hd`.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            simd::weighted_sum(p, v, inv, out)
        }
    } else {
        out.fill(0.0);
        for (j, &w) in p.iter().enumerate() {
            if w != 0.0 {
                out.iter_mut()
                    .zip(&v[j * hd..(j + 1) * hd])
                    .for_each(|(o, x)| *o += w * x);
            }
        }
        out.iter_mut().for_each(|o| *o *= inv);
    }
}

/// `Σ a_i b_i` in eight interleaved partial sums.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The AVX2/FMA halves of [`one_query`].
#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    /// The lane sum of `v`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<1>(s, s)))
    }

    /// `p[j] = (q · k_j) · scale` for every key row `k_j` (`q.len()` values, a multiple of 8),
    /// four keys at a time.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `q.len()` is a multiple of 8; `k` holds `p.len()` rows.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn scores(q: &[f32], k: &[f32], scale: f32, p: &mut [f32]) {
        let hd = q.len();
        assert!(hd.is_multiple_of(8) && k.len() >= p.len() * hd);
        let (q, k) = (q.as_ptr(), k.as_ptr());
        let l = p.len();
        let mut j = 0;
        while j + 4 <= l {
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut c = 0;
            while c < hd {
                let qv = _mm256_loadu_ps(q.add(c));
                for (r, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k.add((j + r) * hd + c)), *a);
                }
                c += 8;
            }
            for (r, a) in acc.iter().enumerate() {
                p[j + r] = hsum(*a) * scale;
            }
            j += 4;
        }
        while j < l {
            let mut a = _mm256_setzero_ps();
            let mut c = 0;
            while c < hd {
                a = _mm256_fmadd_ps(
                    _mm256_loadu_ps(q.add(c)),
                    _mm256_loadu_ps(k.add(j * hd + c)),
                    a,
                );
                c += 8;
            }
            p[j] = hsum(a) * scale;
            j += 1;
        }
    }

    /// `out = inv · Σ_j p[j] · v_j` for value rows `v_j` of `out.len()` values (a multiple of
    /// 8), `out` kept in registers 64 values at a time.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `out.len()` is a multiple of 8; `v` holds `p.len()` rows.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn weighted_sum(p: &[f32], v: &[f32], inv: f32, out: &mut [f32]) {
        let hd = out.len();
        assert!(hd.is_multiple_of(8) && v.len() >= p.len() * hd);
        let v = v.as_ptr();
        let mut c0 = 0;
        while c0 < hd {
            let lanes = ((hd - c0) / 8).min(8);
            let mut acc = [_mm256_setzero_ps(); 8];
            for (j, &w) in p.iter().enumerate() {
                let wv = _mm256_set1_ps(w);
                let row = v.add(j * hd + c0);
                for (c, a) in acc.iter_mut().enumerate().take(lanes) {
                    *a = _mm256_fmadd_ps(wv, _mm256_loadu_ps(row.add(8 * c)), *a);
                }
            }
            let iv = _mm256_set1_ps(inv);
            for (c, a) in acc.iter().enumerate().take(lanes) {
                _mm256_storeu_ps(out.as_mut_ptr().add(c0 + 8 * c), _mm256_mul_ps(*a, iv));
            }
            c0 += 8 * lanes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gemm;
    use crate::kernels::gemm::tests::{bits, max_rel};
    use crate::mask::{causal_mask, padded_mask};
    use candle_core::{Device, D};

    /// The exact attention: a query's output is the same bits whether it comes with the
    /// whole sequence (the trainer) or alone against the keys so far (a decode step), with
    /// or without left padding, alone or in a batch, on one thread or several; it is
    /// candle's masked composition to rounding, and so are its gradients.
    #[test]
    fn exact_attention_depends_on_nothing_but_the_keys_a_query_sees() {
        let dev = Device::Cpu;
        let (b, nh, nkv, t, hd) = (3, 4, 2, 9, 12);
        let q = Tensor::randn(0f32, 1.0, (b, nh, t, hd), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (b, nkv, t, hd), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (b, nkv, t, hd), &dev).unwrap();
        let scale = 1.0 / (hd as f64).sqrt();
        for pad in [vec![], vec![0, 3, 5]] {
            let full = attention_exact(&q, &k, &v, &pad, 0, scale).unwrap();
            // Candle's composition over the decoder's mask, to rounding.
            let mask = padded_mask(&pad_or_zero(&pad, b), 0, t, &dev).unwrap();
            let reference = attention_reference(&q, &k, &v, Some(&mask), scale).unwrap();
            assert!(max_rel(&full, &reference) < 1e-5, "{pad:?}");
            let full = full.reshape((b, t, nh, hd)).unwrap();
            for i in 0..t {
                // Query i as a decode step: the keys up to i only.
                let step = |x: &Tensor, len: usize| x.narrow(2, 0, len).unwrap();
                let qi = q.narrow(2, i, 1).unwrap();
                let one = gemm::single_threaded(|| {
                    attention_exact(&qi, &step(&k, i + 1), &step(&v, i + 1), &pad, i, scale)
                })
                .unwrap()
                .reshape((b, 1, nh, hd))
                .unwrap();
                let want = full.narrow(1, i, 1).unwrap();
                assert_eq!(bits(&one), bits(&want), "position {i}, padding {pad:?}");
                // One row alone.
                let r = b - 1;
                let alone = attention_exact(
                    &qi.narrow(0, r, 1).unwrap(),
                    &step(&k, i + 1).narrow(0, r, 1).unwrap(),
                    &step(&v, i + 1).narrow(0, r, 1).unwrap(),
                    if pad.is_empty() { &[] } else { &pad[r..] },
                    i,
                    scale,
                )
                .unwrap()
                .reshape((1, 1, nh, hd))
                .unwrap();
                assert_eq!(
                    bits(&alone),
                    bits(&want.narrow(0, r, 1).unwrap()),
                    "row {r} at {i}"
                );
            }
        }
        // Gradients against the differentiable composition.
        let pad = vec![2, 0, 1];
        let (qv, kv, vv) = (
            candle_core::Var::from_tensor(&q).unwrap(),
            candle_core::Var::from_tensor(&k).unwrap(),
            candle_core::Var::from_tensor(&v).unwrap(),
        );
        let g = Tensor::randn(0f32, 1.0, (b, t, nh * hd), &dev).unwrap();
        let exact = (attention_exact(
            qv.as_tensor(),
            kv.as_tensor(),
            vv.as_tensor(),
            &pad,
            0,
            scale,
        )
        .unwrap()
            * &g)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let mask = padded_mask(&pad, 0, t, &dev).unwrap();
        let composed = {
            let rep = nh / nkv;
            let qg = qv.as_tensor().reshape((b, nkv, rep * t, hd)).unwrap();
            let s = (qg.matmul(&kv.as_tensor().t().unwrap()).unwrap() * scale)
                .unwrap()
                .reshape((b, nkv, rep, t, t))
                .unwrap()
                .broadcast_add(&mask)
                .unwrap();
            let p = crate::kernels::fused::twin::softmax_last_dim(&s)
                .unwrap()
                .reshape((b, nkv, rep * t, t))
                .unwrap();
            p.matmul(vv.as_tensor())
                .unwrap()
                .reshape((b, nh, t, hd))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .reshape((b, t, nh * hd))
                .unwrap()
        };
        let plain = (composed * &g)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (name, x) in [("q", &qv), ("k", &kv), ("v", &vv)] {
            let (a, c) = (
                exact.get(x.as_tensor()).unwrap(),
                plain.get(x.as_tensor()).unwrap(),
            );
            assert!(max_rel(a, c) < 1e-4, "d{name}: {}", max_rel(a, c));
        }
    }

    fn pad_or_zero(pad: &[usize], b: usize) -> Vec<usize> {
        if pad.is_empty() {
            vec![0; b]
        } else {
            pad.to_vec()
        }
    }

    /// Keys and values as a cache holds them: views of the first `l` of `cap` positions.
    fn cache_view(b: usize, nkv: usize, l: usize, cap: usize, hd: usize) -> Tensor {
        Tensor::randn(0f32, 1.0, (b, nkv, cap, hd), &Device::Cpu)
            .unwrap()
            .narrow(D::Minus2, 0, l)
            .unwrap()
    }

    /// The fused kernel against candle's composition: decode steps and prefills, grouped
    /// and plain heads, head sizes off the vector width, no mask, a causal mask shared by the
    /// batch and a per-row padded mask, on one thread and on several.
    #[test]
    fn matches_the_reference_on_cache_views_and_masks() {
        let dev = Device::Cpu;
        for &(b, nh, nkv, t, l, hd) in &[
            (1usize, 1usize, 1usize, 1usize, 1usize, 8usize),
            (3, 4, 2, 1, 17, 64),
            (2, 8, 4, 5, 9, 13),
            (4, 6, 1, 1, 33, 32),
            (2, 2, 2, 7, 7, 3),
        ] {
            let q = Tensor::randn(0f32, 1.0, (b, nh, t, hd), &dev).unwrap();
            let (k, v) = (
                cache_view(b, nkv, l, l + 5, hd),
                cache_view(b, nkv, l, l + 5, hd),
            );
            assert!(fusable(&q, &k, &v));
            let start = l - t;
            let causal = causal_mask(start, t, &dev).unwrap();
            // Row r starts with r padding positions (at most the prompt before the queries).
            let pads: Vec<usize> = (0..b).map(|r| r.min(start)).collect();
            let padded = padded_mask(&pads, start, t, &dev).unwrap();
            for mask in [None, Some(&causal), Some(&padded)] {
                let want = attention_reference(&q, &k, &v, mask, 0.125).unwrap();
                for single in [false, true] {
                    let run = || attention(&q, &k, &v, mask, 0.125).unwrap();
                    let got = if single {
                        crate::kernels::gemm::single_threaded(run)
                    } else {
                        run()
                    };
                    assert_eq!(got.dims(), [b, t, nh * hd]);
                    let r = max_rel(&got, &want);
                    assert!(
                        r < 1e-5,
                        "{b}×{nh}/{nkv}×{t}×{l}×{hd} mask {}: {r}",
                        mask.is_some()
                    );
                }
            }
        }
    }

    #[test]
    fn other_inputs_take_the_reference_and_bad_shapes_are_named() {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (2, 4, 1, 8), &dev).unwrap();
        let k = cache_view(2, 2, 3, 4, 8);
        // A transposed key tensor is not fusable but still gives the right answer.
        let kt = k
            .transpose(2, 3)
            .unwrap()
            .contiguous()
            .unwrap()
            .transpose(2, 3)
            .unwrap();
        assert!(!fusable(&q, &kt, &k));
        let r = max_rel(
            &attention(&q, &kt, &k, None, 0.5).unwrap(),
            &attention_reference(&q, &k, &k, None, 0.5).unwrap(),
        );
        assert!(r < 1e-5, "{r}");
        let bad = cache_view(2, 3, 3, 4, 8);
        let err = attention(&q, &bad, &bad, None, 0.5)
            .unwrap_err()
            .to_string();
        assert!(err.contains("keys [2, 3, 3, 8]"), "{err}");
        let mask = Tensor::zeros((2, 1, 1, 1, 5), DType::F32, &dev).unwrap();
        let err = attention(&q, &k, &k, Some(&mask), 0.5)
            .unwrap_err()
            .to_string();
        assert!(err.contains("mask [2, 1, 1, 1, 5]"), "{err}");
    }
}
