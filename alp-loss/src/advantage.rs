//! Group-relative advantage estimators.
use alp_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// How a group's rewards become advantages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum AdvantageEstimator {
    /// (r − mean) / (std + 1e-6), std unbiased (as torch.std).
    #[default]
    Grpo,
    /// r − mean (Dr. GRPO: no std division).
    DrGrpo,
    /// r − mean of the other members (leave-one-out).
    Rloo,
}

impl AdvantageEstimator {
    /// Whether the estimator needs groups of at least two.
    pub fn needs_groups(self) -> bool {
        true
    }
}

/// Advantages and what the estimator saw.
#[derive(Debug, Clone, PartialEq)]
pub struct Advantages {
    /// One advantage per response, in input order.
    pub values: Vec<f32>,
    /// Groups in which every reward was equal (zero advantage, no signal).
    pub zero_variance_groups: usize,
    /// Number of groups.
    pub groups: usize,
}

/// Computes advantages for `rewards` laid out as consecutive groups of `group_size`.
pub fn compute_advantages(
    estimator: AdvantageEstimator,
    rewards: &[f32],
    group_size: usize,
) -> Result<Advantages> {
    if group_size == 0 || !rewards.len().is_multiple_of(group_size) {
        return Err(Error::invalid(format!(
            "{} rewards do not split into groups of {group_size}",
            rewards.len()
        )));
    }
    if let Some(i) = rewards.iter().position(|r| !r.is_finite()) {
        return Err(Error::NonFinite(format!("reward[{i}] = {}", rewards[i])));
    }
    let mut values = Vec::with_capacity(rewards.len());
    let mut zero = 0;
    for g in rewards.chunks(group_size) {
        let n = g.len() as f64;
        let mean = g.iter().map(|&r| r as f64).sum::<f64>() / n;
        let all_equal = g.iter().all(|&r| r == g[0]);
        if all_equal || g.len() < 2 {
            zero += 1;
            values.extend(std::iter::repeat_n(0.0, g.len()));
            continue;
        }
        match estimator {
            AdvantageEstimator::Grpo => {
                let var = g.iter().map(|&r| (r as f64 - mean).powi(2)).sum::<f64>() / (n - 1.0);
                let sd = var.sqrt();
                values.extend(g.iter().map(|&r| ((r as f64 - mean) / (sd + 1e-6)) as f32));
            }
            AdvantageEstimator::DrGrpo => {
                values.extend(g.iter().map(|&r| (r as f64 - mean) as f32));
            }
            AdvantageEstimator::Rloo => {
                let sum: f64 = g.iter().map(|&r| r as f64).sum();
                values.extend(
                    g.iter()
                        .map(|&r| (r as f64 - (sum - r as f64) / (n - 1.0)) as f32),
                );
            }
        }
    }
    Ok(Advantages {
        values,
        zero_variance_groups: zero,
        groups: rewards.len() / group_size,
    })
}
