//! Checkpoints: a Hugging Face model directory plus the trainer state (optimizer moments of
//! both groups, log σ, step and policy version) in safetensors and a JSON manifest. Written to
//! a temporary directory and renamed into place, so a crash never leaves a half checkpoint
//! and never touches the last good one.

use crate::trainer::Trainer;
use alp_core::{Error, Result};
use alp_model::{sequence_logprobs, ModelWeights, NoPerturbation, Numerics};
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
    pub eval_before_rl: Option<crate::eval_result::EvalResult>,
    /// Seconds the run had used when this was written.
    pub wall_seconds: f64,
    /// The config of the run (TOML).
    pub config: String,
    /// SFT steps done (all of them once RL has started).
    #[serde(default)]
    pub sft_steps_done: Option<usize>,
    /// A LoRA run whose frozen base is not the one its config names (it started from a
    /// full checkpoint): the model directory that holds the base. None: the config's model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora_base: Option<PathBuf>,
}

/// The directory of a LoRA checkpoint's adapter, in PEFT's format (with the tokenizer).
pub const ADAPTER_DIR: &str = "adapter";

/// A LoRA checkpoint's adapter directory (None for a checkpoint of the whole model).
fn adapter_dir(dir: &Path) -> Option<PathBuf> {
    let a = dir.join(ADAPTER_DIR);
    a.join("adapter_config.json").exists().then_some(a)
}

/// The file that holds what a checkpoint trained: the adapter's (LoRA) or the model's
/// weights.
pub fn weights_file(dir: &Path) -> PathBuf {
    match adapter_dir(dir) {
        Some(a) => a.join("adapter_model.safetensors"),
        None => dir.join("model").join("model.safetensors"),
    }
}

/// The directory that holds a checkpoint's tokenizer (`model/`, or a LoRA checkpoint's
/// `adapter/`).
pub fn tokenizer_dir(dir: &Path) -> PathBuf {
    adapter_dir(dir).unwrap_or_else(|| dir.join("model"))
}

/// `<run>/checkpoints/step-<N>`.
pub fn checkpoint_dir(run: &Path, step: u64) -> PathBuf {
    run.join("checkpoints").join(format!("step-{step:06}"))
}

/// The first tensor of `w` with a NaN or an infinity, if any (of the adapter only when it
/// has one: the base is frozen).
pub fn first_non_finite(w: &ModelWeights) -> Result<Option<String>> {
    let tensors = match &w.adapter {
        Some(a) => &a.tensors,
        None => &w.tensors,
    };
    for (name, t) in tensors {
        // Element by element: a reduction (max, sum) could skip a NaN or overflow on finite values.
        let v = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        if v.iter().any(|x| !x.is_finite()) {
            return Ok(Some(name.clone()));
        }
    }
    Ok(None)
}

/// Writes a checkpoint of `trainer` under `run` and points `<run>/checkpoints/latest` at it,
/// then prunes older checkpoints as `checkpoint.keep_last` / `keep_every` say.
///
/// Only a checkpoint that can be resumed becomes `latest`: weights that are not finite are
/// never written (the error names the first bad tensor), and finite weights whose model no
/// longer computes (a non-finite log-prob on a fixed probe) are written aside as
/// `unusable-step-N-nonfinite-logprobs`, which a resume never picks. Every file operation leaves
/// either the old or the new state complete: the new checkpoint is written aside and flushed,
/// an existing one of the same step is moved aside before the new one is renamed in, `latest`
/// moves next, and old checkpoints are removed only after that (moved aside, then deleted).
pub fn save(
    run: &Path,
    trainer: &Trainer,
    manifest: &Manifest,
    pending: &[RolloutBatch],
    notes: &mut Vec<String>,
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
    let unusable = probe_forward(&weights)?;
    let mut state: BTreeMap<String, Tensor> = trainer.opt.theta.state("opt")?;
    state.extend(trainer.opt.sigma.state("opt_sigma")?);
    state.insert(
        "log_sigma".into(),
        trainer.perturb.log_sigma().as_tensor().clone(),
    );
    let pending_body = (!pending.is_empty())
        .then(|| serde_json::to_vec(pending).map_err(|e| Error::Msg(e.to_string())))
        .transpose()?;
    let need = match &weights.adapter {
        Some(a) => tensor_bytes(a.tensors.values()),
        None => tensor_bytes(weights.tensors.values()),
    }
        + tensor_bytes(state.values())
        + pending_body.as_ref().map_or(0, |b| b.len() as u64);
    let root = run.join("checkpoints");
    crash_point("create the checkpoints directory");
    std::fs::create_dir_all(&root).map_err(|e| Error::file_op("create", &root, e))?;
    remove_leftovers(&root)?;
    if let Some(free) = free_bytes(&root) {
        if free < need {
            notes.push(format!(
                "warning: {} has {} free and one checkpoint needs about {}: this save may fail for want of space",
                root.display(),
                mib(free),
                mib(need)
            ));
        }
    }
    let tmp = root.join(format!(
        ".tmp-step-{:06}-{}",
        manifest.step,
        std::process::id()
    ));
    let written = write_files(&tmp, trainer, &weights, state, manifest, pending_body);
    if let Err(e) = written {
        // A partial checkpoint is of no use; removing it gives the space back.
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(with_space_hint(e, &root, need));
    }
    if let Some(why) = unusable {
        let aside = root.join(format!(
            "unusable-step-{:06}-nonfinite-logprobs",
            manifest.step
        ));
        if aside.exists() {
            std::fs::remove_dir_all(&aside).map_err(|e| Error::file_op("remove", &aside, e))?;
        }
        alp_core::fsio::rename(&tmp, &aside)?;
        let kept = std::fs::read_to_string(root.join("latest")).unwrap_or_default();
        return Err(Error::NonFinite(format!(
            "the weights of step {} are finite but the model no longer computes ({why}): written aside to {} for inspection; `latest` stays on {} (lower rl.lr, then --resume)",
            manifest.step,
            aside.display(),
            if kept.trim().is_empty() { "no checkpoint" } else { kept.trim() }
        )));
    }
    let final_dir = checkpoint_dir(run, manifest.step);
    // Replacing a checkpoint of the same step: move the old one aside first, so that a crash
    // leaves it (recoverable by the fallback in `latest`) or the new one in place.
    let aside = root.join(format!(
        ".old-step-{:06}-{}",
        manifest.step,
        std::process::id()
    ));
    if final_dir.exists() {
        crash_point("move the old checkpoint of this step aside");
        alp_core::fsio::rename(&final_dir, &aside)?;
    }
    crash_point("rename the new checkpoint into place");
    alp_core::fsio::rename(&tmp, &final_dir)?;
    let latest = root.join("latest");
    let latest_tmp = root.join(".latest.tmp");
    crash_point("write the new latest pointer");
    let name = final_dir
        .file_name()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    alp_core::fsio::write_synced(&latest_tmp, name.as_bytes())
        .map_err(|e| with_space_hint(e, &root, need))?;
    crash_point("move latest");
    alp_core::fsio::rename(&latest_tmp, &latest)?;
    alp_core::fsio::sync_dir(&root)?;
    if aside.exists() {
        crash_point("remove the old checkpoint");
        std::fs::remove_dir_all(&aside).map_err(|e| Error::file_op("remove", &aside, e))?;
    }
    // A copy of this step that an interrupted replace left aside (and a resume may have read)
    // is redundant now that the new one is in place.
    remove_leftovers(&root)?;
    prune(&root, &final_dir, &trainer.cfg.checkpoint)?;
    Ok(final_dir)
}

/// Writes the checkpoint's files into `tmp` (created), each flushed to the disk.
fn write_files(
    tmp: &Path,
    trainer: &Trainer,
    weights: &ModelWeights,
    state: BTreeMap<String, Tensor>,
    manifest: &Manifest,
    pending: Option<Vec<u8>>,
) -> Result<()> {
    if tmp.exists() {
        crash_point("remove a stale temporary directory");
        std::fs::remove_dir_all(tmp).map_err(|e| Error::file_op("remove", tmp, e))?;
    }
    crash_point("create the temporary directory");
    std::fs::create_dir_all(tmp).map_err(|e| Error::file_op("create", tmp, e))?;
    // The model in Hugging Face format (f32 keeps resume bit-exact) and its tokenizer; a
    // LoRA run's adapter in PEFT's instead (its base is the config's model, or
    // `lora_base`).
    let model_dir = match &weights.adapter {
        Some(a) => {
            let dir = tmp.join(ADAPTER_DIR);
            crash_point("write the weights");
            let cfg = &trainer.cfg.model;
            let base = match (&manifest.lora_base, cfg.base.as_str()) {
                (Some(p), _) => p.display().to_string(),
                (None, "") => format!("alp embedded {} (init_seed {})", cfg.preset, cfg.init_seed),
                (None, b) => b.to_string(),
            };
            a.save_peft(&dir, &base)?;
            dir
        }
        None => {
            let dir = tmp.join("model");
            crash_point("write the weights");
            weights.save(&dir)?;
            dir
        }
    };
    crash_point("write the tokenizer");
    trainer.tokenizer.save(&model_dir)?;
    crash_point("write the trainer state");
    alp_model::save::write_safetensors(&state, &tmp.join("trainer_state.safetensors"))?;
    if let Some(body) = pending {
        // Sampled but not yet trained: the resumed run trains on exactly these next.
        crash_point("write the pending rollouts");
        alp_core::fsio::write_synced(&tmp.join(PENDING_FILE), &body)?;
    }
    let man = serde_json::to_string_pretty(manifest).map_err(|e| Error::Msg(e.to_string()))?;
    crash_point("write the manifest");
    alp_core::fsio::write_synced(&tmp.join("manifest.json"), man.as_bytes())?;
    alp_core::fsio::sync_dir(&model_dir)?;
    alp_core::fsio::sync_dir(tmp)
}

/// The tokens of the probe that decides whether a checkpoint's model still computes.
const PROBE_LEN: usize = 16;

/// Why the model of `w` no longer computes, if it does not: a non-finite log-prob (or logit)
/// on a fixed probe of `PROBE_LEN` (16) tokens. Finite weights can still overflow every forward
/// (a learning rate that is far too high leaves them at 1e12).
pub fn probe_forward(w: &ModelWeights) -> Result<Option<String>> {
    let vocab = w.config.vocab_size as u64;
    let toks: Vec<u32> = (0..PROBE_LEN as u64)
        .map(|i| ((i * 7919 + 1) % vocab) as u32)
        .collect();
    let lm = w.build()?;
    let ids = Tensor::new(toks.as_slice(), &candle_core::Device::Cpu)?.unsqueeze(0)?;
    let logits = match lm.forward_full(&ids, &[], &NoPerturbation, Numerics::Inference) {
        Ok(l) => l,
        Err(Error::NonFinite(why)) => return Ok(Some(why)),
        Err(e) => return Err(e),
    };
    let lp = sequence_logprobs(&logits, &toks)?;
    Ok(lp
        .iter()
        .position(|x| !x.is_finite())
        .map(|i| format!("log-prob {i} of a {PROBE_LEN}-token probe is {}", lp[i])))
}

/// Bytes the tensors take.
fn tensor_bytes<'a>(ts: impl Iterator<Item = &'a Tensor>) -> u64 {
    ts.map(|t| (t.elem_count() * t.dtype().size_in_bytes()) as u64)
        .sum()
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Bytes free to an unprivileged writer on the file system of `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: `c` is a NUL-terminated path and `s` a plain struct statvfs fills in.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statvfs(c.as_ptr(), &mut s) } == 0)
        .then(|| s.f_bavail as u64 * s.f_frsize as u64)
}

/// A full disk's error says what one checkpoint needs, what is free and what to do.
fn with_space_hint(e: Error, root: &Path, need: u64) -> Error {
    if !e.is_disk_full() {
        return e;
    }
    let free = free_bytes(root).map_or("an unknown amount".into(), mib);
    let hint = format!(
        "; one checkpoint of this run needs about {} and {free} is free under {}: free some space (or set checkpoint.keep_last) and continue with `alp train --resume`; `latest` stays on the last complete checkpoint",
        mib(need),
        root.display()
    );
    match e {
        Error::FileOp {
            op, path, source, ..
        } => Error::FileOp {
            op,
            path,
            source,
            hint,
        },
        Error::Io { path, source } => Error::FileOp {
            op: "write",
            path,
            source,
            hint,
        },
        e => e,
    }
}

/// Removes what an interrupted save or prune left under `root`: temporary directories of
/// other processes, checkpoints already moved out by a prune, and checkpoints moved aside by a
/// replace whose new `step-N` is in place (only a complete checkpoint is renamed to `step-N`).
/// None of them is ever read again.
fn remove_leftovers(root: &Path) -> Result<()> {
    let mine = format!("-{}", std::process::id());
    let Ok(d) = std::fs::read_dir(root) else {
        return Ok(());
    };
    // The steps whose checkpoint is in place (`step-N`), read once.
    let in_place: Vec<u64> = step_dirs(root)
        .iter()
        .filter_map(|d| step_of(d.file_name()?.to_str()?))
        .filter_map(|(step, placed)| placed.then_some(step))
        .collect();
    for p in d.filter_map(|e| e.ok().map(|e| e.path())) {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let stale_tmp = name.starts_with(".tmp-step-") && !name.ends_with(&mine);
        let replaced = matches!(step_of(name), Some((step, false)) if in_place.contains(&step));
        if stale_tmp || replaced || name.starts_with(".pruned-") {
            crash_point("remove a leftover of an interrupted save");
            std::fs::remove_dir_all(&p).map_err(|e| Error::file_op("remove", &p, e))?;
        }
    }
    Ok(())
}

/// Removes the checkpoints the retention policy does not keep: of the `step-N` directories,
/// the newest `keep_last` (the one just written, `latest`, among them) and every multiple of
/// `keep_every` stay. Each is first renamed out of the set (atomic), then deleted, so a crash
/// leaves only complete checkpoints under `step-N` names.
fn prune(root: &Path, latest: &Path, policy: &crate::config::CheckpointSection) -> Result<()> {
    if policy.keep_last == 0 {
        return Ok(());
    }
    let in_place: Vec<(u64, PathBuf)> = step_dirs(root)
        .into_iter()
        .filter_map(|p| match step_of(p.file_name()?.to_str()?) {
            Some((step, true)) => Some((step, p)),
            _ => None,
        })
        .collect();
    for (i, (step, dir)) in in_place.iter().enumerate() {
        let milestone = policy.keep_every > 0 && step % policy.keep_every == 0;
        if i < policy.keep_last || milestone || dir == latest {
            continue;
        }
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let out = root.join(format!(".pruned-{name}"));
        crash_point("move a checkpoint out of the retained set");
        alp_core::fsio::rename(dir, &out)?;
        crash_point("remove a pruned checkpoint");
        std::fs::remove_dir_all(&out).map_err(|e| Error::file_op("remove", &out, e))?;
    }
    Ok(())
}

/// Called with a label before every file operation of [`save`] (see [`set_fault_hook`]).
pub type FaultHook = fn(&str);

static FAULT_HOOK: std::sync::OnceLock<FaultHook> = std::sync::OnceLock::new();

/// Installs, once per process, a function called before every file operation of checkpoint
/// writes with what the operation is: fault injection for crash-safety tests (the `alp`
/// application installs one that aborts at the k-th operation when its test asks).
pub fn set_fault_hook(hook: FaultHook) -> bool {
    FAULT_HOOK.set(hook).is_ok()
}

fn crash_point(label: &str) {
    if let Some(hook) = FAULT_HOOK.get() {
        hook(label);
    }
}

/// Whether a checkpoint directory is complete: its manifest parses and its weights load.
fn is_complete(dir: &Path) -> std::result::Result<(), String> {
    read_manifest(dir).map_err(|e| e.to_string())?;
    if !dir.join("trainer_state.safetensors").exists() {
        return Err("trainer_state.safetensors is missing".into());
    }
    if let Some(adapter) = adapter_dir(dir) {
        // The adapter against the base's shape (loading the base itself is not needed).
        let man = read_manifest(dir).map_err(|e| e.to_string())?;
        let shape = lora_base_config(&man).map_err(|e| e.to_string())?;
        return alp_model::Adapter::load_peft(
            &adapter,
            &shape,
            DType::F32,
            &candle_core::Device::Cpu,
        )
        .map(|_| ())
        .map_err(|e| e.to_string());
    }
    load_weights(dir, DType::F32, &candle_core::Device::Cpu)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The model shape of a LoRA checkpoint's base (read from its config, not its weights).
fn lora_base_config(man: &Manifest) -> Result<alp_model::Config> {
    if let Some(p) = &man.lora_base {
        return alp_model::Config::from_file(&p.join("config.json"));
    }
    let cfg = crate::config::TrainConfig::from_toml(&man.config)?;
    match cfg.model.source() {
        crate::config::ModelSource::Embedded { preset } => alp_model::presets::by_name(preset),
        crate::config::ModelSource::Checkpoint(b) => {
            let d = alp_model::resolve_model_dir(b)?;
            alp_model::Config::from_file(&d.join("config.json"))
        }
    }
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

#[cfg_attr(not(feature = "internals"), allow(dead_code))] // used by alp-cli and the tests
/// Whether a run directory has any checkpoint directory, complete or not (a run that stopped
/// during its first save has none).
pub fn has_any(run: &Path) -> bool {
    !step_dirs(&run.join("checkpoints")).is_empty()
}

/// The newest complete checkpoint of a run (or the checkpoint directory itself). The one
/// `latest` names is taken when it is complete; otherwise the newest complete `step-N`, with a
/// warning naming what was skipped and why.
pub fn latest(path: &Path) -> Result<PathBuf> {
    latest_noting(path, &mut Vec::new())
}

/// [`latest`], with a line in `notes` for every damaged checkpoint it skipped.
pub fn latest_noting(path: &Path, notes: &mut Vec<String>) -> Result<PathBuf> {
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
                    notes.push(format!("warning: skipped the damaged checkpoint {s}"));
                }
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

/// Loads the weights of a checkpoint in `dtype` on `device`: its model, or a LoRA
/// checkpoint's base (the model its config names, or the manifest's `lora_base`) with its
/// adapter.
pub fn load_weights(
    dir: &Path,
    dtype: DType,
    device: &candle_core::Device,
) -> Result<ModelWeights> {
    let Some(adapter) = adapter_dir(dir) else {
        return ModelWeights::load(&dir.join("model"), dtype, device);
    };
    let man = read_manifest(dir)?;
    let mut base = lora_base(&man, dtype, device)?;
    base.adapter = Some(alp_model::Adapter::load_peft(
        &adapter,
        &base.config,
        dtype,
        device,
    )?);
    Ok(base)
}

/// The frozen base of a LoRA checkpoint with manifest `man`.
fn lora_base(man: &Manifest, dtype: DType, device: &candle_core::Device) -> Result<ModelWeights> {
    if let Some(p) = &man.lora_base {
        return ModelWeights::load(p, dtype, device);
    }
    let cfg = crate::config::TrainConfig::from_toml(&man.config)?;
    Ok(crate::trainer::base_weights_in(&cfg, dtype, device)?.0)
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
