//! The engine thread: one continuous batch ([`Engine::serve`]) fed by the HTTP handlers, and
//! weight swaps that wait for the admitted requests to finish on the old weights.

use alp_core::{Error, PolicyVersion, Result};
use alp_rollout::{Completion, Engine, Request};
use crossbeam_channel::{Receiver, Sender};
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the engine thread produced for one HTTP request: a result per sequence and the
/// weight version that ran them.
pub struct Answer {
    pub results: Vec<Result<Completion>>,
    pub version: PolicyVersion,
}

/// A message to the engine thread.
pub enum Msg {
    /// Sample these sequences; answer on `reply`.
    Generate {
        requests: Vec<Request>,
        reply: tokio::sync::oneshot::Sender<Answer>,
    },
    /// Serve `engine` as `version` once the admitted requests finish; then `ack`.
    Swap {
        engine: Box<Engine>,
        version: PolicyVersion,
        ack: tokio::sync::oneshot::Sender<()>,
    },
}

/// Counters the HTTP side reads.
#[derive(Default)]
pub struct Shared {
    /// Sequences sent to the engine and not finished.
    pub queued: AtomicUsize,
    /// Completion requests answered.
    pub requests: AtomicU64,
    /// Tokens generated.
    pub tokens: AtomicU64,
    /// The version serving now.
    pub version: AtomicU64,
    /// Whether any weights are loaded.
    pub has_weights: AtomicBool,
    /// (when, tokens) of recent completions, for tokens/s.
    pub recent: Mutex<VecDeque<(Instant, usize)>>,
}

/// The window of [`Shared::tokens_per_second`].
const WINDOW: Duration = Duration::from_secs(10);

impl Shared {
    fn record(&self, tokens: usize) {
        self.tokens.fetch_add(tokens as u64, Ordering::Relaxed);
        let now = Instant::now();
        let mut r = self.recent.lock().expect("recent lock");
        r.push_back((now, tokens));
        while r
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > WINDOW)
        {
            r.pop_front();
        }
    }

    /// Tokens generated per second over the last ten seconds.
    pub fn tokens_per_second(&self) -> f64 {
        let now = Instant::now();
        let r = self.recent.lock().expect("recent lock");
        let n: usize = r
            .iter()
            .filter(|(t, _)| now.duration_since(*t) <= WINDOW)
            .map(|(_, n)| n)
            .sum();
        n as f64 / WINDOW.as_secs_f64()
    }
}

/// A swap received while a batch runs: the new engine, its version and whom to tell.
type PendingSwap = (Box<Engine>, PolicyVersion, tokio::sync::oneshot::Sender<()>);

/// One HTTP request's sequences in the running batch.
struct Job {
    reply: Option<tokio::sync::oneshot::Sender<Answer>>,
    results: Vec<Option<Result<Completion>>>,
    remaining: usize,
}

/// The engine thread's handle.
pub struct EngineThread {
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EngineThread {
    /// Starts the thread over `initial`; it stops when every sender of its channel is gone.
    pub fn spawn(
        initial: Option<(Engine, PolicyVersion)>,
        shared: Arc<Shared>,
    ) -> (Self, Sender<Msg>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        if let Some((_, v)) = &initial {
            shared.version.store(*v, Ordering::SeqCst);
            shared.has_weights.store(true, Ordering::SeqCst);
        }
        let thread = std::thread::Builder::new()
            .name("alp-serve-engine".into())
            .spawn(move || run(initial, rx, shared))
            .expect("spawning the engine thread");
        (
            EngineThread {
                thread: Some(thread),
            },
            tx,
        )
    }

    /// Waits for the thread to end.
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(initial: Option<(Engine, PolicyVersion)>, rx: Receiver<Msg>, shared: Arc<Shared>) {
    let mut current = initial;
    loop {
        let Some((engine, version)) = current.as_ref() else {
            // No weights yet: the first swap installs them.
            match rx.recv() {
                Ok(Msg::Swap {
                    engine,
                    version,
                    ack,
                }) => {
                    install(&shared, &mut current, *engine, version);
                    let _ = ack.send(());
                }
                Ok(Msg::Generate { requests, reply }) => {
                    shared.queued.fetch_sub(requests.len(), Ordering::SeqCst);
                    let results = requests
                        .iter()
                        .map(|_| {
                            Err(Error::Msg(
                                "no weights are loaded yet (POST /reload)".into(),
                            ))
                        })
                        .collect();
                    let _ = reply.send(Answer {
                        results,
                        version: 0,
                    });
                }
                Err(_) => return,
            }
            continue;
        };
        let version = *version;
        let jobs: RefCell<HashMap<usize, Job>> = RefCell::new(HashMap::new());
        let index: RefCell<Vec<(usize, usize)>> = RefCell::new(Vec::new());
        let swap: RefCell<Option<PendingSwap>> = RefCell::new(None);
        let closed = std::cell::Cell::new(false);
        let mut next_job = 0usize;
        let served = engine.serve(
            |idle| {
                if swap.borrow().is_some() {
                    return None;
                }
                let first = if idle {
                    match rx.recv() {
                        Ok(m) => Some(m),
                        Err(_) => {
                            closed.set(true);
                            return None;
                        }
                    }
                } else {
                    None
                };
                let mut out = Vec::new();
                for m in first
                    .into_iter()
                    .chain(std::iter::from_fn(|| rx.try_recv().ok()))
                {
                    match m {
                        Msg::Generate { requests, reply } => {
                            let job = next_job;
                            next_job += 1;
                            let mut idx = index.borrow_mut();
                            for slot in 0..requests.len() {
                                idx.push((job, slot));
                            }
                            jobs.borrow_mut().insert(
                                job,
                                Job {
                                    reply: Some(reply),
                                    results: (0..requests.len()).map(|_| None).collect(),
                                    remaining: requests.len(),
                                },
                            );
                            out.extend(requests);
                        }
                        Msg::Swap {
                            engine,
                            version,
                            ack,
                        } => {
                            *swap.borrow_mut() = Some((engine, version, ack));
                            break;
                        }
                    }
                }
                Some(out)
            },
            |i, result| {
                let (job, slot) = index.borrow()[i];
                let mut jobs = jobs.borrow_mut();
                let Some(j) = jobs.get_mut(&job) else { return };
                if let Ok(c) = &result {
                    shared.record(c.tokens.len());
                }
                shared.queued.fetch_sub(1, Ordering::SeqCst);
                j.results[slot] = Some(result);
                j.remaining -= 1;
                if j.remaining == 0 {
                    let j = jobs.remove(&job).expect("present");
                    finish(j, version);
                }
            },
        );
        // A failed batch fails every request still in it.
        let left: Vec<Job> = jobs.into_inner().into_values().collect();
        if let Err(e) = served {
            let msg = format!("the engine failed: {e}");
            for mut j in left {
                for r in j.results.iter_mut().filter(|r| r.is_none()) {
                    shared.queued.fetch_sub(1, Ordering::SeqCst);
                    *r = Some(Err(Error::Msg(msg.clone())));
                }
                finish(j, version);
            }
        }
        if let Some((engine, version, ack)) = swap.into_inner() {
            install(&shared, &mut current, *engine, version);
            let _ = ack.send(());
        }
        if closed.get() {
            return;
        }
    }
}

fn install(
    shared: &Shared,
    current: &mut Option<(Engine, PolicyVersion)>,
    engine: Engine,
    version: PolicyVersion,
) {
    *current = Some((engine, version));
    shared.version.store(version, Ordering::SeqCst);
    shared.has_weights.store(true, Ordering::SeqCst);
}

fn finish(mut j: Job, version: PolicyVersion) {
    let results = j
        .results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(Error::Msg("a sequence got no result".into()))))
        .collect();
    if let Some(reply) = j.reply.take() {
        let _ = reply.send(Answer { results, version });
    }
}
