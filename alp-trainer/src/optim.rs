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
        let v = m.clone();
        Ok(AdamW {
            params,
            m,
            v,
            t: 0,
            hp,
        })
    }

    /// The variables.
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

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
    pub fn step(&mut self, grads: &[Option<Tensor>], scale: f64) -> Result<()> {
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
            let g = if scale != 1.0 {
                (g * scale)?
            } else {
                g.clone()
            };
            let m = ((&self.m[i] * beta1)? + (&g * (1.0 - beta1))?)?;
            let v = ((&self.v[i] * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            let update = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + eps)?)?;
            let mut w = p.as_tensor().clone();
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
            out.insert(format!("{prefix}.{name}.m"), self.m[i].clone());
            out.insert(format!("{prefix}.{name}.v"), self.v[i].clone());
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

fn add_grads(acc: &mut Vec<Option<Tensor>>, g: Vec<Option<Tensor>>) -> Result<()> {
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
