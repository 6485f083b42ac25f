//! `alp train` as a schedule over a [`Session`]: SFT warm start → evaluation → RL steps with
//! evaluations and checkpoints at their cadence → final checkpoint, evaluation and report.
//! Everything it reports goes through [`MetricsSink`]s.

use crate::console::ConsoleSink;
use crate::report;
use alp_core::{Error, Result};
use alp_trainer::config::TrainConfig;
use alp_trainer::metrics::{JsonlSink, MetricsSink, Sinks};
use alp_trainer::EvalResult;
use alp_trainer::{default_run_dir, Session};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Where the run is and what it did.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// The run directory.
    pub dir: PathBuf,
    /// Evaluation before RL.
    pub before: Option<EvalResult>,
    /// Evaluation after RL.
    pub after: Option<EvalResult>,
    /// True when the run was interrupted (Ctrl-C) before the last step.
    pub interrupted: bool,
}

/// Options of one run besides the config.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Run directory (created); default `runs/run-<time>-<pid>-<n>`.
    pub out: Option<PathBuf>,
    /// Resume from this run directory or checkpoint.
    pub resume: Option<PathBuf>,
    /// Start a fresh run (this config) from the weights of this run or checkpoint, skipping
    /// SFT (e.g. a shared warm start).
    pub warm_start: Option<PathBuf>,
    /// Stop after this many RL steps in this invocation (for tests and staged runs).
    pub max_steps_this_run: Option<u64>,
    /// Skip evaluations (tests).
    pub skip_eval: bool,
    /// Set (by a Ctrl-C handler the caller installs) to stop after the current step.
    pub interrupt: Option<Arc<AtomicBool>>,
    /// `key=value` overrides applied to a resumed run's saved config (e.g. more `rl.steps`).
    pub resume_overrides: Vec<String>,
    /// Print progress to the terminal (a bar when stdout is one).
    pub console: bool,
    /// Replace what a non-empty `out` directory holds (otherwise refused).
    pub overwrite: bool,
}

impl RunOptions {
    fn interrupted(&self) -> bool {
        self.interrupt
            .as_ref()
            .is_some_and(|f| f.load(Ordering::SeqCst))
    }
}

/// Trains as the config says, reporting to `metrics.jsonl` and (with `opts.console`) the
/// terminal; see the crate docs.
pub fn train(cfg: TrainConfig, opts: RunOptions) -> Result<RunOutcome> {
    train_with(cfg, opts, &mut Sinks::default())
}

/// [`train`] with an extra sink that receives every record too (e.g. a
/// [`alp_trainer::metrics::MemorySink`]).
pub fn train_with(
    cfg: TrainConfig,
    opts: RunOptions,
    extra: &mut dyn MetricsSink,
) -> Result<RunOutcome> {
    let (mut s, restarted) = open_session(cfg, &opts)?;
    let first = s.step_index();
    let total = s.config().rl.steps as u64;
    let end = opts
        .max_steps_this_run
        .map_or(total, |n| (first + n).min(total));
    let metrics_path = s.dir().join("metrics.jsonl");
    let moved = match (&restarted, s.is_resumed()) {
        (Some(_), _) => alp_trainer::metrics::trim_for_resume(&metrics_path, None)?,
        (None, true) => alp_trainer::metrics::trim_for_resume(&metrics_path, Some(first))?,
        (None, false) => 0,
    };
    let mut sinks = Sinks(vec![Box::new(JsonlSink::open(&metrics_path)?)]);
    if opts.console {
        let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
        sinks.0.push(Box::new(ConsoleSink::new(first, total, tty)));
    }
    let mut out = Tee(&mut sinks, extra);
    for line in s.take_messages() {
        out.message(&line);
    }
    if let Some(why) = restarted {
        out.message(&format!(
            "{why}\nstarting the run over from its config.toml"
        ));
    }
    if moved > 0 {
        out.message(&format!(
            "moved {moved} records that this run writes again from metrics.jsonl to metrics.dropped.jsonl"
        ));
    }
    banner(&s, &mut out)?;
    let did_sft = s.needs_sft();
    if did_sft {
        warm_start(&mut s, &opts, &mut out)?;
        if s.needs_sft() {
            return stopped_in_sft(&mut s, &mut out);
        }
    }
    let mut before = None;
    if s.eval_before().is_none() && !opts.skip_eval {
        let e = s.evaluate(s.config().eval.pass_k, "before RL")?;
        out.eval(s.step_index(), "before RL", &e)?;
        s.set_eval_before(e.clone());
        before = Some(e);
    }
    if !s.is_resumed() || did_sft {
        save(&mut s, &mut out)?;
    }
    let interrupted = match rl_steps(&mut s, &opts, end, &mut out) {
        Ok(i) => i,
        Err(e) => {
            // Keep what ran: a checkpoint of the last state, then the error.
            s.stop_worker();
            if s.last_save_attempt() == Some(s.step_index()) {
                // This state's checkpoint was written, or failed (then `e` says why).
                return Err(e);
            }
            return Err(match save(&mut s, &mut out) {
                Ok(_) => e,
                Err(saved) => {
                    Error::Msg(format!("{e}; the last state was not checkpointed: {saved}"))
                }
            });
        }
    };
    // Save while the worker runs: the checkpoint keeps the batches it sampled ahead.
    save(&mut s, &mut out)?;
    s.stop_worker();
    let finished = s.step_index() >= total;
    let after = finish(
        &mut s,
        &opts,
        finished || interrupted,
        interrupted,
        &mut out,
    )?;
    out.message(&format!("run directory: {}", s.dir().display()));
    Ok(RunOutcome {
        dir: s.dir().to_path_buf(),
        before,
        after,
        interrupted,
    })
}

/// The run's session: resumed, started from a warm start, or fresh in a directory of its own.
/// A resumed run directory that has its `config.toml` but no complete checkpoint yet (it
/// stopped during its first save) starts over; the reason comes back with the session.
fn open_session(cfg: TrainConfig, opts: &RunOptions) -> Result<(Session, Option<String>)> {
    let out_dir = || -> Result<PathBuf> {
        let d = opts.out.clone().unwrap_or_else(default_run_dir);
        alp_trainer::claim_dir(&d, opts.overwrite)?;
        Ok(d)
    };
    match (&opts.resume, &opts.warm_start) {
        // A run directory (not a checkpoint) with its config and no checkpoint directory yet:
        // decided from the names alone, without loading a checkpoint only to find none.
        (Some(r), _)
            if opts.out.is_none()
                && r.join("config.toml").is_file()
                && !r.join("manifest.json").exists()
                && !alp_trainer::checkpoint::has_any(r) =>
        {
            Ok((
                Session::restart(r, &opts.resume_overrides)?,
                Some(format!(
                    "{} has no checkpoint yet (the run stopped before its first one was complete)",
                    r.display()
                )),
            ))
        }
        (Some(r), _) => Ok((
            Session::resume(r, &opts.resume_overrides, opts.out.clone())?,
            None,
        )),
        (None, Some(w)) => Ok((Session::start_from(w, cfg, out_dir()?)?, None)),
        (None, None) => Ok((Session::create(cfg, out_dir()?)?, None)),
    }
}

/// Interrupted during SFT: the state is saved (resumable as SFT) and the summary says so.
fn stopped_in_sft(s: &mut Session, out: &mut dyn MetricsSink) -> Result<RunOutcome> {
    save(s, out)?;
    report::write_summary(
        s.dir(),
        s.config(),
        None,
        None,
        s.wall_seconds(),
        0,
        true,
        s.phase(),
    )?;
    out.message(&format!(
        "interrupted during SFT after {} of {} steps; `alp train --resume {}` continues the SFT",
        s.sft_steps_done(),
        s.config().sft.steps,
        s.dir().display()
    ));
    Ok(RunOutcome {
        dir: s.dir().to_path_buf(),
        before: None,
        after: None,
        interrupted: true,
    })
}

/// Two sinks as one.
struct Tee<'a>(&'a mut dyn MetricsSink, &'a mut dyn MetricsSink);

impl MetricsSink for Tee<'_> {
    fn step(&mut self, m: &alp_trainer::metrics::StepMetrics, wall_s: f64) -> Result<()> {
        self.0.step(m, wall_s)?;
        self.1.step(m, wall_s)
    }
    fn eval(&mut self, step: u64, tag: &str, e: &EvalResult) -> Result<()> {
        self.0.eval(step, tag, e)?;
        self.1.eval(step, tag, e)
    }
    fn message(&mut self, line: &str) {
        self.0.message(line);
        self.1.message(line);
    }
}

/// The run directory, the model, the method, the off-policy budget and every setting.
fn banner(s: &Session, out: &mut dyn MetricsSink) -> Result<()> {
    let cfg = s.config();
    let mc = s.model_config();
    out.message(&format!("run directory: {}", s.dir().display()));
    if s.is_resumed() {
        out.message(&format!("resumed at RL step {}", s.step_index()));
    }
    out.message(&format!(
        "model: {} ({} layers, hidden {}, vocab {}), method {}, {} RL steps × {} prompts × {} samples",
        if cfg.model.is_embedded() { format!("embedded default `{}`", cfg.model.preset) } else { cfg.model.base.clone() },
        mc.num_hidden_layers,
        mc.hidden_size,
        mc.vocab_size,
        cfg.rl.objective.name(),
        cfg.rl.steps,
        cfg.rl.prompts_per_step,
        cfg.rl.group_size
    ));
    out.message(&cfg.off_policy_budget());
    out.message(&format!(
        "effective settings (also in {}):",
        s.dir().join("config.toml").display()
    ));
    for l in cfg.to_toml()?.lines().filter(|l| !l.trim().is_empty()) {
        out.message(&format!("  {l}"));
    }
    Ok(())
}

/// The SFT warm start with a progress line every 50 steps.
fn warm_start(s: &mut Session, opts: &RunOptions, out: &mut dyn MetricsSink) -> Result<()> {
    let sft = s.config().sft.clone();
    out.message(&format!(
        "SFT warm start: {} steps × {} demonstrations ({}% of hard ones call the tool)",
        sft.steps,
        sft.batch_size,
        (100.0 * sft.tool_fraction).round()
    ));
    let t0 = Instant::now();
    let stop = opts.interrupt.clone();
    let losses = s.sft(stop.as_deref(), &mut |i, loss| {
        if i % 50 == 0 || i + 1 == sft.steps {
            out.message(&format!(
                "sft step {}/{} loss {loss:.4} ({:.0} s)",
                i + 1,
                sft.steps,
                t0.elapsed().as_secs_f64()
            ));
        }
    })?;
    if s.needs_sft() {
        out.message(&format!(
            "SFT interrupted after {} steps",
            s.sft_steps_done()
        ));
    }
    out.message(&format!(
        "SFT done in {:.0} s, final loss {:.4}",
        t0.elapsed().as_secs_f64(),
        losses.last().copied().unwrap_or(f64::NAN)
    ));
    Ok(())
}

/// RL steps until `end`, with evaluations and checkpoints at their cadence; true when
/// interrupted.
fn rl_steps(
    s: &mut Session,
    opts: &RunOptions,
    end: u64,
    out: &mut dyn MetricsSink,
) -> Result<bool> {
    let cfg = s.config().clone();
    while s.step_index() < end {
        if opts.interrupted() {
            out.message("interrupted: writing a final checkpoint and the summary");
            return Ok(true);
        }
        let m = s.step()?;
        out.step(&m, s.wall_seconds())?;
        let step = s.step_index() as usize;
        if cfg.eval.every > 0
            && step.is_multiple_of(cfg.eval.every)
            && step < cfg.rl.steps
            && !opts.skip_eval
        {
            let tag = format!("step {step}");
            let e = s.evaluate(0, &tag)?;
            out.eval(s.step_index(), &tag, &e)?;
        }
        if cfg.checkpoint.every > 0 && step.is_multiple_of(cfg.checkpoint.every) {
            save(s, out)?;
        }
    }
    Ok(false)
}

/// The evaluation after RL, `summary.json`, `report.md` and the plots (when the run is over).
fn finish(
    s: &mut Session,
    opts: &RunOptions,
    over: bool,
    interrupted: bool,
    out: &mut dyn MetricsSink,
) -> Result<Option<EvalResult>> {
    if !over {
        return Ok(None);
    }
    let after = if opts.skip_eval {
        None
    } else {
        let tag = alp_trainer::metrics::TAG_AFTER_RL;
        let e = s.evaluate(s.config().eval.pass_k, tag)?;
        out.eval(s.step_index(), tag, &e)?;
        Some(e)
    };
    let wall = s.wall_seconds();
    report::write_summary(
        s.dir(),
        s.config(),
        s.eval_before(),
        after.as_ref(),
        wall,
        s.step_index(),
        interrupted,
        s.phase(),
    )?;
    report::plot_run(s.dir())?;
    out.message(&format!(
        "wrote {}/summary.json, report.md, metrics.jsonl and plots/ ({wall:.0} s)",
        s.dir().display()
    ));
    Ok(after)
}

/// Saves a checkpoint and hands the session's lines for people (a disk short of space) to
/// `out`, whether the save worked or not.
fn save(s: &mut Session, out: &mut dyn MetricsSink) -> Result<PathBuf> {
    let saved = s.save_checkpoint();
    for line in s.take_messages() {
        out.message(&line);
    }
    saved
}
