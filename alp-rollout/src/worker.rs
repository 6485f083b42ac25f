//! The asynchronous rollout worker: a thread that owns an engine, receives weight snapshots
//! stamped with a policy version, and sends back batches of trajectory groups stamped with the
//! version that sampled them, never exceeding a staleness bound.

use crate::backend::RolloutBackend;
use alp_core::{Error, PolicyVersion, Result, TrajectoryGroup};
use alp_model::ModelWeights;
use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One trainer step's worth of rollouts.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RolloutBatch {
    /// The trainer step this batch is for (0, 1, 2, ...).
    pub step: u64,
    /// The policy version of the weights that sampled it (the oldest trajectory's).
    pub policy_version: PolicyVersion,
    /// The groups.
    pub groups: Vec<TrajectoryGroup>,
    /// Seconds spent generating.
    pub generate_seconds: f64,
    /// Seconds spent waiting for fresh enough weights.
    pub wait_seconds: f64,
    /// The backend's counters for this batch (prefill and decode tokens and seconds), where
    /// it keeps them ([`crate::RolloutBackend::stats`]).
    #[serde(default)]
    pub engine: Option<crate::backend::GenerateStats>,
}

type Snapshot = (PolicyVersion, Arc<ModelWeights>);

/// A handle on the worker thread.
///
/// Batch `s` is generated from weights of version `v ≥ s − max_staleness` (the trainer
/// publishes version `s + 1` after its update on batch `s`). With `max_staleness = 0` the
/// worker waits for every update (synchronous RL); with 1 it samples the next batch while the
/// trainer trains on the current one.
pub struct RolloutWorker {
    weights_tx: Option<Sender<Snapshot>>,
    out_rx: Receiver<Result<RolloutBatch>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    max_staleness: u64,
}

impl RolloutWorker {
    /// Starts the worker with `weights` as version `version`. `build` makes the rollout backend
    /// from them (e.g. an [`Engine`](crate::Engine) in bf16), on the worker's thread; each
    /// snapshot published later reaches it through [`RolloutBackend::publish`]. `produce`
    /// generates the batch for a step.
    pub fn spawn<E, B, P>(
        version: PolicyVersion,
        weights: Arc<ModelWeights>,
        max_staleness: u64,
        build: B,
        produce: P,
    ) -> Result<Self>
    where
        E: RolloutBackend + 'static,
        B: FnOnce(PolicyVersion, &ModelWeights) -> Result<E> + Send + 'static,
        P: FnMut(&E, u64, PolicyVersion) -> Result<Vec<TrajectoryGroup>> + Send + 'static,
    {
        Self::spawn_from(0, version, weights, max_staleness, build, produce)
    }

    /// Like [`RolloutWorker::spawn`], but the first batch is for step `first_step` (resuming a
    /// run whose trainer is at version `version`).
    pub fn spawn_from<E, B, P>(
        first_step: u64,
        version: PolicyVersion,
        weights: Arc<ModelWeights>,
        max_staleness: u64,
        build: B,
        produce: P,
    ) -> Result<Self>
    where
        E: RolloutBackend + 'static,
        B: FnOnce(PolicyVersion, &ModelWeights) -> Result<E> + Send + 'static,
        P: FnMut(&E, u64, PolicyVersion) -> Result<Vec<TrajectoryGroup>> + Send + 'static,
    {
        Self::spawn_with(
            first_step,
            version,
            weights,
            max_staleness,
            false,
            build,
            produce,
        )
    }

    /// Like [`RolloutWorker::spawn_from`]; with `exact_lag`, batch `s` is sampled by exactly
    /// version `max(version, s − max_staleness)` rather than the newest one published, so that
    /// an asynchronous run does not depend on timing (reproducible, and bit-identical across
    /// a resume). Versions must then be published one by one (`version + 1`, `+ 2`, …).
    pub fn spawn_with<E, B, P>(
        first_step: u64,
        version: PolicyVersion,
        weights: Arc<ModelWeights>,
        max_staleness: u64,
        exact_lag: bool,
        build: B,
        mut produce: P,
    ) -> Result<Self>
    where
        E: RolloutBackend + 'static,
        B: FnOnce(PolicyVersion, &ModelWeights) -> Result<E> + Send + 'static,
        P: FnMut(&E, u64, PolicyVersion) -> Result<Vec<TrajectoryGroup>> + Send + 'static,
    {
        let (weights_tx, weights_rx) = unbounded::<Snapshot>();
        let (out_tx, out_rx) = unbounded::<Result<RolloutBatch>>();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_w = stop.clone();
        let handle = std::thread::Builder::new()
            .name("alp-rollout".into())
            .spawn(move || {
                let run = || -> Result<()> {
                    let mut engine = build(version, &weights)?;
                    let mut current = version;
                    let mut pending: Option<Snapshot> = None;
                    let mut step: u64 = first_step;
                    loop {
                        if stop_w.load(Ordering::SeqCst) {
                            return Ok(());
                        }
                        let waited = Instant::now();
                        // Take snapshots while the one held is too stale: with `exact_lag` one
                        // at a time, stopping at version step − max_staleness; otherwise every
                        // one ready (the newest wins). Block while none is fresh enough.
                        loop {
                            let held = pending.as_ref().map_or(current, |(v, _)| *v);
                            let fresh = held + max_staleness >= step;
                            if exact_lag && fresh {
                                break;
                            }
                            match weights_rx.try_recv() {
                                Ok(s) => {
                                    pending = Some(s);
                                    continue;
                                }
                                Err(TryRecvError::Empty) if fresh => break,
                                Err(TryRecvError::Empty) => {}
                                Err(TryRecvError::Disconnected) if fresh => break,
                                Err(TryRecvError::Disconnected) => return Ok(()),
                            }
                            match weights_rx.recv_timeout(Duration::from_millis(20)) {
                                Ok(s) => pending = Some(s),
                                Err(RecvTimeoutError::Timeout) => {}
                                Err(RecvTimeoutError::Disconnected) => return Ok(()),
                            }
                            if stop_w.load(Ordering::SeqCst) {
                                return Ok(());
                            }
                        }
                        let wait_seconds = waited.elapsed().as_secs_f64();
                        if let Some((v, w)) = pending.take() {
                            engine.publish(v, &w)?;
                            current = v;
                        }
                        let t = Instant::now();
                        let before = engine.stats();
                        let groups = produce(&engine, step, current)?;
                        let stats = engine.stats().zip(before).map(|(a, b)| a.since(&b));
                        // The batch is as stale as its oldest trajectory: a backend may answer
                        // from weights older than the last published ones (a server between
                        // reloads).
                        let oldest = groups
                            .iter()
                            .flat_map(|g| &g.trajectories)
                            .map(|t| t.policy_version)
                            .min();
                        let batch = RolloutBatch {
                            step,
                            policy_version: oldest.unwrap_or(current),
                            groups,
                            generate_seconds: t.elapsed().as_secs_f64(),
                            wait_seconds,
                            engine: stats,
                        };
                        if out_tx.send(Ok(batch)).is_err() {
                            return Ok(());
                        }
                        step += 1;
                    }
                };
                if let Err(e) = run() {
                    let _ = out_tx.send(Err(e));
                }
            })
            .map_err(|e| Error::Msg(format!("cannot start the rollout thread: {e}")))?;
        Ok(RolloutWorker {
            weights_tx: Some(weights_tx),
            out_rx,
            stop,
            handle: Some(handle),
            max_staleness,
        })
    }

    /// The staleness bound.
    pub fn max_staleness(&self) -> u64 {
        self.max_staleness
    }

    /// Publishes new weights as `version`.
    pub fn publish(&self, version: PolicyVersion, weights: Arc<ModelWeights>) -> Result<()> {
        self.weights_tx
            .as_ref()
            .ok_or_else(|| Error::Msg("the rollout worker is shut down".into()))?
            .send((version, weights))
            .map_err(|_| self.stopped_error())
    }

    /// Why the worker stopped: the error it returned, if one is waiting in the channel.
    fn stopped_error(&self) -> Error {
        while let Ok(r) = self.out_rx.try_recv() {
            if let Err(e) = r {
                return Error::Msg(format!("the rollout worker stopped: {e}"));
            }
        }
        Error::Msg("the rollout worker stopped without an error".into())
    }

    /// A finished batch if one is waiting (never blocks).
    pub fn try_recv(&self) -> Option<Result<RolloutBatch>> {
        self.out_rx.try_recv().ok()
    }

    /// The next batch (blocking). An error inside the worker is returned here.
    pub fn recv(&self) -> Result<RolloutBatch> {
        match self.out_rx.recv() {
            Ok(r) => r,
            Err(_) => Err(Error::Msg(
                "the rollout worker stopped without a batch".into(),
            )),
        }
    }

    /// Stops the worker, waits for it, and returns the batches it finished that were not yet
    /// received (an error from the worker is returned instead).
    pub fn shutdown(mut self) -> Result<Vec<RolloutBatch>> {
        self.stop.store(true, Ordering::SeqCst);
        self.weights_tx.take();
        if let Some(h) = self.handle.take() {
            h.join()
                .map_err(|_| Error::Msg("the rollout thread panicked".into()))?;
        }
        let mut out = Vec::new();
        while let Ok(r) = self.out_rx.try_recv() {
            out.push(r?);
        }
        Ok(out)
    }
}

impl Drop for RolloutWorker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.weights_tx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
