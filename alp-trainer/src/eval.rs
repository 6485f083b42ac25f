//! Held-out evaluation: greedy accuracy (overall and per task kind), the hard-task tool-call
//! rate, and at temperature 1 the mean accuracy over k samples (the paper's avg@k) and pass@k.

use crate::trainer::Trainer;
use alp_core::{Result, Task, TaskSource, TrajectoryGroup};
use alp_envs::math::Split;
use alp_rollout::{run_episodes, Engine, Episodes};
use std::collections::BTreeMap;

/// Held-out evaluation of a model.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct EvalResult {
    /// Greedy accuracy over the whole held-out mix.
    pub accuracy: f64,
    /// Greedy accuracy per task kind.
    pub accuracy_by_kind: BTreeMap<String, f64>,
    /// Share of hard (tool-worthy) tasks on which the greedy answer called the tool.
    pub tool_call_rate: f64,
    /// Tool-call rate on hard tasks at temperature 1.
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

/// The task kind whose problems are worth a tool call (the embedded default's multiplications).
pub fn is_hard(kind: &str) -> bool {
    kind == "multiply"
}

/// One line for people: `eval <tag>: accuracy …`.
pub fn eval_line(tag: &str, e: &EvalResult) -> String {
    let kinds: Vec<String> = e
        .accuracy_by_kind
        .iter()
        .map(|(k, v)| format!("{k} {:.1}%", 100.0 * v))
        .collect();
    let mut s = format!(
        "eval {tag}: accuracy {:.1}% ({}), hard-task tool-call rate {:.0}% (greedy)",
        100.0 * e.accuracy,
        kinds.join(", "),
        100.0 * e.tool_call_rate,
    );
    if e.k > 0 {
        s.push_str(&format!(
            "; at T=1: tool calls {:.0}%, avg@{k} accuracy {:.1}%, pass@{k} {:.1}%",
            100.0 * e.tool_call_rate_sampled,
            100.0 * e.sampled_accuracy,
            100.0 * e.pass_at_k,
            k = e.k,
        ));
    }
    s
}

/// Evaluates `trainer` on `n` held-out tasks of its task stream.
pub fn evaluate(trainer: &Trainer, n: usize, k: usize) -> Result<EvalResult> {
    let mut src = trainer.task_stream(Split::Heldout, trainer.cfg.seed ^ 0xE7A1);
    let tasks: Vec<Task> = (0..n).filter_map(|_| src.next_task()).collect();
    evaluate_tasks(trainer, &tasks, trainer.cfg.rl.env, k)
}

/// Evaluates on given tasks in an environment of `kind`: greedy, then with `k > 0` k samples
/// per task at temperature 1.
pub fn evaluate_tasks(
    trainer: &Trainer,
    tasks: &[Task],
    kind: crate::config::EnvKind,
    k: usize,
) -> Result<EvalResult> {
    let engine = Engine::from_weights(
        &trainer.weights()?,
        trainer.cfg.model.dtype.candle(),
        &trainer.device,
        trainer.cfg.rl.rollout.engine.clone(),
    )?
    .with_tokenizer(trainer.tokenizer.clone())
    .with_version(trainer.version);
    let env = trainer.make_env_kind(kind);
    let tools = if kind == crate::config::EnvKind::Tool {
        trainer.tools_spec()
    } else {
        None
    };
    let run = |n: usize, temperature: f32, seed: u64| {
        let config = trainer.episode_config(temperature, seed);
        let episodes = Episodes {
            tasks,
            make_env: &env,
            group_size: n,
            config: &config,
            tools: tools.as_ref(),
        };
        run_episodes(&engine, &trainer.tokenizer, &episodes)
    };
    let mut res = greedy_stats(tasks, &run(1, 0.0, 0)?);
    if k > 0 {
        sampled_stats(&mut res, tasks, &run(k, 1.0, 0xA11CE ^ trainer.step)?, k);
    }
    Ok(res)
}

fn rate(num: f64, den: f64) -> f64 {
    if den > 0.0 {
        num / den
    } else {
        0.0
    }
}

/// Greedy accuracy (overall, per kind) and hard-task tool-call rate of one sample per task.
fn greedy_stats(tasks: &[Task], groups: &[TrajectoryGroup]) -> EvalResult {
    let mut by_kind: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    let (mut correct, mut hard, mut hard_calls) = (0.0, 0.0, 0.0);
    for (t, g) in tasks.iter().zip(groups) {
        let o = &g.trajectories[0].outcome;
        let e = by_kind.entry(t.kind.clone()).or_default();
        e.0 += o.correct as u8 as f64;
        e.1 += 1.0;
        correct += o.correct as u8 as f64;
        if is_hard(&t.kind) {
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

/// avg@k, pass@k and the sampled hard-task tool-call rate of `k` samples per task.
fn sampled_stats(res: &mut EvalResult, tasks: &[Task], groups: &[TrajectoryGroup], k: usize) {
    let (mut acc, mut pass, mut calls, mut hard_n) = (0.0, 0.0, 0.0, 0.0);
    for (t, g) in tasks.iter().zip(groups) {
        let oks = g
            .trajectories
            .iter()
            .filter(|tr| tr.outcome.correct)
            .count();
        acc += oks as f64 / k as f64;
        pass += (oks > 0) as u8 as f64;
        if is_hard(&t.kind) {
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
