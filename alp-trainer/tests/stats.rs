//! The comparison statistics against slow references written independently.
use alp_trainer::stats::{paired_bootstrap, wilson};

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
