//! Advantages, aggregation, KL estimators and diagnostics.
#![allow(clippy::needless_range_loop)] // the references are plain index loops on purpose
use alp_loss::diagnostics::*;
use alp_loss::*;
use candle_core::{DType, Device, Tensor, Var};

#[test]
fn advantages_grpo_drgrpo_rloo() {
    let r = [
        1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.5, 0.25, 0.25,
    ];
    let g = compute_advantages(AdvantageEstimator::Grpo, &r, 4).unwrap();
    assert_eq!(g.groups, 3);
    assert_eq!(g.zero_variance_groups, 1);
    assert_eq!(&g.values[4..8], &[0.0; 4]);
    // group 0: mean 0.5, unbiased std sqrt(1/3)
    let sd = (1.0f64 / 3.0).sqrt();
    assert!((g.values[0] as f64 - 0.5 / (sd + 1e-6)).abs() < 1e-6);
    assert!((g.values[1] as f64 + 0.5 / (sd + 1e-6)).abs() < 1e-6);
    let d = compute_advantages(AdvantageEstimator::DrGrpo, &r, 4).unwrap();
    assert!((d.values[8] - (0.0 - 0.25)).abs() < 1e-6);
    let l = compute_advantages(AdvantageEstimator::Rloo, &r, 4).unwrap();
    // r_i − mean of others: 0 − (0.5+0.25+0.25)/3
    assert!((l.values[8] + 1.0 / 3.0).abs() < 1e-6);
    for grp in [&g.values[..4], &d.values[8..], &l.values[8..]] {
        assert!(grp.iter().sum::<f32>().abs() < 1e-5);
    }
    assert!(compute_advantages(AdvantageEstimator::Grpo, &r, 5).is_err());
    assert!(compute_advantages(AdvantageEstimator::Grpo, &[f32::NAN, 1.0], 2).is_err());
}

#[test]
fn masked_means_are_zero_on_empty_masks() {
    let dev = Device::Cpu;
    let x = Tensor::new(&[[f64::MAX, 2.0], [3.0, 4.0]], &dev).unwrap();
    let zero = Tensor::zeros((2, 2), DType::F64, &dev).unwrap();
    for agg in [
        Aggregation::TokenMean,
        Aggregation::SeqMeanTokenMean,
        Aggregation::SeqMeanTokenSum,
    ] {
        let v = agg
            .reduce(&(&x * 0.0).unwrap(), &zero)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert_eq!(v, 0.0);
    }
    let m = Tensor::new(&[[0.0, 1.0], [1.0, 1.0]], &dev).unwrap();
    let x = Tensor::new(&[[9.0, 2.0], [3.0, 4.0]], &dev).unwrap();
    let r = |a: Aggregation| a.reduce(&x, &m).unwrap().to_scalar::<f64>().unwrap();
    assert!((r(Aggregation::TokenMean) - 3.0).abs() < 1e-12);
    assert!((r(Aggregation::SeqMeanTokenMean) - (2.0 + 3.5) / 2.0).abs() < 1e-12);
    assert!((r(Aggregation::SeqMeanTokenSum) - (2.0 + 7.0) / 2.0).abs() < 1e-12);
}

#[test]
fn kl_estimators_match_their_formulas_and_gradients() {
    let dev = Device::Cpu;
    let lp = Var::new(&[[-1.0f64, -2.0, -0.3]], &dev).unwrap();
    let lr = Tensor::new(&[[-1.5f64, -1.0, -0.3]], &dev).unwrap();
    let d = [0.5f64, -1.0, 0.0];
    for est in [KlEstimator::K1, KlEstimator::K2, KlEstimator::K3] {
        let k: Vec<Vec<f64>> = kl_per_token(est, lp.as_tensor(), &lr)
            .unwrap()
            .to_vec2()
            .unwrap();
        for (i, &x) in d.iter().enumerate() {
            let want = match est {
                KlEstimator::K1 => x,
                KlEstimator::K2 => 0.5 * x * x,
                KlEstimator::K3 => (-x).exp() + x - 1.0,
            };
            assert!((k[0][i] - want).abs() < 1e-12, "{est:?}");
        }
    }
    let pen = KlPenalty {
        estimator: KlEstimator::K3,
        coef: 0.1,
    };
    let m = Tensor::ones((1, 3), DType::F64, &dev).unwrap();
    let t = pen
        .term(lp.as_tensor(), &lr, &m, Aggregation::TokenMean)
        .unwrap();
    let want = 0.1 * d.iter().map(|&x| (-x).exp() + x - 1.0).sum::<f64>() / 3.0;
    assert!((t.to_scalar::<f64>().unwrap() - want).abs() < 1e-12);
    let g: Vec<Vec<f64>> = t
        .backward()
        .unwrap()
        .get(lp.as_tensor())
        .unwrap()
        .to_vec2()
        .unwrap();
    for (i, &x) in d.iter().enumerate() {
        assert!((g[0][i] - 0.1 * (1.0 - (-x).exp()) / 3.0).abs() < 1e-12);
    }
}

#[test]
fn quantiles_ess_and_kl_diagnostics() {
    let v: Vec<f64> = (0..=100).map(|x| x as f64).collect();
    assert_eq!(quantile(&v, 0.5), 50.0);
    assert!((quantile(&v, 0.999) - 99.9).abs() < 1e-9);
    assert_eq!(quantile(&v, 0.0), 0.0);
    assert!(quantile(&[], 0.5).is_nan());
    assert!((effective_sample_size(&[0.3; 10]) - 1.0).abs() < 1e-12);
    // one dominant weight → ESS ≈ 1/n
    let mut lw = vec![0.0; 10];
    lw[0] = 50.0;
    assert!((effective_sample_size(&lw) - 0.1).abs() < 1e-6);
    let (k1, k3) = kl_mu_pi(&[0.0, 0.0]);
    assert_eq!((k1, k3), (0.0, 0.0));
    let (k1, k3) = kl_mu_pi(&[0.2, -0.2]);
    assert!(k1.abs() < 1e-12 && k3 > 0.0);

    let dev = Device::Cpu;
    let lp = Tensor::new(&[[-1.0f64, -1.0], [-2.0, -0.5]], &dev).unwrap();
    let inf = Tensor::new(&[[-1.0f64, -1.0 - 3.0f64.ln()], [-2.0, -0.5]], &dev).unwrap();
    let old = Tensor::new(&[[-1.0f64, -1.0 - 2.0f64.ln()], [-2.0, -0.5]], &dev).unwrap();
    let m = Tensor::new(&[[1.0f64, 1.0], [1.0, 0.0]], &dev).unwrap();
    let r = mismatch_report(&lp, Some(&old), &inf, &m).unwrap();
    assert!((r["ratio/token/max"] - 3.0).abs() < 1e-9);
    assert!((r["ratio/token/min"] - 1.0).abs() < 1e-9);
    assert!((r["ratio/seq/max"] - 3.0).abs() < 1e-9);
    assert!((r["mismatch/engine/ratio_token/max"] - 1.5).abs() < 1e-9);
    assert!((r["mismatch/drift/ratio_token/max"] - 2.0).abs() < 1e-9);
    assert!(
        r.contains_key("ratio/token/p99_9")
            && r.contains_key("ess/seq")
            && r.contains_key("kl_mu_pi/k3")
    );
    assert!(!mismatch_report(&lp, None, &inf, &m)
        .unwrap()
        .contains_key("mismatch/engine/kl_k3"));
}

#[test]
fn chunked_entropy_matches_unchunked_and_known_values() {
    let dev = Device::Cpu;
    let logits = Tensor::randn(0f32, 2.0, (3, 5, 17), &dev).unwrap();
    let full = entropy_from_logits(&logits, 1 << 20)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let chunked = entropy_from_logits(&logits, 4)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(full.len(), 15);
    let p = candle_nn::ops::softmax_last_dim(&logits.reshape((15, 17)).unwrap()).unwrap();
    let p: Vec<Vec<f32>> = p.to_vec2().unwrap();
    for i in 0..15 {
        let slow: f32 = -p[i]
            .iter()
            .map(|&x| if x > 0.0 { x * x.ln() } else { 0.0 })
            .sum::<f32>();
        assert!((full[i] - slow).abs() < 1e-4 && (chunked[i] - full[i]).abs() < 1e-6);
    }
    let uniform = Tensor::zeros((2, 8), DType::F32, &dev).unwrap();
    for h in entropy_from_logits(&uniform, 1)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
    {
        assert!((h - 8f32.ln()).abs() < 1e-6);
    }
}

#[test]
fn step_ratio_statistics_are_computed_over_all_tokens_not_averaged_over_parts() {
    use alp_loss::RatioCollector;
    let dev = Device::Cpu;
    // Part A: ratios 1 everywhere; part B: one token with ratio 50.
    let a_lp = Tensor::new(&[[-1.0f64, -1.0, -1.0, -1.0]], &dev).unwrap();
    let a_inf = a_lp.clone();
    let b_lp = Tensor::new(&[[-1.0f64, -1.0]], &dev).unwrap();
    let b_inf = Tensor::new(&[[-1.0f64, -1.0 - 50f64.ln()]], &dev).unwrap();
    let (ma, mb) = (
        Tensor::ones((1, 4), DType::F64, &dev).unwrap(),
        Tensor::ones((1, 2), DType::F64, &dev).unwrap(),
    );
    let mut c = RatioCollector::new();
    c.add(&a_lp, None, &a_inf, &ma).unwrap();
    c.add(&b_lp, None, &b_inf, &mb).unwrap();
    let r = c.report();
    assert_eq!(c.tokens(), 6);
    // Over all six tokens at once (numpy-style interpolation): 1 + 0.995·49 at q = 0.999.
    let all = [1.0, 1.0, 1.0, 1.0, 1.0, 50.0];
    assert!((r["ratio/token/p99_9"] - alp_loss::diagnostics::quantile(&all, 0.999)).abs() < 1e-9);
    assert!((r["ratio/token/max"] - 50.0).abs() < 1e-9);
    // The mean of the parts' p99.9s is something else.
    let pa = mismatch_report(&a_lp, None, &a_inf, &ma).unwrap()["ratio/token/p99_9"];
    let pb = mismatch_report(&b_lp, None, &b_inf, &mb).unwrap()["ratio/token/p99_9"];
    assert!(((pa + pb) / 2.0 - r["ratio/token/p99_9"]).abs() > 1.0);
    // Names come from the constants.
    assert!(r.contains_key(alp_loss::names::RATIO_TOKEN_P99_9));
    assert!(r.contains_key(alp_loss::names::KL_MU_PI_K3));
}
