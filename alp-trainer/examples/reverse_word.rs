//! A user's task source, environment (reverse a word; reward: letters in place) and objective
//! (REINFORCE), trained through `Session`; `cargo run --release --example reverse_word`.
use alp_core::{ChatMessage, Environment, Outcome, Result, Step, Task, TaskFn};
use alp_loss::{Aggregation, LossInputs, LossOutput, PolicyObjective};
use alp_trainer::{config::TrainConfig, metrics::REWARD_MEAN, Session};

/// One turn; the reward is the share of the reversed word's letters in place.
struct Reverse(String);
impl Environment for Reverse {
    fn reset(&mut self, task: &Task) -> Result<Vec<ChatMessage>> {
        self.0 = task.answer.clone();
        Ok(task.messages.clone())
    }
    fn step(&mut self, text: &str) -> Result<Step> {
        let pairs = self.0.chars().zip(text.trim().chars());
        let hits = pairs.filter(|(a, b)| a == b).count();
        Ok(Step::Done(Outcome::with_reward(hits as f32 / 3.0)))
    }
}
/// REINFORCE: −A · log π, reduced as the run aggregates; no ratio, no clip.
struct Reinforce;
impl PolicyObjective for Reinforce {
    fn compute_part(&self, x: &LossInputs, agg: Aggregation, norm: f64) -> Result<LossOutput> {
        let adv = x.advantages.unsqueeze(1)?.broadcast_as(x.logp.shape())?;
        Ok(LossOutput::new(agg.reduce_part(
            &(adv * x.logp)?.neg()?,
            x.mask,
            norm,
        )?))
    }
}
/// Task n reverses the n-th three-letter word over "abc".
fn word(n: u64) -> Task {
    let letter = |i: u32| b"abc"[(n / 3u64.pow(i) % 3) as usize] as char;
    let w: String = (0..3).map(letter).collect();
    let reversed: String = w.chars().rev().collect();
    Task::user(format!("w{n}"), "reverse", format!("reverse {w}"), reversed)
}

fn main() -> Result<()> {
    let set = "rl.steps=40 rl.lr=3e-3 rl.max_new_tokens=4 rl.max_staleness=0";
    let cfg = TrainConfig::default()
        .apply_overrides(&set.split(' ').map(String::from).collect::<Vec<_>>())?;
    let dir = std::env::temp_dir().join(format!("alp-reverse-word-{}", std::process::id()));
    let mut run = Session::builder(cfg, &dir)
        .environment(|_| Ok(Box::new(Reverse(String::new()))))
        .tasks(TaskFn::new(word))
        .objective(Reinforce)
        .build()?;
    let r: Vec<f64> = (0..40)
        .map(|_| Ok(run.step()?[REWARD_MEAN]))
        .collect::<Result<_>>()?;
    std::fs::remove_dir_all(&dir).ok();
    let mean = |r: &[f64]| r.iter().sum::<f64>() / r.len() as f64;
    let (first, last) = (mean(&r[..5]), mean(&r[35..]));
    println!("mean reward: first 5 steps {first:.3}, last 5 steps {last:.3}");
    assert!(last > first + 0.1, "the reward did not rise: {r:?}");
    Ok(())
}
