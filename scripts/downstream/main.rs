//! A crate outside the alp workspace, built by `scripts/downstream-check.sh` on the registry's
//! candle-core (no `[patch]`): a user's environment, training and held-out task sources,
//! objective and metrics sink go through `Session::builder`, and the checks are the ones a
//! user would make of them.
//!
//! - Evaluation grades with the user's environment: one that calls every answer correct gives
//!   accuracy 1.0, one that calls none correct 0.0; the sink receives the evaluation.
//! - A run interrupted after 2 of 4 RL steps (checkpoint, process exit) and resumed in a new
//!   process with the same pieces (`Session::resume_with`) ends with the same weights, bit for
//!   bit, as the run that was not interrupted.
//!
//! `alp-downstream` runs the whole check; `alp-downstream resume DIR` is the second process.
use alp_core::{ChatMessage, Environment, Outcome, Result, Step, Task, TaskFn};
use alp_loss::{Aggregation, LossInputs, LossOutput, PolicyObjective};
use alp_trainer::{config::TrainConfig, metrics, EvalResult, MetricsSink, Session, SessionBuilder};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Reverse a three-letter word; the reward is the share of letters in place.
struct Reverse(String);
impl Environment for Reverse {
    fn reset(&mut self, task: &Task) -> Result<Vec<ChatMessage>> {
        self.0 = task.answer.clone();
        Ok(task.messages.clone())
    }
    fn step(&mut self, text: &str) -> Result<Step> {
        let hits = self.0.chars().zip(text.trim().chars()).filter(|(a, b)| a == b).count();
        let mut o = Outcome::with_reward(hits as f32 / 3.0);
        o.correct = hits == 3;
        Ok(Step::Done(o))
    }
    fn turn_stop_strings(&self) -> Vec<String> {
        vec!["\n".into()]
    }
}

/// Grades every answer the same way, whatever the model wrote.
struct Fixed(bool);
impl Environment for Fixed {
    fn reset(&mut self, task: &Task) -> Result<Vec<ChatMessage>> {
        Ok(task.messages.clone())
    }
    fn step(&mut self, _text: &str) -> Result<Step> {
        let mut o = Outcome::with_reward(self.0 as u8 as f32);
        o.correct = self.0;
        Ok(Step::Done(o))
    }
}

/// REINFORCE against the stored inference log-probs' sign: −A · log π, no ratio, no clip.
struct Reinforce;
impl PolicyObjective for Reinforce {
    fn name(&self) -> &str {
        "reinforce"
    }
    fn compute_part(&self, x: &LossInputs, agg: Aggregation, norm: f64) -> Result<LossOutput> {
        let adv = x.advantages.unsqueeze(1)?.broadcast_as(x.logp.shape())?;
        Ok(LossOutput::new(agg.reduce_part(&(adv * x.logp)?.neg()?, x.mask, norm)?))
    }
}

/// Task n of a stream: reverse the n-th word over "abc" (`salt` makes the held-out stream).
fn word(n: u64, salt: u64) -> Task {
    let n = n.wrapping_mul(7).wrapping_add(salt);
    let letter = |i: u32| b"abc"[(n / 3u64.pow(i) % 3) as usize] as char;
    let w: String = (0..3).map(letter).collect();
    let reversed: String = w.chars().rev().collect();
    Task::user(format!("w{n}"), "reverse", format!("reverse {w}"), reversed)
}

/// Keeps the evaluations it receives where the test can read them.
#[derive(Clone, Default)]
struct Evals(Arc<Mutex<Vec<(String, EvalResult)>>>);
impl MetricsSink for Evals {
    fn eval(&mut self, _step: u64, tag: &str, e: &EvalResult) -> Result<()> {
        self.0.lock().unwrap().push((tag.to_string(), e.clone()));
        Ok(())
    }
}

fn config() -> Result<TrainConfig> {
    TrainConfig::default().apply_overrides(
        &[
            "rl.steps=4",
            "rl.lr=3e-3",
            "rl.prompts_per_step=4",
            "rl.group_size=4",
            "rl.mini_batch=8",
            "rl.micro_batch=4",
            "rl.max_new_tokens=4",
            // Asynchronous by exactly one version: the checkpoint carries the batch sampled
            // ahead, which the resumed process trains on.
            "rl.max_staleness=1",
            "rl.exact_staleness=true",
            "eval.tasks=12",
        ]
        .map(String::from),
    )
}

/// The user's pieces on a builder (the same in both processes).
fn pieces(b: SessionBuilder) -> SessionBuilder {
    b.environment(|_| Ok(Box::new(Reverse(String::new()))))
        .tasks(TaskFn::new(|n| word(n, 0)))
        .heldout_tasks(TaskFn::new(|n| word(n, 1_000_003)))
        .objective(Reinforce)
}

/// Runs RL steps until `until`, then writes a checkpoint; returns its directory.
fn train_until(run: &mut Session, until: u64) -> Result<PathBuf> {
    while run.step_index() < until {
        let m = run.step()?;
        assert!(m[metrics::REWARD_MEAN].is_finite());
        println!("step {}: reward {:.3}", m.step, m[metrics::REWARD_MEAN]);
    }
    run.save_checkpoint()
}

/// The tensors of a checkpoint's model, by name.
fn tensors(checkpoint: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(checkpoint.join("model/model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<(String, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.data().to_vec()))
        .collect();
    v.sort();
    v
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("resume") {
        // The second process: the same pieces on the checkpoint of the first.
        let mut run = pieces(Session::resume_with(&args[2], &[])).build()?;
        assert_eq!(run.step_index(), 2, "resumed at the checkpoint's step");
        let ck = train_until(&mut run, 4)?;
        println!("{}", ck.display());
        return Ok(());
    }
    let root = std::env::temp_dir().join(format!("alp-downstream-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);

    // Evaluation grades with the user's environment, and the sink receives it.
    for (correct, want) in [(true, 1.0), (false, 0.0)] {
        let evals = Evals::default();
        let mut run = Session::builder(config()?, root.join(format!("fixed-{correct}")))
            .environment(move |_| Ok(Box::new(Fixed(correct))))
            .heldout_tasks(TaskFn::new(|n| word(n, 1_000_003)))
            .sink(evals.clone())
            .build()?;
        let e = run.evaluate(2, "before RL")?;
        assert_eq!((e.accuracy, e.sampled_accuracy, e.tasks), (want, want, 12), "{e:?}");
        assert_eq!(e.accuracy_by_kind.get("reverse"), Some(&want), "{e:?}");
        let got = evals.0.lock().unwrap().clone();
        assert_eq!(got, vec![("before RL".to_string(), e)]);
    }
    println!("evaluation: an environment grading all correct gives 1.0, none correct 0.0");

    // The run without interruption.
    let mut whole = pieces(Session::builder(config()?, root.join("whole"))).build()?;
    let before = whole.evaluate(0, "before RL")?;
    let whole_ck = train_until(&mut whole, 4)?;
    let after = whole.evaluate(0, "after RL")?;
    println!(
        "held-out accuracy (reverse a word) {:.2} -> {:.2}",
        before.accuracy, after.accuracy
    );
    drop(whole);

    // Interrupted after 2 steps, resumed in a new process.
    let dir = root.join("interrupted");
    let mut first = pieces(Session::builder(config()?, &dir)).build()?;
    train_until(&mut first, 2)?;
    drop(first);
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["resume", dir.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the resumed process failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let resumed_ck = PathBuf::from(stdout.lines().last().unwrap().trim());
    let (a, b) = (tensors(&whole_ck), tensors(&resumed_ck));
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert!(ta == tb, "{na} differs between the uninterrupted and the resumed run");
    }
    println!(
        "resume: {} tensors equal bit for bit after 2 + 2 steps in two processes and 4 in one",
        a.len()
    );
    std::fs::remove_dir_all(&root).ok();
    Ok(())
}
