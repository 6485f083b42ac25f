//! Statistics that let a comparison say something: the paired difference of two methods over
//! the same seeds with a 95% interval (Student t, which stays honest with five pairs, and a
//! percentile bootstrap beside it), the range a repeat on new seeds should land in, a rate
//! (collapses) with its Wilson interval, and the smallest difference a design of that size
//! could detect.
//!
//! ```
//! use alp_cli::stats::{paired_bootstrap, paired_t, wilson};
//!
//! // Method A beat method B by 2 to 4 points on each of five paired seeds.
//! let (a, b) = ([52.0, 55.0, 50.0, 58.0, 54.0], [50.0, 52.0, 47.0, 54.0, 51.0]);
//! let t = paired_t(&a, &b).unwrap();
//! assert!(t.lo > 0.0 && t.hi < 5.0 && (t.mean - 3.0).abs() < 1e-9);
//! let boot = paired_bootstrap(&a, &b, 2000, 0).unwrap();
//! assert!(boot.lo > t.lo && boot.hi < t.hi); // the percentile bootstrap is narrower
//! let (lo, hi) = t.replication(5);
//! assert!(lo < t.lo && hi > t.hi); // a new run's mean has its own noise
//! let (lo, hi) = wilson(0, 5);
//! assert!(lo == 0.0 && hi > 0.4); // no collapse in 5 runs still allows a rate of 40%
//! ```

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use statrs::distribution::{ContinuousCDF, StudentsT};

/// A mean difference with its 95% interval and the smallest difference the design detects.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Interval {
    /// Mean of the paired differences a − b.
    pub mean: f64,
    /// Lower end of the 95% interval of the mean.
    pub lo: f64,
    /// Upper end.
    pub hi: f64,
    /// The smallest true difference this many pairs with this spread would detect with 80%
    /// power at a two-sided 5% level: (t₀.₉₇₅ + t₀.₈) · sd / √n with n − 1 degrees of freedom
    /// ([`paired_t`]), (1.96 + 0.84) · sd / √n ([`paired_bootstrap`]).
    pub detectable: f64,
    /// Sample standard deviation of the paired differences.
    pub sd: f64,
    /// Pairs used.
    pub pairs: usize,
}

impl Interval {
    /// Whether the interval excludes 0 (the difference is told apart from none).
    pub fn excludes_zero(&self) -> bool {
        self.lo > 0.0 || self.hi < 0.0
    }

    /// Where the mean of `m` new pairs should land with 95% probability if the design holds
    /// (same population of seeds): mean ± t₀.₉₇₅,ₙ₋₁ · sd · √(1/n + 1/m). This, not the
    /// interval of the mean, is the range to check a repeat on new seeds against: the new
    /// mean has its own noise.
    pub fn replication(&self, m: usize) -> (f64, f64) {
        let n = self.pairs as f64;
        let half = t_quantile(0.975, n - 1.0) * self.sd * (1.0 / n + 1.0 / m.max(1) as f64).sqrt();
        (self.mean - half, self.mean + half)
    }
}

/// The `p` quantile of Student's t with `dof` degrees of freedom (the normal's for infinite).
pub fn t_quantile(p: f64, dof: f64) -> f64 {
    StudentsT::new(0.0, 1.0, dof)
        .map(|t| t.inverse_cdf(p))
        .unwrap_or(f64::NAN)
}

/// The finite values of `v`, their mean and sample sd; `None` under two values.
fn finite_mean_sd(v: impl Iterator<Item = f64>) -> Option<(Vec<f64>, f64, f64)> {
    let d: Vec<f64> = v.filter(|x| x.is_finite()).collect();
    let n = d.len();
    if n < 2 {
        return None;
    }
    let mean = d.iter().sum::<f64>() / n as f64;
    let sd = (d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
    Some((d, mean, sd))
}

/// The finite paired differences a − b, their mean and sample sd; `None` under two pairs.
fn differences(a: &[f64], b: &[f64]) -> Option<(Vec<f64>, f64, f64)> {
    finite_mean_sd(a.iter().zip(b).map(|(x, y)| x - y))
}

/// The mean of the finite values of `v` with its Student t 95% interval, mean ± t₀.₉₇₅ ·
/// sd / √n on n − 1 degrees of freedom (`detectable`: the smallest true mean these values
/// would tell from 0); `None` under two values.
pub fn mean_t(v: &[f64]) -> Option<Interval> {
    let (d, mean, sd) = finite_mean_sd(v.iter().copied())?;
    let n = d.len() as f64;
    let se = sd / n.sqrt();
    let t = t_quantile(0.975, n - 1.0);
    Some(Interval {
        mean,
        lo: mean - t * se,
        hi: mean + t * se,
        detectable: (t + t_quantile(0.8, n - 1.0)) * se,
        sd,
        pairs: d.len(),
    })
}

/// The paired difference mean(a_i − b_i) with its Student t 95% interval, mean ± t₀.₉₇₅ ·
/// sd / √n on n − 1 degrees of freedom (`a[i]` and `b[i]` are the same seed). The interval
/// to read with few pairs: a percentile bootstrap over five pairs is too narrow (it treats
/// the five as the whole population). Non-finite pairs are dropped; `None` under two pairs.
pub fn paired_t(a: &[f64], b: &[f64]) -> Option<Interval> {
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    mean_t(&d)
}

/// The value at quantile `q` of sorted `v` by nearest rank on (len − 1) · q.
fn quantile_sorted(v: &[f64], q: f64) -> f64 {
    let i = ((v.len() - 1) as f64 * q).round() as usize;
    v[i.min(v.len() - 1)]
}

/// The paired difference mean(a_i − b_i) with a percentile-bootstrap 95% interval over the
/// pairs (`a[i]` and `b[i]` are the same seed: same warm start and task stream). Pairs with a
/// non-finite side are dropped; `None` with fewer than two pairs. With n pairs and nⁿ ≤
/// `reps` every resample is enumerated (exact); otherwise `reps` resamples drawn with a
/// ChaCha8 stream from `seed`.
pub fn paired_bootstrap(a: &[f64], b: &[f64], reps: usize, seed: u64) -> Option<Interval> {
    let (d, mean, sd) = differences(a, b)?;
    let n = d.len();
    let exhaustive = (n as f64).powi(n as i32) <= reps.max(1) as f64;
    let mut means: Vec<f64> = if exhaustive {
        let total = n.pow(n as u32);
        (0..total)
            .map(|mut k| {
                let mut s = 0.0;
                for _ in 0..n {
                    s += d[k % n];
                    k /= n;
                }
                s / n as f64
            })
            .collect()
    } else {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..reps.max(1))
            .map(|_| (0..n).map(|_| d[rng.random_range(0..n)]).sum::<f64>() / n as f64)
            .collect()
    };
    means.sort_by(f64::total_cmp);
    Some(Interval {
        mean,
        lo: quantile_sorted(&means, 0.025),
        hi: quantile_sorted(&means, 0.975),
        detectable: (1.959_964 + 0.841_621) * sd / (n as f64).sqrt(),
        sd,
        pairs: n,
    })
}

/// The Wilson score 95% interval of a rate of `k` in `n` (0 to 1; (0, 1) for n = 0).
pub fn wilson(k: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let z = 1.959_964f64;
    let (n, p) = (n as f64, k as f64 / n as f64);
    let centre = p + z * z / (2.0 * n);
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
    let den = 1.0 + z * z / n;
    (
        ((centre - half) / den).max(0.0),
        ((centre + half) / den).min(1.0),
    )
}
