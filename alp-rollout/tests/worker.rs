//! The async worker: staleness bound under a slow consumer, clean shutdown, errors.

use alp_core::{Error, FinishReason, Trajectory, TrajectoryGroup};
use alp_model::{presets, ModelWeights};
use alp_rollout::{Engine, EngineConfig, Request, RolloutWorker, SamplingParams};
use candle_core::{DType, Device};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn weights(seed: u64) -> Arc<ModelWeights> {
    Arc::new(ModelWeights::random(&presets::tiny(), seed, DType::F32, &Device::Cpu).unwrap())
}

fn build(v: u64, w: &ModelWeights) -> alp_core::Result<Engine> {
    Ok(
        Engine::from_weights(w, DType::BF16, &Device::Cpu, EngineConfig::default())?
            .with_version(v),
    )
}

/// One group with one short sampled completion, stamped with the version.
fn produce(engine: &Engine, step: u64, version: u64) -> alp_core::Result<Vec<TrajectoryGroup>> {
    let c = Engine::generate(
        engine,
        &[Request {
            prompt: vec![1, 2, 3],
            params: SamplingParams {
                max_new_tokens: 4,
                seed: step,
                ..Default::default()
            },
        }],
    )?;
    let t = Trajectory::single_turn(
        vec![1, 2, 3],
        c[0].tokens.clone(),
        c[0].logprobs.clone(),
        version,
        0.0,
        FinishReason::MaxTokens,
    );
    Ok(vec![TrajectoryGroup {
        task_id: format!("step{step}"),
        trajectories: vec![t],
    }])
}

#[test]
fn staleness_bound_holds_with_a_slow_consumer() {
    for max_staleness in [0u64, 1, 2] {
        let w = RolloutWorker::spawn(0, weights(0), max_staleness, build, produce).unwrap();
        let mut stale_seen = 0;
        for s in 0..6u64 {
            let b = w.recv().unwrap();
            assert_eq!(b.step, s);
            assert!(
                s <= b.policy_version + max_staleness,
                "step {s} sampled by version {} (bound {max_staleness})",
                b.policy_version
            );
            assert!(b.groups[0].trajectories[0].policy_version == b.policy_version);
            stale_seen = stale_seen.max(s - b.policy_version);
            // A slow trainer step, then publish the next version.
            std::thread::sleep(Duration::from_millis(40));
            w.publish(s + 1, weights(s + 1)).unwrap();
        }
        if max_staleness == 0 {
            assert_eq!(stale_seen, 0);
        } else {
            assert!(
                stale_seen >= 1,
                "with a slow consumer the worker runs ahead"
            );
        }
        let t = Instant::now();
        let left = w.shutdown().unwrap();
        assert!(t.elapsed() < Duration::from_secs(5));
        // Nothing finished is lost: the batches produced ahead are returned.
        assert!(left.len() as u64 <= max_staleness + 1);
        for (i, b) in left.iter().enumerate() {
            assert_eq!(b.step, 6 + i as u64);
        }
    }
}

#[test]
fn shutdown_while_waiting_for_weights_does_not_hang() {
    let w = RolloutWorker::spawn(0, weights(0), 0, build, produce).unwrap();
    let b = w.recv().unwrap();
    assert_eq!(b.step, 0);
    // The worker now waits for version 1, which never comes.
    std::thread::sleep(Duration::from_millis(50));
    let t = Instant::now();
    assert!(w.shutdown().unwrap().is_empty());
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[test]
fn an_error_in_the_worker_reaches_the_caller() {
    let w = RolloutWorker::spawn(0, weights(0), 3, build, |e: &Engine, step, v| {
        if step == 2 {
            Err(Error::invalid("environment exploded at step 2"))
        } else {
            produce(e, step, v)
        }
    })
    .unwrap();
    assert!(w.recv().is_ok());
    assert!(w.recv().is_ok());
    let err = w.recv().unwrap_err().to_string();
    assert!(err.contains("exploded"), "{err}");
    assert!(w.publish(1, weights(1)).is_err() || w.recv().is_err());
}
