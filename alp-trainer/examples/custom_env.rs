//! A custom `Environment` (count the words of a sentence) driven by the rollout engine: the
//! same `run_episodes` that serves the math and tool environments serves this one.
//!
//! Run: `cargo run --release -p alp-trainer --example custom_env` (also run by `cargo test`).
use std::sync::Arc;

use alp_core::{ChatMessage, Environment, Outcome, Result, Step, Task};
use alp_envs::math::grade;
use alp_model::{presets, ModelWeights};
use alp_rollout::{run_episodes, Engine, EngineConfig, EpisodeConfig, Episodes, SamplingParams};
use candle_core::{DType, Device};

/// Rewards a boxed word count equal to the number of words in the task's sentence.
struct WordCount {
    answer: String,
}

impl Environment for WordCount {
    fn reset(&mut self, task: &Task) -> Result<Vec<ChatMessage>> {
        self.answer = task.answer.clone();
        Ok(task.messages.clone())
    }
    fn step(&mut self, text: &str) -> Result<Step> {
        let v = grade(&self.answer, text);
        Ok(Step::Done(Outcome {
            reward: if v.correct { 1.0 } else { 0.0 },
            correct: v.correct,
            extracted: v.extracted,
            ..Default::default()
        }))
    }
}

fn main() -> Result<()> {
    let tok = Arc::new(alp_trainer::default_task::build_tokenizer()?);
    let weights = ModelWeights::random(&presets::alp_default(), 0, DType::F32, &Device::Cpu)?;
    let engine = Engine::from_weights(&weights, DType::F32, &Device::Cpu, EngineConfig::default())?
        .with_tokenizer(tok.clone());
    let tasks: Vec<Task> = ["the cat sat", "one two three four"]
        .iter()
        .enumerate()
        .map(|(i, s)| Task {
            id: format!("wc{i}"),
            kind: "word-count".into(),
            messages: vec![ChatMessage::new("user", format!("count: {s}"))],
            answer: s.split_whitespace().count().to_string(),
        })
        .collect();
    let cfg = EpisodeConfig {
        max_turns: 1,
        sampling: SamplingParams {
            max_new_tokens: 8,
            ..Default::default()
        },
        ..Default::default()
    };
    let episodes = Episodes {
        tasks: &tasks,
        make_env: &|_| {
            Ok(Box::new(WordCount {
                answer: String::new(),
            }))
        },
        group_size: 4,
        config: &cfg,
        tools: None,
    };
    let groups = run_episodes(&engine, &tok, &episodes)?;
    assert_eq!(groups.len(), 2);
    for g in &groups {
        assert_eq!(g.trajectories.len(), 4);
        for t in &g.trajectories {
            t.validate()?;
            assert_eq!(t.reward(), if t.outcome.correct { 1.0 } else { 0.0 });
        }
        println!(
            "{}: rewards {:?}",
            g.task_id,
            g.trajectories
                .iter()
                .map(|t| t.reward())
                .collect::<Vec<_>>()
        );
    }
    Ok(())
}
