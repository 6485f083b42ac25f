//! Progress for people on the terminal: the sink `alp train` and `alp compare` print through.

use alp_core::Result;
use alp_trainer::metrics::{
    loss, MetricsSink, StepMetrics, ACCURACY, REWARD_MEAN, SIGMA_LAYER, SKIPPED_UPDATES,
    TIME_ROLLOUT, TIME_TRAIN, TOOL_CALLS,
};
use alp_trainer::EvalResult;
use std::io::Write;

/// Progress for people: a progress bar on a terminal, else one line per step; evaluations and
/// messages as lines.
pub struct ConsoleSink {
    bar: Option<indicatif::ProgressBar>,
    total_steps: u64,
}

impl ConsoleSink {
    /// A console sink for a run of `total_steps` RL steps, starting at `first`; with
    /// `progress_bar` (a terminal), steps update a bar instead of printing lines.
    pub fn new(first: u64, total_steps: u64, progress_bar: bool) -> Self {
        let bar = progress_bar.then(|| {
            let b = indicatif::ProgressBar::new(total_steps.saturating_sub(first));
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "RL {bar:30} {pos}/{len} [{elapsed} < {eta}] {msg}",
            ) {
                b.set_style(style);
            }
            b
        });
        ConsoleSink { bar, total_steps }
    }

    fn line(&self, line: &str) {
        match self.bar.as_ref() {
            Some(b) => b.println(line),
            None => {
                println!("{line}");
                let _ = std::io::stdout().flush();
            }
        }
    }
}

impl Drop for ConsoleSink {
    fn drop(&mut self) {
        if let Some(b) = self.bar.as_ref() {
            b.finish_and_clear();
        }
    }
}

impl MetricsSink for ConsoleSink {
    fn step(&mut self, m: &StepMetrics, _wall_s: f64) -> Result<()> {
        let g = |k: &str| m.get(k).unwrap_or(f64::NAN);
        let sigmas: Vec<f64> = m
            .values
            .iter()
            .filter(|(k, _)| k.starts_with(SIGMA_LAYER))
            .map(|(_, v)| *v)
            .collect();
        let line = format!(
            "step {}/{} reward {:.3} acc {:.2} tool/ep {:.2} ratio max {:.3} σ̄ {:.4} ({:.1}s rollout, {:.1}s train)",
            m.step,
            self.total_steps,
            g(REWARD_MEAN),
            g(ACCURACY),
            g(TOOL_CALLS),
            g(loss::RATIO_TOKEN_MAX),
            sigmas.iter().sum::<f64>() / sigmas.len().max(1) as f64,
            g(TIME_ROLLOUT),
            g(TIME_TRAIN),
        );
        let skipped = g(SKIPPED_UPDATES);
        if skipped > 0.0 {
            self.line(&format!(
                "RL step {}: {skipped} update(s) skipped for a non-finite loss or gradient",
                m.step
            ));
        }
        match self.bar.as_ref() {
            Some(b) => {
                b.set_message(line);
                b.inc(1);
            }
            None => self.line(&line),
        }
        Ok(())
    }
    fn eval(&mut self, _step: u64, tag: &str, e: &EvalResult) -> Result<()> {
        self.line(&eval_line(tag, e));
        Ok(())
    }
    /// Warnings go to stderr, where a script that keeps only stdout still sees them.
    fn message(&mut self, line: &str) {
        if line.starts_with("warning:") {
            match self.bar.as_ref() {
                Some(b) => b.suspend(|| eprintln!("{line}")),
                None => eprintln!("{line}"),
            }
        } else {
            self.line(line);
        }
    }
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
