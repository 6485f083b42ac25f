//! `alp train`, `alp sft`, `alp eval`, `alp plot`.
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use alp_cli::run::{self, RunOptions};
use alp_trainer::config::TrainConfig;
use anyhow::{Context, Result};

pub fn load_config(config: Option<&PathBuf>, sets: &[String]) -> Result<TrainConfig> {
    let base = match config {
        Some(p) => TrainConfig::from_file(p)?,
        None => TrainConfig::default(),
    };
    let cfg = base.apply_overrides(sets)?;
    cfg.validate()?;
    Ok(cfg)
}

pub fn train(
    config: Option<PathBuf>,
    sets: Vec<String>,
    out: Option<PathBuf>,
    resume: Option<PathBuf>,
    force: bool,
) -> Result<()> {
    if resume.is_some() && config.is_some() {
        anyhow::bail!("--resume continues the run with its saved config; --config cannot change it (use --set key=value to edit single settings, or start a new run)");
    }
    // On resume the run's saved config is the base and --set edits it.
    let (cfg, resume_overrides) = if resume.is_some() {
        (TrainConfig::default(), sets)
    } else {
        (load_config(config.as_ref(), &sets)?, vec![])
    };
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    ctrlc::set_handler(move || {
        if f.swap(true, Ordering::SeqCst) {
            eprintln!("second Ctrl-C: exiting now");
            std::process::exit(130);
        }
        eprintln!("Ctrl-C: finishing the current step, then writing a checkpoint and the summary (press again to quit at once)");
    })
    .context("installing the Ctrl-C handler")?;
    let outcome = run::train(
        cfg,
        RunOptions {
            out,
            resume,
            interrupt: Some(flag),
            resume_overrides,
            console: true,
            overwrite: force,
            ..Default::default()
        },
    )?;
    if outcome.interrupted {
        // The conventional status of a run stopped by Ctrl-C (its state is saved).
        std::process::exit(130);
    }
    if let (Some(b), Some(a)) = (&outcome.before, &outcome.after) {
        println!(
            "held-out accuracy {:.1}% → {:.1}% ({:+.1} points); hard-task tool-call rate {:.0}% → {:.0}%",
            100.0 * b.accuracy,
            100.0 * a.accuracy,
            100.0 * (a.accuracy - b.accuracy),
            100.0 * b.tool_call_rate,
            100.0 * a.tool_call_rate
        );
    }
    Ok(())
}

pub fn sft(config: Option<PathBuf>, sets: Vec<String>, out: PathBuf, force: bool) -> Result<()> {
    let cfg = load_config(config.as_ref(), &sets)?;
    alp_trainer::claim_dir(&out, force)?;
    // With LoRA on, SFT of the embedded default trains every weight unless sft.lora (as in
    // `alp train`); otherwise the adapter, and the merged model is written.
    let mut t = alp_trainer::trainer::Trainer::new(cfg)?;
    let steps = t.cfg.sft.steps;
    let losses = alp_trainer::sft::run_sft(&mut t, 0, None, &mut |i, loss| {
        if i % 50 == 0 || i + 1 == steps {
            println!("sft step {}/{steps} loss {loss:.4}", i + 1);
        }
    })?;
    t.weights()?.merged()?.save(&out)?;
    t.tokenizer.save(&out)?;
    println!(
        "SFT: {} steps, final loss {:.4}; wrote {}",
        losses.len(),
        losses.last().copied().unwrap_or(f64::NAN),
        out.display()
    );
    Ok(())
}

pub fn eval(
    model: String,
    config: Option<PathBuf>,
    sets: Vec<String>,
    tasks: String,
    limit: usize,
    n: usize,
) -> Result<()> {
    use alp_core::TaskSource;
    let mut cfg = load_config(config.as_ref(), &sets)?;
    // Every sampled episode (limit × n) is held until graded.
    let each = 512 + 16 * cfg.rl.max_total_tokens as u64;
    alp_core::memory::check_fits(
        "--limit × --n",
        limit.saturating_mul(n.max(1)),
        each,
        "the episodes it samples",
        None,
    )?;
    let dir = alp_model::resolve_model_dir(&model)?;
    let dtype = cfg.model.dtype.candle();
    let device = alp_model::parse_device(&cfg.model.device)?;
    let weights = alp_model::ModelWeights::load(&dir, dtype, &device)?;
    let tok = alp_model::Tokenizer::load(&dir)?
        .with_context(|| format!("{} has no tokenizer.json", dir.display()))?;
    let tok = if tok.chat_template().is_none() {
        tok.with_chat_template(alp_trainer::default_task::CHAT_TEMPLATE)
            .with_eos_token(alp_trainer::default_task::EOS)?
    } else {
        tok
    };
    // A checkpoint of the embedded default (its template) is evaluated on compact prompts
    // without a tools section; any other model as a real checkpoint.
    let is_default = tok.chat_template() == Some(alp_trainer::default_task::CHAT_TEMPLATE);
    cfg.model.base = if is_default { String::new() } else { model };
    let t = alp_trainer::trainer::Trainer::from_weights(cfg.clone(), &weights, tok)?;
    use alp_trainer::config::EnvKind;
    let named = match tasks.as_str() {
        "tool" => Some(EnvKind::Tool),
        "math" => Some(EnvKind::Math),
        "python" => Some(EnvKind::Python),
        _ => None,
    };
    let (list, kind) = match (named, tasks.as_str()) {
        (Some(kind), _) => {
            let mut src = t.task_stream(alp_envs::math::Split::Heldout, cfg.seed ^ 0xE7A1);
            let list: Vec<alp_core::Task> = (0..limit).filter_map(|_| src.next_task()).collect();
            (list, kind)
        }
        (None, path) => {
            let p = std::path::Path::new(path);
            if !p.is_file() {
                anyhow::bail!(
                    "--tasks {path}: neither `tool`, `math`, `python`, nor a readable JSONL or Parquet file"
                );
            }
            let (mut list, skipped) =
                alp_envs::math::load_tasks(p, None, "dataset", alp_envs::math::OnError::Skip)?;
            for e in &skipped {
                eprintln!("{path}:{}: skipped: {}", e.line, e.message);
            }
            if list.is_empty() {
                anyhow::bail!(
                    "--tasks {path} holds no task ({} lines skipped): each line needs a prompt and an answer (GSM8K `question`/`answer`, MATH `problem`/`solution`, or `prompt`/`answer`)",
                    skipped.len()
                );
            }
            list.truncate(limit);
            // A data set is single-turn math, or tool-integrated with `--set rl.env=python`.
            let kind = if cfg.rl.env == EnvKind::Python {
                EnvKind::Python
            } else {
                EnvKind::Math
            };
            (list, kind)
        }
    };
    let e = alp_trainer::eval::evaluate_tasks(&t, &list, kind, n)?;
    println!("{}", serde_json::to_string_pretty(&e)?);
    Ok(())
}

/// The CPU's model name (`model name` of `/proc/cpuinfo`, as lscpu shows it), when known.
pub fn cpu_model() -> Option<String> {
    std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|t| {
        t.lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_string())
    })
}

/// The CPU's model name and cores, for the report.
fn machine() -> String {
    let cpu = cpu_model().unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpu}, {cores} cores")
}

pub fn compare(
    preset: Option<&str>,
    plan_file: Option<&std::path::Path>,
    methods: &[String],
    seeds: Option<usize>,
    (settings, warm_starts): (&[String], &[usize]),
    sets: &[String],
    (out, report_only): (&std::path::Path, bool),
) -> Result<()> {
    use alp_cli::compare;
    let mut plan = match plan_file {
        Some(p) => compare::Plan::load(p)?,
        None => compare::preset(preset.unwrap_or("default"))?,
    };
    if let Some(s) = seeds {
        anyhow::ensure!(s >= 1, "--seeds must be at least 1");
        plan.seeds = s;
    }
    // `--set` overrides join the plan's base, after it: compare.json records the base, so a
    // sweep resumed with other overrides does not reuse runs recorded without them.
    plan.base.extend(sets.iter().cloned());
    // The report covers the whole plan: `--methods`/`--settings` pick what runs now (a sweep
    // in pieces, or in two processes) without dropping the other pieces from the record.
    let whole = plan.clone();
    if !methods.is_empty() {
        plan = plan.with_methods(methods)?;
    }
    if !settings.is_empty() {
        plan = plan.with_settings(settings)?;
    }
    if !warm_starts.is_empty() {
        plan = plan.with_warm_starts(warm_starts)?;
    }
    // Every run's config is checked before any work starts.
    plan.validate(&[])?;
    let t0 = std::time::Instant::now();
    println!(
        "alp compare, plan {}: {} methods × {} seeds × {} settings into {}",
        plan.preset,
        plan.arms.len(),
        plan.seeds,
        plan.settings.len(),
        out.display()
    );
    let m = machine();
    if report_only {
        let rows = compare::read_finished(&plan, out)?;
        if rows.is_empty() {
            let stale = compare::Recorded::read(&plan, out)?.stale;
            let why = match stale.first() {
                Some(first) => format!(
                    "; {}/compare.json records {first}{} with other overrides than this plan's (pass the plan and the --set overrides the sweep ran with)",
                    out.display(),
                    if stale.len() > 1 { format!(" and {} more rows", stale.len() - 1) } else { String::new() }
                ),
                None => String::new(),
            };
            anyhow::bail!(
                "--report-only: no finished run of this plan under {}{why}",
                out.display()
            );
        }
        // The runs ran where the record says, not necessarily here.
        let recorded = compare::Recorded::read(&plan, out)?.machine.unwrap_or(m);
        alp_cli::compare_report::write(out, &plan, &rows, &recorded, 0.0)?;
        let runs: usize = rows.iter().map(|r| r.2.len()).sum();
        println!(
            "wrote {0}/compare.json and {0}/report.md from {runs} finished runs",
            out.display()
        );
        return Ok(());
    }
    // The whole plan's report from every finished run (this process's, another's, the record's).
    let report = |wall_s: f64| -> alp_core::Result<()> {
        let rows = compare::read_finished(&whole, out)?;
        alp_cli::compare_report::write(out, &whole, &rows, &m, wall_s)
    };
    compare::run_all(&plan, &[], out, &mut |l| println!("{l}"), &mut |_| {
        // Rewritten after every method.
        report(t0.elapsed().as_secs_f64())
    })?;
    report(t0.elapsed().as_secs_f64())?;
    println!(
        "wrote {0}/compare.json and {0}/report.md ({1:.0} s)",
        out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
