//! Statistics that let a comparison say something: the paired difference of two methods over
//! the same seeds with a 95% interval (Student t, which stays honest with five pairs, and a
//! percentile bootstrap beside it), the range a repeat on new seeds should land in, a rate
//! (collapses) with its Wilson and its exact interval, the tests of the primary comparisons
//! with Holm's adjustment, and the smallest difference a design of that size could detect.
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

    /// Two-sided p-value of the t test of the mean against 0 on `pairs` − 1 degrees of
    /// freedom (the test whose 95% interval this is); zero spread gives 1 for a zero mean and
    /// 0 otherwise.
    pub fn p_value(&self) -> f64 {
        if self.sd == 0.0 {
            return if self.mean == 0.0 { 1.0 } else { 0.0 };
        }
        let n = self.pairs as f64;
        let t = self.mean / (self.sd / n.sqrt());
        StudentsT::new(0.0, 1.0, n - 1.0)
            .map(|d| (2.0 * (1.0 - d.cdf(t.abs()))).min(1.0))
            .unwrap_or(f64::NAN)
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

/// The exact (Clopper–Pearson) 95% interval of a rate of `k` in `n`: the Beta quantiles that
/// never cover less than 95% whatever the true rate ((0, 1) for n = 0).
pub fn clopper_pearson(k: usize, n: usize) -> (f64, f64) {
    use statrs::distribution::Beta;
    if n == 0 || k > n {
        return (0.0, 1.0);
    }
    let (kf, nf) = (k as f64, n as f64);
    let lo = if k == 0 {
        0.0
    } else {
        Beta::new(kf, nf - kf + 1.0).map_or(f64::NAN, |b| b.inverse_cdf(0.025))
    };
    let hi = if k == n {
        1.0
    } else {
        Beta::new(kf + 1.0, nf - kf).map_or(f64::NAN, |b| b.inverse_cdf(0.975))
    };
    (lo, hi)
}

/// The exact McNemar test of two methods' binary outcomes (collapsed or not) on the same
/// seeds and warm starts: only the pairs where exactly one of them collapsed count, `only_a`
/// where `a` did and `only_b` where `b` did; two-sided p = 2 · P(Bin(only_a + only_b, ½) ≤
/// min), capped at 1. Pairing keeps the warm start and seed a block, as the design has it.
pub fn mcnemar_exact(only_a: usize, only_b: usize) -> f64 {
    let n = only_a + only_b;
    if n == 0 {
        return 1.0;
    }
    let k = only_a.min(only_b);
    // P(X ≤ k) for X ~ Bin(n, ½), summed in logs (n is a handful of runs to a few hundred).
    let ln_choose =
        |n: usize, r: usize| -> f64 { (1..=r).map(|i| ((n - r + i) as f64 / i as f64).ln()).sum() };
    let tail: f64 = (0..=k)
        .map(|i| (ln_choose(n, i) - n as f64 * std::f64::consts::LN_2).exp())
        .sum();
    (2.0 * tail).min(1.0)
}

/// Holm's step-down adjustment of `p` for the family it belongs to: sorted ascending, the
/// i-th (from 0) is multiplied by (m − i), made monotone, capped at 1; returned in the input's
/// order. A hypothesis is rejected at level α when its adjusted p is at most α; the
/// family-wise error rate is then at most α whatever the dependence between the tests.
pub fn holm(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&i, &j| p[i].total_cmp(&p[j]));
    let mut out = vec![f64::NAN; m];
    let mut running = 0f64;
    for (rank, &i) in order.iter().enumerate() {
        let adj = if p[i].is_nan() {
            f64::NAN
        } else {
            running = running.max(((m - rank) as f64 * p[i]).min(1.0));
            running
        };
        out[i] = adj;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holm_matches_a_worked_example_and_keeps_the_order() {
        // p = (0.01, 0.04, 0.03, 0.005), m = 4: sorted 0.005·4 = 0.02, 0.01·3 = 0.03,
        // 0.03·2 = 0.06, 0.04·1 = 0.04 → monotone 0.06.
        let a = holm(&[0.01, 0.04, 0.03, 0.005]);
        let want = [0.03, 0.06, 0.06, 0.02];
        for (x, w) in a.iter().zip(want) {
            assert!((x - w).abs() < 1e-12, "{a:?}");
        }
        assert_eq!(holm(&[0.9, 0.8]), vec![1.0, 1.0]);
        assert!(holm(&[]).is_empty());
    }

    #[test]
    fn clopper_pearson_is_exact_at_its_edges_and_wider_than_wilson() {
        let (lo, hi) = clopper_pearson(0, 10);
        // 1 − 0.025^(1/10): the textbook upper end for no event in 10.
        assert_eq!(lo, 0.0);
        assert!((hi - (1.0 - 0.025f64.powf(0.1))).abs() < 1e-9, "{hi}");
        let (lo, hi) = clopper_pearson(10, 10);
        assert!((lo - 0.025f64.powf(0.1)).abs() < 1e-9 && hi == 1.0);
        // 5 of 20 (R's binom.test: 0.0866 – 0.4910).
        let (lo, hi) = clopper_pearson(5, 20);
        assert!(
            (lo - 0.0866).abs() < 1e-4 && (hi - 0.4910).abs() < 1e-4,
            "{lo} {hi}"
        );
        let (wl, wh) = wilson(5, 20);
        assert!(lo < wl && hi > wh);
    }

    #[test]
    fn mcnemar_and_the_paired_t_p_value_match_hand_computations() {
        // 6 discordant pairs all one way: 2 · 0.5^6.
        assert!((mcnemar_exact(6, 0) - 2.0 * 0.5f64.powi(6)).abs() < 1e-12);
        // 3 against 3: no evidence.
        assert_eq!(mcnemar_exact(3, 3), 1.0);
        // 1 against 7 of 8: 2 · (1 + 8) / 256.
        assert!((mcnemar_exact(1, 7) - 18.0 / 256.0).abs() < 1e-12);
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        // Differences 1, 2, 3: mean 2, sd 1, t = 2√3 on 2 dof: p = 0.0742 (R's t.test).
        let p_of = |a: &[f64], b: &[f64]| paired_t(a, b).map(|i| i.p_value());
        let p = p_of(&[1.0, 2.0, 3.0], &[0.0; 3]).unwrap();
        assert!((p - 0.0742).abs() < 1e-4, "{p}");
        assert_eq!(p_of(&[1.0, 1.0], &[1.0, 1.0]), Some(1.0));
        assert_eq!(p_of(&[1.0], &[0.0]), None);
    }
}
