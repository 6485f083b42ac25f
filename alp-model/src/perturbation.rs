//! The layerwise Gaussian perturbation of Adaptive Layerwise Perturbation (ALP).
//!
//! At each selected decoder layer ℓ, before its input norm: `h ← h + σ_ℓ·ε` (absolute mode)
//! or `h ← h + σ_ℓ·sg(rms(h))·ε` (relative mode), `ε ~ N(0, I)`, `σ_ℓ = exp(s_ℓ)` with `s` a
//! learnable [`candle_core::Var`]. Noise is drawn from a seed derived from
//! (seed, step, micro-batch, layer), so a recomputation reproduces it exactly.
use std::sync::atomic::{AtomicU64, Ordering};

use alp_core::{splitmix64, GOLDEN_GAMMA};
use alp_core::{Error, Result};
use candle_core::{DType, Device, Tensor, Var, D};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

/// A hook the model calls on the input hidden state of every decoder layer (and once on the
/// final hidden state before the LM head). Only training forwards are perturbed.
pub trait Perturbation: Send + Sync {
    /// Returns the (possibly perturbed) input hidden state of decoder layer `layer`,
    /// `hidden` shaped `[batch, seq, hidden]`.
    fn perturb(&self, layer: usize, hidden: &Tensor) -> Result<Tensor>;

    /// Returns the (possibly perturbed) final normed hidden state that feeds the LM head.
    /// The default leaves it alone.
    fn perturb_head(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(hidden.clone())
    }

    /// True when this perturbation never changes anything (lets the model skip work).
    fn is_identity(&self) -> bool {
        false
    }

    /// This perturbation with its noise keyed to `(step, micro_batch)` instead of a shared,
    /// mutable context, so that micro-batches can run at the same time; None (the default)
    /// when its output does not depend on such a key and it can be used as it is.
    fn keyed(&self, _step: u64, _micro_batch: u64) -> Option<Box<dyn Perturbation + '_>> {
        None
    }
}

/// The free perturbation: returns its input unchanged.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoPerturbation;

impl Perturbation for NoPerturbation {
    fn perturb(&self, _layer: usize, hidden: &Tensor) -> Result<Tensor> {
        Ok(hidden.clone())
    }
    fn is_identity(&self) -> bool {
        true
    }
}

/// The random stream of the noise and of random init: ChaCha8, whose output for a seed
/// `rand_chacha` promises to keep across versions (bit-identical resume depends on it).
pub fn seeded_rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// How σ relates to the hidden state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SigmaMode {
    /// The paper's: σ in the units of h.
    Absolute,
    /// Noise scaled by the detached RMS of each token's h (fits small models with tiny hidden states).
    #[default]
    Relative,
}

/// Which layers are perturbed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum LayerSelection {
    /// Every decoder layer (the paper's best).
    #[default]
    All,
    /// The first third of the layers.
    Early,
    /// The middle third.
    Middle,
    /// The last third.
    Late,
    /// Layers `start..end`.
    Range {
        /// First layer.
        start: usize,
        /// One past the last layer.
        end: usize,
    },
    /// No decoder layer: only the final hidden state before the LM head (ablation).
    LogitsOnly,
}

impl LayerSelection {
    /// Whether layer `l` of `n` is perturbed. The thirds are cut at ⌈n/3⌉ and ⌈2n/3⌉, so each
    /// holds at least one layer from 3 layers on (4 layers: {0, 1}, {2}, {3}).
    pub fn contains(&self, l: usize, n: usize) -> bool {
        let (a, b) = (n.div_ceil(3), (2 * n).div_ceil(3));
        match self {
            LayerSelection::All => true,
            LayerSelection::Early => l < a,
            LayerSelection::Middle => l >= a && l < b,
            LayerSelection::Late => l >= b && l < n,
            LayerSelection::Range { start, end } => l >= *start && l < *end,
            LayerSelection::LogitsOnly => false,
        }
    }
}

/// Settings of a [`LayerwiseGaussian`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PerturbationConfig {
    /// Initial σ (for every layer).
    pub sigma_init: f64,
    /// Absolute or relative σ.
    pub mode: SigmaMode,
    /// Whether log σ is trained (adaptive) or fixed.
    pub learnable: bool,
    /// Which layers get noise.
    pub layers: LayerSelection,
    /// Base seed of the noise.
    pub seed: u64,
}

impl Default for PerturbationConfig {
    fn default() -> Self {
        PerturbationConfig {
            sigma_init: 0.05,
            mode: SigmaMode::Relative,
            learnable: true,
            layers: LayerSelection::All,
            seed: 0,
        }
    }
}

impl PerturbationConfig {
    /// Rejects impossible settings, naming the field.
    pub fn validate(&self, num_layers: usize) -> Result<()> {
        let ok = self.sigma_init.is_finite()
            && (self.sigma_init > 0.0 || (self.sigma_init == 0.0 && !self.learnable));
        if !ok {
            return Err(Error::config(
                "perturbation.sigma_init",
                format!("{} must be finite and > 0 (σ = exp(log σ); 0 is allowed only with learnable = false)", self.sigma_init),
            ));
        }
        if let LayerSelection::Range { start, end } = self.layers {
            if start >= end || end > num_layers {
                return Err(Error::config(
                    "perturbation.layers",
                    format!("range {start}..{end} is empty or beyond the {num_layers} layers"),
                ));
            }
        }
        Ok(())
    }
}

/// The learnable (or fixed) layerwise Gaussian perturbation.
#[derive(Debug)]
pub struct LayerwiseGaussian {
    log_sigma: Var,
    cfg: PerturbationConfig,
    num_layers: usize,
    step: AtomicU64,
    micro_batch: AtomicU64,
}

impl LayerwiseGaussian {
    /// One log σ per layer (`num_layers` entries), initialised to `ln(sigma_init)`, in f32 on `device`.
    pub fn new(cfg: PerturbationConfig, num_layers: usize, device: &Device) -> Result<Self> {
        cfg.validate(num_layers)?;
        let s = Tensor::full(cfg.sigma_init.ln() as f32, num_layers, device)?;
        Ok(LayerwiseGaussian {
            log_sigma: Var::from_tensor(&s)?,
            cfg,
            num_layers,
            step: AtomicU64::new(0),
            micro_batch: AtomicU64::new(0),
        })
    }

    /// The learnable log σ (one per layer); give it to its own optimizer group.
    pub fn log_sigma(&self) -> &Var {
        &self.log_sigma
    }

    /// Current σ of every layer.
    pub fn sigmas(&self) -> Result<Vec<f32>> {
        Ok(self.log_sigma.as_tensor().exp()?.to_vec1()?)
    }

    /// The settings.
    pub fn config(&self) -> &PerturbationConfig {
        &self.cfg
    }

    /// Sets the (step, micro-batch) that, with the seed and the layer, determine the noise.
    pub fn set_context(&self, step: u64, micro_batch: u64) {
        self.step.store(step, Ordering::Relaxed);
        self.micro_batch.store(micro_batch, Ordering::Relaxed);
    }

    /// The (step, micro-batch) set by [`LayerwiseGaussian::set_context`].
    fn context(&self) -> (u64, u64) {
        (
            self.step.load(Ordering::Relaxed),
            self.micro_batch.load(Ordering::Relaxed),
        )
    }

    fn noise_seed(&self, (step, micro_batch): (u64, u64), layer: u64) -> u64 {
        let mut x = self.cfg.seed;
        for v in [step, micro_batch, layer] {
            x = splitmix64(x ^ splitmix64(v.wrapping_add(GOLDEN_GAMMA)));
        }
        x
    }

    /// Standard normal noise shaped like `like`, from the seed of `layer` (index `num_layers`
    /// is the LM-head input) in the current context.
    pub fn noise(&self, layer: usize, like: &Tensor) -> Result<Tensor> {
        self.noise_at(self.context(), layer, like)
    }

    /// [`LayerwiseGaussian::noise`] for the context `(step, micro_batch)`.
    pub fn noise_at(&self, key: (u64, u64), layer: usize, like: &Tensor) -> Result<Tensor> {
        let mut rng = seeded_rng(self.noise_seed(key, layer as u64));
        let n = like.elem_count();
        let v: Vec<f32> = (0..n).map(|_| StandardNormal.sample(&mut rng)).collect();
        Ok(Tensor::from_vec(v, like.shape(), like.device())?.to_dtype(like.dtype())?)
    }

    fn sigma(&self, idx: usize) -> Result<Tensor> {
        let s = if self.cfg.learnable {
            self.log_sigma.as_tensor().clone()
        } else {
            self.log_sigma.as_tensor().detach()
        };
        Ok(s.narrow(0, idx, 1)?.exp()?)
    }

    fn add_noise(
        &self,
        key: (u64, u64),
        idx: usize,
        sigma_idx: usize,
        h: &Tensor,
    ) -> Result<Tensor> {
        let eps = self.noise_at(key, idx, h)?;
        let sigma = self.sigma(sigma_idx)?.to_dtype(h.dtype())?;
        let scaled = match self.cfg.mode {
            SigmaMode::Absolute => eps.broadcast_mul(&sigma)?,
            SigmaMode::Relative => {
                let rms = h
                    .detach()
                    .to_dtype(DType::F32)?
                    .sqr()?
                    .mean_keepdim(D::Minus1)?
                    .sqrt()?
                    .to_dtype(h.dtype())?;
                eps.broadcast_mul(&rms)?.broadcast_mul(&sigma)?
            }
        };
        Ok((h + scaled)?)
    }
}

impl LayerwiseGaussian {
    fn perturb_at(&self, key: (u64, u64), layer: usize, hidden: &Tensor) -> Result<Tensor> {
        if layer >= self.num_layers {
            return Err(Error::invalid(format!(
                "perturbation built for {} layers was asked for layer {layer}",
                self.num_layers
            )));
        }
        if !self.cfg.layers.contains(layer, self.num_layers) {
            return Ok(hidden.clone());
        }
        self.add_noise(key, layer, layer, hidden)
    }

    fn perturb_head_at(&self, key: (u64, u64), hidden: &Tensor) -> Result<Tensor> {
        if self.cfg.layers == LayerSelection::LogitsOnly {
            // The logits-only ablation uses the first σ entry.
            self.add_noise(key, self.num_layers, 0, hidden)
        } else {
            Ok(hidden.clone())
        }
    }
}

impl Perturbation for LayerwiseGaussian {
    fn perturb(&self, layer: usize, hidden: &Tensor) -> Result<Tensor> {
        self.perturb_at(self.context(), layer, hidden)
    }

    fn perturb_head(&self, hidden: &Tensor) -> Result<Tensor> {
        self.perturb_head_at(self.context(), hidden)
    }

    fn keyed(&self, step: u64, micro_batch: u64) -> Option<Box<dyn Perturbation + '_>> {
        Some(Box::new(KeyedGaussian {
            inner: self,
            key: (step, micro_batch),
        }))
    }
}

/// A [`LayerwiseGaussian`] whose noise is keyed to a fixed (step, micro-batch): the same noise
/// as the shared context set to that key, without touching the shared context.
#[derive(Debug, Clone, Copy)]
pub struct KeyedGaussian<'a> {
    inner: &'a LayerwiseGaussian,
    key: (u64, u64),
}

impl Perturbation for KeyedGaussian<'_> {
    fn perturb(&self, layer: usize, hidden: &Tensor) -> Result<Tensor> {
        self.inner.perturb_at(self.key, layer, hidden)
    }

    fn perturb_head(&self, hidden: &Tensor) -> Result<Tensor> {
        self.inner.perturb_head_at(self.key, hidden)
    }

    fn keyed(&self, step: u64, micro_batch: u64) -> Option<Box<dyn Perturbation + '_>> {
        self.inner.keyed(step, micro_batch)
    }
}

#[cfg(test)]
mod layer_tests {
    use super::LayerSelection;

    /// The thirds partition the layers, each non-empty from 3 layers on: at 4 layers (the
    /// embedded default) `late` once held no layer, so its runs trained without noise.
    #[test]
    fn the_thirds_partition_the_layers_and_none_is_empty() {
        let pick = |s: &LayerSelection, n: usize| -> Vec<usize> {
            (0..n).filter(|l| s.contains(*l, n)).collect()
        };
        for n in 3..=40 {
            let parts = [
                LayerSelection::Early,
                LayerSelection::Middle,
                LayerSelection::Late,
            ]
            .map(|s| pick(&s, n));
            assert!(parts.iter().all(|p| !p.is_empty()), "{n} layers: {parts:?}");
            let all: Vec<usize> = parts.concat();
            assert_eq!(all, (0..n).collect::<Vec<_>>(), "{n} layers: {parts:?}");
        }
        assert_eq!(pick(&LayerSelection::Late, 4), [3]);
        assert_eq!(pick(&LayerSelection::Early, 4), [0, 1]);
        assert_eq!(
            pick(&LayerSelection::Middle, 24),
            (8..16).collect::<Vec<_>>()
        );
        assert_eq!(
            pick(&LayerSelection::Late, 24),
            (16..24).collect::<Vec<_>>()
        );
    }
}
