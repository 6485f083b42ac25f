//! Every objective against a naive scalar f64 implementation written from the papers' formulas.
#![allow(clippy::needless_range_loop)] // the references are plain index loops on purpose
use alp_loss::objectives::*;
use alp_loss::{Aggregation, LossInputs, Objective};
use candle_core::{Device, Tensor, Var};

struct Data {
    logp: Vec<Vec<f64>>,
    old: Vec<Vec<f64>>,
    infer: Vec<Vec<f64>>,
    mask: Vec<Vec<f64>>,
    adv: Vec<f64>,
}

fn lcg(seed: &mut u64) -> f64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*seed >> 11) as f64) / ((1u64 << 53) as f64)
}

/// Batch of 6 × 7 with ratios of 1e-3 and 1e3, mixed-sign advantages, an all-masked row.
fn data(seed: u64) -> Data {
    let (b, t) = (6, 7);
    let mut s = seed;
    let mut logp = vec![vec![0.0; t]; b];
    let mut old = logp.clone();
    let mut infer = logp.clone();
    let mut mask = logp.clone();
    for i in 0..b {
        for j in 0..t {
            logp[i][j] = -0.05 - 3.0 * lcg(&mut s);
            old[i][j] = logp[i][j] + 0.4 * (lcg(&mut s) - 0.5);
            infer[i][j] = old[i][j] + 0.6 * (lcg(&mut s) - 0.5);
            mask[i][j] = if j < 2 && i % 2 == 0 { 0.0 } else { 1.0 };
        }
    }
    // extreme ratios: π/μ = 1e3 and 1e-3, π/π_old = 1e3 and 1e-3
    logp[1][3] = infer[1][3] + (1e3f64).ln();
    logp[3][4] = infer[3][4] + (1e-3f64).ln();
    old[1][5] = logp[1][5] - (1e3f64).ln();
    old[5][2] = logp[5][2] - (1e-3f64).ln();
    infer[2][6] = old[2][6] - (1e3f64).ln();
    mask[4] = vec![0.0; t];
    logp[4][0] = f64::NEG_INFINITY; // masked garbage must not leak
    let adv = vec![1.3, -0.7, 0.4, -1.5, 2.0, -0.2];
    Data {
        logp,
        old,
        infer,
        mask,
        adv,
    }
}

fn clipf(r: f64, a: f64, lo: f64, hi: f64, dual: Option<f64>) -> f64 {
    let l = f64::max(-a * r, -a * r.clamp(1.0 - lo, 1.0 + hi));
    match dual {
        Some(c) if a < 0.0 => l.min(-a * c),
        _ => l,
    }
}

fn cl(x: f64) -> f64 {
    x.clamp(-20.0, 20.0)
}

fn row_sum(d: &Data, i: usize, f: impl Fn(usize) -> f64) -> (f64, f64) {
    let mut s = 0.0;
    let mut n = 0.0;
    for t in 0..d.mask[i].len() {
        if d.mask[i][t] != 0.0 {
            s += f(t);
            n += 1.0;
        }
    }
    (s, n)
}

fn level_lw(d: &Data, i: usize, t: usize, level: Level) -> f64 {
    let (s, n) = row_sum(d, i, |u| d.old[i][u] - d.infer[i][u]);
    match level {
        Level::Token => d.old[i][t] - d.infer[i][t],
        Level::Sequence => s,
        Level::Geometric => s / n.max(1.0),
    }
}

/// ℓ_{i,t} as a function of the token's own log-prob x, everything else frozen (stop-gradients).
fn naive_token(obj: &Objective, d: &Data, i: usize, t: usize, x: f64) -> f64 {
    let a = d.adv[i];
    match *obj {
        Objective::Grpo(g) => clipf(
            cl(x - d.old[i][t]).exp(),
            a,
            g.eps_low,
            g.eps_high,
            g.dual_clip,
        ),
        Objective::Bypass(g) => clipf(
            cl(x - d.infer[i][t]).exp(),
            a,
            g.eps_low,
            g.eps_high,
            g.dual_clip,
        ),
        Objective::SeqBypass(g) => {
            let (s, _) = row_sum(d, i, |u| d.logp[i][u] - d.infer[i][u]);
            clipf(
                cl(s + x - d.logp[i][t]).exp(),
                a,
                g.eps_low,
                g.eps_high,
                g.dual_clip,
            )
        }
        Objective::AlpToken(p) => clipf(
            cl(x - d.infer[i][t]).exp(),
            a,
            p.eps_low,
            p.eps_high,
            p.dual_clip,
        ),
        Objective::AlpSeq(p) => {
            let (s, n) = row_sum(d, i, |u| d.logp[i][u] - d.infer[i][u]);
            let s = if p.geometric { s / n.max(1.0) } else { s };
            clipf(
                cl(s + x - d.logp[i][t]).exp(),
                a,
                p.eps_low,
                p.eps_high,
                p.dual_clip,
            )
        }
        Objective::Gspo(g) => {
            let (s, n) = row_sum(d, i, |u| d.logp[i][u] - d.old[i][u]);
            let w = if g.is_upper > 0.0 {
                let r = cl(level_lw(d, i, t, Level::Sequence)).exp();
                if r <= g.is_upper {
                    r
                } else {
                    0.0
                }
            } else {
                1.0
            };
            w * clipf(
                cl(s / n + x - d.logp[i][t]).exp(),
                a,
                g.eps_low,
                g.eps_high,
                g.dual_clip,
            )
        }
        Objective::Tis(c) => {
            let w = cl(level_lw(d, i, t, c.level).min(c.cap.ln())).exp();
            w * clipf(
                cl(x - d.old[i][t]).exp(),
                a,
                c.eps_low,
                c.eps_high,
                c.dual_clip,
            )
        }
        Objective::Mis(m) => {
            // The weight is the ratio itself inside the range; a veto zeroes the sequence.
            let r = cl(level_lw(d, i, t, m.level)).exp();
            let vetoed = m.veto > 0.0
                && (0..d.mask[i].len())
                    .any(|u| d.mask[i][u] != 0.0 && (d.old[i][u] - d.infer[i][u]).exp() < m.veto);
            let w = if r >= m.lower && r <= m.upper && !vetoed {
                r
            } else {
                0.0
            };
            w * clipf(
                cl(x - d.old[i][t]).exp(),
                a,
                m.eps_low,
                m.eps_high,
                m.dual_clip,
            )
        }
        Objective::Icepop(p) => {
            let r = (d.old[i][t] - d.infer[i][t]).exp();
            let w = if r >= p.alpha && r <= p.beta {
                1.0
            } else {
                0.0
            };
            w * clipf(
                cl(x - d.old[i][t]).exp(),
                a,
                p.eps_low,
                p.eps_high,
                p.dual_clip,
            )
        }
        Objective::DppoTv(c) => {
            let diff = d.logp[i][t].exp() - d.old[i][t].exp();
            let valid = if a > 0.0 {
                diff <= c.delta_high
            } else {
                diff >= -c.delta_low
            };
            let w = cl(d.logp[i][t] - d.old[i][t]).exp().min(c.ratio_cap);
            -a * w * f64::from(u8::from(valid)) * x
        }
        Objective::DppoKl(c) => {
            // Binary KL between the old (q) and new (p) probability of the token.
            let (p, q) = (d.logp[i][t].exp(), d.old[i][t].exp());
            let kl = q * (q.ln() - p.ln()) + (1.0 - q) * ((1.0 - q + 1e-8) / (1.0 - p + 1e-8)).ln();
            let valid = if a > 0.0 {
                kl <= c.delta_high || p <= q
            } else {
                kl <= c.delta_low || p >= q
            };
            let w = cl(d.logp[i][t] - d.old[i][t]).exp().min(c.ratio_cap);
            -a * w * f64::from(u8::from(valid)) * x
        }
        Objective::Ipo(c) => {
            let keep = (d.logp[i][t].exp() - d.infer[i][t].exp()).abs() <= c.threshold;
            let lr = cl(x - d.infer[i][t]);
            -f64::from(u8::from(keep)) * c.adv_tau * a * lr.exp() + c.kl_tau * lr * lr
        }
        Objective::Cispo(c) => {
            let r = cl(d.logp[i][t] - d.old[i][t]).exp();
            let mut w = r.min(1.0 + c.eps_max);
            if let (Some(cc), true) = (c.dual_clip, a < 0.0) {
                w = w.min(cc);
            }
            -w * a * x
        }
    }
}

/// Aggregation weight of token (i, t).
fn agg_weight(d: &Data, i: usize, agg: Aggregation) -> f64 {
    let total: f64 = d.mask.iter().flatten().sum();
    let nonempty = d
        .mask
        .iter()
        .filter(|r| r.iter().any(|&m| m != 0.0))
        .count() as f64;
    let len: f64 = d.mask[i].iter().sum();
    match agg {
        Aggregation::TokenMean => 1.0 / total.max(1.0),
        Aggregation::SeqMeanTokenMean => 1.0 / (nonempty.max(1.0) * len.max(1.0)),
        Aggregation::SeqMeanTokenSum => 1.0 / nonempty.max(1.0),
    }
}

fn naive(obj: &Objective, d: &Data, agg: Aggregation) -> (f64, Vec<Vec<f64>>) {
    let mut loss = 0.0;
    let mut grad = vec![vec![0.0; d.logp[0].len()]; d.logp.len()];
    for i in 0..d.logp.len() {
        for t in 0..d.logp[i].len() {
            if d.mask[i][t] == 0.0 {
                continue;
            }
            let w = agg_weight(d, i, agg);
            let x = d.logp[i][t];
            loss += w * naive_token(obj, d, i, t, x);
            let h = 1e-6;
            let fd =
                (naive_token(obj, d, i, t, x + h) - naive_token(obj, d, i, t, x - h)) / (2.0 * h);
            grad[i][t] = w * fd;
        }
    }
    (loss, grad)
}

fn candle(
    obj: &Objective,
    d: &Data,
    agg: Aggregation,
) -> (f64, Vec<Vec<f64>>, std::collections::BTreeMap<String, f64>) {
    let dev = Device::Cpu;
    let logp = Var::new(d.logp.clone(), &dev).unwrap();
    let old = Tensor::new(d.old.clone(), &dev).unwrap();
    let infer = Tensor::new(d.infer.clone(), &dev).unwrap();
    let mask = Tensor::new(d.mask.clone(), &dev).unwrap();
    let adv = Tensor::new(d.adv.clone(), &dev).unwrap();
    let out = obj
        .compute(
            &LossInputs {
                logp: logp.as_tensor(),
                logp_old: Some(&old),
                logp_infer: &infer,
                advantages: &adv,
                mask: &mask,
            },
            agg,
        )
        .unwrap();
    let g = out.loss.backward().unwrap();
    let grad: Vec<Vec<f64>> = match g.get(logp.as_tensor()) {
        Some(t) => t.to_vec2().unwrap(),
        None => vec![vec![0.0; d.logp[0].len()]; d.logp.len()],
    };
    (out.loss.to_scalar::<f64>().unwrap(), grad, out.metrics)
}

fn all_objectives() -> Vec<Objective> {
    vec![
        Objective::Grpo(Grpo::default()),
        Objective::Grpo(Grpo {
            dual_clip: Some(3.0),
            ..Default::default()
        }),
        Objective::Bypass(Grpo {
            dual_clip: Some(2.0),
            ..Default::default()
        }),
        Objective::Grpo(Grpo {
            dual_clip: None,
            ..Default::default()
        }),
        Objective::SeqBypass(Grpo::default()),
        Objective::Tis(Tis {
            level: Level::Token,
            cap: 2.0,
            ..Default::default()
        }),
        Objective::Tis(Tis {
            level: Level::Sequence,
            cap: 3.0,
            dual_clip: Some(3.0),
            ..Default::default()
        }),
        Objective::Mis(Mis {
            level: Level::Token,
            lower: 0.5,
            upper: 2.0,
            ..Default::default()
        }),
        Objective::Mis(Mis::default()),
        // The veto zeroes row 1 (a token with π_old/μ ≈ 1e-3 < 1e-2); with the sequence level,
        // the range [0, 1.5] cuts the rows whose summed ratio exceeds it.
        Objective::Mis(Mis {
            level: Level::Token,
            lower: 0.0,
            upper: 5.0,
            veto: 1e-2,
            ..Default::default()
        }),
        Objective::Mis(Mis {
            level: Level::Sequence,
            upper: 1.5,
            veto: 0.5,
            ..Default::default()
        }),
        Objective::Mis(Mis {
            level: Level::Geometric,
            lower: 0.8,
            upper: 1.25,
            ..Default::default()
        }),
        Objective::Icepop(IcePop::default()),
        Objective::Gspo(Gspo::default()),
        Objective::Gspo(Gspo {
            is_upper: 0.0,
            dual_clip: None,
            ..Default::default()
        }),
        Objective::Cispo(Cispo::default()),
        Objective::Cispo(Cispo {
            eps_max: 0.3,
            dual_clip: Some(1.2),
        }),
        Objective::DppoTv(DppoTv::default()),
        Objective::DppoTv(DppoTv {
            delta_high: 0.03,
            delta_low: 0.05,
            ratio_cap: 3.0,
        }),
        Objective::DppoKl(DppoKl::default()),
        Objective::DppoKl(DppoKl {
            delta_high: 0.002,
            delta_low: 0.004,
            ratio_cap: 2.0,
        }),
        Objective::Ipo(Ipo::default()),
        Objective::Ipo(Ipo {
            threshold: 0.02,
            adv_tau: 2.0,
            kl_tau: 0.3,
        }),
        Objective::AlpToken(Alp::default()),
        Objective::AlpSeq(Alp::default()),
        Objective::AlpSeq(Alp {
            geometric: true,
            dual_clip: None,
            ..Default::default()
        }),
    ]
}

#[test]
fn every_objective_matches_the_naive_loss_and_gradient() {
    for seed in [1u64, 2, 3] {
        let d = data(seed);
        for obj in all_objectives() {
            for agg in [
                Aggregation::TokenMean,
                Aggregation::SeqMeanTokenMean,
                Aggregation::SeqMeanTokenSum,
            ] {
                let (nl, ng) = naive(&obj, &d, agg);
                let (cl_, cg, _) = candle(&obj, &d, agg);
                assert!(
                    (nl - cl_).abs() <= 1e-6 * (1.0 + nl.abs()),
                    "{obj:?} {agg:?} seed {seed}: loss {cl_} vs naive {nl}"
                );
                for i in 0..ng.len() {
                    for t in 0..ng[i].len() {
                        assert!(
                            (ng[i][t] - cg[i][t]).abs() <= 1e-6,
                            "{obj:?} {agg:?} seed {seed}: grad[{i}][{t}] {} vs naive {}",
                            cg[i][t],
                            ng[i][t]
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn clamps_and_dual_clip_are_exercised() {
    let d = data(1);
    // The dual clip fires on the 1e3 ratio with a negative advantage (row 1).
    let (_, _, m) = candle(
        &Objective::Bypass(Grpo {
            dual_clip: Some(3.0),
            ..Default::default()
        }),
        &d,
        Aggregation::TokenMean,
    );
    assert!(m["clip_frac/dual"] > 0.0, "{m:?}");
    assert!(
        m["clip_frac/low"] > 0.0 || m["clip_frac/high"] > 0.0,
        "{m:?}"
    );
    // ALP-seq: where the clamp bites (|log ratio| > 20) the gradient vanishes.
    let mut d2 = data(2);
    for t in 0..7 {
        d2.logp[3][t] = d2.infer[3][t] - 4.0; // S = -28 → clamped
    }
    let (_, g, _) = candle(
        &Objective::AlpSeq(Alp {
            dual_clip: None,
            eps_low: 0.999_999,
            eps_high: 1e9,
            geometric: false,
        }),
        &d2,
        Aggregation::TokenMean,
    );
    assert!(g[3].iter().all(|&x| x == 0.0), "{:?}", g[3]);
}

#[test]
fn seq_alp_gradient_is_sequence_ratio_times_advantage() {
    // Small log-ratios: unclipped, so dℓ/dlogp_{i,t} = −A_i ρ_i / N for every token of row i.
    let mut d = data(4);
    for i in 0..d.logp.len() {
        for t in 0..d.logp[i].len() {
            d.logp[i][t] = d.infer[i][t] + 0.01 * ((i + t) as f64 % 3.0 - 1.0);
        }
    }
    d.logp[4][0] = -1.0;
    let obj = Objective::AlpSeq(Alp {
        dual_clip: None,
        ..Default::default()
    });
    let (_, g, _) = candle(&obj, &d, Aggregation::TokenMean);
    let n: f64 = d.mask.iter().flatten().sum();
    for i in 0..d.logp.len() {
        let (s, _) = row_sum(&d, i, |u| d.logp[i][u] - d.infer[i][u]);
        for t in 0..d.logp[i].len() {
            let want = if d.mask[i][t] != 0.0 {
                -d.adv[i] * s.exp() / n
            } else {
                0.0
            };
            assert!(
                (g[i][t] - want).abs() < 1e-12,
                "{i},{t}: {} vs {want}",
                g[i][t]
            );
            // finite differences with S frozen agree
            if d.mask[i][t] != 0.0 {
                let h = 1e-6;
                let fd = (naive_token(&obj, &d, i, t, d.logp[i][t] + h)
                    - naive_token(&obj, &d, i, t, d.logp[i][t] - h))
                    / (2.0 * h)
                    / n;
                assert!((fd - want).abs() < 1e-8);
            }
        }
    }
}

#[test]
fn methods_that_need_logp_old_refuse_without_it() {
    let dev = Device::Cpu;
    let z = Tensor::zeros((2, 3), candle_core::DType::F64, &dev).unwrap();
    let m = Tensor::ones((2, 3), candle_core::DType::F64, &dev).unwrap();
    let a = Tensor::new(&[1.0f64, -1.0], &dev).unwrap();
    for name in METHODS {
        let obj = Objective::from_name(name).unwrap();
        assert_eq!(obj.name(), *name);
        let r = obj.compute(
            &LossInputs {
                logp: &z,
                logp_old: None,
                logp_infer: &z,
                advantages: &a,
                mask: &m,
            },
            Aggregation::TokenMean,
        );
        if obj.needs_logp_old() {
            let e = r.unwrap_err().to_string();
            assert!(e.contains("needs logp_old") && e.contains(name), "{e}");
        } else {
            r.unwrap();
        }
    }
    assert_eq!(
        METHODS
            .iter()
            .filter(|n| Objective::from_name(n).unwrap().needs_logp_old())
            .count(),
        // grpo, tis, mis, icepop, gspo, cispo, dppo-tv, dppo-kl
        8
    );
}

#[test]
fn serde_round_trip_and_unknown_method() {
    for obj in all_objectives() {
        let s = serde_json::to_string(&obj).unwrap();
        let back: Objective = serde_json::from_str(&s).unwrap();
        assert_eq!(obj, back, "{s}");
        let t = toml::to_string(&obj).unwrap();
        let back: Objective = toml::from_str(&t).unwrap();
        assert_eq!(obj, back, "{t}");
    }
    let e = Objective::from_name("ppo").unwrap_err().to_string();
    for n in METHODS {
        assert!(e.contains(n), "{e}");
    }
    let e = serde_json::from_str::<Objective>(r#"{"method": "ppo"}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("alp-seq") && e.contains("grpo"), "{e}");
    let e = serde_json::from_str::<Objective>(r#"{"method": "grpo", "eps": 0.1}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("eps"), "{e}");
    let bad: Objective =
        serde_json::from_str(r#"{"method": "alp-seq", "dual_clip": 0.5}"#).unwrap();
    assert!(bad
        .validate()
        .unwrap_err()
        .to_string()
        .contains("dual_clip"));
}

/// Loss and gradient of rows `rows` of `d` as one micro-batch, padded with `extra` columns of
/// masked garbage, reduced with the whole mini-batch's `normaliser`.
fn part(
    obj: &Objective,
    d: &Data,
    rows: &[usize],
    extra: usize,
    agg: Aggregation,
    normaliser: f64,
) -> (f64, Vec<Vec<f64>>) {
    let pad = |m: &Vec<Vec<f64>>, fill: f64| -> Vec<Vec<f64>> {
        rows.iter()
            .map(|&i| {
                let mut r = m[i].clone();
                r.extend(std::iter::repeat_n(fill, extra));
                r
            })
            .collect()
    };
    let dev = Device::Cpu;
    let logp = Var::new(pad(&d.logp, -7.5), &dev).unwrap();
    let old = Tensor::new(pad(&d.old, 3.0), &dev).unwrap();
    let infer = Tensor::new(pad(&d.infer, -40.0), &dev).unwrap();
    let mask = Tensor::new(pad(&d.mask, 0.0), &dev).unwrap();
    let adv = Tensor::new(rows.iter().map(|&i| d.adv[i]).collect::<Vec<_>>(), &dev).unwrap();
    let inputs = LossInputs {
        logp: logp.as_tensor(),
        logp_old: Some(&old),
        logp_infer: &infer,
        advantages: &adv,
        mask: &mask,
    };
    let out = obj.compute_part(&inputs, agg, normaliser).unwrap();
    let g = out.loss.backward().unwrap();
    let t = d.logp[0].len();
    let grad: Vec<Vec<f64>> = match g.get(logp.as_tensor()) {
        Some(x) => x
            .to_vec2::<f64>()
            .unwrap()
            .into_iter()
            .map(|r| r[..t].to_vec())
            .collect(),
        None => vec![vec![0.0; t]; rows.len()],
    };
    (out.loss.to_scalar::<f64>().unwrap(), grad)
}

#[test]
fn micro_batches_of_unequal_token_counts_sum_to_the_mini_batch_loss_and_gradient() {
    let d = data(11);
    // Parts with 7, 19 (one row fully masked) and 7 loss tokens, and different padding widths.
    let parts: [(&[usize], usize); 3] = [(&[0, 1], 0), (&[2, 3, 4], 3), (&[5], 1)];
    let aggs = [
        Aggregation::TokenMean,
        Aggregation::SeqMeanTokenMean,
        Aggregation::SeqMeanTokenSum,
    ];
    for obj in all_objectives() {
        for agg in aggs {
            let (whole, gw, _) = candle(&obj, &d, agg);
            let counts = d
                .mask
                .iter()
                .map(|r| r.iter().filter(|&&m| m != 0.0).count());
            let norm = agg.normaliser(counts);
            let (mut sum, mut grads) = (0.0, Vec::new());
            for (rows, extra) in parts {
                let (l, g) = part(&obj, &d, rows, extra, agg, norm);
                sum += l;
                grads.extend(g);
            }
            let tol = |a: f64, b: f64| (a - b).abs() <= 1e-6 * b.abs().max(1e-6);
            assert!(
                tol(sum, whole),
                "{obj:?} {agg:?}: parts {sum} vs whole {whole}"
            );
            for (i, (a, b)) in grads.iter().zip(&gw).enumerate() {
                for (t, (x, y)) in a.iter().zip(b).enumerate() {
                    assert!(tol(*x, *y), "{obj:?} {agg:?}: grad[{i}][{t}] {x} vs {y}");
                }
            }
        }
    }
}

#[test]
fn the_mask_methods_drop_some_tokens_and_keep_others() {
    // On the test batch each trust region bites somewhere and not everywhere, so the naive
    // comparison above exercises both sides of every mask.
    let d = data(1);
    for obj in [
        Objective::DppoTv(DppoTv {
            delta_high: 0.03,
            delta_low: 0.05,
            ratio_cap: 3.0,
        }),
        Objective::DppoKl(DppoKl {
            delta_high: 0.002,
            delta_low: 0.004,
            ratio_cap: 2.0,
        }),
        Objective::Ipo(Ipo {
            threshold: 0.02,
            ..Ipo::default()
        }),
    ] {
        let (_, _, m) = candle(&obj, &d, Aggregation::TokenMean);
        let kept = m[alp_loss::names::IS_WEIGHT_KEPT_FRAC];
        assert!(kept > 0.0 && kept < 1.0, "{obj:?}: kept {kept}");
        let dropped = m[alp_loss::names::CLIP_FRAC_LOW] + m[alp_loss::names::CLIP_FRAC_HIGH];
        assert!((dropped + kept - 1.0).abs() < 1e-9, "{obj:?}: {m:?}");
    }
    let bad = Objective::DppoTv(DppoTv {
        delta_high: 0.0,
        ..DppoTv::default()
    });
    assert!(bad
        .validate()
        .unwrap_err()
        .to_string()
        .contains("objective.delta_high"));
    let bad = Objective::Ipo(Ipo {
        kl_tau: -1.0,
        ..Ipo::default()
    });
    assert!(bad
        .validate()
        .unwrap_err()
        .to_string()
        .contains("objective.kl_tau"));
}
