//! Property tests: no NaN/Inf for extreme log-prob differences or empty masks, and the loss
#![allow(clippy::needless_range_loop)] // the references are plain index loops on purpose
//! does not depend on the order of sequences in the batch.
use alp_loss::{Aggregation, LossInputs, Objective, METHODS};
use candle_core::{Device, Tensor, Var};
use proptest::prelude::*;

fn run(
    obj: &Objective,
    logp: &[Vec<f64>],
    old: &[Vec<f64>],
    infer: &[Vec<f64>],
    mask: &[Vec<f64>],
    adv: &[f64],
    agg: Aggregation,
) -> (f64, Vec<Vec<f64>>) {
    let dev = Device::Cpu;
    let lp = Var::new(logp.to_vec(), &dev).unwrap();
    let o = Tensor::new(old.to_vec(), &dev).unwrap();
    let i = Tensor::new(infer.to_vec(), &dev).unwrap();
    let m = Tensor::new(mask.to_vec(), &dev).unwrap();
    let a = Tensor::new(adv.to_vec(), &dev).unwrap();
    let out = obj
        .compute(
            &LossInputs {
                logp: lp.as_tensor(),
                logp_old: Some(&o),
                logp_infer: &i,
                advantages: &a,
                mask: &m,
            },
            agg,
        )
        .unwrap();
    let g = out.loss.backward().unwrap();
    let grad = g
        .get(lp.as_tensor())
        .map(|t| t.to_vec2().unwrap())
        .unwrap_or_else(|| vec![vec![0.0; logp[0].len()]; logp.len()]);
    (out.loss.to_scalar::<f64>().unwrap(), grad)
}

type Batch = (
    Vec<Vec<f64>>,
    Vec<Vec<f64>>,
    Vec<Vec<f64>>,
    Vec<Vec<f64>>,
    Vec<f64>,
);

fn batch() -> impl Strategy<Value = Batch> {
    (1usize..5, 1usize..6).prop_flat_map(|(b, t)| {
        let row = |lo: f64, hi: f64| prop::collection::vec(prop::collection::vec(lo..hi, t), b);
        (
            row(-30.0, 0.0),
            row(-50.0, 50.0),
            row(-50.0, 50.0),
            prop::collection::vec(prop::collection::vec(prop::bool::weighted(0.6), t), b),
            prop::collection::vec(-3.0f64..3.0, b),
        )
            .prop_map(|(logp, d_old, d_inf, m, adv)| {
                let old: Vec<Vec<f64>> = logp
                    .iter()
                    .zip(&d_old)
                    .map(|(r, d)| r.iter().zip(d).map(|(x, y)| x + y).collect())
                    .collect();
                let inf: Vec<Vec<f64>> = logp
                    .iter()
                    .zip(&d_inf)
                    .map(|(r, d)| r.iter().zip(d).map(|(x, y)| x + y).collect())
                    .collect();
                let mut mask: Vec<Vec<f64>> = m
                    .iter()
                    .map(|r| r.iter().map(|&b| if b { 1.0 } else { 0.0 }).collect())
                    .collect();
                mask[0] = vec![0.0; mask[0].len()]; // always one all-masked row
                (logp, old, inf, mask, adv)
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn finite_for_extreme_ratios_and_empty_rows((logp, old, inf, mask, adv) in batch()) {
        for name in METHODS {
            let obj = Objective::from_name(name).unwrap();
            for agg in [Aggregation::TokenMean, Aggregation::SeqMeanTokenMean, Aggregation::SeqMeanTokenSum] {
                let (l, g) = run(&obj, &logp, &old, &inf, &mask, &adv, agg);
                prop_assert!(l.is_finite(), "{name} {agg:?}: loss {l}");
                prop_assert!(g.iter().flatten().all(|x| x.is_finite()), "{name} {agg:?}: grad {g:?}");
                for (gr, mr) in g.iter().zip(&mask) {
                    for (x, m) in gr.iter().zip(mr) {
                        if *m == 0.0 { prop_assert_eq!(*x, 0.0); }
                    }
                }
            }
        }
        // everything masked: loss is exactly 0
        let none: Vec<Vec<f64>> = mask.iter().map(|r| vec![0.0; r.len()]).collect();
        for name in METHODS {
            let (l, _) = run(&Objective::from_name(name).unwrap(), &logp, &old, &inf, &none, &adv, Aggregation::TokenMean);
            prop_assert_eq!(l, 0.0);
        }
    }

    #[test]
    fn permuting_sequences_changes_nothing((logp, old, inf, mask, adv) in batch(), rot in 0usize..5) {
        let b = logp.len();
        let perm: Vec<usize> = (0..b).map(|i| (i + rot) % b).collect();
        let p = |v: &Vec<Vec<f64>>| perm.iter().map(|&i| v[i].clone()).collect::<Vec<_>>();
        let pa: Vec<f64> = perm.iter().map(|&i| adv[i]).collect();
        for name in METHODS {
            let obj = Objective::from_name(name).unwrap();
            for agg in [Aggregation::TokenMean, Aggregation::SeqMeanTokenMean, Aggregation::SeqMeanTokenSum] {
                let (l1, g1) = run(&obj, &logp, &old, &inf, &mask, &adv, agg);
                let (l2, g2) = run(&obj, &p(&logp), &p(&old), &p(&inf), &p(&mask), &pa, agg);
                prop_assert!((l1 - l2).abs() <= 1e-9 * (1.0 + l1.abs()), "{name} {agg:?}: {l1} vs {l2}");
                for (k, &i) in perm.iter().enumerate() {
                    for t in 0..g1[i].len() {
                        prop_assert!((g1[i][t] - g2[k][t]).abs() <= 1e-9 * (1.0 + g1[i][t].abs()));
                    }
                }
            }
        }
    }
}
