//! The result of a held-out evaluation and how it is computed from graded episodes: greedy
//! accuracy (overall and per task kind, the kinds the tasks name), the tool-call rate on the
//! tasks worth a tool call, and at temperature 1 the mean accuracy over k samples (the paper's
//! avg@k) and pass@k. Correctness is the environment's [`alp_core::Outcome::correct`].

use alp_core::{Task, TrajectoryGroup};
use std::collections::BTreeMap;

/// Held-out evaluation of a model.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct EvalResult {
    /// Greedy accuracy over the whole held-out mix.
    pub accuracy: f64,
    /// Greedy accuracy per task kind.
    pub accuracy_by_kind: BTreeMap<String, f64>,
    /// Share of the tool-worthy tasks on which the greedy answer called a tool (all tasks
    /// of a user's held-out source; the multiplications of the built-in one).
    pub tool_call_rate: f64,
    /// The same tool-call rate at temperature 1.
    pub tool_call_rate_sampled: f64,
    /// Accuracy at temperature 1, the mean over the k samples of every task (avg@k).
    pub sampled_accuracy: f64,
    /// pass@k at temperature 1.
    pub pass_at_k: f64,
    /// k.
    pub k: usize,
    /// Tasks evaluated.
    pub tasks: usize,
}

impl EvalResult {
    /// The evaluation of `tasks` from their greedy episodes (one trajectory per task) and,
    /// where given, `k` episodes per task at temperature 1; `tool_worthy` says which task
    /// kinds the tool-call rates count.
    pub fn from_groups(
        tasks: &[Task],
        greedy: &[TrajectoryGroup],
        sampled: Option<(&[TrajectoryGroup], usize)>,
        tool_worthy: &dyn Fn(&str) -> bool,
    ) -> EvalResult {
        let mut res = greedy_stats(tasks, greedy, tool_worthy);
        if let Some((groups, k)) = sampled {
            sampled_stats(&mut res, tasks, groups, k, tool_worthy);
        }
        res
    }
}

fn rate(num: f64, den: f64) -> f64 {
    if den > 0.0 {
        num / den
    } else {
        0.0
    }
}

/// Greedy accuracy (overall, per kind) and the tool-worthy tasks' tool-call rate of one
/// sample per task.
fn greedy_stats(
    tasks: &[Task],
    groups: &[TrajectoryGroup],
    tool_worthy: &dyn Fn(&str) -> bool,
) -> EvalResult {
    let mut by_kind: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    let (mut correct, mut hard, mut hard_calls) = (0.0, 0.0, 0.0);
    for (t, g) in tasks.iter().zip(groups) {
        let o = &g.trajectories[0].outcome;
        let e = by_kind.entry(t.kind.clone()).or_default();
        e.0 += o.correct as u8 as f64;
        e.1 += 1.0;
        correct += o.correct as u8 as f64;
        if tool_worthy(&t.kind) {
            hard += 1.0;
            hard_calls += (o.tool_calls > 0) as u8 as f64;
        }
    }
    EvalResult {
        accuracy: rate(correct, tasks.len() as f64),
        accuracy_by_kind: by_kind.into_iter().map(|(k, (c, n))| (k, c / n)).collect(),
        tool_call_rate: rate(hard_calls, hard),
        tasks: tasks.len(),
        ..Default::default()
    }
}

/// avg@k, pass@k and the sampled tool-worthy tasks' tool-call rate of `k` samples per task.
fn sampled_stats(
    res: &mut EvalResult,
    tasks: &[Task],
    groups: &[TrajectoryGroup],
    k: usize,
    tool_worthy: &dyn Fn(&str) -> bool,
) {
    let (mut acc, mut pass, mut calls, mut hard_n) = (0.0, 0.0, 0.0, 0.0);
    for (t, g) in tasks.iter().zip(groups) {
        let oks = g
            .trajectories
            .iter()
            .filter(|tr| tr.outcome.correct)
            .count();
        acc += oks as f64 / k as f64;
        pass += (oks > 0) as u8 as f64;
        if tool_worthy(&t.kind) {
            for tr in &g.trajectories {
                hard_n += 1.0;
                calls += (tr.outcome.tool_calls > 0) as u8 as f64;
            }
        }
    }
    res.k = k;
    res.sampled_accuracy = rate(acc, tasks.len() as f64);
    res.pass_at_k = rate(pass, tasks.len() as f64);
    res.tool_call_rate_sampled = rate(calls, hard_n);
}
