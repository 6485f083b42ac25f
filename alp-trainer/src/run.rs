//! `alp train` end to end: SFT warm start, evaluation, RL with an async rollout worker,
//! metrics, checkpoints, resume, and the final report.

use crate::checkpoint::{self, Manifest};
use crate::config::TrainConfig;
use crate::default_task;
use crate::report;
use crate::trainer::{EvalResult, Metrics, Trainer};
use alp_core::{Error, Result, Task, TaskSource};
use alp_envs::math::Split;
use alp_model::{parse_dtype, Tokenizer};
use alp_rollout::{run_episodes, Engine, EngineConfig, RolloutWorker};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
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
    /// Run directory (created); default `runs/<timestamp>`.
    pub out: Option<PathBuf>,
    /// Resume from this run directory or checkpoint.
    pub resume: Option<PathBuf>,
    /// Stop after this many RL steps in this invocation (for tests and staged runs).
    pub max_steps_this_run: Option<u64>,
    /// Skip evaluations (tests).
    pub skip_eval: bool,
    /// Inject a NaN into the loss at this RL step (tests of the guard).
    pub inject_nan_at: Option<u64>,
    /// Set when Ctrl-C was pressed.
    pub interrupt: Option<Arc<AtomicBool>>,
    /// `key=value` overrides applied to a resumed run's saved config (e.g. more `rl.steps`).
    pub resume_overrides: Vec<String>,
}

fn log_line(line: &str) {
    println!("{line}");
    let _ = std::io::stdout().flush();
}

/// Runs the SFT warm start of `t` (cosine schedule); prints progress. Stops early (keeping
/// what it learned) when `stop` is set.
pub fn run_sft(t: &mut Trainer, progress: bool, stop: Option<&AtomicBool>) -> Result<Vec<f64>> {
    let sft = t.cfg.sft.clone();
    if sft.steps == 0 {
        return Ok(vec![]);
    }
    let start = Instant::now();
    let data = default_task::demonstrations(
        &t.tokenizer,
        &t.cfg.tasks,
        sft.tool_fraction,
        t.cfg.seed,
        sft.steps * sft.batch_size,
    )?;
    let bar = progress.then(|| {
        let b = indicatif::ProgressBar::new(sft.steps as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "SFT {bar:30} {pos}/{len} [{elapsed} < {eta}] {msg}",
            )
            .expect("template"),
        );
        b
    });
    let mut losses = Vec::with_capacity(sft.steps);
    for s in 0..sft.steps {
        if stop.is_some_and(|f| f.load(Ordering::SeqCst)) {
            log_line(&format!("SFT interrupted after {s} steps"));
            break;
        }
        let lr = if s < sft.warmup {
            sft.lr * (s + 1) as f64 / sft.warmup as f64
        } else {
            let p = (s - sft.warmup) as f64 / (sft.steps - sft.warmup).max(1) as f64;
            sft.lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()))
        };
        let batch = &data[s * sft.batch_size..(s + 1) * sft.batch_size];
        let loss = t.sft_step(batch, lr)?;
        losses.push(loss);
        match &bar {
            Some(b) => {
                b.set_message(format!("loss {loss:.3}"));
                b.inc(1);
            }
            None => {
                if s % 50 == 0 || s + 1 == sft.steps {
                    log_line(&format!(
                        "sft step {}/{} loss {loss:.4} ({:.0} s)",
                        s + 1,
                        sft.steps,
                        start.elapsed().as_secs_f64()
                    ));
                }
            }
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(losses)
}

fn eval_line(tag: &str, e: &EvalResult) -> String {
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
            "; at T=1: tool calls {:.0}%, accuracy {:.1}%, pass@{} {:.1}%",
            100.0 * e.tool_call_rate_sampled,
            100.0 * e.sampled_accuracy,
            e.k,
            100.0 * e.pass_at_k
        ));
    }
    s
}

/// Trains as the config says; see the crate docs.
pub fn train(cfg: TrainConfig, opts: RunOptions) -> Result<RunOutcome> {
    let t0 = Instant::now();
    cfg.validate()?;
    // The run directory and the trainer (fresh or resumed).
    let (dir, mut trainer, manifest) = match &opts.resume {
        Some(r) => {
            let ck = checkpoint::latest(r)?;
            let man = checkpoint::read_manifest(&ck)?;
            let saved =
                TrainConfig::from_toml(&man.config)?.apply_overrides(&opts.resume_overrides)?;
            saved.validate()?;
            let dir = opts.out.clone().unwrap_or_else(|| {
                ck.parent()
                    .and_then(|p| p.parent())
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| r.clone())
            });
            let dtype = parse_dtype(&saved.model.dtype)?;
            let device = alp_model::parse_device(&saved.model.device)?;
            let weights = checkpoint::load_weights(&ck, dtype, &device)?;
            let tok = Tokenizer::load(&ck.join("model"))?.ok_or_else(|| Error::MissingFile {
                path: ck.join("model/tokenizer.json"),
                hint: "the checkpoint has no tokenizer".into(),
            })?;
            let tok = if saved.model.base.is_empty() {
                tok.with_chat_template(default_task::CHAT_TEMPLATE)
                    .with_eos_token(default_task::EOS)?
            } else {
                tok
            };
            let mut t = Trainer::from_weights(saved, &weights, tok)?;
            checkpoint::restore_state(&ck, &mut t, &man)?;
            log_line(&format!(
                "resumed from {} at RL step {}",
                ck.display(),
                man.step
            ));
            (dir, t, Some(man))
        }
        None => {
            let dir = opts.out.clone().unwrap_or_else(|| {
                let ts = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                PathBuf::from("runs").join(format!("run-{ts}"))
            });
            (dir, Trainer::new(cfg.clone())?, None)
        }
    };
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let cfg = trainer.cfg.clone();
    let cfg_path = dir.join("config.toml");
    std::fs::write(&cfg_path, cfg.to_toml()?).map_err(|e| Error::io(&cfg_path, e))?;
    let tty = std::io::stdout().is_terminal();
    log_line(&format!("run directory: {}", dir.display()));
    log_line(&format!(
        "model: {} ({} layers, hidden {}, vocab {}), method {}, {} RL steps × {} prompts × {} samples",
        if cfg.model.base.is_empty() { format!("embedded default `{}`", cfg.model.preset) } else { cfg.model.base.clone() },
        trainer.model.config().num_hidden_layers,
        trainer.model.config().hidden_size,
        trainer.model.config().vocab_size,
        cfg.rl.objective.name(),
        cfg.rl.steps,
        cfg.rl.prompts_per_step,
        cfg.rl.group_size
    ));
    log_line(&cfg.off_policy_budget());
    log_line(&format!(
        "effective settings (also in {}):",
        cfg_path.display()
    ));
    for l in cfg.to_toml()?.lines().filter(|l| !l.trim().is_empty()) {
        log_line(&format!("  {l}"));
    }
    let prior_wall = manifest.as_ref().map(|m| m.wall_seconds).unwrap_or(0.0);
    let mut before: Option<EvalResult> = None;
    let mut before_json = manifest.as_ref().and_then(|m| m.eval_before_rl.clone());
    // Every checkpoint is written after the warm start, so only a fresh run does SFT (and only
    // for the embedded default).
    if manifest.is_none() && cfg.model.base.is_empty() && cfg.sft.steps > 0 {
        log_line(&format!(
            "SFT warm start: {} steps × {} demonstrations ({}% of hard ones call the tool)",
            cfg.sft.steps,
            cfg.sft.batch_size,
            (100.0 * cfg.sft.tool_fraction).round()
        ));
        let losses = run_sft(&mut trainer, tty, opts.interrupt.as_deref())?;
        log_line(&format!(
            "SFT done in {:.0} s, final loss {:.4}",
            t0.elapsed().as_secs_f64(),
            losses.last().copied().unwrap_or(f64::NAN)
        ));
    }
    let metrics_path = dir.join("metrics.jsonl");
    let mut metrics_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(|e| Error::io(&metrics_path, e))?;
    let mut write_metrics = |m: &serde_json::Value| -> Result<()> {
        writeln!(metrics_file, "{m}").map_err(|e| Error::io(&metrics_path, e))
    };
    if before_json.is_none() && !opts.skip_eval {
        let e = trainer.evaluate(cfg.eval.tasks, cfg.eval.pass_k)?;
        log_line(&eval_line("before RL", &e));
        let j = serde_json::to_value(&e).map_err(|e| Error::Msg(e.to_string()))?;
        write_metrics(&serde_json::json!({"step": trainer.step, "eval": j}))?;
        before_json = Some(j);
        before = Some(e);
    }
    let make_manifest =
        |t: &Trainer, before: &Option<serde_json::Value>, wall: f64| -> Result<Manifest> {
            Ok(Manifest {
                step: t.step,
                policy_version: t.version,
                eval_before_rl: before.clone(),
                wall_seconds: wall,
                config: cfg.to_toml()?,
            })
        };
    let save_now = |t: &Trainer| -> Result<PathBuf> {
        checkpoint::save(
            &dir,
            t,
            &make_manifest(t, &before_json, prior_wall + t0.elapsed().as_secs_f64())?,
        )
    };
    if trainer.step == 0 && manifest.is_none() {
        save_now(&trainer)?;
    }
    // The rollout worker.
    let first = trainer.step;
    let end = match opts.max_steps_this_run {
        Some(n) => (first + n).min(cfg.rl.steps as u64),
        None => cfg.rl.steps as u64,
    };
    let mut interrupted = false;
    if first < end {
        let rollout_dtype = parse_dtype(&cfg.rl.rollout_dtype)?;
        let device = trainer.device.clone();
        let tok = trainer.tokenizer.clone();
        let env = trainer.make_env();
        let mut tasks = trainer.task_stream(Split::Train, cfg.seed);
        let tools = trainer.tools_spec();
        let (p, g, seed) = (cfg.rl.prompts_per_step, cfg.rl.group_size, cfg.seed);
        let ep_template = trainer.episode_config(cfg.rl.temperature, 0);
        let tok_b = tok.clone();
        let worker = RolloutWorker::spawn_from(
            first,
            trainer.version,
            Arc::new(trainer.rollout_snapshot()?),
            cfg.rl.max_staleness as u64,
            move |w| {
                Ok(
                    Engine::from_weights(w, rollout_dtype, &device, EngineConfig::default())?
                        .with_tokenizer(tok_b.clone()),
                )
            },
            move |engine, step, version| {
                tasks.seek(step * p as u64);
                let batch: Vec<Task> = (0..p).filter_map(|_| tasks.next_task()).collect();
                let mut ec = ep_template.clone();
                ec.sampling.seed = alp_core::mix_seed(seed, step);
                run_episodes(engine, &tok, &batch, &env, g, &ec, tools.as_ref(), version)
            },
        )?;
        let bar = tty.then(|| {
            let b = indicatif::ProgressBar::new(end - first);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "RL {bar:30} {pos}/{len} [{elapsed} < {eta}] {msg}",
                )
                .expect("template"),
            );
            b
        });
        let result = (|| -> Result<()> {
            for _ in first..end {
                if opts
                    .interrupt
                    .as_ref()
                    .is_some_and(|f| f.load(Ordering::SeqCst))
                {
                    interrupted = true;
                    log_line("interrupted: writing a final checkpoint and the summary");
                    break;
                }
                let tw = Instant::now();
                let batch = worker.recv()?;
                let wait = tw.elapsed().as_secs_f64();
                let tt = Instant::now();
                if opts.inject_nan_at == Some(trainer.step) {
                    trainer.inject_nan_once = true;
                }
                let mut m: Metrics = trainer.rl_step(&batch.groups, batch.policy_version)?;
                let train_s = tt.elapsed().as_secs_f64();
                let ts = Instant::now();
                worker.publish(trainer.version, Arc::new(trainer.rollout_snapshot()?))?;
                let sync_s = ts.elapsed().as_secs_f64();
                let gen_tokens: usize = batch
                    .groups
                    .iter()
                    .flat_map(|g| &g.trajectories)
                    .map(|t| t.num_generated())
                    .sum();
                m.insert("time/rollout_s".into(), batch.generate_seconds);
                m.insert("time/wait_for_rollout_s".into(), wait);
                m.insert("time/train_s".into(), train_s);
                m.insert("time/sync_s".into(), sync_s);
                m.insert(
                    "throughput/rollout_tokens_per_s".into(),
                    gen_tokens as f64 / batch.generate_seconds.max(1e-9),
                );
                m.insert(
                    "policy_version/sampled_by".into(),
                    batch.policy_version as f64,
                );
                let mut j = serde_json::json!({"step": trainer.step, "wall_s": prior_wall + t0.elapsed().as_secs_f64()});
                for (k, v) in &m {
                    j[k] = serde_json::json!(if v.is_finite() { Some(*v) } else { None });
                }
                write_metrics(&j)?;
                let line = format!(
                    "step {}/{} reward {:.3} acc {:.2} tool/ep {:.2} ratio max {:.3} σ̄ {:.4} ({:.1}s rollout, {:.1}s train)",
                    trainer.step,
                    cfg.rl.steps,
                    m.get("reward/mean").copied().unwrap_or(f64::NAN),
                    m.get("accuracy").copied().unwrap_or(f64::NAN),
                    m.get("tool/calls_per_episode").copied().unwrap_or(f64::NAN),
                    m.get("ratio/token/max").copied().unwrap_or(f64::NAN),
                    trainer.perturb.sigmas()?.iter().map(|&s| s as f64).sum::<f64>() / trainer.model.config().num_hidden_layers as f64,
                    batch.generate_seconds,
                    train_s
                );
                match &bar {
                    Some(b) => {
                        b.set_message(line);
                        b.inc(1);
                    }
                    None => log_line(&line),
                }
                let s = trainer.step as usize;
                if cfg.eval.every > 0
                    && s % cfg.eval.every == 0
                    && s < cfg.rl.steps
                    && !opts.skip_eval
                {
                    let e = trainer.evaluate(cfg.eval.tasks, 0)?;
                    log_line(&eval_line(&format!("step {s}"), &e));
                    write_metrics(&serde_json::json!({"step": trainer.step, "eval": e}))?;
                }
                if cfg.checkpoint.every > 0 && s % cfg.checkpoint.every == 0 {
                    save_now(&trainer)?;
                }
            }
            Ok(())
        })();
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        let _ = worker.shutdown();
        if let Err(e) = result {
            // Keep what ran: a checkpoint of the last good state, then the error.
            let _ = save_now(&trainer);
            return Err(e);
        }
    }
    save_now(&trainer)?;
    let finished = trainer.step >= cfg.rl.steps as u64;
    let after = if opts.skip_eval || !(finished || interrupted) {
        None
    } else {
        let e = trainer.evaluate(cfg.eval.tasks, cfg.eval.pass_k)?;
        log_line(&eval_line("after RL", &e));
        write_metrics(&serde_json::json!({"step": trainer.step, "eval": e}))?;
        Some(e)
    };
    let wall = prior_wall + t0.elapsed().as_secs_f64();
    if finished || interrupted {
        report::write_summary(
            &dir,
            &cfg,
            before_json.as_ref(),
            after.as_ref(),
            wall,
            trainer.step,
            interrupted,
        )?;
        report::plot_run(&dir)?;
        log_line(&format!(
            "wrote {}/summary.json, report.md, metrics.jsonl and plots/ ({wall:.0} s)",
            dir.display()
        ));
    }
    log_line(&format!("run directory: {}", dir.display()));
    Ok(RunOutcome {
        dir,
        before,
        after,
        interrupted,
    })
}
