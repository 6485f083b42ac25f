//! The `alp` command-line tool.
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

mod grade;
mod init;
mod logprobs;

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
    /// Write a randomly initialised checkpoint in Hugging Face format.
    Init {
        /// A named shape (tiny, qwen2-25m, qwen2.5-0.5b).
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
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Logprobs {
            model,
            tokens,
            dtype,
            device,
        } => logprobs::run(&model, &tokens, &dtype, &device),
        Command::Grade { input, strict } => grade::run(&input, strict),
        Command::Init {
            preset,
            config,
            out,
            seed,
            dtype,
            force,
        } => {
            let cfg = match (preset, config) {
                (Some(p), None) => alp_model::presets::by_name(&p)?,
                (None, Some(c)) => alp_model::Config::from_file(&c)
                    .with_context(|| format!("reading {}", c.display()))?,
                _ => bail!("give exactly one of --preset <name> or --config <config.json>"),
            };
            init::run(&cfg, &out, seed, &dtype, force)
        }
    }
}
