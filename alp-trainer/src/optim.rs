//! AdamW with decoupled weight decay over candle `Var`s, with a global-norm gradient clip and
//! state that can be saved and restored exactly (for resume).

use alp_core::{Error, Result};
use candle_core::{backprop::GradStore, Tensor, Var};
use std::collections::BTreeMap;

/// Hyper-parameters of one parameter group.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWParams {
    /// Learning rate.
    pub lr: f64,
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

impl AdamWParams {
    /// β = (0.9, 0.999), ε = 1e-8, no weight decay, learning rate `lr`.
    pub fn with_lr(lr: f64) -> Self {
        AdamWParams {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// One AdamW parameter group.
pub struct AdamW {
    params: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    t: u64,
    /// Hyper-parameters (the learning rate may be changed between steps).
    pub hp: AdamWParams,
}

impl AdamW {
    /// A group over named variables.
    pub fn new(params: Vec<(String, Var)>, hp: AdamWParams) -> Result<Self> {
        let m = params
            .iter()
            .map(|(_, p)| p.as_tensor().zeros_like())
            .collect::<candle_core::Result<Vec<_>>>()?;
        // Separate zeros: the fused update writes m and v in place.
        let v = params
            .iter()
            .map(|(_, p)| p.as_tensor().zeros_like())
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(AdamW {
            params,
            m,
            v,
            t: 0,
            hp,
        })
    }

    /// How many numbers the parameters hold.
    pub fn num_params(&self) -> usize {
        self.params
            .iter()
            .map(|(_, v)| v.as_tensor().elem_count())
            .sum()
    }

    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // used by alp-cli and the tests
    /// The parameters, named, in update order.
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // used by alp-cli and the tests
    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.t
    }

    /// The gradients of this group's variables in `grads` (None where a variable got none).
    pub fn grads(&self, grads: &GradStore) -> Vec<Option<Tensor>> {
        self.params
            .iter()
            .map(|(_, p)| grads.get(p.as_tensor()).cloned())
            .collect()
    }

    /// One update with `grads` (in parameter order) scaled by `scale` (gradient clipping).
    ///
    /// f32 CPU parameters take a fused update that writes the moments and the weights in place
    /// (three passes, no allocation); others take [`AdamW::step_reference`]'s tensor ops. The
    /// two agree to rounding (tested).
    pub fn step(&mut self, grads: &[Option<Tensor>], scale: f64) -> Result<()> {
        self.update(grads, scale, true)
    }

    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // used by alp-cli and the tests
    /// [`AdamW::step`] composed from candle tensor ops only: the reference the fused update is
    /// tested against.
    pub fn step_reference(&mut self, grads: &[Option<Tensor>], scale: f64) -> Result<()> {
        self.update(grads, scale, false)
    }

    fn update(&mut self, grads: &[Option<Tensor>], scale: f64, fused: bool) -> Result<()> {
        self.t += 1;
        let AdamWParams {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.hp;
        let bc1 = 1.0 - beta1.powi(self.t as i32);
        let bc2 = 1.0 - beta2.powi(self.t as i32);
        for (i, (_, p)) in self.params.iter().enumerate() {
            let Some(g) = &grads[i] else { continue };
            let w = p.as_tensor();
            let fusable = [w, g, &self.m[i], &self.v[i]]
                .iter()
                .all(|t| t.device().is_cpu() && t.dtype() == candle_core::DType::F32)
                && g.dims() == w.dims();
            if fused && fusable {
                let g = g.contiguous()?;
                self.m[i].inplace_op2(
                    &g,
                    &fused_adamw::Moment {
                        beta: beta1,
                        scale,
                        square: false,
                    },
                )?;
                self.v[i].inplace_op2(
                    &g,
                    &fused_adamw::Moment {
                        beta: beta2,
                        scale,
                        square: true,
                    },
                )?;
                w.inplace_op3(
                    &self.m[i],
                    &self.v[i],
                    &fused_adamw::Apply {
                        lr,
                        decay: 1.0 - lr * weight_decay,
                        bc1,
                        bc2,
                        eps,
                    },
                )?;
                continue;
            }
            let g = if scale != 1.0 {
                (g * scale)?
            } else {
                g.clone()
            };
            let m = ((&self.m[i] * beta1)? + (&g * (1.0 - beta1))?)?;
            let v = ((&self.v[i] * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            let update = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + eps)?)?;
            let mut w = w.clone();
            if weight_decay != 0.0 {
                w = (&w * (1.0 - lr * weight_decay))?;
            }
            p.set(&(w - (update * lr)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// The moments and step count, named `<prefix>.<param>.m|v` and `<prefix>.t`.
    pub fn state(&self, prefix: &str) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        for (i, (name, _)) in self.params.iter().enumerate() {
            // Copies: the fused update writes the moments in place.
            out.insert(format!("{prefix}.{name}.m"), self.m[i].copy()?);
            out.insert(format!("{prefix}.{name}.v"), self.v[i].copy()?);
        }
        out.insert(
            format!("{prefix}.t"),
            Tensor::new(
                &[self.t as f64],
                self.m
                    .first()
                    .map(|t| t.device())
                    .unwrap_or(&candle_core::Device::Cpu),
            )?,
        );
        Ok(out)
    }

    /// Restores what [`AdamW::state`] wrote.
    pub fn load_state(&mut self, prefix: &str, state: &BTreeMap<String, Tensor>) -> Result<()> {
        let get = |k: String| {
            state.get(&k).cloned().ok_or_else(|| {
                Error::Msg(format!(
                    "optimizer state `{k}` is missing from the checkpoint"
                ))
            })
        };
        for (i, (name, p)) in self.params.iter().enumerate() {
            let m = get(format!("{prefix}.{name}.m"))?;
            let v = get(format!("{prefix}.{name}.v"))?;
            if m.dims() != p.as_tensor().dims() || v.dims() != p.as_tensor().dims() {
                return Err(Error::invalid(format!(
                    "optimizer state for {name} has the wrong shape"
                )));
            }
            self.m[i] = m.to_dtype(p.dtype())?;
            self.v[i] = v.to_dtype(p.dtype())?;
        }
        self.t = get(format!("{prefix}.t"))?.to_vec1::<f64>()?[0] as u64;
        Ok(())
    }
}

/// The global L2 norm of several gradient lists; `None` entries are skipped.
pub fn global_norm(groups: &[&[Option<Tensor>]]) -> Result<f64> {
    let mut sq = 0.0f64;
    for g in groups {
        for t in g.iter().flatten() {
            sq += t
                .sqr()?
                .sum_all()?
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?;
        }
    }
    Ok(sq.sqrt())
}

/// Gradients of one mini-batch for both parameter groups, summed over its micro-batches.
#[derive(Debug, Clone, Default)]
pub struct Gradients {
    /// Gradients of the weights, in the θ group's parameter order (`None`: no gradient).
    pub theta: Vec<Option<Tensor>>,
    /// Gradients of log σ.
    pub sigma: Vec<Option<Tensor>>,
    /// False once a micro-batch had a non-finite loss (the mini-batch is then skipped).
    pub finite_loss: bool,
}

/// Adds gradients `g` into `acc` parameter by parameter (an empty `acc` takes `g` as it is; a
/// missing gradient counts as zero).
pub fn add_grads(acc: &mut Vec<Option<Tensor>>, g: Vec<Option<Tensor>>) -> Result<()> {
    if acc.is_empty() {
        *acc = g;
        return Ok(());
    }
    for (x, y) in acc.iter_mut().zip(g) {
        *x = match (x.take(), y) {
            (Some(a), Some(b)) => Some((a + b)?),
            (a, None) => a,
            (None, b) => b,
        };
    }
    Ok(())
}

impl Gradients {
    /// No gradient yet, loss finite.
    pub fn new() -> Self {
        Gradients {
            finite_loss: true,
            ..Default::default()
        }
    }
}

/// What [`Optimizer::apply`] did with a mini-batch's gradients.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Update {
    /// Both groups stepped.
    Applied {
        /// Global norm of the θ gradients before clipping.
        grad_norm: f64,
        /// Norm of the log σ gradient, when that group stepped.
        sigma_grad_norm: Option<f64>,
    },
    /// A non-finite loss or gradient: nothing changed.
    Skipped,
}

/// The two AdamW groups of RL (weights θ with a global-norm clip; log σ on its own, unclipped,
/// no weight decay), with gradient accumulation and the non-finite skip.
pub struct Optimizer {
    /// The weights' group.
    pub theta: AdamW,
    /// The log σ group.
    pub sigma: AdamW,
    /// Global-norm clip of θ (0: off).
    pub grad_clip: f64,
}

impl Optimizer {
    /// Adds the gradients of `store` (one micro-batch's backward) to `acc`.
    pub fn accumulate(&self, acc: &mut Gradients, store: &GradStore) -> Result<()> {
        add_grads(&mut acc.theta, self.theta.grads(store))?;
        add_grads(&mut acc.sigma, self.sigma.grads(store))
    }

    /// Steps θ (clipped) and, with `step_sigma`, log σ; skips everything when the loss or the
    /// θ gradient is not finite.
    pub fn apply(&mut self, g: &Gradients, step_sigma: bool) -> Result<Update> {
        let norm = if g.finite_loss && !g.theta.is_empty() {
            global_norm(&[&g.theta])?
        } else {
            f64::NAN
        };
        if !norm.is_finite() {
            return Ok(Update::Skipped);
        }
        let scale = if self.grad_clip > 0.0 && norm > self.grad_clip {
            self.grad_clip / norm
        } else {
            1.0
        };
        self.theta.step(&g.theta, scale)?;
        let mut sigma_grad_norm = None;
        if step_sigma && !g.sigma.is_empty() {
            let sn = global_norm(&[&g.sigma])?;
            sigma_grad_norm = Some(sn);
            if sn.is_finite() {
                self.sigma.step(&g.sigma, 1.0)?;
            }
        }
        Ok(Update::Applied {
            grad_norm: norm,
            sigma_grad_norm,
        })
    }
}

/// The fused AdamW update's in-place CPU kernels (f32, contiguous).
mod fused_adamw {
    use candle_core::{CpuStorage, InplaceOp2, InplaceOp3, Layout, Result};

    fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
        match (s, l.contiguous_offsets()) {
            (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
            _ => candle_core::bail!("fused AdamW: {what} must be contiguous f32"),
        }
    }

    fn slice_mut<'a>(s: &'a mut CpuStorage, l: &Layout, what: &str) -> Result<&'a mut [f32]> {
        match (s, l.contiguous_offsets()) {
            (CpuStorage::F32(v), Some((a, b))) => Ok(&mut v[a..b]),
            _ => candle_core::bail!("fused AdamW: {what} must be contiguous f32"),
        }
    }

    /// `m ← β·m + (1 − β)·(s·g)` (or `(s·g)²` for the second moment), in place.
    pub struct Moment {
        pub beta: f64,
        pub scale: f64,
        pub square: bool,
    }

    impl InplaceOp2 for Moment {
        fn name(&self) -> &'static str {
            "alp-adamw-moment"
        }
        fn cpu_fwd(
            &self,
            s1: &mut CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
        ) -> Result<()> {
            let g = slice(s2, l2, "the gradient")?;
            let m = slice_mut(s1, l1, "a moment")?;
            if m.len() != g.len() {
                candle_core::bail!(
                    "fused AdamW: moment of {} for a gradient of {}",
                    m.len(),
                    g.len()
                );
            }
            let (b, s) = (self.beta as f32, self.scale as f32);
            let a = 1.0 - b;
            for (m, &g) in m.iter_mut().zip(g) {
                let g = g * s;
                *m = *m * b + a * if self.square { g * g } else { g };
            }
            Ok(())
        }
    }

    /// `w ← w·decay − lr·(m/bc1) / (√(v/bc2) + ε)`, in place.
    pub struct Apply {
        pub lr: f64,
        pub decay: f64,
        pub bc1: f64,
        pub bc2: f64,
        pub eps: f64,
    }

    impl InplaceOp3 for Apply {
        fn name(&self) -> &'static str {
            "alp-adamw-apply"
        }
        fn cpu_fwd(
            &self,
            s1: &mut CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
            s3: &CpuStorage,
            l3: &Layout,
        ) -> Result<()> {
            let m = slice(s2, l2, "the first moment")?;
            let v = slice(s3, l3, "the second moment")?;
            let w = slice_mut(s1, l1, "a weight")?;
            if w.len() != m.len() || w.len() != v.len() {
                candle_core::bail!("fused AdamW: weight and moments differ in size");
            }
            let (lr, decay) = (self.lr as f32, self.decay as f32);
            let (ibc1, ibc2, eps) = (
                1.0 / self.bc1 as f32,
                1.0 / self.bc2 as f32,
                self.eps as f32,
            );
            for ((w, &m), &v) in w.iter_mut().zip(m).zip(v) {
                *w = *w * decay - lr * (m * ibc1) / ((v * ibc2).sqrt() + eps);
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn group(seed: u64) -> AdamW {
        let dev = Device::Cpu;
        let mk = |shape: &[usize], k: u64| {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n)
                .map(|i| (((i as u64 + 1) * (seed + k) * 2654435761) % 1000) as f32 / 500.0 - 1.0)
                .collect();
            Var::from_tensor(&Tensor::from_vec(v, shape, &dev).unwrap()).unwrap()
        };
        let params = vec![("a".into(), mk(&[7, 5], 1)), ("b".into(), mk(&[13], 2))];
        let mut hp = AdamWParams::with_lr(3e-2);
        hp.weight_decay = 0.1;
        AdamW::new(params, hp).unwrap()
    }

    fn grads(step: usize) -> Vec<Option<Tensor>> {
        let dev = Device::Cpu;
        let g = |n: usize, k: usize| {
            let v: Vec<f32> = (0..n)
                .map(|i| ((i * 31 + k * 17 + step * 7) % 23) as f32 / 11.0 - 1.0)
                .collect();
            Tensor::from_vec(v, n, &dev).unwrap()
        };
        vec![
            Some(g(35, 1).reshape((7, 5)).unwrap()),
            // A transposed (non-contiguous) gradient on some steps.
            Some(if step.is_multiple_of(2) {
                g(13, 2)
            } else {
                g(13, 3)
            }),
        ]
    }

    fn values(o: &AdamW) -> Vec<f32> {
        let mut out = Vec::new();
        for (i, (_, p)) in o.params.iter().enumerate() {
            for t in [p.as_tensor(), &o.m[i], &o.v[i]] {
                out.extend(t.flatten_all().unwrap().to_vec1::<f32>().unwrap());
            }
        }
        out
    }

    #[test]
    fn fused_update_matches_the_tensor_op_reference() {
        let (mut fast, mut slow) = (group(3), group(3));
        let before = values(&fast);
        for step in 0..6 {
            let mut g = grads(step);
            if step == 3 {
                // A transposed gradient: the fused path makes it contiguous first.
                let t = g[0]
                    .as_ref()
                    .unwrap()
                    .t()
                    .unwrap()
                    .contiguous()
                    .unwrap()
                    .t()
                    .unwrap();
                assert!(!t.is_contiguous());
                g[0] = Some(t);
            }
            if step == 4 {
                g[1] = None; // a variable without a gradient is left alone
            }
            let scale = if step % 2 == 0 { 1.0 } else { 0.37 };
            fast.step(&g, scale).unwrap();
            slow.step_reference(&g, scale).unwrap();
        }
        let (a, b) = (values(&fast), values(&slow));
        assert_ne!(a, before, "the update changed nothing");
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-6 * (1.0 + y.abs()), "{x} vs {y}");
        }
        // The saved state is a copy: a later in-place step does not change it.
        let state = fast.state("opt").unwrap();
        let m0 = state["opt.a.m"]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        fast.step(&grads(9), 1.0).unwrap();
        let m1 = state["opt.a.m"]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(m0, m1);
        assert_eq!(state["opt.a.m"].dtype(), DType::F32);
    }
}
