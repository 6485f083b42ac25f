//! A user's rollout backend through `Session::builder`: it receives the first snapshot and
//! every published one, and samples every turn of the run.

use alp_core::PolicyVersion;
use alp_model::ModelWeights;
use alp_rollout::{Engine, EngineConfig, Generation, Request, RolloutBackend};
use alp_trainer::{config::TrainConfig, default_task, Session};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The in-process engine, counting what reaches it; with `frozen` it keeps its first weights
/// (and their version) whatever is published, as a server whose reloads fail silently would.
struct Counting {
    engine: Option<Engine>,
    publishes: Arc<std::sync::Mutex<Vec<PolicyVersion>>>,
    requests: Arc<AtomicU64>,
    frozen: bool,
}

impl RolloutBackend for Counting {
    fn generate(&self, requests: &[Request]) -> alp_core::Result<Generation> {
        self.requests
            .fetch_add(requests.len() as u64, Ordering::SeqCst);
        let engine = self.engine.as_ref().expect("published before generating");
        RolloutBackend::generate(engine, requests)
    }
    fn policy_version(&self) -> PolicyVersion {
        self.engine.as_ref().map_or(0, |e| e.policy_version())
    }
    fn publish(&mut self, version: PolicyVersion, weights: &ModelWeights) -> alp_core::Result<()> {
        self.publishes.lock().unwrap().push(version);
        match &mut self.engine {
            Some(_) if self.frozen => Ok(()),
            Some(e) => e.publish(version, weights),
            None => {
                let tok = default_task::build_tokenizer()?;
                let engine = Engine::new(Arc::new(weights.build()?), EngineConfig::default())?;
                self.engine = Some(engine.with_tokenizer(Arc::new(tok)).with_version(version));
                Ok(())
            }
        }
    }
}

fn small_sync_config() -> TrainConfig {
    TrainConfig::default()
        .apply_overrides(
            &[
                "rl.steps=3",
                "rl.prompts_per_step=2",
                "rl.group_size=2",
                "rl.mini_batch=4",
                "rl.micro_batch=2",
                "rl.max_new_tokens=4",
                "rl.max_staleness=0",
            ]
            .map(String::from),
        )
        .unwrap()
}

#[test]
fn a_user_backend_receives_every_snapshot_and_samples_every_turn() {
    let dir = tempfile::tempdir().unwrap();
    let publishes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let requests = Arc::new(AtomicU64::new(0));
    let backend = Counting {
        engine: None,
        publishes: publishes.clone(),
        requests: requests.clone(),
        frozen: false,
    };
    let mut run = Session::builder(small_sync_config(), dir.path().join("run"))
        .rollout_backend(backend)
        .build()
        .unwrap();
    for step in 1..=3u64 {
        let m = run.step().unwrap();
        assert_eq!(m.step, step);
        // Synchronous: batch s was sampled by version s − 1, which the backend reported.
        assert_eq!(m[alp_trainer::metrics::SAMPLED_BY], (step - 1) as f64);
    }
    run.stop_worker();
    // The first snapshot (version 0) and those after steps 1 and 2 (3 may or may not arrive
    // before the worker stops).
    let got = publishes.lock().unwrap().clone();
    assert!(got.starts_with(&[0, 1, 2]), "{got:?}");
    // Every episode's turns went through it: at least one request per episode and step.
    assert!(requests.load(Ordering::SeqCst) >= 3 * 4);
}

#[test]
fn a_backend_answering_from_weights_older_than_the_bound_is_refused_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Counting {
        engine: None,
        publishes: Default::default(),
        requests: Default::default(),
        frozen: true,
    };
    let mut run = Session::builder(small_sync_config(), dir.path().join("run"))
        .rollout_backend(backend)
        .build()
        .unwrap();
    // Step 1 is sampled by version 0, as it should be; step 2 by version 0 again, one older
    // than `rl.max_staleness = 0` allows.
    run.step().unwrap();
    let before = run.policy_version();
    let e = run.step().unwrap_err().to_string();
    assert!(e.contains("sampled by weight version 0"), "{e}");
    assert!(e.contains("rl.max_staleness = 0"), "{e}");
    assert_eq!(
        run.policy_version(),
        before,
        "the stale batch was trained on"
    );
}

#[test]
fn the_built_in_engine_reports_its_prefill_per_step_and_a_user_backend_need_not() {
    use alp_trainer::metrics as names;
    let dir = tempfile::tempdir().unwrap();
    let mut run = Session::builder(small_sync_config(), dir.path().join("run"))
        .build()
        .unwrap();
    let m = run.step().unwrap();
    // Every episode's first prompt is prefilled (4 episodes of at least one prompt token).
    let (prefill, reused) = (
        m[names::ROLLOUT_PREFILL_TOKENS],
        m[names::ROLLOUT_REUSED_TOKENS],
    );
    assert!(prefill >= 4.0 && reused >= 0.0, "{prefill} {reused}");
    assert!(m[names::ROLLOUT_DECODE_TOKENS_PER_S] > 0.0);
    assert!(m[names::TIME_ROLLOUT_OTHER] <= m[names::TIME_ROLLOUT]);
    run.stop_worker();
    let backend = Counting {
        engine: None,
        publishes: Default::default(),
        requests: Default::default(),
        frozen: false,
    };
    let mut run = Session::builder(small_sync_config(), dir.path().join("user"))
        .rollout_backend(backend)
        .build()
        .unwrap();
    let m = run.step().unwrap();
    assert!(m.get(names::ROLLOUT_PREFILL_TOKENS).is_none());
    run.stop_worker();
}

#[test]
fn scoring_at_sampling_gives_the_split_that_kept_copies_give() {
    // The worker scores each stale batch right after sampling it with the weights that
    // sampled (`at-sampling`, at most two copies); the reference keeps a copy of every
    // version that may still sample and scores at the update (`at-update`). Same runs (exact
    // staleness: reproducible), same engine/staleness split.
    use alp_loss::names as loss;
    let run = |mode: &str| {
        let dir = tempfile::tempdir().unwrap();
        let cfg = small_sync_config()
            .apply_overrides(&[
                "rl.steps=5".to_string(),
                "rl.max_staleness=2".into(),
                "rl.exact_staleness=true".into(),
                format!("rl.score_sampler={mode}"),
            ])
            .unwrap();
        let mut s = Session::builder(cfg, dir.path().join("run"))
            .build()
            .unwrap();
        let steps: Vec<_> = (0..5).map(|_| s.step().unwrap()).collect();
        s.stop_worker();
        steps
    };
    let (fast, slow) = (run("at-sampling"), run("at-update"));
    let mut compared = 0;
    for (a, b) in fast.iter().zip(&slow) {
        for k in [
            loss::ENGINE_KL_K3,
            loss::STALE_KL_K3,
            loss::ENGINE_RATIO_TOKEN_MAX,
        ] {
            match (a.get(k), b.get(k)) {
                (Some(x), Some(y)) if y.is_finite() => {
                    assert!(
                        (x - y).abs() <= 1e-5 * y.abs().max(1e-6),
                        "step {} {k}: {x} at sampling, {y} at the update",
                        a.step
                    );
                    compared += 1;
                }
                (x, y) => assert_eq!(x.is_some(), y.is_some(), "step {} {k}", a.step),
            }
        }
    }
    // The stale steps (staleness 2 from step 3 on) were split in both.
    assert!(compared >= 3 * 3, "{compared}");
}
