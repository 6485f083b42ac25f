//! The report of `alp compare`: `compare.json`, `report.md` (tables, the phase diagram, the
//! paper's three questions answered with paired t intervals over seeds), and plots with a band
//! over seeds.

use crate::compare::{Plan, RunResult};
use alp_core::{Error, Result};
use plotters::prelude::*;
use serde_json::{json, Value};
use std::path::Path;

/// Mean and (sample) standard deviation; std 0 for one value.
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64
    } else {
        0.0
    };
    (m, var.sqrt())
}

type Rows = [(String, String, Vec<RunResult>)];

fn acc(r: &[RunResult]) -> Vec<f64> {
    r.iter().map(accuracy_of).collect()
}

fn find<'a>(rows: &'a Rows, setting: &str, method: &str) -> Option<&'a [RunResult]> {
    rows.iter()
        .find(|(s, m, _)| s == setting && m == method)
        .map(|(_, _, r)| r.as_slice())
}

/// The row the paired differences are taken against.
pub const PAIRED_REFERENCE: &str = "alp-seq";

/// Bootstrap resamples of a paired interval (exact enumeration up to this many).
const BOOTSTRAP_REPS: usize = 20_000;

/// The runs of `a` and `b` with the same seed (run index: warm start and seed), in `a`'s order.
fn seed_pairs<'a>(
    a: &'a [RunResult],
    b: &'a [RunResult],
) -> impl Iterator<Item = (&'a RunResult, &'a RunResult)> {
    a.iter()
        .filter_map(move |ra| b.iter().find(|rb| rb.seed == ra.seed).map(|rb| (ra, rb)))
}

/// One per-seed value of `a` and of `b` on the seeds both have, in `a`'s order.
fn paired_values(
    a: &[RunResult],
    b: &[RunResult],
    value: &dyn Fn(&RunResult) -> f64,
) -> (Vec<f64>, Vec<f64>) {
    seed_pairs(a, b).map(|(x, y)| (value(x), value(y))).unzip()
}

/// Held-out accuracy in percent.
fn accuracy_of(r: &RunResult) -> f64 {
    100.0 * r.final_accuracy
}

/// Held-out accuracy (%) of `a` minus that of `b`, paired by seed, with its Student t 95%
/// interval (the one the report reads; see [`crate::stats::paired_t`]).
pub fn paired_accuracy(a: &[RunResult], b: &[RunResult]) -> Option<crate::stats::Interval> {
    let (x, y) = paired_values(a, b, &accuracy_of);
    crate::stats::paired_t(&x, &y)
}

/// Mean held-out accuracy (%) over seeds with the t 95% interval of the mean (low, high).
fn accuracy_interval(r: &[RunResult]) -> (f64, f64, f64) {
    let v = acc(r);
    match crate::stats::mean_t(&v) {
        Some(i) => (i.mean, i.lo, i.hi),
        None => {
            let m = mean_std(&v).0;
            (m, m, m)
        }
    }
}

/// `compare.json`: per (setting, method) the per-seed results, mean, std, tails, collapses
/// with the collapse rate's 95% interval, and the accuracy difference to `alp-seq` paired by
/// seed with its bootstrap 95% interval and the smallest difference the seeds could detect.
pub fn to_json(plan: &Plan, rows: &Rows, machine: &str) -> Value {
    let methods: Vec<Value> = rows
        .iter()
        .map(|(setting, method, r)| {
            let s = mean_std(&acc(r)).1;
            let degraded = r.iter().filter(|x| x.collapsed_at.is_some()).count();
            let (clo, chi) = crate::stats::clopper_pearson(degraded, r.len());
            let paired = match find(rows, setting, PAIRED_REFERENCE) {
                Some(reference) if method != PAIRED_REFERENCE => {
                    let (x, y) = paired_values(r, reference, &accuracy_of);
                    crate::stats::paired_t(&x, &y)
                        .zip(crate::stats::paired_bootstrap(&x, &y, BOOTSTRAP_REPS, 0))
                }
                _ => None,
            };
            let (am, alo, ahi) = accuracy_interval(r);
            json!({
                "collapse_rate": {"rate": degraded as f64 / r.len().max(1) as f64, "ci95": [clo, chi]},
                "accuracy_minus_alp_seq_paired": paired.map(|(t, boot)| json!({
                    "mean": t.mean, "ci95": [t.lo, t.hi], "interval": "student t, n − 1 degrees of freedom",
                    "detectable": t.detectable, "pairs": t.pairs, "sd": t.sd,
                    "bootstrap_ci95": [boot.lo, boot.hi],
                    "replication_ci95_same_number_of_new_seeds": t.replication(t.pairs),
                })),
                "final_accuracy_ci95": [alo, ahi],
                "method": method,
                "setting": setting,
                "sets": plan.arms.iter().find(|a| a.name == *method).map(|a| &a.sets),
                "final_accuracy_per_seed": acc(r),
                "final_accuracy_mean": am,
                "final_accuracy_std": s,
                "avg_at_k_mean": mean_std(&r.iter().map(|x| 100.0 * x.final_avg_at_k).collect::<Vec<_>>()).0,
                "ratio_p99_9_max": r.iter().map(|x| x.ratio_p99_9_max).fold(f64::NAN, f64::max),
                "ratio_max": r.iter().map(|x| x.ratio_max).fold(f64::NAN, f64::max),
                "train_ratio_p99_9_max": r.iter().map(|x| x.train_ratio_p99_9_max).fold(f64::NAN, f64::max),
                "kl_spikes": r.iter().map(|x| x.kl_spikes).sum::<usize>(),
                "grad_norm_spikes": r.iter().map(|x| x.grad_norm_spikes).sum::<Option<usize>>(),
                "collapsed_seeds": degraded,
                "collapsed_at": r.iter().map(|x| x.collapsed_at).collect::<Vec<_>>(),
                "seeds": r,
            })
        })
        .collect();
    json!({"preset": plan.preset, "machine": machine, "seeds": plan.seeds, "warm_starts": plan.warm_starts, "base": plan.base, "settings": plan.settings, "methods": methods})
}

fn pm(v: &[f64]) -> String {
    let (m, s) = mean_std(v);
    format!("{m:.1} ± {s:.1}")
}

/// Mean ± std of the runs that measured the value; "not measured" when none did (avg@k with
/// `eval.pass_k = 0`), rather than a mean of placeholders.
fn pm_measured(v: &[f64]) -> String {
    match v.iter().filter(|x| x.is_finite()).count() {
        0 => "not measured".into(),
        n if n == v.len() => pm(v),
        n => format!("{} (n {n})", pm(v)),
    }
}

/// Mean ± std of ratios, with three decimals.
fn pm3(v: &[f64]) -> String {
    let (m, s) = mean_std(v);
    format!("{m:.3} ± {s:.3}")
}

/// Mean ± std in scientific notation (KL values).
fn pme(v: &[f64]) -> String {
    let (m, s) = mean_std(v);
    format!("{m:.2e} ± {s:.1e}")
}

/// The table of one setting.
fn table(rows: &Rows, setting: &str) -> String {
    let mut md = String::from("| method | held-out accuracy % (mean ± std) | per seed | avg@k % | unperturbed ratio p99.9 (max over run, mean over seeds) | unperturbed ratio max | training ratio p99.9 | collapsed |\n| --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for (_, method, r) in rows.iter().filter(|(s, _, _)| s == setting) {
        let f = |g: &dyn Fn(&RunResult) -> f64| r.iter().map(g).collect::<Vec<f64>>();
        md.push_str(&format!(
            "| {method} | {} | {} | {} | {} | {} | {} | {}/{} |\n",
            pm(&acc(r)),
            acc(r)
                .iter()
                .map(|x| format!("{x:.1}"))
                .collect::<Vec<_>>()
                .join(", "),
            pm_measured(&f(&|x| 100.0 * x.final_avg_at_k)),
            pm3(&f(&|x| x.ratio_p99_9_max)),
            pm3(&f(&|x| x.ratio_max)),
            pm3(&f(&|x| x.train_ratio_p99_9_max)),
            r.iter().filter(|x| x.collapsed_at.is_some()).count(),
            r.len()
        ));
    }
    md
}

/// Every row against `alp-seq`, paired by seed: the accuracy difference with its t 95%
/// interval and what it says, and the collapse rate with its exact (Clopper–Pearson) interval.
fn paired_table(rows: &Rows, setting: &str) -> String {
    let Some(reference) = find(rows, setting, PAIRED_REFERENCE) else {
        return String::new();
    };
    let mut md = format!("Paired by seed against `{PAIRED_REFERENCE}` (same warm start and task stream per seed; Student t interval over the pairs, which keeps its 95% with few pairs where a percentile bootstrap does not; \"detectable\": the smallest true difference these pairs would find with 80% power at the 5% level; compare.json also has the bootstrap interval and the range a repeat on as many new seeds should land in):\n\n| method | accuracy − {PAIRED_REFERENCE} (points) | 95% interval | reading | collapse rate [95% interval] |\n| --- | --- | --- | --- | --- |\n");
    for (_, method, r) in rows.iter().filter(|(s, _, _)| s == setting) {
        let k = r.iter().filter(|x| x.collapsed_at.is_some()).count();
        let (lo, hi) = crate::stats::clopper_pearson(k, r.len());
        let rate = format!("{k}/{} [{:.0}%, {:.0}%]", r.len(), 100.0 * lo, 100.0 * hi);
        if method == PAIRED_REFERENCE {
            md.push_str(&format!("| {method} | — | — | reference | {rate} |\n"));
            continue;
        }
        match paired_accuracy(r, reference) {
            Some(i) => {
                let reading = if i.excludes_zero() {
                    if i.mean > 0.0 {
                        format!("{method} better than {PAIRED_REFERENCE}")
                    } else {
                        format!("{PAIRED_REFERENCE} better than {method}")
                    }
                } else {
                    format!(
                        "no difference detectable (detectable: ±{:.1})",
                        i.detectable
                    )
                };
                md.push_str(&format!(
                    "| {method} | {:+.1} | [{:+.1}, {:+.1}] | {reading} | {rate} |\n",
                    i.mean, i.lo, i.hi
                ));
            }
            None => md.push_str(&format!(
                "| {method} | — | fewer than 2 paired seeds | — | {rate} |\n"
            )),
        }
    }
    md.push('\n');
    md
}

/// The measured mismatch of a setting's first steps, over all its runs.
fn mismatch_line(rows: &Rows, setting: &str) -> String {
    let all: Vec<&RunResult> = rows
        .iter()
        .filter(|(s, _, _)| s == setting)
        .flat_map(|(_, _, r)| r)
        .collect();
    let col = |i: usize| {
        all.iter()
            .map(|r| r.early_mismatch[i])
            .collect::<Vec<f64>>()
    };
    // Over every step (records newer than the field): staleness builds up over a run, so
    // the first steps understate it.
    let whole: Vec<&RunResult> = all
        .iter()
        .copied()
        .filter(|r| r.run_mismatch.len() == 3)
        .collect();
    let run = |i: usize| {
        whole
            .iter()
            .map(|r| r.run_mismatch[i])
            .collect::<Vec<f64>>()
    };
    let over_run = if whole.is_empty() {
        String::new()
    } else {
        format!(
            " Mean over every step of {} runs: engine k3 {}, staleness k3 {}, staleness {} versions.",
            whole.len(),
            pme(&run(0)),
            pme(&run(1)),
            pm(&run(2)),
        )
    };
    format!(
        "Measured at the first 3 steps of every run: engine k3 KL(μ‖π_sampler) {}, staleness k3 KL(π_sampler‖π_old) {}, staleness {} versions, unperturbed ratio p99.9 {}.{over_run}{}",
        pme(&col(0)),
        pme(&col(1)),
        pm(&col(2)),
        pm3(&col(3)),
        warm_start_line(&all),
    )
}

/// The warm start a setting's runs began from; more than one is said in bold, as its pairs
/// are then not paired on the warm start.
fn warm_start_line(runs: &[&RunResult]) -> String {
    match warm_starts(runs.iter().copied()).as_slice() {
        [""] => String::new(),
        [id] => format!(" Warm start `{id}`."),
        ids => format!(
            " **Runs from {} warm starts ({}): pairs across them share the seed and task stream, not the warm start.**",
            ids.len(),
            ids.iter()
                .map(|i| if i.is_empty() { "unrecorded" } else { *i })
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The distinct warm starts of `runs` (empty: not recorded), sorted.
fn warm_starts<'a>(runs: impl Iterator<Item = &'a RunResult>) -> Vec<&'a str> {
    let mut ids: Vec<&str> = runs.map(|r| r.warm_start.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// `a` against `b` on one per-seed value, paired by seed with the Student t 95% interval;
/// an interval inside ±`resolution` (the precision the report prints) is no difference
/// (ratios of 1.00001 and 1.00002 over zero-variance seeds are not told apart in any useful
/// sense), while a mean that only rounds to 0 gets its interval.
pub fn verdict(
    a: &[RunResult],
    b: &[RunResult],
    value: &dyn Fn(&RunResult) -> f64,
    resolution: f64,
) -> String {
    let (x, y) = paired_values(a, b, value);
    match crate::stats::paired_t(&x, &y) {
        None => "fewer than 2 paired seeds: nothing can be told".into(),
        // Only where the whole interval is inside the printed precision: a mean that rounds
        // to 0 over per-seed differences of ±1 is not "no difference".
        Some(i) if i.lo > -resolution && i.hi < resolution => format!(
            "no difference at the printed precision (paired Δ {:+.3e}, interval inside ±{resolution})",
            i.mean
        ),
        Some(i) if i.excludes_zero() => format!(
            "paired Δ {:+.3} [{:+.3}, {:+.3}] over {} seeds: the interval excludes 0",
            i.mean, i.lo, i.hi, i.pairs
        ),
        Some(i) => format!(
            "paired Δ {:+.3} [{:+.3}, {:+.3}] over {} seeds: no difference detectable (detectable ±{:.3})",
            i.mean, i.lo, i.hi, i.pairs, i.detectable
        ),
    }
}

/// The pre-registered primary comparisons, as (what, row a, row b): collapse rates (exact
/// McNemar over the runs both rows have, paired by setting and seed), the spread of the
/// sequence-level ratio over training ([`seq_spread`]) and the area under the held-out
/// accuracy curve ([`accuracy_auc`]) (paired t over the same pairs), one per claim of the
/// paper: stability (collapse), tails (spread), accuracy, and all layers perturbed against
/// each subset (the area against early, middle and late). Holm's adjustment runs over this
/// family; every other comparison in a report is exploratory.
pub const PRIMARY: &[(&str, &str, &str)] = &[
    ("collapse", "alp-seq", "alp-loss-no-noise"),
    ("collapse", "alp-seq", "seq-bypass"),
    ("seq-spread", "alp-seq", "bypass"),
    ("auc", "alp-seq", "seq-bypass"),
    ("auc", "alp-seq", "alp-seq-early"),
    ("auc", "alp-seq", "alp-seq-middle"),
    ("auc", "alp-seq", "alp-seq-late"),
];

/// The fewest discordant pairs, all one way, with which the exact McNemar test reaches
/// p ≤ `alpha` (6 at 5%): a collapse comparison over `n` pairs cannot tell rates apart that
/// differ by less than this over `n`.
pub fn mcnemar_least_discordant(alpha: f64) -> usize {
    (1..64)
        .find(|d| crate::stats::mcnemar_exact(*d, 0) <= alpha)
        .unwrap_or(64)
}

/// A run's sequence-ratio spread: the mean over its steps of ln(p99 / p1) of the unperturbed
/// sequence-level ratio π_old/μ (wide on either side: heavy tails); NaN without the curves.
pub fn seq_spread(r: &RunResult) -> f64 {
    crate::compare::finite_mean(r.seq_ratio_curves.iter().map(|q| (q[3] / q[0]).ln()))
}

/// A run's area under its held-out accuracy curve, in percent: the trapezoid over its
/// evaluations (before RL included) divided by the steps they span; the single evaluation's
/// accuracy where there is one.
pub fn accuracy_auc(r: &RunResult) -> f64 {
    let h = &r.heldout;
    match h.len() {
        0 => f64::NAN,
        1 => 100.0 * h[0].1,
        _ => {
            let span = h[h.len() - 1].0 - h[0].0;
            let area: f64 = h
                .windows(2)
                .map(|w| (w[1].0 - w[0].0) * (w[0].1 + w[1].1) / 2.0)
                .sum();
            if span > 0.0 {
                100.0 * area / span
            } else {
                100.0 * h.iter().map(|x| x.1).sum::<f64>() / h.len() as f64
            }
        }
    }
}

/// One primary comparison over every setting of `rows`: pairs, statistic, raw p-value.
fn primary_test(rows: &Rows, what: &str, a: &str, b: &str) -> (usize, String, f64) {
    let pairs: Vec<(&RunResult, &RunResult)> = rows
        .iter()
        .filter(|(_, m, _)| m == a)
        .filter_map(|(s, _, ra)| Some((ra, find(rows, s, b)?)))
        .flat_map(|(ra, rb)| seed_pairs(ra, rb))
        .collect();
    if what == "collapse" {
        let only_a = pairs
            .iter()
            .filter(|(x, y)| x.collapsed_at.is_some() && y.collapsed_at.is_none())
            .count();
        let only_b = pairs
            .iter()
            .filter(|(x, y)| x.collapsed_at.is_none() && y.collapsed_at.is_some())
            .count();
        let rate = |f: &dyn Fn(&(&RunResult, &RunResult)) -> bool| {
            let k = pairs.iter().filter(|p| f(p)).count();
            let (lo, hi) = crate::stats::clopper_pearson(k, pairs.len());
            format!(
                "{k}/{} [{:.0}%, {:.0}%]",
                pairs.len(),
                100.0 * lo,
                100.0 * hi
            )
        };
        let least = mcnemar_least_discordant(0.05);
        let stat = format!(
            "collapsed {} vs {}; discordant pairs {only_a} vs {only_b} (exact McNemar), detectable: rates {least} of {} pairs apart at least",
            rate(&|p| p.0.collapsed_at.is_some()),
            rate(&|p| p.1.collapsed_at.is_some()),
            pairs.len(),
        );
        return (
            pairs.len(),
            stat,
            crate::stats::mcnemar_exact(only_a, only_b),
        );
    }
    let value: &dyn Fn(&RunResult) -> f64 = if what == "auc" {
        &accuracy_auc
    } else {
        &seq_spread
    };
    let (x, y): (Vec<f64>, Vec<f64>) = pairs
        .iter()
        .map(|(p, q)| (value(p), value(q)))
        .filter(|(p, q)| p.is_finite() && q.is_finite())
        .unzip();
    match crate::stats::paired_t(&x, &y) {
        Some(i) => (
            i.pairs,
            format!(
                "paired Δ {:+.3} [{:+.3}, {:+.3}] (t 95%), detectable ±{:.3}",
                i.mean, i.lo, i.hi, i.detectable
            ),
            i.p_value(),
        ),
        None => (x.len(), "fewer than 2 pairs".into(), f64::NAN),
    }
}

/// The primary comparisons' table, Holm-adjusted over [`PRIMARY`].
pub fn primary_section(rows: &Rows) -> String {
    let tests: Vec<(usize, String, f64)> = PRIMARY
        .iter()
        .map(|(w, a, b)| primary_test(rows, w, a, b))
        .collect();
    let adjusted = crate::stats::holm(&tests.iter().map(|t| t.2).collect::<Vec<_>>());
    let mut md = String::from(
        "## Primary comparisons (pre-registered; Holm-adjusted over this family)\n\n\
         Pairs are the runs both rows have, by setting and seed (each seed's warm start shared). \
         `collapse`: exact McNemar test on the pairs where one row collapsed and the other did \
         not, rates with exact (Clopper–Pearson) 95% intervals. `seq-spread`: per run, the mean \
         over steps of ln(p99/p1) of the unperturbed sequence-level ratio π_old/μ. `auc`: per \
         run, the area under the held-out accuracy curve (%). \"detectable\": for the t tests the \
         smallest true difference these pairs find with 80% power at 5%; for McNemar the \
         fewest one-way discordant pairs that can reach 5%. A row is told apart when its Holm \
         p is at most 0.05; everything after this section is exploratory.\n\n\
         | comparison | rows | pairs | statistic | p | Holm p | verdict |\n\
         | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for ((what, a, b), ((n, stat, p), adj)) in PRIMARY.iter().zip(tests.iter().zip(&adjusted)) {
        let verdict = if adj.is_nan() {
            "not measured".to_string()
        } else if *adj <= 0.05 {
            "**told apart** (family-wise 5%)".to_string()
        } else {
            "not told apart at this size".to_string()
        };
        md.push_str(&format!(
            "| {what} | {a} vs {b} | {n} | {stat} | {} | {} | {verdict} |
",
            fmt_p(*p),
            fmt_p(*adj)
        ));
    }
    md.push('\n');
    md
}

/// A p-value as the report prints it.
fn fmt_p(p: f64) -> String {
    if p.is_nan() {
        "—".into()
    } else if p < 1e-4 {
        format!("{p:.1e}")
    } else {
        format!("{p:.4}")
    }
}

/// The paper's three questions, answered from the runs.
fn questions(plan: &Plan, rows: &Rows) -> String {
    let mut md = String::from("## The paper's three questions\n\n");
    for s in &plan.settings {
        let get = |m: &str| find(rows, &s.name, m);
        md.push_str(&format!("### Setting `{}`\n\n", s.name));
        let Some(alp) = get("alp-seq") else {
            md.push_str("No finished `alp-seq` runs: nothing to answer yet.\n\n");
            continue;
        };
        let tail = |r: &[RunResult]| r.iter().map(|x| x.ratio_p99_9_max).collect::<Vec<f64>>();
        let tail_of = |x: &RunResult| x.ratio_p99_9_max;
        for base in ["bypass", "grpo"] {
            if let Some(b) = get(base) {
                md.push_str(&format!(
                    "1. Ratio tails ({base} vs alp-seq, unperturbed π_old/μ p99.9, max over the run): {} vs {}; {}.\n",
                    pm3(&tail(b)), pm3(&tail(alp)), verdict(b, alp, &tail_of, 5e-4)
                ));
            }
        }
        let best = rows
            .iter()
            .filter(|(st, m, _)| st == &s.name && !m.starts_with("alp"))
            .max_by(|x, y| mean_std(&acc(&x.2)).0.total_cmp(&mean_std(&acc(&y.2)).0));
        if let Some((_, bm, br)) = best {
            md.push_str(&format!(
                "2. Final accuracy: alp-seq {} vs the best baseline ({bm}) {}; {}.\n",
                pm(&acc(alp)),
                pm(&acc(br)),
                verdict(alp, br, &accuracy_of, 0.05)
            ));
        }
        for sub in [
            "alp-seq-early",
            "alp-seq-middle",
            "alp-seq-late",
            "alp-seq-logits",
        ] {
            if let Some(r) = get(sub) {
                md.push_str(&format!(
                    "3. All layers vs {sub}: {} vs {}; {}.\n",
                    pm(&acc(alp)),
                    pm(&acc(r)),
                    verdict(alp, r, &accuracy_of, 0.05)
                ));
            }
        }
        if get("alp-seq-early").is_none() {
            md.push_str(
                "3. Layer subsets were not run in this preset (they are in `--preset full`).\n",
            );
        }
        if let Some(r) = get("alp-loss-no-noise") {
            md.push_str(&format!(
                "- The ALP loss without the perturbation: {} vs alp-seq {}; {}.\n",
                pm(&acc(r)),
                pm(&acc(alp)),
                verdict(r, alp, &accuracy_of, 0.05)
            ));
        }
        md.push('\n');
    }
    md
}

/// Writes `compare.json`, `report.md` and `plots/*.svg` under `dir`; `wall_s` 0 (a report
/// read back from finished runs) leaves the wall time out.
pub fn write(dir: &Path, plan: &Plan, rows: &Rows, machine: &str, wall_s: f64) -> Result<()> {
    let j = to_json(plan, rows, machine);
    let p = dir.join("compare.json");
    let text = serde_json::to_string_pretty(&j).map_err(|e| Error::Msg(e.to_string()))?;
    write_atomic(&p, &text)?;
    let plots = dir.join("plots");
    std::fs::create_dir_all(&plots).map_err(|e| Error::io(&plots, e))?;
    let finished: usize = rows.iter().map(|(_, _, r)| r.len()).sum();
    let planned = plan.settings.len() * plan.arms.len() * plan.runs().count();
    let progress = if finished < planned {
        format!(" **{finished} of the plan's {planned} runs have finished**; the rest are marked not run.")
    } else {
        String::new()
    };
    // `--report-only` reads finished runs and passes no wall time of its own.
    let wall = if wall_s > 0.0 {
        format!(" Wall time {:.0} min.", wall_s / 60.0)
    } else {
        String::new()
    };
    let ids = warm_starts(rows.iter().flat_map(|(_, _, r)| r));
    let warm = if ids.len() > 1 {
        format!("The runs come from {} SFT warm starts (a setting names its own where the runs recorded it; the same plan on another CPU trains another): rows are paired within a setting, while accuracy levels across settings of different warm starts also differ by the warm start. Within a setting every run starts from one warm start", ids.len())
    } else {
        "Each run starts from the same SFT warm start (`sft/`)".to_string()
    };
    let mut md = format!(
        "# alp compare: preset `{}`\n\nMachine: {machine}. {} per method and setting.{wall}{progress} {warm} with the same tasks and budget; every run's directory is under `runs/<setting>/<method>/seed<k>/`.\n\nAccuracy is greedy held-out accuracy after RL; avg@k the mean over k samples at T = 1. Tails are compared on the unperturbed ratio π_old/μ (the policy each step starts from over the sampler), the same tokens for every method; ALP's own training ratio is perturbed and wider by construction (last ratio column). A run is `collapsed` when its reward (5-step mean) falls below half its best and stays there, or its loss is not finite.\n\n",
        plan.preset,
        if plan.warm_starts > 1 {
            format!(
                "{} warm starts (blocks: `sft/`, `sft-ws1/`, …; model.init_seed = block) × {} seeds, runs numbered block · {} + seed and paired within a block",
                plan.warm_starts, plan.seeds, plan.seeds
            )
        } else {
            format!("{} seeds", plan.seeds)
        }
    );
    if plan.primary {
        md.push_str(&primary_section(rows));
    }
    if plan.settings.len() > 1 {
        md.push_str(&phase_section(plan, rows, &plots)?);
    }
    for s in &plan.settings {
        md.push_str(&format!(
            "## Setting `{}` (`{}`)\n\n",
            s.name,
            s.sets.join(" ")
        ));
        if !rows.iter().any(|(st, _, r)| *st == s.name && !r.is_empty()) {
            md.push_str("Not run yet.\n\n");
            continue;
        }
        md.push_str(&format!("{}\n\n", mismatch_line(rows, &s.name)));
        md.push_str(&table(rows, &s.name));
        md.push('\n');
        md.push_str(&paired_table(rows, &s.name));
        let seq_curves = rows
            .iter()
            .any(|(st, _, r)| *st == s.name && r.iter().any(|x| !x.seq_ratio_curves.is_empty()));
        let mut kinds = vec![
            (0usize, "heldout"),
            (1, "reward"),
            (2, "ratio_p99_9"),
            (3, "ratio_max"),
        ];
        if seq_curves {
            kinds.extend([(4, "seq_ratio_p99_9"), (5, "seq_ratio_p1")]);
        }
        for (kind, file) in kinds {
            let name = format!("{}_{file}.svg", s.name);
            plot_band(
                &plots.join(&name),
                &format!("{} — {file}", s.name),
                rows,
                &s.name,
                kind,
            )?;
            md.push_str(&format!("\n![{file}](plots/{name})"));
        }
        // The mechanism probe over training, where the runs ran it.
        let mut keys: Vec<String> = rows
            .iter()
            .filter(|(st, _, _)| *st == s.name)
            .flat_map(|(_, _, r)| r.iter().flat_map(|x| x.probe.iter()))
            .flat_map(|p| p.values.keys().cloned())
            .collect();
        keys.sort();
        keys.dedup();
        if !keys.is_empty() {
            md.push_str(
                "\n\nMechanism probe (fixed held-out demonstrations; mean ± sd over seeds):",
            );
        }
        for key in keys {
            let file = key.replace('/', "_");
            let name = format!("{}_{file}.svg", s.name);
            let curves: Vec<crate::report::Curve> = rows
                .iter()
                .filter(|(st, _, _)| *st == s.name)
                .map(|(_, m, r)| (m.clone(), probe_band(r, &key)))
                .collect();
            crate::report::plot_curves(
                &plots.join(&name),
                &format!("{} — {key}", s.name),
                &curves,
            )?;
            md.push_str(&format!("\n![{key}](plots/{name})"));
        }
        md.push_str("\n\n");
        sigma_plot(&plots.join(format!("{}_sigma.svg", s.name)), rows, &s.name)?;
        md.push_str(&format!(
            "σ per layer of alp-seq at the end (mean over seeds): ![sigma](plots/{}_sigma.svg)\n\n",
            s.name
        ));
    }
    md.push_str(&questions(plan, rows));
    write_atomic(&dir.join("report.md"), &md)
}

/// Writes through a synced temporary file and a rename: `compare.json` is the record of
/// finished runs that later sweeps resume from, and two processes of one sweep rewrite it
/// (the temporary name is the process's own).
fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    alp_core::fsio::write_synced(&tmp, text.as_bytes())?;
    alp_core::fsio::rename(&tmp, path)
}

/// The settings grouped into axes by the name before their first `-` (`engine-bf16`,
/// `engine-int4` → `engine`), in plan order.
fn axes(plan: &Plan) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for s in &plan.settings {
        let axis = s.name.split('-').next().unwrap_or(&s.name).to_string();
        match out.iter_mut().find(|(a, _)| *a == axis) {
            Some((_, v)) => v.push(s.name.clone()),
            None => out.push((axis, vec![s.name.clone()])),
        }
    }
    out
}

/// The methods of the plan's rows, in order, once each.
fn methods(rows: &Rows) -> Vec<String> {
    let mut m: Vec<String> = Vec::new();
    for (_, name, _) in rows {
        if !m.contains(name) {
            m.push(name.clone());
        }
    }
    m
}

/// A value with its band (low, high) summarising a row's runs.
type Summary = dyn Fn(&[RunResult]) -> (f64, f64, f64);

/// The phase diagram at a glance: per method and setting the paired difference to `alp-seq`
/// with its t interval, the measured mismatch of each setting, and per axis plots of held-out
/// accuracy, collapse rate and ratio tails against the settings.
fn phase_section(plan: &Plan, rows: &Rows, plots: &Path) -> Result<String> {
    let settings: Vec<&str> = plan.settings.iter().map(|s| s.name.as_str()).collect();
    let mut md = format!("## The phase diagram\n\nHeld-out accuracy minus `{PAIRED_REFERENCE}` in points, paired by seed, with the t 95% interval; **bold** where the interval excludes 0 (the row is told apart from `{PAIRED_REFERENCE}`), otherwise the difference these seeds could detect follows as ±d.\n\n| method | {} |\n| --- |{}\n", settings.join(" | "), " --- |".repeat(settings.len()));
    let cell = |setting: &str, method: &str| -> String {
        let Some(r) = find(rows, setting, method) else {
            return "not run".into();
        };
        let own = || {
            let (m, lo, hi) = accuracy_interval(r);
            format!("{m:.1}% [{lo:.1}, {hi:.1}] (n {})", r.len())
        };
        let Some(reference) = find(rows, setting, PAIRED_REFERENCE) else {
            return format!("{} (no {PAIRED_REFERENCE} yet)", own());
        };
        if method == PAIRED_REFERENCE {
            return own();
        }
        match paired_accuracy(r, reference) {
            Some(i) if i.excludes_zero() => {
                format!("**{:+.1} [{:+.1}, {:+.1}]**", i.mean, i.lo, i.hi)
            }
            Some(i) => format!(
                "{:+.1} [{:+.1}, {:+.1}] ±{:.1}",
                i.mean, i.lo, i.hi, i.detectable
            ),
            None => "< 2 pairs".into(),
        }
    };
    for m in methods(rows) {
        let cells: Vec<String> = settings.iter().map(|s| cell(s, &m)).collect();
        md.push_str(&format!("| {m} | {} |\n", cells.join(" | ")));
    }
    let early = |setting: &str, i: usize| {
        let v: Vec<f64> = rows
            .iter()
            .filter(|(s, _, _)| s == setting)
            .flat_map(|(_, _, r)| r.iter().map(|x| x.early_mismatch[i]))
            .collect();
        mean_std(&v).0
    };
    let line = |label: &str, i: usize| {
        let cells: Vec<String> = settings
            .iter()
            .map(|s| match early(s, i) {
                v if v.is_finite() => format!("{v:.1e}"),
                _ => "not run".into(),
            })
            .collect();
        format!("| *{label}* | {} |\n", cells.join(" | "))
    };
    md.push_str(&line("engine k3 KL(μ‖π_sampler), first 3 steps", 0));
    md.push_str(&line("staleness k3 KL(π_sampler‖π_old), first 3 steps", 1));
    md.push('\n');
    for (axis, names) in axes(plan) {
        if names.len() < 2 {
            continue;
        }
        let per_method = |f: &Summary| -> Vec<crate::report::BandCurve> {
            methods(rows)
                .into_iter()
                .map(|m| {
                    let pts = names
                        .iter()
                        .enumerate()
                        .filter_map(|(x, s)| find(rows, s, &m).map(|r| (x as f64, f(r))))
                        .map(|(x, (y, lo, hi))| (x, y, lo, hi))
                        .collect();
                    (m, pts)
                })
                .collect()
        };
        let collapse = |r: &[RunResult]| {
            let k = r.iter().filter(|x| x.collapsed_at.is_some()).count();
            let (lo, hi) = crate::stats::clopper_pearson(k, r.len());
            (
                100.0 * k as f64 / r.len().max(1) as f64,
                100.0 * lo,
                100.0 * hi,
            )
        };
        let tails = |r: &[RunResult]| {
            let (m, s) = mean_std(&r.iter().map(|x| x.ratio_p99_9_max).collect::<Vec<_>>());
            (m, m - s, m + s)
        };
        for (file, title, f) in [
            (
                "heldout",
                "held-out accuracy % (mean, t 95% interval)",
                &accuracy_interval as &Summary,
            ),
            (
                "collapse",
                "collapse rate % (exact 95% interval)",
                &collapse,
            ),
            (
                "ratio_p99_9",
                "unperturbed ratio p99.9, max over the run (mean ± std)",
                &tails,
            ),
        ] {
            let name = format!("phase_{axis}_{file}.svg");
            crate::report::plot_bands(
                &plots.join(&name),
                &format!("{axis} axis — {title}"),
                "setting (mismatch grows to the right)",
                Some(&names),
                &per_method(f),
            )?;
            md.push_str(&format!("![{axis} {file}](plots/{name})\n"));
        }
        md.push('\n');
    }
    Ok(md)
}

/// (step, mean, std) points of a curve over seeds.
type Band = Vec<(f64, f64, f64)>;

/// Per method: mean over seeds (line) and mean ± std (band) of a curve: 0 held-out accuracy,
/// 1 reward, 2 unperturbed p99.9, 3 unperturbed max; 4 and 5 the sequence-level unperturbed
/// ratio's p99.9 and p1 (the spread over training).
fn band(r: &[RunResult], kind: usize) -> Band {
    let series: Vec<Vec<(f64, f64)>> = r
        .iter()
        .map(|x| match kind {
            0 => x.heldout.clone(),
            4 | 5 => x
                .curves
                .iter()
                .zip(&x.seq_ratio_curves)
                .map(|(c, q)| (c[0], if kind == 4 { q[4] } else { q[0] }))
                .collect(),
            k => x.curves.iter().map(|c| (c[0], c[k])).collect(),
        })
        .collect();
    seed_band(&series)
}

/// Mean and std over seeds, point by point, of per-seed series `(x, value)` (as long as the
/// shortest; points whose mean is not finite dropped).
fn seed_band(series: &[Vec<(f64, f64)>]) -> Band {
    let n = series.iter().map(|s| s.len()).min().unwrap_or(0);
    (0..n)
        .map(|i| {
            let v: Vec<f64> = series.iter().map(|s| s[i].1).collect();
            let (m, sd) = mean_std(&v);
            (series[0][i].0, m, sd)
        })
        .filter(|p| p.1.is_finite())
        .collect()
}

/// Per method: mean over seeds and mean ± std of one probe value (`probe/…`) over training.
fn probe_band(r: &[RunResult], key: &str) -> Band {
    let series: Vec<Vec<(f64, f64)>> = r
        .iter()
        .map(|x| {
            x.probe
                .iter()
                .filter_map(|p| p.values.get(key).map(|v| (p.step, *v)))
                .collect()
        })
        .collect();
    seed_band(&series)
}

fn plot_band(path: &Path, title: &str, rows: &Rows, setting: &str, kind: usize) -> Result<()> {
    let curves: Vec<crate::report::Curve> = rows
        .iter()
        .filter(|(s, _, _)| s == setting)
        .map(|(_, m, r)| (m.clone(), band(r, kind)))
        .collect();
    crate::report::plot_curves(path, title, &curves)
}

fn sigma_plot(path: &Path, rows: &Rows, setting: &str) -> Result<()> {
    let Some(r) = find(rows, setting, "alp-seq") else {
        return Ok(());
    };
    let n = r.iter().map(|x| x.sigma.len()).min().unwrap_or(0);
    let v: Vec<(f64, f64)> = (0..n)
        .map(|l| {
            (
                l as f64,
                mean_std(&r.iter().map(|x| x.sigma[l]).collect::<Vec<_>>()).0,
            )
        })
        .collect();
    let err = |e: &dyn std::fmt::Display| Error::Msg(format!("plot {}: {e}", path.display()));
    let root = SVGBackend::new(path, (520, 320)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let ymax = v.iter().map(|p| p.1).fold(1e-6, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption("σ per layer (alp-seq)", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5..(n as f64 - 0.5).max(0.5), 0.0..ymax)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("layer")
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .draw_series(
            v.iter().map(|&(x, y)| {
                Rectangle::new([(x - 0.3, 0.0), (x + 0.3, y)], BLUE.mix(0.6).filled())
            }),
        )
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}
