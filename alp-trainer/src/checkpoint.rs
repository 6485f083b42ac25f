//! Checkpoints: a Hugging Face model directory plus the trainer state (optimizer moments of
//! both groups, log σ, step and policy version) in safetensors and a JSON manifest. Written to
//! a temporary directory and renamed into place, so a crash never leaves a half checkpoint
//! and never touches the last good one.

use crate::trainer::Trainer;
use alp_core::{Error, Result};
use alp_model::ModelWeights;
use alp_rollout::RolloutBatch;
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What a checkpoint's `manifest.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// RL steps done.
    pub step: u64,
    /// Policy version of the weights.
    pub policy_version: u64,
    /// Held-out evaluation before RL (carried into the final summary).
    pub eval_before_rl: Option<crate::eval::EvalResult>,
    /// Seconds the run had used when this was written.
    pub wall_seconds: f64,
    /// The config of the run (TOML).
    pub config: String,
    /// SFT steps done (all of them once RL has started).
    #[serde(default)]
    pub sft_steps_done: Option<usize>,
}

/// `<run>/checkpoints/step-<N>`.
pub fn checkpoint_dir(run: &Path, step: u64) -> PathBuf {
    run.join("checkpoints").join(format!("step-{step:06}"))
}

/// The first tensor of `w` with a NaN or an infinity, if any.
pub fn first_non_finite(w: &ModelWeights) -> Result<Option<String>> {
    for (name, t) in &w.tensors {
        // Element by element: a reduction (max, sum) could skip a NaN or overflow on finite values.
        let v = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        if v.iter().any(|x| !x.is_finite()) {
            return Ok(Some(name.clone()));
        }
    }
    Ok(None)
}

/// Writes a checkpoint of `trainer` under `run` and points `<run>/checkpoints/latest` at it.
/// Weights that are not finite are never written (the error names the first bad tensor and
/// `latest` stays on the last good checkpoint). Every file operation leaves either the old or
/// the new state complete: the new checkpoint is written aside, an existing one of the same
/// step is moved aside before the new one is renamed in, and `latest` moves last.
pub fn save(
    run: &Path,
    trainer: &Trainer,
    manifest: &Manifest,
    pending: &[RolloutBatch],
) -> Result<PathBuf> {
    let weights = trainer
        .weights()?
        .snapshot(DType::F32, &candle_core::Device::Cpu)?;
    if let Some(name) = first_non_finite(&weights)? {
        return Err(Error::NonFinite(format!(
            "not writing a checkpoint of step {}: tensor `{name}` is not finite (the last finite checkpoint stays `latest`)",
            manifest.step
        )));
    }
    let root = run.join("checkpoints");
    crash_point("create the checkpoints directory");
    std::fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
    let final_dir = checkpoint_dir(run, manifest.step);
    let tmp = root.join(format!(
        ".tmp-step-{:06}-{}",
        manifest.step,
        std::process::id()
    ));
    if tmp.exists() {
        crash_point("remove a stale temporary directory");
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    crash_point("create the temporary directory");
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    // The model in Hugging Face format (f32 keeps resume bit-exact) and its tokenizer.
    let model_dir = tmp.join("model");
    crash_point("write the weights");
    weights.save(&model_dir)?;
    crash_point("write the tokenizer");
    trainer.tokenizer.save(&model_dir)?;
    let mut state: BTreeMap<String, Tensor> = trainer.opt.theta.state("opt")?;
    state.extend(trainer.opt.sigma.state("opt_sigma")?);
    state.insert(
        "log_sigma".into(),
        trainer.perturb.log_sigma().as_tensor().clone(),
    );
    let state: Vec<(String, Tensor)> = state
        .into_iter()
        .map(|(k, t)| Ok((k, t.to_device(&candle_core::Device::Cpu)?)))
        .collect::<Result<_>>()?;
    let state_path = tmp.join("trainer_state.safetensors");
    crash_point("write the trainer state");
    candle_core::safetensors::save(&state.into_iter().collect(), &state_path)?;
    if !pending.is_empty() {
        // Sampled but not yet trained: the resumed run trains on exactly these next.
        let p = tmp.join(PENDING_FILE);
        let body = serde_json::to_vec(pending).map_err(|e| Error::Msg(e.to_string()))?;
        crash_point("write the pending rollouts");
        std::fs::write(&p, body).map_err(|e| Error::io(&p, e))?;
    }
    let man = serde_json::to_string_pretty(manifest).map_err(|e| Error::Msg(e.to_string()))?;
    let man_path = tmp.join("manifest.json");
    crash_point("write the manifest");
    std::fs::write(&man_path, man).map_err(|e| Error::io(&man_path, e))?;
    // Replacing a checkpoint of the same step: move the old one aside first, so that a crash
    // leaves it (recoverable by the fallback in `latest`) or the new one in place.
    let aside = root.join(format!(
        ".old-step-{:06}-{}",
        manifest.step,
        std::process::id()
    ));
    if final_dir.exists() {
        crash_point("move the old checkpoint of this step aside");
        std::fs::rename(&final_dir, &aside).map_err(|e| Error::io(&final_dir, e))?;
    }
    crash_point("rename the new checkpoint into place");
    std::fs::rename(&tmp, &final_dir).map_err(|e| Error::io(&final_dir, e))?;
    let latest = root.join("latest");
    let latest_tmp = root.join(".latest.tmp");
    crash_point("write the new latest pointer");
    std::fs::write(
        &latest_tmp,
        final_dir
            .file_name()
            .and_then(|s| s.to_str())
            .unwrap_or_default(),
    )
    .map_err(|e| Error::io(&latest_tmp, e))?;
    crash_point("move latest");
    std::fs::rename(&latest_tmp, &latest).map_err(|e| Error::io(&latest, e))?;
    if aside.exists() {
        crash_point("remove the old checkpoint");
        std::fs::remove_dir_all(&aside).map_err(|e| Error::io(&aside, e))?;
    }
    Ok(final_dir)
}

/// The environment variable of the crash-safety test: `ALP_TEST_CRASH_AT_CHECKPOINT_OP=k`
/// aborts the process (no unwinding, no cleanup: as `kill -9` would) just before the k-th file
/// operation of checkpoint writes in this process, counting from 1.
pub const CRASH_ENV: &str = "ALP_TEST_CRASH_AT_CHECKPOINT_OP";

/// Called before every file operation of [`save`]; aborts there when [`CRASH_ENV`] says so.
fn crash_point(label: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static AT: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    static DONE: AtomicU64 = AtomicU64::new(0);
    let at = *AT.get_or_init(|| std::env::var(CRASH_ENV).ok().and_then(|v| v.parse().ok()));
    if let Some(k) = at {
        if DONE.fetch_add(1, Ordering::SeqCst) + 1 == k {
            eprintln!("{CRASH_ENV}={k}: aborting before: {label}");
            std::process::abort();
        }
    }
}

/// Whether a checkpoint directory is complete: its manifest parses and its weights load.
fn is_complete(dir: &Path) -> std::result::Result<(), String> {
    read_manifest(dir).map_err(|e| e.to_string())?;
    if !dir.join("trainer_state.safetensors").exists() {
        return Err("trainer_state.safetensors is missing".into());
    }
    load_weights(dir, DType::F32, &candle_core::Device::Cpu)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The step a checkpoint directory's name says, and whether it is the one in place (`step-N`)
/// rather than one moved aside by a replace that did not finish (`.old-step-N-<pid>`).
fn step_of(name: &str) -> Option<(u64, bool)> {
    if let Some(n) = name.strip_prefix("step-") {
        return Some((n.parse().ok()?, true));
    }
    let n = name.strip_prefix(".old-step-")?.split('-').next()?;
    Some((n.parse().ok()?, false))
}

/// The checkpoint directories of a run, newest first (of one step, the one in place first).
fn step_dirs(root: &Path) -> Vec<PathBuf> {
    let mut v: Vec<((u64, bool), PathBuf)> = std::fs::read_dir(root)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter_map(|p| Some((step_of(p.file_name()?.to_str()?)?, p)))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v.reverse();
    v.into_iter().map(|(_, p)| p).collect()
}

/// Whether a run directory has any checkpoint directory, complete or not (a run that stopped
/// during its first save has none).
pub fn has_any(run: &Path) -> bool {
    !step_dirs(&run.join("checkpoints")).is_empty()
}

/// The newest complete checkpoint of a run (or the checkpoint directory itself). The one
/// `latest` names is taken when it is complete; otherwise the newest complete `step-N`, with a
/// warning naming what was skipped and why.
pub fn latest(path: &Path) -> Result<PathBuf> {
    if path.join("manifest.json").exists() {
        return Ok(path.to_path_buf());
    }
    let root = path.join("checkpoints");
    let named = std::fs::read_to_string(root.join("latest"))
        .ok()
        .map(|n| root.join(n.trim()));
    if let Some(dir) = &named {
        if is_complete(dir).is_ok() {
            return Ok(dir.clone());
        }
    }
    let mut skipped = Vec::new();
    if let Some(dir) = &named {
        if let Err(why) = is_complete(dir) {
            skipped.push(format!("{} ({why})", dir.display()));
        }
    }
    for dir in step_dirs(&root) {
        if Some(&dir) == named.as_ref() {
            continue;
        }
        match is_complete(&dir) {
            Ok(()) => {
                for s in &skipped {
                    eprintln!("warning: skipped the damaged checkpoint {s}");
                }
                eprintln!("resuming from {}", dir.display());
                return Ok(dir);
            }
            Err(why) => skipped.push(format!("{} ({why})", dir.display())),
        }
    }
    Err(Error::MissingFile {
        path: root.join("latest"),
        hint: if skipped.is_empty() {
            "no checkpoint in this run directory; --resume takes a run directory that has written one".into()
        } else {
            format!("no complete checkpoint; skipped: {}", skipped.join("; "))
        },
    })
}

/// The file of a checkpoint that holds the rollout batches sampled ahead and not yet trained.
pub const PENDING_FILE: &str = "pending_rollouts.json";

/// The rollout batches a checkpoint holds that were sampled but not yet trained (in step
/// order; empty when none).
pub fn read_pending(dir: &Path) -> Result<Vec<RolloutBatch>> {
    let p = dir.join(PENDING_FILE);
    if !p.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
    serde_json::from_slice(&text).map_err(|e| Error::Parse {
        path: p,
        message: e.to_string(),
    })
}

/// Reads a checkpoint's manifest.
pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let p = dir.join("manifest.json");
    let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Parse {
        path: p,
        message: e.to_string(),
    })
}

/// Loads the weights of a checkpoint in `dtype` on `device`.
pub fn load_weights(
    dir: &Path,
    dtype: DType,
    device: &candle_core::Device,
) -> Result<ModelWeights> {
    ModelWeights::load(&dir.join("model"), dtype, device)
}

/// Restores the optimizer state and log σ of a checkpoint into `trainer` (whose weights were
/// built from the checkpoint's model).
pub fn restore_state(dir: &Path, trainer: &mut Trainer, manifest: &Manifest) -> Result<()> {
    let p = dir.join("trainer_state.safetensors");
    let state: BTreeMap<String, Tensor> = candle_core::safetensors::load(&p, &trainer.device)
        .map_err(|e| Error::Parse {
            path: p.clone(),
            message: e.to_string(),
        })?
        .into_iter()
        .collect();
    trainer.opt.theta.load_state("opt", &state)?;
    trainer.opt.sigma.load_state("opt_sigma", &state)?;
    let ls = state.get("log_sigma").ok_or_else(|| Error::Parse {
        path: p.clone(),
        message: "no log_sigma".into(),
    })?;
    trainer.perturb.log_sigma().set(ls)?;
    trainer.step = manifest.step;
    trainer.version = manifest.policy_version;
    Ok(())
}
