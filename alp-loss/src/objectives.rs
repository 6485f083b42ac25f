//! Every objective of the ALP paper and its baselines (the method: `README.md`, `docs/guide.md`) as a pure function of [`LossInputs`].
use std::collections::BTreeMap;

use alp_core::{Error, Result};
use candle_core::{Tensor, D};
use serde::{Deserialize, Serialize};

use crate::aggregate::Aggregation;
use crate::inputs::{LossInputs, LossOutput, Prepared};
use crate::names;

/// Log-ratios are clamped to ±`LOG_RATIO_CLAMP` before `exp`; the gradient vanishes where it bites.
pub const LOG_RATIO_CLAMP: f64 = 20.0;

/// Granularity of an importance weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// One weight per token.
    #[default]
    Token,
    /// One weight per sequence, from the summed log-ratio.
    Sequence,
    /// One weight per sequence, from the length-mean log-ratio.
    Geometric,
}

/// `dual_clip` in config files: a number, where 0 (or `null`) means off, so that TOML (which
/// has no null) can turn off a default dual clip.
mod dual_clip_serde {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(v.unwrap_or(0.0))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        let v: Option<f64> = Option::deserialize(d)?;
        Ok(v.filter(|&c| c != 0.0))
    }
}

macro_rules! config_struct {
    ($(#[$doc:meta])* $name:ident { $($(#[$fdoc:meta])* $field:ident : $ty:ty = $def:expr),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct $name { $($(#[$fdoc])* pub $field: $ty),* }
        impl Default for $name {
            fn default() -> Self { $name { $($field: $def),* } }
        }
    };
}

config_struct!(
    /// PPO-style clip `[1 − eps_low, 1 + eps_high]` with an optional dual clip `c` (> 1); the
    /// reference runs its baselines with c = 3.
    Grpo {
        /// Lower clip ε.
        eps_low: f64 = 0.2,
        /// Upper clip ε (clip-higher).
        eps_high: f64 = 0.28,
        /// Dual clip c for negative advantages (0: off).
        #[serde(with = "dual_clip_serde")]
        dual_clip: Option<f64> = Some(3.0),
    }
);
config_struct!(
    /// Truncated importance sampling: GRPO surrogate × detached `min(π_old/μ, cap)`.
    Tis {
        /// Token- or sequence-level weight (geometric is treated like sequence with a mean).
        level: Level = Level::Token,
        /// The cap C.
        cap: f64 = 2.0,
        /// Lower clip ε.
        eps_low: f64 = 0.2,
        /// Upper clip ε.
        eps_high: f64 = 0.28,
        /// Dual clip c (0: off).
        #[serde(with = "dual_clip_serde")]
        dual_clip: Option<f64> = Some(3.0),
    }
);
config_struct!(
    /// Masked importance sampling (the reference's "mask" mode): GRPO surrogate × detached
    /// w = r · 1[lower ≤ r ≤ upper], r = π_old/μ at the chosen level — the importance weight
    /// itself, zeroed outside the range; with `veto` > 0 a sequence with any token ratio
    /// below `veto` gets weight 0.
    Mis {
        /// Token, sequence or geometric ratio.
        level: Level = Level::Sequence,
        /// Lower bound of the kept ratio.
        lower: f64 = 0.0,
        /// Upper bound of the kept ratio.
        upper: f64 = 5.0,
        /// Veto threshold on any token's π_old/μ (0: off).
        veto: f64 = 0.0,
        /// Lower clip ε.
        eps_low: f64 = 0.2,
        /// Upper clip ε.
        eps_high: f64 = 0.28,
        /// Dual clip c (0: off).
        #[serde(with = "dual_clip_serde")]
        dual_clip: Option<f64> = Some(3.0),
    }
);
config_struct!(
    /// IcePop: tokens whose π_old/μ lies outside [alpha, beta] are masked out.
    IcePop {
        /// Lower bound.
        alpha: f64 = 0.5,
        /// Upper bound.
        beta: f64 = 2.0,
        /// Lower clip ε.
        eps_low: f64 = 0.2,
        /// Upper clip ε.
        eps_high: f64 = 0.28,
        /// Dual clip c (0: off).
        #[serde(with = "dual_clip_serde")]
        dual_clip: Option<f64> = Some(3.0),
    }
);
config_struct!(
    /// GSPO: sequence ratio exp(mean log π/π_old), GSPO-token gradient, tight clip; as the
    /// paper's baseline, times the detached sequence-level masked IS weight of π_old/μ kept in
    /// [0, `is_upper`] (`is_upper` = 0: plain GSPO, which ignores μ), dual clip 100.
    Gspo {
        /// Lower clip ε.
        eps_low: f64 = 3e-4,
        /// Upper clip ε.
        eps_high: f64 = 4e-4,
        /// Dual clip c (0: off).
        #[serde(with = "dual_clip_serde")]
        dual_clip: Option<f64> = Some(100.0),
        /// Upper bound of the sequence-level MIS weight π_old/μ (0: no weight).
        is_upper: f64 = 5.0,
    }
);
config_struct!(
    /// CISPO: −sg(min(r, 1 + eps_max))·A·log π.
    Cispo {
        /// Upper truncation of the weight.
        eps_max: f64 = 4.0,
        /// Dual clip c: for A < 0 the weight is also capped at c (0: off).
        #[serde(with = "dual_clip_serde")]
        dual_clip: Option<f64> = None,
    }
);
config_struct!(
    /// DPPO-Binary-TV (divergence-constrained PPO, arXiv 2602.04879; verl's `dppo_tv`): the
    /// trust region is on the probability difference p − p_old instead of the ratio. A token
    /// is dropped when A > 0 and p − p_old > `delta_high`, or A < 0 and p − p_old <
    /// −`delta_low`; the others get −A · sg(min(π/π_old, `ratio_cap`)) · log π.
    DppoTv {
        /// Largest probability increase kept for A > 0 (prime-rl's default 0.2).
        delta_high: f64 = 0.2,
        /// Largest probability decrease kept for A < 0.
        delta_low: f64 = 0.2,
        /// Truncation of the detached ratio (verl's `clip_ratio_c`, 20).
        ratio_cap: f64 = 20.0,
    }
);
config_struct!(
    /// DPPO-Binary-KL (arXiv 2602.04879; verl's `dppo_kl`): as [`DppoTv`] with the binary KL
    /// q·log(q/p) + (1 − q)·log((1 − q)/(1 − p)) between the old (q) and new (p) probability
    /// of the token: dropped when A > 0, p > q and the KL exceeds `delta_high`, or A < 0,
    /// p < q and it exceeds `delta_low`.
    DppoKl {
        /// Largest binary KL kept for an increase with A > 0 (alp's default: the anchors
        /// set it per run).
        delta_high: f64 = 0.05,
        /// Largest binary KL kept for a decrease with A < 0.
        delta_low: f64 = 0.05,
        /// Truncation of the detached ratio.
        ratio_cap: f64 = 20.0,
    }
);
config_struct!(
    /// IPO (prime-rl's `ipo` loss): against μ, tokens whose probability moved more than
    /// `threshold` in absolute terms (|p − p_μ|) are dropped from the policy-gradient term
    /// −`adv_tau`·A·π/μ (the ratio carries the gradient), and every token pays
    /// `kl_tau`·(log π/μ)².
    Ipo {
        /// Largest |p − p_μ| kept (prime-rl's default 0.1).
        threshold: f64 = 0.1,
        /// Scale of the advantages.
        adv_tau: f64 = 1.0,
        /// Weight of the squared log-ratio.
        kl_tau: f64 = 1e-3,
    }
);
config_struct!(
    /// ALP: ratio of the perturbed training policy over μ, clipped with dual clip.
    Alp {
        /// Lower clip ε (ρ ≥ 1 − eps_low).
        eps_low: f64 = 0.5,
        /// Upper clip ε (ρ ≤ 1 + eps_high).
        eps_high: f64 = 3.0,
        /// Dual clip c (0: off).
        #[serde(with = "dual_clip_serde")]
        dual_clip: Option<f64> = Some(3.0),
        /// Sequence level only: divide the summed log-ratio by the length.
        geometric: bool = false,
    }
);

/// The built-in methods, each named once: its variant, settings, config name, whether it reads
/// log π_old and whether it perturbs (ALP). The enum, its serde names, [`METHODS`],
/// [`Objective::name`], [`Objective::needs_logp_old`] and [`Objective::is_alp`] all come from
/// this table; a new method adds a row here and its arms in `clip`, `validate` and
/// `compute_inner` (the compiler points at each).
macro_rules! methods {
    ($( $(#[$doc:meta])* $variant:ident($settings:ty) = $name:literal, logp_old: $old:expr, alp: $alp:expr; )*) => {
        /// The policy objective, chosen from config by `method`.
        #[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "method")]
        pub enum Objective {
            $( $(#[$doc])* #[serde(rename = $name)] $variant($settings), )*
        }

        /// The method names, as config spells them.
        pub const METHODS: &[&str] = &[$($name),*];

        impl Objective {
            /// The config name of the method.
            pub fn name(&self) -> &'static str {
                match self { $( Objective::$variant(_) => $name, )* }
            }

            /// Whether the method needs `logp_old` (the trainer then recomputes it before the
            /// update).
            pub fn needs_logp_old(&self) -> bool {
                match self { $( Objective::$variant(_) => $old, )* }
            }

            /// Whether the method is one of the ALP family (the trainer turns the perturbation
            /// on).
            pub fn is_alp(&self) -> bool {
                match self { $( Objective::$variant(_) => $alp, )* }
            }
        }
    };
}

methods! {
    /// Token PPO clip on π/π_old.
    Grpo(Grpo) = "grpo", logp_old: true, alp: false;
    /// The GRPO surrogate on π/μ (no recompute).
    Bypass(Grpo) = "bypass", logp_old: false, alp: false;
    /// The GRPO clip on the summed sequence log-ratio against μ (GSPO-token form), no
    /// perturbation: Seq-ALP without δ and with the narrow clip.
    SeqBypass(Grpo) = "seq-bypass", logp_old: false, alp: false;
    /// Truncated importance sampling.
    Tis(Tis) = "tis", logp_old: true, alp: false;
    /// Masked importance sampling.
    Mis(Mis) = "mis", logp_old: true, alp: false;
    /// IcePop token masking.
    Icepop(IcePop) = "icepop", logp_old: true, alp: false;
    /// Group sequence policy optimisation.
    Gspo(Gspo) = "gspo", logp_old: true, alp: false;
    /// Clipped IS-weight policy optimisation.
    Cispo(Cispo) = "cispo", logp_old: true, alp: false;
    /// DPPO with the total-variation trust region on π vs π_old.
    DppoTv(DppoTv) = "dppo-tv", logp_old: true, alp: false;
    /// DPPO with the binary-KL trust region on π vs π_old.
    DppoKl(DppoKl) = "dppo-kl", logp_old: true, alp: false;
    /// prime-rl's IPO: a symmetric probability trust region on π vs μ and a squared
    /// log-ratio penalty.
    Ipo(Ipo) = "ipo", logp_old: false, alp: false;
    /// Token-level ALP.
    AlpToken(Alp) = "alp-token", logp_old: false, alp: true;
    /// Sequence-level ALP (the paper's best).
    AlpSeq(Alp) = "alp-seq", logp_old: false, alp: true;
}

impl Default for Objective {
    fn default() -> Self {
        Objective::AlpSeq(Alp::default())
    }
}

struct Clip {
    lo: f64,
    hi: f64,
    dual: Option<f64>,
}

impl Objective {
    /// The default settings of a method by name; an unknown name lists the known ones.
    pub fn from_name(name: &str) -> Result<Self> {
        serde_json::from_value(serde_json::json!({ "method": name })).map_err(|_| {
            Error::config(
                "method",
                format!("unknown method `{name}`; known: {}", METHODS.join(", ")),
            )
        })
    }

    fn clip(&self) -> Clip {
        let c = |lo, hi, dual| Clip { lo, hi, dual };
        match *self {
            Objective::Grpo(g) | Objective::Bypass(g) | Objective::SeqBypass(g) => {
                c(g.eps_low, g.eps_high, g.dual_clip)
            }
            Objective::Tis(t) => c(t.eps_low, t.eps_high, t.dual_clip),
            Objective::Mis(m) => c(m.eps_low, m.eps_high, m.dual_clip),
            Objective::Icepop(i) => c(i.eps_low, i.eps_high, i.dual_clip),
            Objective::Gspo(g) => c(g.eps_low, g.eps_high, g.dual_clip),
            Objective::Cispo(x) => c(1.0, x.eps_max, x.dual_clip),
            // Trust regions by masks: no ratio clip.
            Objective::DppoTv(_) | Objective::DppoKl(_) | Objective::Ipo(_) => c(0.0, 0.0, None),
            Objective::AlpToken(a) | Objective::AlpSeq(a) => c(a.eps_low, a.eps_high, a.dual_clip),
        }
    }

    /// Rejects impossible settings, naming the field.
    pub fn validate(&self) -> Result<()> {
        if self.masks() {
            return self.validate_mask_method();
        }
        let Clip { lo, hi, dual } = self.clip();
        let f = |n: &str| format!("objective.{n}");
        let is_cispo = matches!(self, Objective::Cispo(_));
        let lo_ok = lo > 0.0 && lo < 1.0;
        if !is_cispo && !lo_ok {
            return Err(Error::config(
                f("eps_low"),
                format!("{lo} must lie in (0, 1)"),
            ));
        }
        if !(hi > 0.0 && hi.is_finite()) {
            return Err(Error::config(f("eps_high"), format!("{hi} must be > 0")));
        }
        if let Some(c) = dual {
            if !(c > 1.0 && c.is_finite()) {
                return Err(Error::config(f("dual_clip"), format!("{c} must be > 1")));
            }
        }
        match *self {
            Objective::Tis(t) if !(t.cap > 0.0 && t.cap.is_finite()) => {
                Err(Error::config(f("cap"), "must be > 0"))
            }
            Objective::Mis(m) if !(m.lower >= 0.0 && m.upper > m.lower) => Err(Error::config(
                f("upper"),
                format!("need 0 <= lower < upper, got [{}, {}]", m.lower, m.upper),
            )),
            Objective::Mis(m) if !(m.veto >= 0.0 && m.veto.is_finite()) => {
                Err(Error::config(f("veto"), "must be >= 0 (0: off)"))
            }
            Objective::Gspo(g) if !(g.is_upper >= 0.0 && g.is_upper.is_finite()) => {
                Err(Error::config(f("is_upper"), "must be >= 0 (0: off)"))
            }
            Objective::Icepop(i) if !(i.alpha >= 0.0 && i.beta > i.alpha) => Err(Error::config(
                f("beta"),
                format!("need 0 <= alpha < beta, got [{}, {}]", i.alpha, i.beta),
            )),
            _ => Ok(()),
        }
    }

    /// True for the methods whose trust region is a mask of tokens (DPPO, IPO), not a clip.
    fn masks(&self) -> bool {
        matches!(
            self,
            Objective::DppoTv(_) | Objective::DppoKl(_) | Objective::Ipo(_)
        )
    }

    fn validate_mask_method(&self) -> Result<()> {
        let f = |n: &str| format!("objective.{n}");
        let positive = |name: &str, v: f64| {
            if v > 0.0 && v.is_finite() {
                Ok(())
            } else {
                Err(Error::config(f(name), format!("{v} must be > 0")))
            }
        };
        match *self {
            Objective::DppoTv(DppoTv {
                delta_high,
                delta_low,
                ratio_cap,
            })
            | Objective::DppoKl(DppoKl {
                delta_high,
                delta_low,
                ratio_cap,
            }) => {
                positive("delta_high", delta_high)?;
                positive("delta_low", delta_low)?;
                positive("ratio_cap", ratio_cap)
            }
            Objective::Ipo(i) => {
                positive("threshold", i.threshold)?;
                for (n, v) in [("adv_tau", i.adv_tau), ("kl_tau", i.kl_tau)] {
                    if !(v >= 0.0 && v.is_finite()) {
                        return Err(Error::config(f(n), format!("{v} must be >= 0")));
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Computes the loss (to minimise) and metrics, `inputs` being a whole mini-batch.
    pub fn compute(&self, inputs: &LossInputs, agg: Aggregation) -> Result<LossOutput> {
        self.compute_inner(inputs, agg, None)
    }

    /// Computes one micro-batch's part of a mini-batch loss: the per-token losses reduced with
    /// `normaliser`, the whole mini-batch's [`Aggregation::normaliser`]. The parts of a
    /// mini-batch sum to [`Objective::compute`] on the mini-batch in one piece (loss and
    /// gradient), whatever the split. Metrics are those of the part (fractions over its tokens;
    /// `tokens` gives its weight).
    pub fn compute_part(
        &self,
        inputs: &LossInputs,
        agg: Aggregation,
        normaliser: f64,
    ) -> Result<LossOutput> {
        if !(normaliser > 0.0 && normaliser.is_finite()) {
            return Err(Error::invalid(format!(
                "the loss normaliser {normaliser} must be finite and > 0"
            )));
        }
        self.compute_inner(inputs, agg, Some(normaliser))
    }

    fn compute_inner(
        &self,
        inputs: &LossInputs,
        agg: Aggregation,
        normaliser: Option<f64>,
    ) -> Result<LossOutput> {
        self.validate()?;
        let p = inputs.prepare()?;
        let old = || {
            p.logp_old.as_ref().ok_or_else(|| {
                Error::invalid(format!(
                    "method `{}` needs logp_old: recompute it with the pre-update weights (recompute_logp_old = true) or choose bypass / alp-token / alp-seq",
                    self.name()
                ))
            })
        };
        let clip = self.clip();
        let (ratio, per_token, weight) = match *self {
            Objective::Grpo(_) => {
                let r = exp_clamped(&(&p.logp - old()?)?)?;
                let l = surrogate(&r, &p.adv, &clip)?;
                (r, l, None)
            }
            Objective::Bypass(_) | Objective::AlpToken(_) => {
                let r = exp_clamped(&(&p.logp - &p.logp_infer)?)?;
                let l = surrogate(&r, &p.adv, &clip)?;
                (r, l, None)
            }
            Objective::AlpSeq(a) => {
                let r = seq_token_ratio(&p, &p.logp_infer, a.geometric)?;
                let l = surrogate(&r, &p.adv, &clip)?;
                (r, l, None)
            }
            Objective::SeqBypass(_) => {
                let r = seq_token_ratio(&p, &p.logp_infer, false)?;
                let l = surrogate(&r, &p.adv, &clip)?;
                (r, l, None)
            }
            Objective::Gspo(g) => {
                let old = old()?;
                let r = seq_token_ratio(&p, old, true)?;
                let l = surrogate(&r, &p.adv, &clip)?;
                if g.is_upper > 0.0 {
                    let lw = level_log_ratio(&p, old, Level::Sequence)?;
                    let w = masked_weight(&lw, 0.0, g.is_upper)?;
                    (r, (l * &w)?, Some(w))
                } else {
                    (r, l, None)
                }
            }
            Objective::Tis(t) => {
                let old = old()?;
                let r = exp_clamped(&(&p.logp - old)?)?;
                let lw = level_log_ratio(&p, old, t.level)?;
                let w = lw
                    .minimum(t.cap.ln())?
                    .clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)?
                    .exp()?;
                let l = (surrogate(&r, &p.adv, &clip)? * &w)?;
                (r, l, Some(w))
            }
            Objective::Mis(m) => {
                let old = old()?;
                let r = exp_clamped(&(&p.logp - old)?)?;
                let lw = level_log_ratio(&p, old, m.level)?;
                let mut w = masked_weight(&lw, m.lower, m.upper)?;
                if m.veto > 0.0 {
                    w = (w * veto_keep(&p, old, m.veto)?)?;
                }
                let l = (surrogate(&r, &p.adv, &clip)? * &w)?;
                (r, l, Some(w))
            }
            Objective::Icepop(i) => {
                let old = old()?;
                let r = exp_clamped(&(&p.logp - old)?)?;
                let lw = level_log_ratio(&p, old, Level::Token)?;
                let w = in_range(&lw, i.alpha, i.beta)?;
                let l = (surrogate(&r, &p.adv, &clip)? * &w)?;
                (r, l, Some(w))
            }
            Objective::Cispo(c) => {
                let r = exp_clamped(&(&p.logp - old()?)?)?.detach();
                let mut w = r.minimum(1.0 + c.eps_max)?;
                if let Some(d) = c.dual_clip {
                    let neg = p.adv.lt(0.0)?;
                    w = neg.where_cond(&w.minimum(d)?, &w)?;
                }
                let l = (w.neg()? * &p.adv)?.mul(&p.logp)?;
                (r, l, None)
            }
            Objective::DppoTv(d) => {
                let old = old()?;
                let r = exp_clamped(&(&p.logp - old)?)?;
                let diff = (p.logp.detach().exp()? - old.exp()?)?;
                let valid = by_sign(&p.adv, &diff.le(d.delta_high)?, &diff.ge(-d.delta_low)?)?;
                let l = dppo_loss(&p, &r, &valid, d.ratio_cap)?;
                (r, l, Some(valid))
            }
            Objective::DppoKl(d) => {
                let old = old()?;
                let r = exp_clamped(&(&p.logp - old)?)?;
                let (np, q) = (p.logp.detach().exp()?, old.exp()?);
                let one_minus =
                    |x: &Tensor| -> Result<Tensor> { Ok(((x.neg()? + 1.0)? + 1e-8)?.log()?) };
                let kl = ((&q * (old - &p.logp.detach())?)?
                    + ((q.neg()? + 1.0)? * (one_minus(&q)? - one_minus(&np)?)?)?)?;
                let up = kl.le(d.delta_high)?.maximum(&np.le(&q)?)?;
                let down = kl.le(d.delta_low)?.maximum(&np.ge(&q)?)?;
                let valid = by_sign(&p.adv, &up, &down)?;
                let l = dppo_loss(&p, &r, &valid, d.ratio_cap)?;
                (r, l, Some(valid))
            }
            Objective::Ipo(i) => {
                let lr = (&p.logp - &p.logp_infer)?.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)?;
                let r = lr.exp()?;
                let moved = (p.logp.detach().exp()? - p.logp_infer.exp()?)?.abs()?;
                let keep = moved.le(i.threshold)?.to_dtype(p.logp.dtype())?;
                let pg = ((&keep * &p.adv)? * &r)?.affine(i.adv_tau, 0.0)?;
                let l = (lr.sqr()?.affine(i.kl_tau, 0.0)? - pg)?;
                (r, l, Some(keep))
            }
        };
        let loss = match normaliser {
            Some(n) => agg.reduce_part(&per_token, &p.mask, n)?,
            None => agg.reduce(&per_token, &p.mask)?,
        };
        let mut metrics = clip_metrics(&ratio, &p, &clip, matches!(self, Objective::Cispo(_)))?;
        if self.masks() {
            let w = weight.as_ref().expect("mask methods return their mask");
            let (low, high) = dropped_by_sign(w, &p)?;
            metrics.insert(names::CLIP_FRAC_LOW.into(), low);
            metrics.insert(names::CLIP_FRAC_HIGH.into(), high);
        }
        if let Some(w) = weight {
            let kept =
                crate::aggregate::masked_mean(&w.gt(0.0)?.to_dtype(p.mask.dtype())?, &p.mask)?;
            metrics.insert(
                names::IS_WEIGHT_MEAN.into(),
                scalar(&crate::aggregate::masked_mean(&w, &p.mask)?)?,
            );
            metrics.insert(names::IS_WEIGHT_KEPT_FRAC.into(), scalar(&kept)?);
        }
        Ok(LossOutput { loss, metrics })
    }
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?)
}

fn exp_clamped(log_ratio: &Tensor) -> Result<Tensor> {
    Ok(log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)?.exp()?)
}

/// Per-token ratio of a sequence-level method (GSPO-token form): exp(clamp(sg(S_i) + logp − sg(logp))),
/// S_i the (optionally length-mean) summed log-ratio of sequence i against `reference`.
fn seq_token_ratio(p: &Prepared, reference: &Tensor, mean: bool) -> Result<Tensor> {
    let s = seq_log_ratio(p, &(&p.logp - reference)?, mean)?.detach();
    let lr = (p.logp.broadcast_sub(&p.logp.detach())?).broadcast_add(&s)?;
    exp_clamped(&lr)
}

/// Σ_t m·d (or its mean over the masked length), shape `[batch, 1]`.
fn seq_log_ratio(p: &Prepared, d: &Tensor, mean: bool) -> Result<Tensor> {
    let s = (d * &p.mask)?.sum_keepdim(D::Minus1)?;
    if mean {
        Ok(s.div(&p.mask.sum_keepdim(D::Minus1)?.maximum(1.0)?)?)
    } else {
        Ok(s)
    }
}

/// log(π_old/μ) at the requested level, broadcast to `[batch, T]` (no gradient).
fn level_log_ratio(p: &Prepared, old: &Tensor, level: Level) -> Result<Tensor> {
    let d = (old - &p.logp_infer)?.detach();
    Ok(match level {
        Level::Token => d,
        Level::Sequence => seq_log_ratio(p, &d, false)?
            .broadcast_as(d.shape())?
            .contiguous()?,
        Level::Geometric => seq_log_ratio(p, &d, true)?
            .broadcast_as(d.shape())?
            .contiguous()?,
    })
}

/// 1 where exp(log_ratio) ∈ [lower, upper], else 0 (compared in log space).
fn in_range(log_ratio: &Tensor, lower: f64, upper: f64) -> Result<Tensor> {
    let lo = if lower > 0.0 {
        lower.ln()
    } else {
        f64::NEG_INFINITY
    };
    let ok = (log_ratio.ge(lo)?.to_dtype(log_ratio.dtype())?
        * log_ratio.le(upper.ln())?.to_dtype(log_ratio.dtype())?)?;
    Ok(ok)
}

/// The MIS weight r·1[lower ≤ r ≤ upper] with r = exp(clamp(log_ratio, ±20)) (detached).
fn masked_weight(log_ratio: &Tensor, lower: f64, upper: f64) -> Result<Tensor> {
    let r = exp_clamped(log_ratio)?.detach();
    Ok((in_range(log_ratio, lower, upper)? * r)?)
}

/// `[batch, T]`: 0 on every token of a sequence in which some masked token has
/// π_old/μ < `veto`, else 1.
fn veto_keep(p: &Prepared, old: &Tensor, veto: f64) -> Result<Tensor> {
    let d = (old - &p.logp_infer)?.detach();
    // Masked positions are 0 (ratio 1), so they never veto.
    let low = d.lt(veto.ln())?.to_dtype(d.dtype())?;
    let any = low.max_keepdim(D::Minus1)?;
    Ok((any.neg()? + 1.0)?.broadcast_as(d.shape())?.contiguous()?)
}

/// `if_positive` where A > 0, else `otherwise` (u8 masks), as the mask's float dtype.
fn by_sign(adv: &Tensor, if_positive: &Tensor, otherwise: &Tensor) -> Result<Tensor> {
    Ok(adv
        .gt(0.0)?
        .where_cond(if_positive, otherwise)?
        .to_dtype(adv.dtype())?)
}

/// DPPO's per-token loss −A · sg(min(r, cap)) · log π on the kept tokens.
fn dppo_loss(p: &Prepared, ratio: &Tensor, valid: &Tensor, cap: f64) -> Result<Tensor> {
    let w = (ratio.detach().minimum(cap)? * valid)?;
    Ok((w.neg()? * &p.adv)?.mul(&p.logp)?)
}

/// The fractions of masked tokens dropped by a mask method with A ≤ 0 (low) and A > 0 (high).
fn dropped_by_sign(valid: &Tensor, p: &Prepared) -> Result<(f64, f64)> {
    let v: Vec<Vec<f64>> = valid.to_dtype(candle_core::DType::F64)?.to_vec2()?;
    let a: Vec<Vec<f64>> = p.adv.to_dtype(candle_core::DType::F64)?.to_vec2()?;
    let m: Vec<Vec<u8>> = p.mask_u8.to_vec2()?;
    let (mut n, mut low, mut high) = (0f64, 0f64, 0f64);
    for i in 0..v.len() {
        for t in 0..v[i].len() {
            if m[i][t] == 0 {
                continue;
            }
            n += 1.0;
            if v[i][t] == 0.0 {
                if a[i][t] > 0.0 {
                    high += 1.0;
                } else {
                    low += 1.0;
                }
            }
        }
    }
    Ok((low / n.max(1.0), high / n.max(1.0)))
}

/// max(−Aρ, −A·clip(ρ, 1−lo, 1+hi)), then for A < 0 min(·, −A·c).
fn surrogate(ratio: &Tensor, adv: &Tensor, clip: &Clip) -> Result<Tensor> {
    let l1 = (adv.neg()? * ratio)?;
    let l2 = (adv.neg()? * ratio.clamp(1.0 - clip.lo, 1.0 + clip.hi)?)?;
    let l = l1.maximum(&l2)?;
    match clip.dual {
        Some(c) => {
            let capped = l.minimum(&(adv.neg()? * c)?)?;
            Ok(adv.lt(0.0)?.where_cond(&capped, &l)?)
        }
        None => Ok(l),
    }
}

fn clip_metrics(
    ratio: &Tensor,
    p: &Prepared,
    clip: &Clip,
    cispo: bool,
) -> Result<BTreeMap<String, f64>> {
    let r: Vec<Vec<f64>> = ratio
        .detach()
        .to_dtype(candle_core::DType::F64)?
        .to_vec2()?;
    let a: Vec<Vec<f64>> = p.adv.to_dtype(candle_core::DType::F64)?.to_vec2()?;
    let m: Vec<Vec<u8>> = p.mask_u8.to_vec2()?;
    let (mut n, mut low, mut high, mut dual, mut sum) = (0f64, 0f64, 0f64, 0f64, 0f64);
    for i in 0..r.len() {
        for t in 0..r[i].len() {
            if m[i][t] == 0 {
                continue;
            }
            let (x, adv) = (r[i][t], a[i][t]);
            n += 1.0;
            sum += x;
            if cispo {
                if x > 1.0 + clip.hi {
                    high += 1.0;
                }
            } else if adv < 0.0 && x < 1.0 - clip.lo {
                low += 1.0;
            } else if adv > 0.0 && x > 1.0 + clip.hi {
                high += 1.0;
            }
            if let Some(c) = clip.dual {
                if adv < 0.0 && x > c {
                    dual += 1.0;
                }
            }
        }
    }
    let d = n.max(1.0);
    Ok([
        (names::CLIP_FRAC_LOW.to_string(), low / d),
        (names::CLIP_FRAC_HIGH.to_string(), high / d),
        (names::CLIP_FRAC_DUAL.to_string(), dual / d),
        (names::RATIO_MEAN.to_string(), sum / d),
        (names::TOKENS.to_string(), n),
    ]
    .into_iter()
    .collect())
}

/// A policy objective: the loss of one micro-batch, to minimise. The built-in methods
/// ([`Objective`], chosen by name in config files) implement it; so does a user's type, handed
/// to the trainer (`alp_trainer::Session::builder(..).objective(..)`).
///
/// ```
/// use alp_loss::{Aggregation, LossInputs, LossOutput, PolicyObjective};
///
/// /// REINFORCE: −A · log π, reduced as the run aggregates.
/// struct Reinforce;
///
/// impl PolicyObjective for Reinforce {
///     fn name(&self) -> &str {
///         "reinforce"
///     }
///     fn compute_part(&self, x: &LossInputs, agg: Aggregation, normaliser: f64) -> alp_core::Result<LossOutput> {
///         let adv = x.advantages.unsqueeze(1)?.broadcast_as(x.logp.shape())?;
///         let per_token = (adv * x.logp)?.neg()?;
///         Ok(LossOutput::new(agg.reduce_part(&per_token, x.mask, normaliser)?))
///     }
/// }
/// ```
pub trait PolicyObjective: Send + Sync {
    /// Its name in metrics, reports and errors (the type's name unless given).
    fn name(&self) -> &str {
        std::any::type_name::<Self>()
    }
    /// Whether the update perturbs the training policy (ALP's layerwise noise).
    fn perturbs(&self) -> bool {
        false
    }
    /// Whether it reads `logp_old` (a separate pass over the batch before the update).
    fn needs_logp_old(&self) -> bool {
        false
    }
    /// One micro-batch's part of a mini-batch loss: per-token losses reduced with
    /// `normaliser`, the whole mini-batch's [`Aggregation::normaliser`], so that the parts of
    /// a mini-batch sum to its loss. Metrics are fractions over the part's tokens (the
    /// `tokens` metric, if given, weighs them).
    fn compute_part(
        &self,
        inputs: &LossInputs,
        agg: Aggregation,
        normaliser: f64,
    ) -> Result<LossOutput>;
}

impl PolicyObjective for Objective {
    fn name(&self) -> &str {
        Objective::name(self)
    }
    fn perturbs(&self) -> bool {
        self.is_alp()
    }
    fn needs_logp_old(&self) -> bool {
        Objective::needs_logp_old(self)
    }
    fn compute_part(
        &self,
        inputs: &LossInputs,
        agg: Aggregation,
        normaliser: f64,
    ) -> Result<LossOutput> {
        Objective::compute_part(self, inputs, agg, normaliser)
    }
}
