//! Held-out evaluation: the episodes of a model on held-out tasks, greedy and at temperature 1,
//! graded by an environment (the built-in one of `rl.env`, or a user's) and summarised as an
//! [`EvalResult`].

use crate::config::EnvKind;
use crate::default_task;
use crate::eval_result::EvalResult;
use crate::trainer::Trainer;
use alp_core::{Environment, Result, Task, TaskSource};
use alp_envs::math::Split;
use alp_rollout::{run_episodes, Engine, Episodes};

/// The first `n` tasks of the built-in held-out stream.
pub fn heldout_tasks(trainer: &Trainer, n: usize) -> Vec<Task> {
    let mut src = trainer.task_stream(Split::Heldout, trainer.cfg.seed ^ 0xE7A1);
    (0..n).filter_map(|_| src.next_task()).collect()
}

#[cfg_attr(not(feature = "internals"), allow(dead_code))] // used by alp-cli
/// Evaluates on given tasks in a built-in environment of `kind`: greedy, then with `k > 0` k
/// samples per task at temperature 1.
pub fn evaluate_tasks(
    trainer: &Trainer,
    tasks: &[Task],
    kind: EnvKind,
    k: usize,
) -> Result<EvalResult> {
    let pieces = EvalPieces::built_in(trainer, kind);
    evaluate_with(trainer, tasks, &pieces, &default_task::is_tool_worthy, k)
}

/// Builds the environment of one episode from its task.
type MakeEnv<'a> = Box<dyn Fn(&Task) -> Result<Box<dyn Environment>> + 'a>;

/// The environment side of an evaluation.
pub struct EvalPieces<'a> {
    /// Builds the environment of each episode.
    pub make_env: MakeEnv<'a>,
    /// Tool specs for the chat template (besides those the environment declares).
    pub tools: Option<serde_json::Value>,
    /// Turn stop strings (besides those the environment declares).
    pub turn_stop_strings: Vec<String>,
}

impl<'a> EvalPieces<'a> {
    /// A user's environment: its stop strings and tools are the ones it declares.
    pub fn user(make_env: &'a dyn Fn(&Task) -> Result<Box<dyn Environment>>) -> Self {
        EvalPieces {
            make_env: Box::new(make_env),
            tools: None,
            turn_stop_strings: Vec::new(),
        }
    }

    /// The built-in environment of `kind`, with the config's tool specs (the tool
    /// environment of a real checkpoint) and `kind`'s turn stop strings.
    pub fn built_in(trainer: &Trainer, kind: EnvKind) -> Self {
        EvalPieces {
            make_env: Box::new(trainer.make_env_kind(kind)),
            tools: if kind == EnvKind::Tool {
                trainer.tools_spec()
            } else {
                None
            },
            turn_stop_strings: kind.turn_stop_strings(),
        }
    }
}

/// Evaluates on `tasks` with `pieces`: greedy, then with `k > 0` k samples per task at
/// temperature 1; `tool_worthy` names the task kinds the tool-call rates count.
pub fn evaluate_with(
    trainer: &Trainer,
    tasks: &[Task],
    pieces: &EvalPieces,
    tool_worthy: &dyn Fn(&str) -> bool,
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
    let run = |n: usize, temperature: f32, seed: u64| {
        let mut config = trainer.episode_config(temperature, seed);
        config.turn_stop_strings = pieces.turn_stop_strings.clone();
        let episodes = Episodes {
            tasks,
            make_env: &*pieces.make_env,
            group_size: n,
            config: &config,
            tools: pieces.tools.as_ref(),
        };
        run_episodes(&engine, &trainer.tokenizer, &episodes)
    };
    let greedy = run(1, 0.0, 0)?;
    let sampled = if k > 0 {
        Some(run(k, 1.0, 0xA11CE ^ trainer.step)?)
    } else {
        None
    };
    Ok(EvalResult::from_groups(
        tasks,
        &greedy,
        sampled.as_deref().map(|g| (g, k)),
        tool_worthy,
    ))
}
