//! Fused CPU kernels **with a backward** for the training path: RMSNorm, rotary embedding,
//! last-dim softmax, SwiGLU (`silu(g) · u`) and the log-softmax-gather that turns logits into
//! target-token log-probs.
//!
//! candle's own fused kernels (`candle_nn::ops::rms_norm`, `softmax_last_dim`, `rotary_emb::rope`)
//! have no backward and cut the autograd graph, so training used to compose each of these from
//! a dozen elementwise ops, each allocating a full activation and adding its own backward
//! nodes. Each op here is one pass forward and one or two passes backward, as a candle
//! `CustomOp` whose `bwd` is itself built from these kernels.
//!
//! The kernels run on f32 CPU tensors. Every public function takes any input and falls back to
//! its differentiable twin (the composition of candle ops, kept in [`twin`]) on other devices and
//! dtypes, so a caller never has to check. Tests hold every kernel to its twin: values and
//! gradients.
use super::contiguous;
use super::vmath::flush;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, D,
};
use rayon::prelude::*;

/// Rows below this many elements per thread are not worth splitting across threads.
const MIN_PAR_ELEMS: usize = 16 * 1024;

/// Rows per parallel task for rows of `width` elements.
fn rows_per_task(width: usize) -> usize {
    (MIN_PAR_ELEMS / width.max(1)).max(1)
}

/// Applies `f(out_row, row_index)` to every row of `out` (rows of `width`), in parallel, or
/// on the calling thread alone inside [`crate::kernels::gemm::single_threaded`] (a rollout shard, which
/// already has a core of its own: handing its rows to the thread pool only made it wait for
/// pool threads that compete with the other shard for the cores).
fn for_rows(out: &mut [f32], width: usize, f: impl Fn(&mut [f32], usize) + Sync) {
    if crate::kernels::gemm::threads() == 1 {
        for (r, row) in out.chunks_mut(width).enumerate() {
            f(row, r);
        }
        return;
    }
    let per = rows_per_task(width);
    out.par_chunks_mut(per * width)
        .enumerate()
        .for_each(|(c, chunk)| {
            for (i, row) in chunk.chunks_mut(width).enumerate() {
                f(row, c * per + i);
            }
        });
}

/// Whether the fused kernels apply to these tensors (f32 on the CPU).
fn fusable(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

fn last_dim(l: &Layout) -> Result<usize> {
    match l.dims().last() {
        Some(&d) if d > 0 => Ok(d),
        _ => candle_core::bail!("fused kernel: empty last dimension {:?}", l.dims()),
    }
}

// ---------------------------------------------------------------------------------------------
// RMSNorm

struct RmsNorm {
    eps: f32,
}

fn inv_rms(row: &[f32], eps: f32) -> f32 {
    let ss: f32 = row.iter().map(|v| v * v).sum();
    1.0 / (ss / row.len() as f32 + eps).sqrt()
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "alp-rms-norm"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous::<f32>(s1, l1, self.name())?;
        let w = contiguous::<f32>(s2, l2, self.name())?;
        let d = last_dim(l1)?;
        if w.len() != d {
            candle_core::bail!("rms_norm: weight has {} entries for rows of {d}", w.len());
        }
        let mut out = vec![0f32; x.len()];
        for_rows(&mut out, d, |o, r| {
            let xr = &x[r * d..(r + 1) * d];
            let s = inv_rms(xr, self.eps);
            for ((o, &v), &wv) in o.iter_mut().zip(xr).zip(w) {
                *o = v * s * wv;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let dx = x.apply_op3_no_bwd(w, &grad, &RmsNormBwdX { eps: self.eps })?;
        let dw = x.apply_op2_no_bwd(&grad, &RmsNormBwdW { eps: self.eps })?;
        Ok((Some(dx), Some(dw)))
    }
}

/// dx = r·(g∘w) − x·r³·⟨g∘w, x⟩/d, with r = 1/rms(x).
struct RmsNormBwdX {
    eps: f32,
}

impl CustomOp3 for RmsNormBwdX {
    fn name(&self) -> &'static str {
        "alp-rms-norm-bwd-x"
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
        let x = contiguous::<f32>(s1, l1, self.name())?;
        let w = contiguous::<f32>(s2, l2, self.name())?;
        let g = contiguous::<f32>(s3, l3, self.name())?;
        let d = last_dim(l1)?;
        let mut out = vec![0f32; x.len()];
        for_rows(&mut out, d, |o, r| {
            let xr = &x[r * d..(r + 1) * d];
            let gr = &g[r * d..(r + 1) * d];
            let s = inv_rms(xr, self.eps);
            let dot: f32 = gr.iter().zip(w).zip(xr).map(|((g, w), x)| g * w * x).sum();
            let c = s * s * s * dot / d as f32;
            for (((o, &gv), &wv), &xv) in o.iter_mut().zip(gr).zip(w).zip(xr) {
                *o = s * gv * wv - xv * c;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// dw = Σ_rows g∘x·r.
struct RmsNormBwdW {
    eps: f32,
}

impl CustomOp2 for RmsNormBwdW {
    fn name(&self) -> &'static str {
        "alp-rms-norm-bwd-w"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous::<f32>(s1, l1, self.name())?;
        let g = contiguous::<f32>(s2, l2, self.name())?;
        let d = last_dim(l1)?;
        let per = rows_per_task(d);
        let dw = x
            .par_chunks(per * d)
            .zip(g.par_chunks(per * d))
            .map(|(xc, gc)| {
                let mut acc = vec![0f32; d];
                for (xr, gr) in xc.chunks(d).zip(gc.chunks(d)) {
                    let s = inv_rms(xr, self.eps);
                    for ((a, &xv), &gv) in acc.iter_mut().zip(xr).zip(gr) {
                        *a += gv * xv * s;
                    }
                }
                acc
            })
            .reduce(
                || vec![0f32; d],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                    a
                },
            );
        Ok((CpuStorage::F32(dw), Shape::from(d)))
    }
}

/// RMSNorm over the last dimension, `x / rms(x) · w`, differentiable in `x` and `w`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    if !fusable(&[x, w]) {
        return twin::rms_norm(x, w, eps);
    }
    x.contiguous()?.apply_op2(&w.contiguous()?, RmsNorm { eps })
}

// ---------------------------------------------------------------------------------------------
// Rotary embedding

/// Rotate-half rotary embedding; `inverse` rotates by −θ (the transpose, hence the backward).
struct Rope {
    inverse: bool,
    layout: RopeLayout,
}

/// Where the heads sit in a rotary kernel's input and output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RopeLayout {
    /// `[batch, heads, seq, head_dim]` in and out.
    Heads,
    /// `[batch, seq, heads, head_dim]` in (a projection's output as it is), `[batch, heads,
    /// seq, head_dim]` out: the transpose is part of the kernel instead of a copy before it.
    FromSeq,
    /// The reverse (`FromSeq`'s backward): `[batch, heads, seq, head_dim]` in, `[batch, seq,
    /// heads, head_dim]` out.
    ToSeq,
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "alp-rope"
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
        let x = contiguous::<f32>(s1, l1, self.name())?;
        let cos = contiguous::<f32>(s2, l2, self.name())?;
        let sin = contiguous::<f32>(s3, l3, self.name())?;
        let (b, h, t, d) = match self.layout {
            RopeLayout::FromSeq => {
                let (b, t, h, d) = l1.shape().dims4()?;
                (b, h, t, d)
            }
            RopeLayout::Heads | RopeLayout::ToSeq => l1.shape().dims4()?,
        };
        let half = d / 2;
        if d % 2 != 0 || cos.len() != b * t * half || sin.len() != cos.len() {
            candle_core::bail!(
                "rope: x {:?} needs cos/sin of [{b}, {t}, {half}], got {:?}",
                l1.dims(),
                l2.dims()
            );
        }
        let sign = if self.inverse { -1.0f32 } else { 1.0 };
        let mut out = vec![0f32; x.len()];
        let layout = self.layout;
        for_rows(&mut out, d, |o, r| {
            // Output row r, its (batch, position) and its input row.
            let (bi, ti, src) = match layout {
                RopeLayout::Heads => (r / (h * t), r % t, r),
                RopeLayout::FromSeq => {
                    // r = (batch, head, position); the input row is (batch, position, head).
                    let (bi, hi, ti) = (r / (h * t), (r / t) % h, r % t);
                    (bi, ti, (bi * t + ti) * h + hi)
                }
                RopeLayout::ToSeq => {
                    // r = (batch, position, head); the input row is (batch, head, position).
                    let (bi, ti, hi) = (r / (t * h), (r / h) % t, r % h);
                    (bi, ti, (bi * h + hi) * t + ti)
                }
            };
            let tab = (bi * t + ti) * half;
            let (c, s) = (&cos[tab..tab + half], &sin[tab..tab + half]);
            let xr = &x[src * d..(src + 1) * d];
            let (x1, x2) = xr.split_at(half);
            let (o1, o2) = o.split_at_mut(half);
            for i in 0..half {
                let si = sign * s[i];
                o1[i] = x1[i] * c[i] - x2[i] * si;
                o2[i] = x2[i] * c[i] + x1[i] * si;
            }
        });
        let shape = match self.layout {
            RopeLayout::Heads => l1.shape().clone(),
            RopeLayout::FromSeq => Shape::from((b, h, t, d)),
            RopeLayout::ToSeq => Shape::from((b, t, h, d)),
        };
        Ok((CpuStorage::F32(out), shape))
    }
    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let layout = match self.layout {
            RopeLayout::Heads => RopeLayout::Heads,
            RopeLayout::FromSeq => RopeLayout::ToSeq,
            RopeLayout::ToSeq => RopeLayout::FromSeq,
        };
        let dx = grad.contiguous()?.apply_op3(
            cos,
            sin,
            Rope {
                inverse: !self.inverse,
                layout,
            },
        )?;
        Ok((Some(dx), None, None))
    }
}

/// Rotary embedding (rotate-half, as Qwen2/Llama) of `x` `[batch, heads, seq, head_dim]` with
/// per-row tables `cos`/`sin` `[batch, seq, head_dim/2]`; differentiable in `x`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if !fusable(&[x, cos, sin]) {
        return twin::rope(x, cos, sin);
    }
    apply_rope(x, cos, sin, RopeLayout::Heads)
}

/// [`rope`] of `x` given as `[batch, seq, heads, head_dim]` (a projection's output, reshaped),
/// returned as `[batch, heads, seq, head_dim]`: `rope(x.transpose(1, 2))` without the copy the
/// transpose needs, in either direction of the backward pass; differentiable in `x`.
pub fn rope_from_seq_major(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if !fusable(&[x, cos, sin]) {
        return twin::rope(&x.transpose(1, 2)?.contiguous()?, cos, sin);
    }
    apply_rope(x, cos, sin, RopeLayout::FromSeq)
}

fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor, layout: RopeLayout) -> Result<Tensor> {
    x.contiguous()?.apply_op3(
        &cos.contiguous()?,
        &sin.contiguous()?,
        Rope {
            inverse: false,
            layout,
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Softmax over the last dimension

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "alp-softmax"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous::<f32>(s, l, self.name())?;
        let d = last_dim(l)?;
        let mut out = vec![0f32; x.len()];
        for_rows(&mut out, d, |o, r| {
            let xr = &x[r * d..(r + 1) * d];
            let m = xr.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            for (o, &v) in o.iter_mut().zip(xr) {
                *o = v - m;
            }
            crate::kernels::vmath::exp_in_place(o);
            let inv = 1.0 / o.iter().sum::<f32>();
            o.iter_mut().for_each(|o| *o = flush(*o * inv));
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxBwd)?,
        ))
    }
}

/// dx = y∘(g − ⟨g, y⟩).
struct SoftmaxBwd;

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "alp-softmax-bwd"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = contiguous::<f32>(s1, l1, self.name())?;
        let g = contiguous::<f32>(s2, l2, self.name())?;
        let d = last_dim(l1)?;
        let mut out = vec![0f32; y.len()];
        for_rows(&mut out, d, |o, r| {
            let (yr, gr) = (&y[r * d..(r + 1) * d], &g[r * d..(r + 1) * d]);
            let dot: f32 = yr.iter().zip(gr).map(|(y, g)| y * g).sum();
            for ((o, &yv), &gv) in o.iter_mut().zip(yr).zip(gr) {
                *o = flush(yv * (gv - dot));
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Softmax over the last dimension, differentiable.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if !fusable(&[x]) {
        return twin::softmax_last_dim(x);
    }
    x.contiguous()?.apply_op1(Softmax)
}

// ---------------------------------------------------------------------------------------------
// SwiGLU: silu(g) · u

/// SwiGLU's inputs as contiguous slices of one shape (gate, up).
fn silu_mul_inputs<'a>(
    s1: &'a CpuStorage,
    l1: &Layout,
    s2: &'a CpuStorage,
    l2: &Layout,
    op: &str,
) -> Result<(&'a [f32], &'a [f32])> {
    if l1.dims() != l2.dims() {
        candle_core::bail!(
            "silu_mul: gate {:?} and up {:?} differ",
            l1.dims(),
            l2.dims()
        );
    }
    Ok((
        contiguous::<f32>(s1, l1, op)?,
        contiguous::<f32>(s2, l2, op)?,
    ))
}

struct SiluMul;

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "alp-silu-mul"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, u) = silu_mul_inputs(s1, l1, s2, l2, self.name())?;
        let d = last_dim(l1)?;
        let mut out = vec![0f32; g.len()];
        for_rows(&mut out, d, |o, r| {
            crate::kernels::vmath::silu_mul(&g[r * d..(r + 1) * d], &u[r * d..(r + 1) * d], o);
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
    fn bwd(
        &self,
        g: &Tensor,
        u: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // Both gradients from one pass (σ(g) computed once), stacked as [2, ...].
        let both = g.apply_op3_no_bwd(u, &grad.contiguous()?, &SiluMulBwd)?;
        Ok((Some(both.get(0)?), Some(both.get(1)?)))
    }
}

/// `[d/dg, d/du]` stacked: d/dg = grad·u·σ(g)(1 + g(1 − σ(g))), d/du = grad·g·σ(g).
struct SiluMulBwd;

impl CustomOp3 for SiluMulBwd {
    fn name(&self) -> &'static str {
        "alp-silu-mul-bwd"
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
        let g = contiguous::<f32>(s1, l1, self.name())?;
        let u = contiguous::<f32>(s2, l2, self.name())?;
        let gr = contiguous::<f32>(s3, l3, self.name())?;
        let d = last_dim(l1)?;
        let n = g.len();
        let mut out = vec![0f32; 2 * n];
        let (dg, du) = out.split_at_mut(n);
        let per = rows_per_task(d) * d;
        dg.par_chunks_mut(per)
            .zip(du.par_chunks_mut(per))
            .enumerate()
            .for_each(|(c, (dg, du))| {
                let off = c * per;
                // e^(−g) first, vectorised, into dg.
                for (e, &gv) in dg.iter_mut().zip(&g[off..]) {
                    *e = -gv;
                }
                crate::kernels::vmath::exp_in_place(dg);
                for i in 0..dg.len() {
                    let (gv, uv, gr) = (g[off + i], u[off + i], gr[off + i]);
                    let s = 1.0 / (1.0 + dg[i]);
                    dg[i] = gr * uv * s * (1.0 + gv * (1.0 - s));
                    du[i] = gr * gv * s;
                }
            });
        let mut dims = vec![2];
        dims.extend_from_slice(l1.dims());
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

/// SwiGLU's product for inference (no backward): one pass with a vectorised `exp`
/// (`vmath::silu_mul`) where the CPU has AVX-512 or AVX2 with FMA and the inputs are f32 on
/// the CPU; candle's `silu` then `mul` elsewhere ([`twin::silu_mul`]). The rollout engine's
/// MLPs spent 6% of a rollout in libm's `expf` and a second pass over the activations.
pub fn silu_mul_inference(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if !crate::kernels::vmath::available() || !fusable(&[gate, up]) || gate.dims() != up.dims() {
        return twin::silu_mul(gate, up);
    }
    gate.contiguous()?
        .apply_op2_no_bwd(&up.contiguous()?, &SiluMulInference)
}

struct SiluMulInference;

impl CustomOp2 for SiluMulInference {
    fn name(&self) -> &'static str {
        "alp-silu-mul-inference"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, u) = silu_mul_inputs(s1, l1, s2, l2, self.name())?;
        let mut out = vec![0f32; g.len()];
        let d = last_dim(l1)?;
        for_rows(&mut out, d, |o, r| {
            crate::kernels::vmath::silu_mul(&g[r * d..(r + 1) * d], &u[r * d..(r + 1) * d], o)
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// SwiGLU's product `silu(gate) · up`, differentiable in both.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if !fusable(&[gate, up]) || gate.dims() != up.dims() {
        return twin::silu_mul(gate, up);
    }
    gate.contiguous()?.apply_op2(&up.contiguous()?, SiluMul)
}

// ---------------------------------------------------------------------------------------------
// Log-softmax gather

struct LogSoftmaxGather;

fn row_max_lse(xr: &[f32]) -> (f32, f32) {
    let m = xr.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    (m, m + crate::kernels::vmath::exp_sum(xr, m).ln())
}

impl CustomOp2 for LogSoftmaxGather {
    fn name(&self) -> &'static str {
        "alp-log-softmax-gather"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous::<f32>(s1, l1, self.name())?;
        let t = contiguous::<u32>(s2, l2, self.name())?;
        let (n, v) = l1.shape().dims2()?;
        if t.len() != n {
            candle_core::bail!("log_softmax_gather: {} targets for {n} rows", t.len());
        }
        let out: Vec<f32> = (0..n)
            .into_par_iter()
            .with_min_len(rows_per_task(v))
            .map(|r| {
                let xr = &x[r * v..(r + 1) * v];
                let (_, lse) = row_max_lse(xr);
                xr.get(t[r] as usize).map_or(f32::NAN, |&xt| xt - lse)
            })
            .collect();
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }
    fn bwd(
        &self,
        x: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = x.apply_op3_no_bwd(targets, &grad.contiguous()?, &LogSoftmaxGatherBwd)?;
        Ok((Some(dx), None))
    }
}

/// dx[r, j] = g[r]·(𝟙[j = t_r] − softmax(x_r)_j).
struct LogSoftmaxGatherBwd;

impl CustomOp3 for LogSoftmaxGatherBwd {
    fn name(&self) -> &'static str {
        "alp-log-softmax-gather-bwd"
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
        let x = contiguous::<f32>(s1, l1, self.name())?;
        let t = contiguous::<u32>(s2, l2, self.name())?;
        let g = contiguous::<f32>(s3, l3, self.name())?;
        let (_, v) = l1.shape().dims2()?;
        let mut out = vec![0f32; x.len()];
        for_rows(&mut out, v, |o, r| {
            let xr = &x[r * v..(r + 1) * v];
            let (_, lse) = row_max_lse(xr);
            let gv = g[r];
            for (o, &xv) in o.iter_mut().zip(xr) {
                *o = xv - lse;
            }
            crate::kernels::vmath::exp_in_place(o);
            o.iter_mut().for_each(|o| *o = flush(*o * -gv));
            if let Some(o) = o.get_mut(t[r] as usize) {
                *o += gv;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `log_softmax(x)[target]` per row of `x` `[rows, vocab]` with `targets` `[rows]` (u32):
/// `[rows]`, differentiable in `x`, without materialising the log-softmax. Targets must be in
/// range (the caller checks; an out-of-range target gives NaN, never a read out of bounds).
pub fn log_softmax_gather(x: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if !fusable(&[x]) || targets.dtype() != DType::U32 || !targets.device().is_cpu() {
        return twin::log_softmax_gather(x, targets);
    }
    x.contiguous()?
        .apply_op2(&targets.contiguous()?, LogSoftmaxGather)
}

/// `x · wᵀ` over rows (`x: [rows, in]`, `w: [out, in]`) for a weight that is not trained
/// (a LoRA run's frozen base): the backward hands `x` its gradient `dy · w` and computes none
/// for `w`, where candle's matmul computes both (a weight-sized product and buffer per
/// projection, the LM head's `vocab × hidden` among them). f32 CPU tensors; elsewhere, or for
/// an input that needs no gradient, the plain product.
pub fn frozen_linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let cpu_f32 = x.device().is_cpu() && x.dtype() == DType::F32 && w.dtype() == DType::F32;
    if !cpu_f32 || !x.track_op() {
        return x.matmul(&w.t()?);
    }
    x.contiguous()?
        .apply_op1_arc(std::sync::Arc::new(Box::new(FrozenLinear {
            w: w.contiguous()?.detach(),
        })))
}

struct FrozenLinear {
    w: Tensor,
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "alp-frozen-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous::<f32>(s, l, self.name())?;
        let (m, k) = l.shape().dims2()?;
        let n = self.w.dim(0)?;
        let (st, wl) = self.w.storage_and_layout();
        let w = match &*st {
            candle_core::Storage::Cpu(c) => contiguous::<f32>(c, wl, self.name())?,
            _ => candle_core::bail!("{}: the weight is not on the CPU", self.name()),
        };
        if w.len() != n * k || x.len() != m * k {
            candle_core::bail!(
                "{}: x {:?} against w {:?}",
                self.name(),
                l.dims(),
                wl.dims()
            );
        }
        // Straight into the output (gemm writes every element): no copy of `x` into a tensor
        // and none of the product out of one (at the LM head that is a logits-sized buffer).
        let mut y: Vec<f32> = Vec::with_capacity(m * n);
        let threads = crate::kernels::gemm::threads();
        // SAFETY: `x` is `m × k` and `w` is `n × k`, both row-major and contiguous (checked
        // above); `y` has room for `m × n` and gemm writes each element once (`read_dst`
        // false), after which the length is set.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                y.as_mut_ptr(),
                1,
                n as isize,
                false,
                x.as_ptr(),
                1,
                k as isize,
                w.as_ptr(),
                k as isize,
                1,
                0f32,
                1f32,
                false,
                false,
                false,
                if threads > 1 {
                    gemm::Parallelism::Rayon(threads)
                } else {
                    gemm::Parallelism::None
                },
            );
            y.set_len(m * n);
        }
        Ok((CpuStorage::F32(y), Shape::from((m, n))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.w)?))
    }
}

/// The differentiable twins: the same functions composed from candle's ops (any device and
/// dtype). They are the reference the fused kernels are tested against, and the path taken
/// where the kernels do not apply.
pub mod twin {
    use super::*;

    /// RMSNorm from candle ops.
    pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
        candle_nn::ops::rms_norm_slow(x, w, eps)
    }

    /// Rotary embedding from candle ops (`cos`/`sin` `[batch, seq, head_dim/2]`).
    pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let cos = Tensor::cat(&[cos, cos], D::Minus1)?.unsqueeze(1)?;
        let sin = Tensor::cat(&[sin, sin], D::Minus1)?.unsqueeze(1)?;
        let d = x.dim(D::Minus1)?;
        let x1 = x.narrow(D::Minus1, 0, d / 2)?;
        let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
        let rot = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        x.broadcast_mul(&cos)? + rot.broadcast_mul(&sin)?
    }

    /// Softmax over the last dimension from candle ops.
    pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::softmax(x, D::Minus1)
    }

    /// `silu(gate) · up` from candle ops.
    pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        gate.silu()? * up
    }

    /// `log_softmax(x)[target]` from candle ops (`x` `[rows, vocab]`, `targets` `[rows]`).
    pub fn log_softmax_gather(x: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let max = x.max_keepdim(D::Minus1)?.detach();
        let lse = (x
            .broadcast_sub(&max)?
            .exp()?
            .sum_keepdim(D::Minus1)?
            .log()?
            + &max)?;
        let picked = x.gather(&targets.unsqueeze(D::Minus1)?.contiguous()?, D::Minus1)?;
        (picked - lse)?.squeeze(D::Minus1)
    }
}
