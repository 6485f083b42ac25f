//! The comparison statistics against slow references written independently.
use alp_cli::stats::{paired_bootstrap, paired_t, t_quantile, wilson};
use rand::{Rng, SeedableRng};

/// Every resample of `d` by recursion, its mean collected.
fn all_resample_means(d: &[f64], picked: &mut Vec<f64>, out: &mut Vec<f64>) {
    if picked.len() == d.len() {
        out.push(picked.iter().sum::<f64>() / d.len() as f64);
        return;
    }
    for &x in d {
        picked.push(x);
        all_resample_means(d, picked, out);
        picked.pop();
    }
}

fn percentile(mut v: Vec<f64>, q: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * q).round() as usize]
}

#[test]
fn the_exact_bootstrap_equals_the_enumeration_of_every_resample() {
    let a = [51.0, 49.5, 58.0, 40.0];
    let b = [47.0, 50.0, 51.0, 45.5];
    let d: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x - y).collect();
    let mut means = Vec::new();
    all_resample_means(&d, &mut Vec::new(), &mut means);
    assert_eq!(means.len(), 256);
    let i = paired_bootstrap(&a, &b, 1000, 0).unwrap();
    assert!((i.lo - percentile(means.clone(), 0.025)).abs() < 1e-12);
    assert!((i.hi - percentile(means, 0.975)).abs() < 1e-12);
    assert!((i.mean - d.iter().sum::<f64>() / 4.0).abs() < 1e-12);
    let sd = {
        let m = i.mean;
        (d.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / 3.0).sqrt()
    };
    assert!((i.detectable - 2.801585 * sd / 2.0).abs() < 1e-5);
}

#[test]
fn the_sampled_bootstrap_converges_to_the_exact_one() {
    let a = [30.0, 55.0, 41.0, 62.0, 12.0];
    let b = [28.0, 50.0, 45.0, 52.0, 15.0];
    let exact = paired_bootstrap(&a, &b, 3125, 0).unwrap();
    let sampled = paired_bootstrap(&a, &b, 200_000, 7).unwrap();
    let width = exact.hi - exact.lo;
    assert!(width > 1.0);
    assert!(
        (exact.lo - sampled.lo).abs() < 0.05 * width,
        "{exact:?} {sampled:?}"
    );
    assert!(
        (exact.hi - sampled.hi).abs() < 0.05 * width,
        "{exact:?} {sampled:?}"
    );
    // Reproducible from its seed.
    assert_eq!(
        paired_bootstrap(&a, &b, 5000, 3),
        paired_bootstrap(&a, &b, 5000, 3)
    );
}

#[test]
fn degenerate_inputs() {
    // A constant shift: the interval is the shift, and nothing smaller could be missed.
    let i = paired_bootstrap(&[3.0, 4.0, 5.0], &[1.0, 2.0, 3.0], 100, 0).unwrap();
    assert_eq!((i.mean, i.lo, i.hi, i.detectable), (2.0, 2.0, 2.0, 0.0));
    assert!(i.excludes_zero());
    // Non-finite pairs are dropped; fewer than two pairs give no interval.
    assert!(paired_bootstrap(&[1.0, f64::NAN], &[0.0, 1.0], 100, 0).is_none());
    assert_eq!(wilson(0, 0), (0.0, 1.0));
}

#[test]
fn the_wilson_interval_is_the_set_of_rates_the_score_test_keeps() {
    // Slow reference: scan p on a fine grid and keep those with |p̂ − p| ≤ z·√(p(1−p)/n).
    let z = 1.959964f64;
    for (k, n) in [(0usize, 5usize), (1, 5), (3, 7), (5, 5), (12, 40)] {
        let ph = k as f64 / n as f64;
        let kept: Vec<f64> = (0..=200_000)
            .map(|i| i as f64 / 200_000.0)
            .filter(|&p| (ph - p).abs() <= z * (p * (1.0 - p) / n as f64).sqrt() + 1e-12)
            .collect();
        let (lo, hi) = wilson(k, n);
        assert!((lo - kept[0]).abs() < 1e-4, "{k}/{n}: {lo} vs {}", kept[0]);
        assert!(
            (hi - kept[kept.len() - 1]).abs() < 1e-4,
            "{k}/{n}: {hi} vs {}",
            kept[kept.len() - 1]
        );
    }
}

/// Student t density integrated by Simpson's rule from 0 to x (slow reference for the CDF).
fn t_cdf_reference(x: f64, nu: f64) -> f64 {
    let ln_gamma = |z: f64| {
        // Stirling series with a shift: accurate to ~1e-12 for z ≥ 0.5.
        let mut acc = 0.0;
        let mut z = z;
        while z < 10.0 {
            acc -= z.ln();
            z += 1.0;
        }
        acc + (z - 0.5) * z.ln() - z + 0.5 * (2.0 * std::f64::consts::PI).ln() + 1.0 / (12.0 * z)
            - 1.0 / (360.0 * z.powi(3))
            + 1.0 / (1260.0 * z.powi(5))
    };
    let c = (ln_gamma((nu + 1.0) / 2.0) - ln_gamma(nu / 2.0)).exp()
        / (nu * std::f64::consts::PI).sqrt();
    let f = |t: f64| c * (1.0 + t * t / nu).powf(-(nu + 1.0) / 2.0);
    let n = 20_000;
    let h = x / n as f64;
    let mut s = f(0.0) + f(x);
    for i in 1..n {
        s += f(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
    }
    0.5 + s * h / 3.0
}

#[test]
fn t_quantiles_invert_the_integrated_density() {
    for nu in [1.0, 2.0, 4.0, 9.0, 29.0] {
        for p in [0.8, 0.975] {
            let q = t_quantile(p, nu);
            assert!(
                (t_cdf_reference(q, nu) - p).abs() < 1e-7,
                "ν {nu} p {p}: {q}"
            );
        }
    }
    // The textbook value every table prints.
    assert!((t_quantile(0.975, 4.0) - 2.776_445).abs() < 1e-6);
}

#[test]
fn the_t_interval_is_mean_plus_minus_t_standard_errors() {
    let a = [51.0, 49.5, 58.0, 40.0, 47.0];
    let b = [47.0, 50.0, 51.0, 45.5, 44.0];
    let d: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x - y).collect();
    let m = d.iter().sum::<f64>() / 5.0;
    let sd = (d.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / 4.0).sqrt();
    let i = paired_t(&a, &b).unwrap();
    let se = sd / 5f64.sqrt();
    assert!((i.lo - (m - 2.776_445 * se)).abs() < 1e-5);
    assert!((i.hi - (m + 2.776_445 * se)).abs() < 1e-5);
    assert!((i.detectable - (2.776_445 + 0.940_965) * se).abs() < 1e-5);
    let (lo, hi) = i.replication(5);
    assert!((hi - lo - 2.0 * 2.776_445 * sd * 0.4f64.sqrt()).abs() < 1e-5);
    assert!(paired_t(&[1.0], &[0.0]).is_none());
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut impl Rng) -> f64 {
    let (u, v): (f64, f64) = (rng.random::<f64>().max(1e-300), rng.random());
    (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
}

#[test]
fn with_five_pairs_the_t_interval_keeps_its_coverage_and_the_bootstrap_does_not() {
    // Paired differences drawn N(1, 2²): how often does each interval hold the true mean, and
    // how often does the mean of five new pairs land in the replication range?
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let trials = 4000;
    let (mut t_in, mut boot_in, mut rep_in) = (0, 0, 0);
    for k in 0..trials {
        let draw = |rng: &mut rand_chacha::ChaCha8Rng| -> Vec<f64> {
            (0..5).map(|_| 1.0 + 2.0 * normal(rng)).collect()
        };
        let d = draw(&mut rng);
        let zero = [0.0; 5];
        let t = paired_t(&d, &zero).unwrap();
        let boot = paired_bootstrap(&d, &zero, 3125, k).unwrap();
        t_in += (t.lo <= 1.0 && 1.0 <= t.hi) as usize;
        boot_in += (boot.lo <= 1.0 && 1.0 <= boot.hi) as usize;
        let new = draw(&mut rng).iter().sum::<f64>() / 5.0;
        let (lo, hi) = t.replication(5);
        rep_in += (lo <= new && new <= hi) as usize;
    }
    let rate = |k: usize| k as f64 / trials as f64;
    assert!(
        (rate(t_in) - 0.95).abs() < 0.015,
        "t coverage {}",
        rate(t_in)
    );
    assert!(
        (rate(rep_in) - 0.95).abs() < 0.015,
        "replication {}",
        rate(rep_in)
    );
    assert!(rate(boot_in) < 0.9, "bootstrap coverage {}", rate(boot_in));
}
