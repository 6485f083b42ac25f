//! The `alp` command-line tool.
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

mod bench;
mod generate;
mod grade;
mod init;
mod logprobs;
mod merge;
mod serve;
mod train;

/// Reinforcement learning of language models with Adaptive Layerwise Perturbation.
#[derive(Parser)]
#[command(name = "alp", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the log-prob of every token after the first given its prefix, as JSON.
    Logprobs {
        /// Model directory or Hugging Face repo id (read from the local cache, offline).
        #[arg(long)]
        model: String,
        /// Comma-separated token ids, e.g. 1,5,9,33.
        #[arg(long)]
        tokens: String,
        /// Weights dtype: f32, bf16 or f16.
        #[arg(long, default_value = "f32")]
        dtype: String,
        /// Device: cpu or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Train: SFT warm start (embedded default), then RL (Seq-ALP by default) with async
    /// rollouts; writes metrics, checkpoints, a summary, a report and plots to the run directory.
    Train {
        /// A TOML config (every field has a default).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override a setting, e.g. --set rl.lr=1e-5 --set rl.objective.method=grpo.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Run directory (default runs/run-TIME-PID-N).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Resume from a run directory (its latest checkpoint) or a checkpoint.
        #[arg(long)]
        resume: Option<PathBuf>,
        /// Replace what an existing --out directory holds (without it, a non-empty --out is
        /// refused).
        #[arg(long)]
        force: bool,
    },
    /// The paper's comparison: one shared SFT warm start, then every method × seed × mismatch
    /// setting with the same tasks and budget; writes compare.json, report.md and plots.
    Compare {
        /// smoke (minutes), default (every method × 3 seeds at two mismatch settings), full,
        /// phase (the mismatch phase diagram), phase-smoke (its machinery in half a minute) or
        /// long-pilot (the long-answer task under stacked mismatch), long-smoke or long (the
        /// pre-registered long-answer comparison):
        /// the plan files in alp-cli/plans/ (default: default).
        #[arg(long, conflicts_with = "plan")]
        preset: Option<String>,
        /// A plan file (TOML: name, seeds, base overrides, settings and arms tables; see
        /// alp-cli/plans/*.toml), checked before any run starts.
        #[arg(long)]
        plan: Option<PathBuf>,
        /// Comma-separated methods (default: the preset's), e.g. grpo,bypass,alp-seq.
        #[arg(long, value_delimiter = ',')]
        methods: Vec<String>,
        /// Seeds per method and setting (default: the preset's).
        #[arg(long)]
        seeds: Option<usize>,
        /// Comma-separated mismatch settings of the preset to run (default: all).
        #[arg(long, value_delimiter = ',')]
        settings: Vec<String>,
        /// Comma-separated warm starts (blocks, 0-based) whose runs to run (default: all):
        /// processes given different warm starts train their SFT warm starts side by side.
        #[arg(long, value_delimiter = ',')]
        warm_starts: Vec<usize>,
        /// Override a setting of every run, e.g. --set rl.steps=60.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Output directory (resumable: finished runs are kept and not redone).
        #[arg(long)]
        out: PathBuf,
        /// Run nothing: write compare.json and report.md from the runs already finished in
        /// --out (a sweep that is still running in other processes, or stopped).
        #[arg(long)]
        report_only: bool,
    },
    /// The SFT warm start alone; writes the model to --out.
    Sft {
        /// A TOML config.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override a setting.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Output model directory.
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing model directory.
        #[arg(long)]
        force: bool,
    },
    /// Evaluate a model on held-out tasks of the default mix.
    Eval {
        /// Model directory (e.g. RUN/checkpoints/step-000100/model).
        #[arg(long)]
        model: String,
        /// A TOML config (task mix, limits).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override a setting.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// `tool` (held-out default mix with the calculator), `math` (the same tasks, single
        /// turn, no tool), `python` (the same tasks with the sandboxed Python tool) or a JSONL
        /// file (GSM8K, MATH or prompt/answer lines; with the Python tool under
        /// `--set rl.env=python`).
        #[arg(long, default_value = "tool")]
        tasks: String,
        /// Most tasks evaluated.
        #[arg(long, default_value_t = 200)]
        limit: usize,
        /// Samples per task at temperature 1 for pass@k (0: greedy only).
        #[arg(long, default_value_t = 8)]
        n: usize,
    },
    /// Redraw a run's plots from its metrics.jsonl.
    Plot {
        /// The run directory.
        run: PathBuf,
    },
    /// Sample completions of a prompt from a checkpoint.
    Generate {
        /// Model directory or Hugging Face repo id (read from the local cache, offline).
        #[arg(long)]
        model: String,
        /// The prompt text.
        #[arg(long)]
        prompt: String,
        /// Wrap the prompt as a user message with the tokenizer's chat template.
        #[arg(long)]
        chat: bool,
        /// Number of completions.
        #[arg(long, default_value_t = 1)]
        n: usize,
        /// Temperature (0 = greedy).
        #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
        temperature: f32,
        /// Top-p (1 = off).
        #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
        top_p: f32,
        /// Top-k (0 = off).
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        /// Most new tokens per completion.
        #[arg(long, default_value_t = 128)]
        max_new_tokens: usize,
        /// Seed (completion i uses seed + i).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Weights dtype: f32, bf16 or f16.
        #[arg(long, default_value = "f32")]
        dtype: String,
        /// Device: cpu or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Serve the sampling engine over HTTP (OpenAI-compatible completions with log-probs and
    /// weight versions) for `rl.rollout.backend = "remote"`; the reload endpoint takes its
    /// token from the environment variable ALP_RELOAD_TOKEN (reload is off without it).
    Serve(serve::ServeArgs),
    /// Benchmarks (throughput on random inputs).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Grade predictions: each line of --input is {"answer": ..., "prediction": ...}; one JSON
    /// line per input line goes to stdout, the accuracy to stderr.
    Grade {
        /// JSONL file (or - for stdin).
        #[arg(long)]
        input: PathBuf,
        /// Accept only \boxed{} answers (default: lenient extraction with fallbacks).
        #[arg(long)]
        strict: bool,
    },
    /// Merge a LoRA adapter into its base: a plain Hugging Face checkpoint (config.json,
    /// model.safetensors, tokenizer) that any loader reads without PEFT.
    Merge {
        /// A LoRA run directory or checkpoint, or a PEFT adapter directory.
        source: PathBuf,
        /// The base of a PEFT adapter directory (default: its base_model_name_or_path).
        #[arg(long)]
        base: Option<String>,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Dtype of the merged weights: f32, bf16 or f16.
        #[arg(long, default_value = "f32")]
        dtype: String,
        /// Replace what --out holds.
        #[arg(long)]
        force: bool,
    },
    /// Write a randomly initialised checkpoint in Hugging Face format.
    Init {
        /// A named shape (tiny, alp-default, qwen2-25m, qwen2.5-0.5b, qwen2.5-1.5b).
        #[arg(long, conflicts_with = "config")]
        preset: Option<String>,
        /// A Hugging Face config.json to initialise.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Output directory (must not already hold a checkpoint unless --force).
        #[arg(long)]
        out: PathBuf,
        /// Seed of the initialisation.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Weights dtype: f32, bf16 or f16.
        #[arg(long, default_value = "f32")]
        dtype: String,
        /// Overwrite an existing checkpoint in --out.
        #[arg(long)]
        force: bool,
        /// Also write a fresh LoRA adapter of this rank on every projection (PEFT's format,
        /// alpha 2·rank) to OUT/adapter.
        #[arg(long)]
        lora_r: Option<usize>,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Generation throughput: random prompts, no early stop; the last line is JSON with
    /// `tokens_per_s` (generated tokens only).
    Rollout(bench::RolloutArgs),
    /// Training throughput: forward + backward + AdamW on random tokens; the last line is JSON
    /// with `tokens_per_s` and `peak_rss_mb`.
    Train(bench::TrainArgs),
    /// Episodes as `alp train` samples them (its tasks, environment, tools and sampling) from
    /// a checkpoint, with prefix reuse off and on: turns, prefill and reused tokens per
    /// episode, episodes/s; the last line is JSON.
    Episodes(bench::EpisodesArgs),
}

/// Parses the command line and dispatches: one short arm per subcommand (its length is the
/// number of subcommands, not logic).
fn main() -> Result<()> {
    alp_trainer::runtime::tune_cpu_process();
    alp_cli::install_crash_hook();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Logprobs {
            model,
            tokens,
            dtype,
            device,
        } => logprobs::run(&model, &tokens, &dtype, &device),
        Command::Grade { input, strict } => grade::run(&input, strict),
        Command::Merge {
            source,
            base,
            out,
            dtype,
            force,
        } => merge::run(&source, base.as_deref(), &out, &dtype, force),
        Command::Train {
            config,
            sets,
            out,
            resume,
            force,
        } => train::train(config, sets, out, resume, force),
        Command::Sft {
            config,
            sets,
            out,
            force,
        } => train::sft(config, sets, out, force),
        Command::Compare {
            preset,
            plan,
            methods,
            seeds,
            settings,
            warm_starts,
            sets,
            out,
            report_only,
        } => train::compare(
            preset.as_deref(),
            plan.as_deref(),
            &methods,
            seeds,
            (&settings, &warm_starts),
            &sets,
            (&out, report_only),
        ),
        Command::Eval {
            model,
            config,
            sets,
            tasks,
            limit,
            n,
        } => train::eval(model, config, sets, tasks, limit, n),
        Command::Plot { run } => {
            let specs = alp_cli::report::plot_specs(&run)?;
            if specs
                .iter()
                .all(|p| p.curves.iter().all(|c| c.1.is_empty()))
            {
                bail!(
                    "{} has no step or evaluation records to plot",
                    run.join("metrics.jsonl").display()
                );
            }
            alp_cli::report::plot_run(&run)?;
            println!("wrote {}/plots", run.display());
            Ok(())
        }
        Command::Generate {
            model,
            prompt,
            chat,
            n,
            temperature,
            top_p,
            top_k,
            max_new_tokens,
            seed,
            dtype,
            device,
        } => generate::run(generate::Args {
            model,
            prompt,
            chat,
            n,
            params: alp_rollout::SamplingParams {
                temperature,
                top_p,
                top_k,
                max_new_tokens,
                seed,
                ..Default::default()
            },
            dtype,
            device,
        }),
        Command::Bench(BenchCommand::Rollout(a)) => bench::rollout(a),
        Command::Bench(BenchCommand::Train(a)) => bench::train(a),
        Command::Bench(BenchCommand::Episodes(a)) => bench::episodes(a),
        Command::Init {
            preset,
            config,
            out,
            seed,
            dtype,
            force,
            lora_r,
        } => {
            let cfg = match (preset, config) {
                (Some(p), None) => alp_model::presets::by_name(&p)?,
                (None, Some(c)) => alp_model::Config::from_file(&c)
                    .with_context(|| format!("reading {}", c.display()))?,
                _ => bail!("give exactly one of --preset <name> or --config <config.json>"),
            };
            init::run(&cfg, &out, seed, &dtype, force)?;
            match lora_r {
                Some(r) => init::adapter(&cfg, &out, r, seed, &dtype),
                None => Ok(()),
            }
        }
    }
}
