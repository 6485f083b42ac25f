//! The library entry point of a training run: [`Session`] builds a run from a config (or
//! resumes one), and is driven step by step — SFT, evaluations, RL steps, checkpoints —
//! returning typed metrics. It prints nothing and touches no signal handler; what it has to
//! say goes to its [`MetricsSink`]s. The `alp` application (crate `alp-cli`, whose `run`
//! module is the schedule of `alp train`), the examples and `alp compare` drive it.

use crate::checkpoint::{self, Manifest};
use crate::config::{EnvKind, RolloutBackendKind, TrainConfig};
use crate::default_task;
use crate::eval;
use crate::eval_result::EvalResult;
use crate::metrics::MetricsSink;
use crate::metrics::{self as names, StepMetrics};
use crate::trainer::Trainer;
use alp_core::{Environment, Error, Result, Task, TaskSource};
use alp_envs::math::Split;
use alp_loss::PolicyObjective;
use alp_model::Tokenizer;
use alp_rollout::{run_episodes, Engine, Episodes, RemoteBackend, RolloutBackend, RolloutWorker};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Makes the environment of one episode from its task (the trainer's `rl.env` by default).
pub type EnvFactory = Arc<dyn Fn(&Task) -> Result<Box<dyn Environment>> + Send + Sync>;

/// A run in progress: the trainer, its run directory and its rollout worker.
pub struct Session {
    /// The model, optimizers and counters.
    trainer: Trainer,
    /// The run directory.
    dir: PathBuf,
    /// Held-out evaluation before RL (from the checkpoint when resumed).
    eval_before: Option<EvalResult>,
    /// True when this session continues a checkpoint.
    resumed: bool,
    /// True when this run started from another run's weights (no SFT of its own).
    warm: bool,
    /// SFT steps done so far.
    sft_steps_done: usize,
    worker: Option<RolloutWorker>,
    /// Batches received from the worker (or a checkpoint) and not yet trained, in step order.
    ahead: std::collections::VecDeque<alp_rollout::RolloutBatch>,
    prior_wall: f64,
    started: Instant,
    /// A user's environment factory (else the config's `rl.env`).
    env: Option<EnvFactory>,
    /// A user's training task stream (else the config's arithmetic tasks).
    tasks: Option<Arc<Mutex<Box<dyn TaskSource>>>>,
    /// A user's held-out task source for evaluations (else the config's held-out stream).
    heldout: Option<Box<dyn TaskSource>>,
    /// Sinks that receive every step's metrics.
    sinks: Vec<Box<dyn MetricsSink>>,
    /// Where rollouts come from.
    backend: BackendSlot,
    /// The RL step of the last checkpoint write, whether it succeeded or not.
    save_attempt: Option<u64>,
    /// Lines for people not yet handed to a sink (a session without sinks keeps them for
    /// [`Session::take_messages`]).
    messages: Vec<String>,
    /// `rl.score_sampler = "at-sampling"`: f32 copies of the versions the worker samples with
    /// ([`Samplers::offer`] says how many), and its scores by step.
    samplers: Samplers,
}

/// A weight version and its unperturbed f32 model.
type VersionModel = (u64, Arc<alp_model::Model>);

/// What the rollout worker needs to score batches under the version that sampled them.
#[derive(Default, Clone)]
struct Samplers {
    /// (version, its unperturbed f32 model), oldest first.
    models: Arc<Mutex<std::collections::VecDeque<VersionModel>>>,
    /// Step → its trajectories' log-probs under their sampling version, in batch order.
    scores: Arc<Mutex<std::collections::HashMap<u64, Vec<Vec<f32>>>>>,
}

impl Samplers {
    /// Offers the current version's copy (if the trainer makes one) to the worker. Without
    /// `rl.exact_staleness` the worker samples its next batch with the newest version, so
    /// the copies offered after the one it samples with and before this one are dropped:
    /// one copy, two while a new one waits for the worker. With it the worker samples batch
    /// s with version s − `max_staleness` exactly, and every version from the one it samples
    /// with on is kept (as the worker keeps their rollout snapshots).
    fn offer(&self, trainer: &Trainer) -> Result<()> {
        let lock = || {
            self.models
                .lock()
                .map_err(|_| Error::Msg("the sampler models' lock was poisoned".into()))
        };
        if lock()?.iter().any(|(v, _)| *v == trainer.version) {
            return Ok(());
        }
        // The copy is made outside the lock: the worker looks its model up meanwhile.
        let Some(m) = trainer.sampler_scorer()? else {
            return Ok(());
        };
        let mut q = lock()?;
        if !trainer.cfg.rl.exact_staleness && q.len() > 1 {
            // Keep the oldest (the worker may be sampling with it) and the newest.
            let first = q.pop_front();
            q.clear();
            q.extend(first);
        }
        q.push_back((trainer.version, Arc::new(m)));
        Ok(())
    }

    /// Forgets the copies older than `version`: the worker samples with it from now on.
    fn retire_below(&self, version: u64) {
        if let Ok(mut q) = self.models.lock() {
            q.retain(|(v, _)| *v >= version);
        }
    }

    /// Scores `groups` (sampled by `version` for `step`) if that version's copy is at hand.
    fn score(
        &self,
        step: u64,
        version: u64,
        groups: &[alp_core::TrajectoryGroup],
        device: &candle_core::Device,
    ) -> Result<()> {
        let model = {
            let q = self
                .models
                .lock()
                .map_err(|_| Error::Msg("the sampler models' lock was poisoned".into()))?;
            q.iter()
                .find(|(v, _)| *v == version)
                .map(|(_, m)| m.clone())
        };
        let Some(model) = model else {
            return Ok(());
        };
        let trajs: Vec<&alp_core::Trajectory> =
            groups.iter().flat_map(|g| g.trajectories.iter()).collect();
        // Rows per forward: their logits (and the log-softmax beside them) within ~256 MiB,
        // so that scoring beside the trainer's update does not double a large vocabulary's
        // peak (at the 0.5B shape, 256 positions: one row).
        let longest = trajs
            .iter()
            .map(|t| t.prompt.len() + t.response.len())
            .max()
            .unwrap_or(1);
        let per_row = 4 * longest * model.config().vocab_size;
        let chunk = ((256usize << 20) / per_row.max(1)).clamp(1, 16);
        let logp = crate::rl_step::score_trajectories(&model, &trajs, chunk, device)?;
        self.scores
            .lock()
            .map_err(|_| Error::Msg("the sampler scores' lock was poisoned".into()))?
            .insert(step, logp);
        Ok(())
    }

    /// The scores of `step`, forgetting those of earlier steps.
    fn take(&self, step: u64) -> Option<Vec<Vec<f32>>> {
        let mut s = self.scores.lock().ok()?;
        s.retain(|k, _| *k >= step);
        s.remove(&step)
    }
}

/// The session's rollout backend: the built-in engine, or a user's until the worker takes it.
enum BackendSlot {
    /// An in-process engine over each snapshot (built by the worker).
    BuiltIn,
    /// A user's backend, not yet handed to a worker.
    User(Box<dyn RolloutBackend>),
    /// A user's backend, owned by the worker (started once per session).
    Taken,
}

/// What a [`SessionBuilder`] builds on.
enum Start {
    /// A fresh run of a config in a directory.
    Fresh(Box<TrainConfig>, PathBuf),
    /// The newest checkpoint under a path, its config edited by overrides.
    Resume(PathBuf, Vec<String>),
}

/// Builds a [`Session`] whose pieces are a user's where handed in and the config's built-ins
/// elsewhere ([`Session::builder`]).
pub struct SessionBuilder {
    start: Start,
    env: Option<EnvFactory>,
    tasks: Option<Box<dyn TaskSource>>,
    heldout: Option<Box<dyn TaskSource>>,
    objective: Option<Arc<dyn PolicyObjective>>,
    sinks: Vec<Box<dyn MetricsSink>>,
    backend: Option<Box<dyn RolloutBackend>>,
}

impl SessionBuilder {
    /// Episodes run in environments made by `make_env` (instead of `rl.env`'s).
    pub fn environment(
        mut self,
        make_env: impl Fn(&Task) -> Result<Box<dyn Environment>> + Send + Sync + 'static,
    ) -> Self {
        self.env = Some(Arc::new(make_env));
        self
    }

    /// Training tasks come from `tasks` (instead of the config's arithmetic stream); step `s`
    /// takes the `rl.prompts_per_step` tasks from cursor `s · prompts_per_step`.
    pub fn tasks(mut self, tasks: impl TaskSource + 'static) -> Self {
        self.tasks = Some(Box::new(tasks));
        self
    }

    /// Evaluations run on the first `eval.tasks` tasks of `heldout` (from cursor 0, instead of
    /// the config's held-out arithmetic stream), graded by the session's environment; the
    /// tool-call rates count every task.
    pub fn heldout_tasks(mut self, heldout: impl TaskSource + 'static) -> Self {
        self.heldout = Some(Box::new(heldout));
        self
    }

    /// RL updates minimise `objective` (instead of `rl.objective`); log π_old is computed
    /// when the objective says it reads it ([`PolicyObjective::needs_logp_old`]).
    pub fn objective(mut self, objective: impl PolicyObjective + 'static) -> Self {
        self.objective = Some(Arc::new(objective));
        self
    }

    /// Rollouts come from `backend` (instead of an in-process engine over the rollout
    /// snapshot): it receives every published snapshot through
    /// [`RolloutBackend::publish`], the first when the worker starts.
    pub fn rollout_backend(mut self, backend: impl RolloutBackend + 'static) -> Self {
        self.backend = Some(Box::new(backend));
        self
    }

    /// Every step's metrics, every evaluation ([`Session::evaluate`]) and every message also
    /// go to `sink`.
    pub fn sink(mut self, sink: impl MetricsSink + 'static) -> Self {
        self.sinks.push(Box::new(sink));
        self
    }

    /// The session: a fresh run of the config in the directory (created; `config.toml`
    /// written), or the resumed run ([`Session::resume_with`]) with these pieces.
    pub fn build(self) -> Result<Session> {
        let mut s = match self.start {
            Start::Fresh(cfg, dir) => {
                if self.env.is_none() {
                    check_built_in_env(&cfg)?;
                }
                Session::create_unchecked(*cfg, dir)?
            }
            Start::Resume(path, overrides) => {
                Session::resume_inner(&path, &overrides, None, self.env.is_none())?
            }
        };
        if let Some(o) = self.objective {
            s.trainer.set_objective(o);
        }
        s.env = self.env;
        if let Some(t) = self.tasks {
            s.tasks = Some(Arc::new(Mutex::new(t)));
        }
        if let Some(h) = self.heldout {
            s.heldout = Some(h);
        }
        s.sinks = self.sinks;
        // What the resume noted goes to the sinks now (kept where there are none).
        for line in s.take_messages() {
            s.message(line);
        }
        s.backend = match self.backend {
            Some(b) => BackendSlot::User(b),
            None => BackendSlot::BuiltIn,
        };
        Ok(s)
    }
}

/// Stops a run of the built-in Python environment before any work where its sandbox cannot
/// start here, saying how to install it.
fn check_built_in_env(cfg: &TrainConfig) -> Result<()> {
    if cfg.rl.env != EnvKind::Python {
        return Ok(());
    }
    alp_envs::tools::PythonSandbox::new(cfg.rl.python.clone()).map_err(|e| {
        Error::config(
            "rl.env",
            format!(
                "rl.env = \"python\" runs the model's code in a bubblewrap sandbox, which cannot start on this machine: {e}. Install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap) or choose rl.env = \"tool\" or \"math\""
            ),
        )
    })?;
    Ok(())
}

/// A fresh default directory name: `runs/run-<seconds>-<pid>-<n>`, unique within a process and
/// across processes started in the same second.
pub fn default_run_dir() -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    PathBuf::from("runs").join(format!("run-{ts}-{}-{n}", std::process::id()))
}

/// Makes `dir` this run's own: refuses a directory that already holds files (another run's
/// checkpoints and metrics) unless `overwrite`, which clears it first.
pub fn claim_dir(dir: &Path, overwrite: bool) -> Result<()> {
    let holds_files = std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some());
    if holds_files {
        if !overwrite {
            return Err(Error::config(
                "--out",
                format!(
                    "{} already holds files (another run or model); pass --resume {0} to continue a run there, --force to replace what it holds, or choose another directory",
                    dir.display()
                ),
            ));
        }
        std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    Ok(())
}

impl Session {
    /// A builder for a fresh run of `cfg` in `dir` that takes a user's environment, task
    /// source, objective, metrics sinks and rollout backend.
    pub fn builder(cfg: TrainConfig, dir: impl Into<PathBuf>) -> SessionBuilder {
        Self::builder_from(Start::Fresh(Box::new(cfg), dir.into()))
    }

    /// A builder that continues the newest checkpoint under `path` (as [`Session::resume`])
    /// with a user's pieces: hand it the same environment, task sources and objective the run
    /// was built with, and it continues as the uninterrupted run would (the task sources are
    /// sought to the step's cursor; the rollout batches sampled ahead come from the
    /// checkpoint).
    pub fn resume_with(path: impl Into<PathBuf>, overrides: &[String]) -> SessionBuilder {
        Self::builder_from(Start::Resume(path.into(), overrides.to_vec()))
    }

    fn builder_from(start: Start) -> SessionBuilder {
        SessionBuilder {
            start,
            env: None,
            tasks: None,
            heldout: None,
            objective: None,
            sinks: Vec::new(),
            backend: None,
        }
    }

    /// A fresh run of `cfg` in `dir` (created; `config.toml` written).
    pub fn create(cfg: TrainConfig, dir: PathBuf) -> Result<Self> {
        check_built_in_env(&cfg)?;
        Self::create_unchecked(cfg, dir)
    }

    fn create_unchecked(cfg: TrainConfig, dir: PathBuf) -> Result<Self> {
        cfg.validate()?;
        let trainer = Trainer::new(cfg)?;
        Self::open(trainer, dir, None)
    }

    /// A fresh run of `cfg` in `dir` that starts from the weights of the newest checkpoint
    /// under `warm` (e.g. a shared SFT warm start): fresh optimizer and perturbation from
    /// `cfg`, no SFT, the checkpoint's evaluation before RL carried over.
    pub fn start_from(warm: &Path, cfg: TrainConfig, dir: PathBuf) -> Result<Self> {
        cfg.validate()?;
        check_built_in_env(&cfg)?;
        let ck = checkpoint::latest(warm)?;
        let man = checkpoint::read_manifest(&ck)?;
        let device = alp_model::parse_device(&cfg.model.device)?;
        let weights = checkpoint::load_weights(&ck, cfg.model.dtype.candle(), &device)?;
        let tok = Self::checkpoint_tokenizer(&ck, &cfg)?;
        let lora = cfg.model.lora.is_on();
        let mut trainer = Trainer::from_weights(cfg, &weights, tok)?;
        if lora {
            // The adapter trains over the warm start's base: its model directory (a full
            // checkpoint), or the base its own LoRA run recorded.
            trainer.lora_base_dir = match weights.adapter {
                Some(_) => man.lora_base.clone(),
                None => Some(std::path::absolute(ck.join("model")).map_err(|e| Error::io(&ck, e))?),
            };
        }
        let mut s = Self::open(trainer, dir, None)?;
        s.eval_before = man.eval_before_rl;
        s.warm = true;
        s.sft_steps_done = s.config().sft.steps;
        Ok(s)
    }

    /// Starts the run in `dir` over from its `config.toml` (edited by `overrides`): what
    /// `--resume` does for a run that stopped before its first complete checkpoint.
    pub fn restart(dir: &Path, overrides: &[String]) -> Result<Self> {
        let p = dir.join("config.toml");
        let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
        let cfg = TrainConfig::from_toml(&text)?.apply_overrides(overrides)?;
        Self::create(cfg, dir.to_path_buf())
    }

    fn checkpoint_tokenizer(ck: &Path, cfg: &TrainConfig) -> Result<Tokenizer> {
        let dir = checkpoint::tokenizer_dir(ck);
        let tok = Tokenizer::load(&dir)?.ok_or_else(|| Error::MissingFile {
            path: dir.join("tokenizer.json"),
            hint: "the checkpoint has no tokenizer".into(),
        })?;
        if cfg.model.is_embedded() {
            tok.with_chat_template(default_task::CHAT_TEMPLATE)
                .with_eos_token(default_task::EOS)
        } else {
            Ok(tok)
        }
    }

    /// Continues the newest checkpoint under `path` (a run directory or a checkpoint), its
    /// saved config edited by `overrides`; the run directory is `out` or the checkpoint's run.
    pub fn resume(path: &Path, overrides: &[String], out: Option<PathBuf>) -> Result<Self> {
        Self::resume_inner(path, overrides, out, true)
    }

    fn resume_inner(
        path: &Path,
        overrides: &[String],
        out: Option<PathBuf>,
        built_in_env: bool,
    ) -> Result<Self> {
        let mut notes = Vec::new();
        let ck = checkpoint::latest_noting(path, &mut notes)?;
        notes.push(format!("resuming from {}", ck.display()));
        let man = checkpoint::read_manifest(&ck)?;
        let cfg = TrainConfig::from_toml(&man.config)?.apply_overrides(overrides)?;
        cfg.validate()?;
        if built_in_env {
            check_built_in_env(&cfg)?;
        }
        let dir = out.unwrap_or_else(|| {
            ck.parent()
                .and_then(|p| p.parent())
                .map(Path::to_path_buf)
                .unwrap_or_else(|| path.to_path_buf())
        });
        let device = alp_model::parse_device(&cfg.model.device)?;
        let weights = checkpoint::load_weights(&ck, cfg.model.dtype.candle(), &device)?;
        let tok = Self::checkpoint_tokenizer(&ck, &cfg)?;
        let sft_done = man.sft_steps_done.unwrap_or(usize::MAX);
        let mut t = if weights.adapter.is_none() && Trainer::defers_lora(&cfg, sft_done) {
            Trainer::from_weights_full(cfg, &weights, tok)?
        } else {
            Trainer::from_weights(cfg, &weights, tok)?
        };
        t.lora_base_dir = man.lora_base.clone();
        checkpoint::restore_state(&ck, &mut t, &man)?;
        // The KL term's reference is the policy RL started from: the run's step-0 checkpoint.
        let first = checkpoint::checkpoint_dir(&dir, 0);
        if t.cfg.rl.kl.coef > 0.0 && first.exists() {
            t.set_reference(&checkpoint::load_weights(
                &first,
                t.cfg.model.dtype.candle(),
                &device,
            )?)?;
        }
        let mut s = Self::open(t, dir, Some(man))?;
        s.ahead = checkpoint::read_pending(&ck)?.into();
        s.messages = notes;
        Ok(s)
    }

    fn open(trainer: Trainer, dir: PathBuf, man: Option<Manifest>) -> Result<Self> {
        // A dataset file's tasks (read before anything is written: a bad record stops here).
        let mix = &trainer.cfg.tasks;
        type Source = Option<Box<dyn TaskSource>>;
        let (tasks, heldout): (Source, Source) = if mix.train_file.is_empty() {
            (None, None)
        } else {
            (
                Some(Box::new(alp_envs::math::TaskList::cycled(
                    mix.load(&mix.train_file)?,
                    trainer.cfg.seed,
                ))),
                Some(Box::new(alp_envs::math::TaskList::once(
                    mix.load(&mix.heldout_file)?,
                ))),
            )
        };
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let cfg_path = dir.join("config.toml");
        std::fs::write(&cfg_path, trainer.cfg.to_toml()?).map_err(|e| Error::io(&cfg_path, e))?;
        Ok(Session {
            trainer,
            dir,
            eval_before: man.as_ref().and_then(|m| m.eval_before_rl.clone()),
            resumed: man.is_some(),
            warm: false,
            sft_steps_done: man
                .as_ref()
                .map_or(0, |m| m.sft_steps_done.unwrap_or(usize::MAX)),
            worker: None,
            ahead: Default::default(),
            prior_wall: man.map(|m| m.wall_seconds).unwrap_or(0.0),
            started: Instant::now(),
            env: None,
            tasks: tasks.map(|t| Arc::new(Mutex::new(t))),
            heldout,
            sinks: Vec::new(),
            backend: BackendSlot::BuiltIn,
            save_attempt: None,
            messages: Vec::new(),
            samplers: Samplers::default(),
        })
    }

    /// The run's settings.
    pub fn config(&self) -> &TrainConfig {
        &self.trainer.cfg
    }

    /// Seconds of the run so far, earlier sessions included.
    pub fn wall_seconds(&self) -> f64 {
        self.prior_wall + self.started.elapsed().as_secs_f64()
    }

    /// Whether this run still has SFT warm-start steps to do (the embedded default, fresh or
    /// resumed from an interrupted SFT).
    pub fn needs_sft(&self) -> bool {
        !self.warm
            && self.config().model.is_embedded()
            && self.sft_steps_done < self.config().sft.steps
    }

    /// The phase the run is in: `sft` until its warm start is complete, then `rl`.
    pub fn phase(&self) -> &'static str {
        if self.needs_sft() {
            "sft"
        } else {
            "rl"
        }
    }

    /// Runs the SFT warm start; see [`crate::sft::run_sft`].
    pub fn sft(
        &mut self,
        stop: Option<&AtomicBool>,
        progress: &mut dyn FnMut(usize, f64),
    ) -> Result<Vec<f64>> {
        let start = self.sft_steps_done;
        let losses = crate::sft::run_sft(&mut self.trainer, start, stop, progress)?;
        self.sft_steps_done = start + losses.len();
        if self.config().model.lora.is_on()
            && !self.trainer.is_lora()
            && !Trainer::defers_lora(self.config(), self.sft_steps_done)
        {
            self.start_lora()?;
        }
        Ok(losses)
    }

    /// After a LoRA run's full-weight warm start: its weights are written once to
    /// `<run>/base` (the base every later checkpoint's adapter applies to) and an adapter
    /// trains from here.
    fn start_lora(&mut self) -> Result<()> {
        let base = self.dir.join("base");
        let tmp = self.dir.join(".tmp-base");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::file_op("remove", &tmp, e))?;
        }
        let t = &self.trainer;
        t.weights()?
            .snapshot(candle_core::DType::F32, &candle_core::Device::Cpu)?
            .save(&tmp)?;
        t.tokenizer.save(&tmp)?;
        alp_core::fsio::sync_dir(&tmp)?;
        if base.exists() {
            std::fs::remove_dir_all(&base).map_err(|e| Error::file_op("remove", &base, e))?;
        }
        std::fs::rename(&tmp, &base).map_err(|e| Error::file_op("rename", &tmp, e))?;
        let abs = std::path::absolute(&base).map_err(|e| Error::io(&base, e))?;
        self.trainer.start_lora(abs)?;
        self.message(format!(
            "SFT done: its weights are the frozen base ({}); RL trains a rank-{} adapter",
            base.display(),
            self.config().model.lora.r
        ));
        Ok(())
    }

    /// Held-out evaluation on `eval.tasks` tasks (the builder's held-out source, else the
    /// config's), in the session's environment, greedy and with `k` samples at temperature 1;
    /// the result also goes to the sinks, tagged `tag` (e.g. "before RL", "step 50").
    pub fn evaluate(&mut self, k: usize, tag: &str) -> Result<EvalResult> {
        let n = self.config().eval.tasks;
        let tasks = match &mut self.heldout {
            Some(src) => {
                src.seek(0);
                let tasks: Vec<Task> = (0..n).map_while(|_| src.next_task()).collect();
                if tasks.is_empty() {
                    return Err(Error::invalid(
                        "the held-out task source gave no task; hand Session::builder a source with at least one (heldout_tasks)",
                    ));
                }
                tasks
            }
            None => eval::heldout_tasks(&self.trainer, n),
        };
        let pieces = match &self.env {
            Some(make_env) => eval::EvalPieces::user(&**make_env),
            None => eval::EvalPieces::built_in(&self.trainer, self.trainer.cfg.rl.env),
        };
        // A user's held-out tasks name their own kinds: the tool-call rates count them all.
        let tool_worthy: &dyn Fn(&str) -> bool = if self.heldout.is_some() {
            &|_| true
        } else {
            &default_task::is_tool_worthy
        };
        let res = eval::evaluate_with(&self.trainer, &tasks, &pieces, tool_worthy, k)?;
        let step = self.trainer.step;
        for s in &mut self.sinks {
            s.eval(step, tag, &res)?;
        }
        Ok(res)
    }

    /// Writes a checkpoint of the current state, with the rollout batches sampled ahead by
    /// weights older than the current ones (so that a resume trains on exactly the batches an
    /// uninterrupted run would: with `rl.exact_staleness` it first waits for every batch that
    /// needs an older version; otherwise it takes those already finished).
    pub fn save_checkpoint(&mut self) -> Result<PathBuf> {
        self.save_attempt = Some(self.trainer.step);
        self.collect_ahead()?;
        let pending: Vec<_> = self.ahead.iter().cloned().collect();
        let t = &self.trainer;
        let man = Manifest {
            step: t.step,
            policy_version: t.version,
            eval_before_rl: self.eval_before.clone(),
            wall_seconds: self.wall_seconds(),
            config: t.cfg.to_toml()?,
            sft_steps_done: Some(self.sft_steps_done),
            lora_base: t.lora_base_dir.clone(),
        };
        let mut notes = Vec::new();
        let saved = checkpoint::save(&self.dir, t, &man, &pending, &mut notes);
        for n in notes {
            self.message(n);
        }
        saved
    }

    /// Hands a line for people to the sinks (kept for [`Session::take_messages`] when the
    /// session has none).
    fn message(&mut self, line: String) {
        if self.sinks.is_empty() {
            self.messages.push(line);
        } else {
            for s in &mut self.sinks {
                s.message(&line);
            }
        }
    }

    /// The lines for people this session has not handed to a sink (which checkpoint a resume
    /// continues, damaged checkpoints it skipped, a disk short of space), oldest first.
    pub fn take_messages(&mut self) -> Vec<String> {
        std::mem::take(&mut self.messages)
    }

    /// The run directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The held-out evaluation before RL (from the checkpoint when resumed or warm-started).
    pub fn eval_before(&self) -> Option<&EvalResult> {
        self.eval_before.as_ref()
    }

    /// Records the evaluation before RL, which checkpoints carry.
    pub fn set_eval_before(&mut self, eval: EvalResult) {
        self.eval_before = Some(eval);
    }

    /// True when this session continues a checkpoint.
    pub fn is_resumed(&self) -> bool {
        self.resumed
    }

    /// True when this run started from another run's weights (no SFT of its own).
    pub fn is_warm_started(&self) -> bool {
        self.warm
    }

    /// SFT steps done so far.
    pub fn sft_steps_done(&self) -> usize {
        self.sft_steps_done
    }

    /// The version of the current weights (raised by every RL update).
    pub fn policy_version(&self) -> u64 {
        self.trainer.version
    }

    /// The tokenizer of the run's model.
    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.trainer.tokenizer
    }

    /// The shape of the run's model.
    pub fn model_config(&self) -> &alp_model::Config {
        self.trainer.model.config()
    }

    /// The trainer, for alp's own application and tests (feature `internals`).
    #[cfg(feature = "internals")]
    #[doc(hidden)]
    pub fn trainer(&self) -> &Trainer {
        &self.trainer
    }

    /// Moves the batches the worker has sampled ahead into `ahead` (see
    /// [`Session::save_checkpoint`]).
    fn collect_ahead(&mut self) -> Result<()> {
        let Some(w) = &self.worker else {
            return Ok(());
        };
        let rl = &self.trainer.cfg.rl;
        let next = |a: &std::collections::VecDeque<alp_rollout::RolloutBatch>| {
            self.trainer.step + a.len() as u64
        };
        if rl.exact_staleness {
            let until = (self.trainer.step + rl.max_staleness).min(rl.steps as u64);
            while next(&self.ahead) < until {
                self.ahead.push_back(w.recv()?);
            }
        } else {
            while let Some(b) = w.try_recv() {
                self.ahead.push_back(b?);
            }
        }
        Ok(())
    }

    /// The RL step of the last [`Session::save_checkpoint`] of this session, whether it
    /// succeeded or not (None before the first).
    pub fn last_save_attempt(&self) -> Option<u64> {
        self.save_attempt
    }

    /// RL steps done.
    pub fn step_index(&self) -> u64 {
        self.trainer.step
    }

    /// Starts the rollout worker at the current step (done by the first [`Session::step`]).
    fn start_worker(&mut self) -> Result<()> {
        self.trainer.remember_version()?;
        self.samplers.offer(&self.trainer)?;
        let samplers = self.samplers.clone();
        let t = &self.trainer;
        let score_device = t.device.clone();
        let cfg = t.cfg.clone();
        let tok = t.tokenizer.clone();
        let env: EnvFactory = match &self.env {
            Some(f) => f.clone(),
            None => Arc::new(t.make_env()),
        };
        let tasks: Arc<Mutex<Box<dyn TaskSource>>> = match &self.tasks {
            Some(t) => t.clone(),
            None => Arc::new(Mutex::new(Box::new(t.task_stream(Split::Train, cfg.seed)))),
        };
        let user_env = self.env.is_some();
        // A user's environment declares its own stop strings and tools.
        let tools = if user_env { None } else { t.tools_spec() };
        let (p, g, seed) = (cfg.rl.prompts_per_step, cfg.rl.group_size, cfg.seed);
        let mut ep_template = t.rollout_episode_config(0);
        if user_env {
            ep_template.turn_stop_strings.clear();
        }
        let tok_b = tok.clone();
        let engine_cfg = alp_rollout::EngineConfig {
            exact_numerics: cfg.rl.rollout_numerics == crate::config::RolloutNumerics::Exact,
            ..cfg.rl.rollout.engine.clone()
        };
        let user_backend = match std::mem::replace(&mut self.backend, BackendSlot::Taken) {
            BackendSlot::User(b) => Some(b),
            BackendSlot::Taken => {
                return Err(Error::invalid(
                    "the session's rollout backend went to a worker that has stopped; build a new session to start another",
                ))
            }
            BackendSlot::BuiltIn => {
                self.backend = BackendSlot::BuiltIn;
                match cfg.rl.rollout.backend {
                    RolloutBackendKind::Local => None,
                    RolloutBackendKind::Remote => {
                        let rc = cfg.rl.rollout.remote_config(&self.dir, cfg.rl.max_staleness);
                        let b: Box<dyn RolloutBackend> =
                            Box::new(RemoteBackend::new(rc)?.with_tokenizer(tok.clone()));
                        Some(b)
                    }
                }
            }
        };
        self.worker = Some(RolloutWorker::spawn_with(
            t.step + self.ahead.len() as u64,
            t.version,
            Arc::new(t.rollout_snapshot()?),
            cfg.rl.max_staleness,
            cfg.rl.exact_staleness,
            // A user's backend takes the snapshot as its first weights; the built-in engine is
            // built over it (already in the rollout dtype on the device: no copy).
            move |v, w| -> Result<Box<dyn RolloutBackend>> {
                match user_backend {
                    Some(mut b) => {
                        b.publish(v, w)?;
                        Ok(b)
                    }
                    None => Ok(Box::new(
                        Engine::from_snapshot(w, engine_cfg.clone())?
                            .with_tokenizer(tok_b.clone())
                            .with_version(v),
                    )),
                }
            },
            // The engine knows the weight version it samples with (the worker set it).
            move |engine, step, version| {
                samplers.retire_below(version);
                let batch: Vec<Task> = {
                    let mut tasks = tasks
                        .lock()
                        .map_err(|_| Error::Msg("the task source panicked".into()))?;
                    tasks.seek(step * p as u64);
                    (0..p).filter_map(|_| tasks.next_task()).collect()
                };
                if batch.is_empty() {
                    return Err(Error::invalid(format!(
                        "the task source gave no task for step {step} (cursor {})",
                        step * p as u64
                    )));
                }
                let mut ec = ep_template.clone();
                ec.sampling.seed = alp_core::mix_seed(seed, step);
                let episodes = Episodes {
                    tasks: &batch,
                    make_env: &*env,
                    group_size: g,
                    config: &ec,
                    tools: tools.as_ref(),
                };
                let groups = run_episodes(&**engine, &tok, &episodes)?;
                // Scored now, with the weights that sampled (a backend may have answered from
                // older ones: then the trajectories name that version and go unscored).
                let by = groups
                    .iter()
                    .flat_map(|g| &g.trajectories)
                    .map(|t| t.policy_version)
                    .min()
                    .unwrap_or(version);
                samplers.score(step, by, &groups, &score_device)?;
                Ok(groups)
            },
        )?);
        Ok(())
    }

    /// One RL step: the next rollout batch from the worker, the update, the new weights
    /// published; returns the step's metrics (timings included).
    pub fn step(&mut self) -> Result<StepMetrics> {
        if self.worker.is_none() {
            self.start_worker()?;
        }
        let worker = self.worker.as_ref().expect("started above");
        let tw = Instant::now();
        let batch = match self.ahead.pop_front() {
            Some(b) => b,
            None => worker.recv()?,
        };
        if batch.step != self.trainer.step {
            return Err(Error::Msg(format!(
                "the rollout batch is for step {} but the trainer is at step {}",
                batch.step, self.trainer.step
            )));
        }
        let bound = self.trainer.cfg.rl.max_staleness;
        if batch.policy_version.saturating_add(bound) < batch.step {
            return Err(Error::Msg(format!(
                "the rollout batch for step {} was sampled by weight version {}, older than rl.max_staleness = {bound} allows: the rollout backend answered from stale weights (check that it takes every publish)",
                batch.step, batch.policy_version
            )));
        }
        let wait = tw.elapsed().as_secs_f64();
        let tt = Instant::now();
        if let Some(logp) = self.samplers.take(batch.step) {
            self.trainer.set_sampler_logprobs(batch.step, logp);
        }
        let mut m = self.trainer.rl_step(&batch.groups, batch.policy_version)?;
        let train_s = tt.elapsed().as_secs_f64();
        let ts = Instant::now();
        self.samplers.offer(&self.trainer)?;
        worker.publish(
            self.trainer.version,
            Arc::new(self.trainer.rollout_snapshot()?),
        )?;
        let gen_tokens: usize = batch
            .groups
            .iter()
            .flat_map(|g| &g.trajectories)
            .map(|t| t.num_generated())
            .sum();
        m.set(names::TIME_SYNC, ts.elapsed().as_secs_f64());
        let every = self.trainer.cfg.eval.probe_every as u64;
        if every > 0 && self.trainer.step.is_multiple_of(every) {
            let tp = Instant::now();
            for (k, v) in crate::probe::probe(&self.trainer)? {
                m.set(k, v);
            }
            m.set(names::TIME_PROBE, tp.elapsed().as_secs_f64());
        }
        m.set(names::TIME_ROLLOUT, batch.generate_seconds);
        m.set(names::TIME_WAIT, wait);
        m.set(names::TIME_TRAIN, train_s);
        m.set(
            names::ROLLOUT_TOKENS_PER_S,
            gen_tokens as f64 / batch.generate_seconds.max(1e-9),
        );
        if let Some(e) = &batch.engine {
            m.set(names::ROLLOUT_PREFILL_TOKENS, e.prefill_tokens as f64);
            m.set(names::ROLLOUT_REUSED_TOKENS, e.reused_tokens as f64);
            m.set(
                names::ROLLOUT_PREFILL_TOKENS_PER_S,
                e.prefill_tokens as f64 / e.prefill_seconds.max(1e-9),
            );
            m.set(
                names::ROLLOUT_DECODE_TOKENS_PER_S,
                gen_tokens as f64 / e.decode_seconds.max(1e-9),
            );
            if self.config().rl.rollout.engine.shards <= 1 {
                let engine_s = e.prefill_seconds + e.decode_seconds;
                m.set(
                    names::TIME_ROLLOUT_OTHER,
                    (batch.generate_seconds - engine_s).max(0.0),
                );
            }
        }
        m.set(names::SAMPLED_BY, batch.policy_version as f64);
        m.task_ids = batch.groups.iter().map(|g| g.task_id.clone()).collect();
        let wall = self.wall_seconds();
        for s in &mut self.sinks {
            s.step(&m, wall)?;
        }
        Ok(m)
    }

    /// Stops the rollout worker (batches sampled ahead are dropped).
    pub fn stop_worker(&mut self) {
        if let Some(w) = self.worker.take() {
            let _ = w.shutdown();
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.stop_worker();
    }
}
