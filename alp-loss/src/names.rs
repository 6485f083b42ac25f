//! The names of the metrics alp-loss computes: the one place that spells them. Readers
//! (the trainer's sinks, plots, reports) use these constants instead of string literals.

/// Token-level ratio π/μ summary prefix (`ratio/token/<stat>`).
pub const RATIO_TOKEN: &str = "ratio/token";
/// Sequence-level ratio π/μ summary prefix.
pub const RATIO_SEQ: &str = "ratio/seq";
/// Engine part of the mismatch (trainer's log-prob under the sampling weights vs μ), token level.
pub const ENGINE_RATIO_TOKEN: &str = "mismatch/engine/ratio_token";
/// Engine part, sequence level.
pub const ENGINE_RATIO_SEQ: &str = "mismatch/engine/ratio_seq";
/// Drift of the step's updates (current policy vs π_old), token level.
pub const DRIFT_RATIO_TOKEN: &str = "mismatch/drift/ratio_token";
/// Staleness part (π_old, the current weights, vs the weights version that sampled), token level.
pub const STALE_RATIO_TOKEN: &str = "mismatch/staleness/ratio_token";
/// The unperturbed ratio π_old/μ on the trained tokens (for ALP the training ratio is
/// perturbed; tails are compared on this one), token level.
pub const UNPERTURBED_RATIO_TOKEN: &str = "ratio_unperturbed/token";
/// The unperturbed ratio, sequence level.
pub const UNPERTURBED_RATIO_SEQ: &str = "ratio_unperturbed/seq";

/// Statistic suffixes of a ratio summary.
pub mod stat {
    /// 0.1% quantile.
    pub const P0_1: &str = "p0_1";
    /// 1% quantile.
    pub const P1: &str = "p1";
    /// 10% quantile.
    pub const P10: &str = "p10";
    /// Median.
    pub const P50: &str = "p50";
    /// 90% quantile.
    pub const P90: &str = "p90";
    /// 99% quantile.
    pub const P99: &str = "p99";
    /// 99.9% quantile.
    pub const P99_9: &str = "p99_9";
    /// Smallest value.
    pub const MIN: &str = "min";
    /// Largest value.
    pub const MAX: &str = "max";
    /// Mean.
    pub const MEAN: &str = "mean";
}

/// `ratio/token/p99_9`.
pub const RATIO_TOKEN_P99_9: &str = "ratio/token/p99_9";
/// `ratio/token/max`.
pub const RATIO_TOKEN_MAX: &str = "ratio/token/max";
/// `ratio/token/min`.
pub const RATIO_TOKEN_MIN: &str = "ratio/token/min";
/// `ratio/seq/p99_9`.
pub const RATIO_SEQ_P99_9: &str = "ratio/seq/p99_9";
/// `ratio/seq/max`.
pub const RATIO_SEQ_MAX: &str = "ratio/seq/max";
/// `ratio_unperturbed/seq/p50`: the median sequence-level ratio π_old/μ of a step.
pub const UNPERTURBED_RATIO_SEQ_P50: &str = "ratio_unperturbed/seq/p50";
/// `ratio_unperturbed/seq/p90`.
pub const UNPERTURBED_RATIO_SEQ_P90: &str = "ratio_unperturbed/seq/p90";
/// `ratio_unperturbed/seq/p99`.
pub const UNPERTURBED_RATIO_SEQ_P99: &str = "ratio_unperturbed/seq/p99";
/// `ratio_unperturbed/seq/p99_9`.
pub const UNPERTURBED_RATIO_SEQ_P99_9: &str = "ratio_unperturbed/seq/p99_9";
/// `ratio_unperturbed/seq/p1`.
pub const UNPERTURBED_RATIO_SEQ_P1: &str = "ratio_unperturbed/seq/p1";
/// `mismatch/engine/ratio_token/max`.
pub const ENGINE_RATIO_TOKEN_MAX: &str = "mismatch/engine/ratio_token/max";
/// `mismatch/engine/ratio_token/min`.
pub const ENGINE_RATIO_TOKEN_MIN: &str = "mismatch/engine/ratio_token/min";
/// k1 estimate of KL(μ‖π) over the step's tokens.
pub const KL_MU_PI_K1: &str = "kl_mu_pi/k1";
/// k3 estimate of KL(μ‖π).
pub const KL_MU_PI_K3: &str = "kl_mu_pi/k3";
/// Normalised effective sample size of the token weights π/μ.
pub const ESS_TOKEN: &str = "ess/token";
/// Normalised effective sample size of the sequence weights.
pub const ESS_SEQ: &str = "ess/seq";
/// k3 KL of the engine part.
pub const ENGINE_KL_K3: &str = "mismatch/engine/kl_k3";
/// k3 KL of the drift part.
pub const DRIFT_KL_K3: &str = "mismatch/drift/kl_k3";
/// k3 KL of the staleness part.
pub const STALE_KL_K3: &str = "mismatch/staleness/kl_k3";
/// k3 KL(μ‖π_old) of the unperturbed ratio.
pub const UNPERTURBED_KL_K3: &str = "ratio_unperturbed/kl_k3";
/// `ratio_unperturbed/token/p99_9`.
pub const UNPERTURBED_RATIO_TOKEN_P99_9: &str = "ratio_unperturbed/token/p99_9";
/// `ratio_unperturbed/token/max`.
pub const UNPERTURBED_RATIO_TOKEN_MAX: &str = "ratio_unperturbed/token/max";

/// Share of tokens clipped below (A < 0, ratio < 1 − ε_low).
pub const CLIP_FRAC_LOW: &str = "clip_frac/low";
/// Share of tokens clipped above (A > 0, ratio > 1 + ε_high).
pub const CLIP_FRAC_HIGH: &str = "clip_frac/high";
/// Share of tokens under the dual clip.
pub const CLIP_FRAC_DUAL: &str = "clip_frac/dual";
/// Mean training ratio of the objective.
pub const RATIO_MEAN: &str = "ratio/mean";
/// Loss tokens of the (micro-)batch: the weight of the fractions above.
pub const TOKENS: &str = "tokens";
/// Mean importance weight of TIS/MIS/IcePop.
pub const IS_WEIGHT_MEAN: &str = "is_weight/mean";
/// Share of tokens with a non-zero importance weight.
pub const IS_WEIGHT_KEPT_FRAC: &str = "is_weight/kept_frac";

/// `prefix/stat`.
pub fn key(prefix: &str, stat: &str) -> String {
    format!("{prefix}/{stat}")
}
