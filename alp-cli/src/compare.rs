//! `alp compare`: the paper's comparison at this scale. One shared SFT warm start, then every
//! method (a row of the paper's table, or an ablation) × seed × mismatch setting with the same
//! tasks and budget, each a full RL run of its own directory; then `compare.json` and
//! `report.md` with plots. Resumable: a run whose `result.toml` exists is not redone, nor one
//! that the directory's `compare.json` records (the committed record of a sweep whose ignored
//! `runs/` is gone: a clean clone regenerates the report and resumes from it).

use crate::run::{self, RunOptions};
use alp_core::{Error, Result};
use alp_trainer::config::TrainConfig;
use alp_trainer::metrics::{loss, MemorySink, StepMetrics};
use alp_trainer::Session;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One method row: a name and the `--set` overrides that make it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Arm {
    /// The row's name (`alp-seq`, `mis-token`, …).
    pub name: String,
    /// Its settings.
    pub sets: Vec<String>,
}

fn arm(name: &str, sets: &[&str]) -> Arm {
    Arm {
        name: name.into(),
        sets: sets.iter().map(|s| s.to_string()).collect(),
    }
}

/// The method rows with the reference's values (clip 0.2/0.28 and dual clip 3 for the GRPO
/// family, MIS in [0, 5], GSPO with its sequence MIS weight and dual clip 100, ALP's clip
/// [0.5, 4] with dual clip 3), then the ablations.
pub fn all_arms() -> Vec<Arm> {
    let m = |x: &str| format!("rl.objective.method={x}");
    let a = |name: &str, method: &str, extra: &[&str]| {
        let mut sets = vec![m(method)];
        sets.extend(extra.iter().map(|s| s.to_string()));
        Arm {
            name: name.into(),
            sets,
        }
    };
    vec![
        a("grpo", "grpo", &[]),
        a("bypass", "bypass", &[]),
        a("seq-bypass", "seq-bypass", &[]),
        a("tis", "tis", &[]),
        a("mis-token", "mis", &["rl.objective.level=token"]),
        a("mis-seq", "mis", &["rl.objective.level=sequence"]),
        a("icepop", "icepop", &[]),
        a("gspo", "gspo", &[]),
        a("cispo", "cispo", &[]),
        // The anchors' newest: verl's DPPO (both trust regions) and prime-rl's IPO.
        a("dppo-tv", "dppo-tv", &[]),
        a("dppo-kl", "dppo-kl", &[]),
        a("ipo", "ipo", &[]),
        a("alp-token", "alp-token", &[]),
        a("alp-seq", "alp-seq", &[]),
        a(
            "alp-seq-early",
            "alp-seq",
            &["perturbation.layers.kind=early"],
        ),
        a(
            "alp-seq-middle",
            "alp-seq",
            &["perturbation.layers.kind=middle"],
        ),
        a(
            "alp-seq-late",
            "alp-seq",
            &["perturbation.layers.kind=late"],
        ),
        a(
            "alp-seq-logits",
            "alp-seq",
            &["perturbation.layers.kind=logits_only"],
        ),
        a(
            "alp-seq-fixed-sigma",
            "alp-seq",
            &["perturbation.learnable=false"],
        ),
        // σ as the reference sets it (the rows above use relative σ₀ = 0.05, learnable). Its
        // single-turn script passes `actor.perturb_std=0.02` but not `actor.use_perturbation`
        // (false in its actor.yaml), and its fsdp_workers.py adds the noise only when that is
        // true (at commit 96a9655): as committed the single-turn runs train the sequence-level
        // loss, clip [0.5, 4] and dual clip 10, without noise (`alp-seq-ref-single-turn`).
        // With the noise switched on, σ = 0.02 absolute would be learnable at 1e-2 (its
        // defaults `coef_learnable` true, `perturb_lr` 1e-2: `alp-seq-abs-0.02-learnable`);
        // `alp-seq-abs-fixed` keeps it fixed. Its multi-turn runs: absolute 1e-6, learnable
        // at 5e-4 with the weights' decay of 1e-2 on log σ.
        a(
            "alp-seq-abs-fixed",
            "alp-seq",
            &[
                "perturbation.mode=absolute",
                "perturbation.sigma_init=0.02",
                "perturbation.learnable=false",
            ],
        ),
        a(
            "alp-seq-abs-0.02-learnable",
            "alp-seq",
            &[
                "perturbation.mode=absolute",
                "perturbation.sigma_init=0.02",
                "perturbation.learnable=true",
                "rl.sigma_lr=1e-2",
            ],
        ),
        a(
            "alp-seq-ref-single-turn",
            "alp-seq",
            &[
                "rl.objective.dual_clip=10",
                "perturbation.sigma_init=0",
                "perturbation.learnable=false",
            ],
        ),
        a(
            "alp-seq-abs-learnable",
            "alp-seq",
            &[
                "perturbation.mode=absolute",
                "perturbation.sigma_init=1e-6",
                "perturbation.learnable=true",
                "rl.sigma_lr=5e-4",
                "rl.sigma_weight_decay=1e-2",
            ],
        ),
        // The ALP loss with the perturbation off: what the wide clip does without the noise.
        a(
            "alp-loss-no-noise",
            "alp-seq",
            &["perturbation.sigma_init=0", "perturbation.learnable=false"],
        ),
    ]
}

/// The built-in row named `name`.
fn builtin_arm(name: &str) -> Option<Arm> {
    all_arms().into_iter().find(|a| a.name == name)
}

/// The built-in rows' names, comma-separated (for errors).
fn builtin_names() -> String {
    all_arms()
        .iter()
        .map(|a| a.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A mismatch setting: a name and its overrides.
pub type Setting = Arm;

/// What to run: a plan file (`alp compare --plan FILE`) or a preset (`--preset NAME`, the
/// files in `alp-cli/plans/`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The plan's name.
    pub preset: String,
    /// Overrides of every run (budget, evaluation).
    pub base: Vec<String>,
    /// Mismatch settings.
    pub settings: Vec<Setting>,
    /// Method rows.
    pub arms: Vec<Arm>,
    /// Seeds per (setting, method).
    pub seeds: usize,
    /// Whether the report opens with the pre-registered primary comparisons (Holm-corrected
    /// over their family; `compare_report`'s `PRIMARY`), the rest labelled exploratory.
    #[serde(default)]
    pub primary: bool,
    /// SFT warm starts (blocks): warm start `w` > 0 trains with `model.init_seed = w` into
    /// `sft-ws<w>/`, and its runs are numbered on from `w · seeds` ([`Plan::run_index`]); runs
    /// pair within one warm start and seed. 1 (the default): the one warm start `sft/`.
    #[serde(default = "one")]
    pub warm_starts: usize,
    /// The warm starts whose runs this process runs ([`Plan::with_warm_starts`]); empty: all.
    /// Not part of the plan's record: a sweep split by warm start reports as one.
    #[serde(default, skip_serializing)]
    pub only_warm_starts: Vec<usize>,
}

/// A plan as a file spells it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanFile {
    name: String,
    #[serde(default = "one")]
    seeds: usize,
    #[serde(default)]
    base: Vec<String>,
    #[serde(default)]
    settings: Vec<SettingFile>,
    arms: Vec<ArmFile>,
    #[serde(default)]
    primary: bool,
    #[serde(default = "one")]
    warm_starts: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingFile {
    name: String,
    #[serde(default)]
    sets: Vec<String>,
}

/// A method row: a built-in row by name alone, or a name and its overrides.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ArmFile {
    name: String,
    sets: Option<Vec<String>>,
}

fn one() -> usize {
    1
}

/// The presets, as files in the repository (`alp-cli/plans/`).
const PRESETS: &[(&str, &str)] = &[
    ("smoke", include_str!("../plans/smoke.toml")),
    ("default", include_str!("../plans/default.toml")),
    ("full", include_str!("../plans/full.toml")),
    ("phase", include_str!("../plans/phase.toml")),
    ("phase-smoke", include_str!("../plans/phase-smoke.toml")),
    ("long-pilot", include_str!("../plans/long-pilot.toml")),
    ("long-smoke", include_str!("../plans/long-smoke.toml")),
    ("long", include_str!("../plans/long.toml")),
];

/// `smoke` (every method row, a few steps, minutes), `default` (every main method × 3 seeds
/// at the default mismatch and a high-mismatch setting), `full` (with ablations and a sweep up
/// to quantised rollouts, long staleness, large learning rates and several PPO epochs),
/// `phase` (the mismatch phase diagram: engine and drift axes apart, 5 paired seeds),
/// `phase-smoke` (the phase diagram's machinery in about half a minute), `long-pilot` (the
/// long-answer task under stacked mismatch, looking for a regime that breaks the baselines),
/// `long-smoke` (its machinery in about a minute), `long` (the pre-registered comparison in the
/// regimes the pilot found: 3 warm starts × 4 seeds, primary comparisons Holm-corrected).
pub fn preset(name: &str) -> Result<Plan> {
    match PRESETS.iter().find(|(n, _)| *n == name) {
        Some((n, text)) => Plan::from_toml(text, &format!("alp-cli/plans/{n}.toml")),
        None => Err(Error::config(
            "--preset",
            format!(
                "unknown preset `{name}`; known: {} (or --plan FILE)",
                PRESETS.iter().map(|p| p.0).collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

impl Plan {
    /// Reads a plan file (`origin` names it in errors): unknown keys, an empty or repeated
    /// row, or a row without settings that is not a built-in one are errors naming them.
    pub fn from_toml(text: &str, origin: &str) -> Result<Plan> {
        let f: PlanFile = toml::from_str(text).map_err(|e| Error::Parse {
            path: origin.into(),
            message: e.message().to_string()
                + &e.span()
                    .map(|s| format!(" (at line {})", text[..s.start].matches('\n').count() + 1))
                    .unwrap_or_default(),
        })?;
        let bad = |field: &str, m: String| Error::config(format!("{origin}: {field}"), m);
        if f.seeds == 0 {
            return Err(bad("seeds", "must be at least 1".into()));
        }
        if f.warm_starts == 0 {
            return Err(bad("warm_starts", "must be at least 1".into()));
        }
        if f.arms.is_empty() {
            return Err(bad("arms", "is empty: list at least one method row".into()));
        }
        let mut arms: Vec<Arm> = Vec::new();
        for a in f.arms {
            if arms.iter().any(|x| x.name == a.name) {
                return Err(bad("arms", format!("`{}` appears twice", a.name)));
            }
            arms.push(match a.sets {
                Some(sets) => Arm { name: a.name, sets },
                None => builtin_arm(&a.name).ok_or_else(|| {
                    bad(
                        "arms",
                        format!(
                            "`{}` is not a built-in row (give it `sets`); built-in: {}",
                            a.name,
                            builtin_names()
                        ),
                    )
                })?,
            });
        }
        let mut settings: Vec<Setting> = Vec::new();
        for s in f.settings {
            if settings.iter().any(|x| x.name == s.name) {
                return Err(bad("settings", format!("`{}` appears twice", s.name)));
            }
            settings.push(Arm {
                name: s.name,
                sets: s.sets,
            });
        }
        if settings.is_empty() {
            settings.push(arm("default", &[]));
        }
        Ok(Plan {
            preset: f.name,
            base: f.base,
            settings,
            arms,
            seeds: f.seeds,
            primary: f.primary,
            warm_starts: f.warm_starts,
            only_warm_starts: Vec::new(),
        })
    }

    /// Every run index of a (setting, method): `warm_starts · seeds` of them, warm start `w`'s
    /// seed `k` at index `w · seeds + k` (a plan of one warm start numbers its runs by seed).
    pub fn runs(&self) -> std::ops::Range<u64> {
        0..(self.warm_starts.max(1) * self.seeds) as u64
    }

    /// The (warm start, seed) of run index `i` ([`Plan::runs`]).
    pub fn run_index(&self, i: u64) -> (usize, u64) {
        let s = self.seeds.max(1) as u64;
        ((i / s) as usize, i % s)
    }

    /// Reads a plan file from disk.
    pub fn load(path: &Path) -> Result<Plan> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::file_op("read", path, e))?;
        Plan::from_toml(&text, &path.display().to_string())
    }

    /// Checks every run's config (base, then `extra`, then the row's and the setting's
    /// overrides) before any work starts; the error names the row, the setting and the key.
    pub fn validate(&self, extra: &[String]) -> Result<()> {
        for s in &self.settings {
            for a in &self.arms {
                let mut all = self.base.clone();
                all.extend(extra.iter().cloned());
                all.extend(a.sets.iter().cloned());
                all.extend(s.sets.iter().cloned());
                TrainConfig::default()
                    .apply_overrides(&all)
                    .and_then(|c| c.validate())
                    .map_err(|e| {
                        Error::Msg(format!(
                            "plan `{}`, method row `{}` in setting `{}`: {e}",
                            self.preset, a.name, s.name
                        ))
                    })?;
            }
        }
        Ok(())
    }

    /// Keeps only the named mismatch settings.
    pub fn with_settings(mut self, names: &[String]) -> Result<Self> {
        for n in names {
            if !self.settings.iter().any(|s| &s.name == n) {
                let known: Vec<&str> = self.settings.iter().map(|s| s.name.as_str()).collect();
                return Err(Error::config(
                    "--settings",
                    format!(
                        "unknown setting `{n}` in this preset; known: {}",
                        known.join(", ")
                    ),
                ));
            }
        }
        self.settings.retain(|s| names.contains(&s.name));
        Ok(self)
    }

    /// Keeps only the named methods (in the given order): the plan's own rows by their name
    /// (with the plan's overrides), else the built-in rows; an unknown name lists the known ones.
    pub fn with_methods(mut self, names: &[String]) -> Result<Self> {
        let own = std::mem::take(&mut self.arms);
        self.arms = names
            .iter()
            .map(|n| {
                own.iter()
                    .find(|a| &a.name == n)
                    .cloned()
                    .or_else(|| builtin_arm(n))
                    .ok_or_else(|| {
                        let builtin = all_arms();
                        let known: Vec<&str> = own
                            .iter()
                            .chain(
                                builtin
                                    .iter()
                                    .filter(|b| !own.iter().any(|a| a.name == b.name)),
                            )
                            .map(|a| a.name.as_str())
                            .collect();
                        Error::config(
                            "--methods",
                            format!("unknown method `{n}`; known: {}", known.join(", ")),
                        )
                    })
            })
            .collect::<Result<_>>()?;
        Ok(self)
    }

    /// Runs only the runs of the given warm starts (0-based, below `warm_starts`): a sweep split
    /// across processes by block, so that each process trains its own warm start's SFT at the
    /// same time as the others. The report still covers the whole plan.
    pub fn with_warm_starts(mut self, ws: &[usize]) -> Result<Self> {
        let have = self.warm_starts.max(1);
        if let Some(w) = ws.iter().find(|w| **w >= have) {
            return Err(Error::config(
                "--warm-starts",
                format!(
                    "warm start {w} is not in this plan, which has {have} (0 to {})",
                    have - 1
                ),
            ));
        }
        self.only_warm_starts = ws.to_vec();
        Ok(self)
    }

    /// Whether run index `i` is one this process runs ([`Plan::with_warm_starts`]).
    pub fn runs_here(&self, i: u64) -> bool {
        self.only_warm_starts.is_empty() || self.only_warm_starts.contains(&self.run_index(i).0)
    }
}

/// One finished run, as the report reads it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// The seed.
    pub seed: u64,
    /// Greedy held-out accuracy after RL.
    pub final_accuracy: f64,
    /// Mean accuracy over k samples at temperature 1 after RL (avg@k); NaN where it was not
    /// measured (`eval.pass_k = 0`).
    pub final_avg_at_k: f64,
    /// Largest per-step unperturbed ratio p99.9 (π_old/μ; comparable across methods).
    pub ratio_p99_9_max: f64,
    /// Largest unperturbed ratio of the run.
    pub ratio_max: f64,
    /// Largest training-ratio p99.9 (perturbed for ALP).
    pub train_ratio_p99_9_max: f64,
    /// Steps whose k3 KL(μ‖π_old) exceeded 10× the run's median.
    pub kl_spikes: usize,
    /// The step at which the run collapsed, if it did.
    pub collapsed_at: Option<u64>,
    /// Mean measured mismatch of the first 3 steps: engine k3 KL, staleness k3 KL, staleness
    /// in versions, unperturbed ratio p99.9.
    pub early_mismatch: [f64; 4],
    /// (step, held-out greedy accuracy) of every evaluation, before RL included.
    pub heldout: Vec<(f64, f64)>,
    /// Per step: reward mean, unperturbed ratio p99.9, unperturbed ratio max.
    pub curves: Vec<[f64; 4]>,
    /// Final σ per layer (ALP).
    pub sigma: Vec<f64>,
    /// Mean measured mismatch over every step of the run (NaN steps skipped): engine k3 KL,
    /// staleness k3 KL, staleness in versions. Empty in records older than the field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub run_mismatch: Vec<f64>,
    /// Per step: the sequence-level unperturbed ratio π_old/μ's p1, p50, p90, p99 and p99.9
    /// (the spread over training the paper plots). Empty in records older than the field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seq_ratio_curves: Vec<[f64; 5]>,
    /// The mechanism probe at every step that ran it (`eval.probe_every`): step and its
    /// `probe/…` values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probe: Vec<ProbePoint>,
    /// Steps whose pre-clip gradient norm exceeded 5× the run's median (`None` in records
    /// older than the field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_norm_spikes: Option<usize>,
    /// The warm start the run began from ([`warm_start_id`]; empty in records older than the
    /// field): runs pair only within one warm start, and the same plan on another CPU (other
    /// kernels, other rounding) trains another.
    #[serde(default)]
    pub warm_start: String,
}

/// One run of the mechanism probe: the step and its values by name (`probe/entropy`,
/// `probe/engine_kl`, `probe/noise_kl/…`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProbePoint {
    /// The RL step.
    pub step: f64,
    /// The probe's values.
    pub values: std::collections::BTreeMap<String, f64>,
}

/// Collapse: the reward (moving mean over 5 steps) falls below half its best so far and
/// stays there to the end, or a loss is not finite. Returns the step.
pub fn collapse_step(steps: &[StepMetrics]) -> Option<u64> {
    if let Some(s) = steps.iter().find(|m| {
        m.get(alp_trainer::metrics::LOSS)
            .is_some_and(|l| !l.is_finite())
    }) {
        return Some(s.step);
    }
    let r: Vec<f64> = steps
        .iter()
        .map(|m| m.get(alp_trainer::metrics::REWARD_MEAN).unwrap_or(0.0))
        .collect();
    let ma: Vec<f64> = (0..r.len())
        .map(|i| {
            let w = &r[i.saturating_sub(4)..=i];
            w.iter().sum::<f64>() / w.len() as f64
        })
        .collect();
    let mut best = f64::NEG_INFINITY;
    let mut first_low: Option<usize> = None;
    for (i, &x) in ma.iter().enumerate() {
        best = best.max(x);
        let low = best > 0.0 && x < 0.5 * best;
        first_low = match (low, first_low) {
            (true, None) => Some(i),
            (true, f) => f,
            (false, _) => None,
        };
    }
    first_low.map(|i| steps[i].step)
}

fn max_of(steps: &[StepMetrics], key: &str) -> f64 {
    steps
        .iter()
        .filter_map(|m| m.get(key))
        .fold(f64::NAN, f64::max)
}

/// The mean of the finite values of `v` (NaN when there are none).
pub fn finite_mean(v: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = v
        .filter(|x| x.is_finite())
        .fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 {
        f64::NAN
    } else {
        sum / n as f64
    }
}

/// Reduces one run's records to a [`RunResult`].
pub fn summarise(seed: u64, sink: &MemorySink) -> RunResult {
    let st = &sink.steps;
    let g = |m: &StepMetrics, k: &str| m.get(k).unwrap_or(f64::NAN);
    let kl: Vec<f64> = st
        .iter()
        .filter_map(|m| m.get(loss::UNPERTURBED_KL_K3))
        .collect();
    let median = alp_loss::diagnostics::quantile(&kl, 0.5);
    let first: Vec<&StepMetrics> = st.iter().take(3).collect();
    let early = |k: &str| first.iter().map(|m| g(m, k)).sum::<f64>() / first.len().max(1) as f64;
    let whole = |k: &str| finite_mean(st.iter().filter_map(|m| m.get(k)));
    let grad: Vec<f64> = st
        .iter()
        .filter_map(|m| m.get(alp_trainer::metrics::GRAD_NORM))
        .filter(|x| x.is_finite())
        .collect();
    let grad_median = alp_loss::diagnostics::quantile(&grad, 0.5);
    let last_eval = sink.evals.last().map(|e| &e.2);
    RunResult {
        seed,
        final_accuracy: last_eval.map_or(f64::NAN, |e| e.accuracy),
        final_avg_at_k: last_eval
            .filter(|e| e.k > 0)
            .map_or(f64::NAN, |e| e.sampled_accuracy),
        ratio_p99_9_max: max_of(st, loss::UNPERTURBED_RATIO_TOKEN_P99_9),
        ratio_max: max_of(st, loss::UNPERTURBED_RATIO_TOKEN_MAX),
        train_ratio_p99_9_max: max_of(st, loss::RATIO_TOKEN_P99_9),
        kl_spikes: kl
            .iter()
            .filter(|&&x| median > 0.0 && x > 10.0 * median)
            .count(),
        collapsed_at: collapse_step(st),
        early_mismatch: [
            early(loss::ENGINE_KL_K3),
            early(loss::STALE_KL_K3),
            early(alp_trainer::metrics::STALENESS),
            early(loss::UNPERTURBED_RATIO_TOKEN_P99_9),
        ],
        heldout: sink
            .evals
            .iter()
            .map(|(s, _, e)| (*s as f64, e.accuracy))
            .collect(),
        curves: st
            .iter()
            .map(|m| {
                [
                    m.step as f64,
                    g(m, alp_trainer::metrics::REWARD_MEAN),
                    g(m, loss::UNPERTURBED_RATIO_TOKEN_P99_9),
                    g(m, loss::UNPERTURBED_RATIO_TOKEN_MAX),
                ]
            })
            .collect(),
        run_mismatch: vec![
            whole(loss::ENGINE_KL_K3),
            whole(loss::STALE_KL_K3),
            whole(alp_trainer::metrics::STALENESS),
        ],
        seq_ratio_curves: st
            .iter()
            .map(|m| {
                [
                    g(m, loss::UNPERTURBED_RATIO_SEQ_P1),
                    g(m, loss::UNPERTURBED_RATIO_SEQ_P50),
                    g(m, loss::UNPERTURBED_RATIO_SEQ_P90),
                    g(m, loss::UNPERTURBED_RATIO_SEQ_P99),
                    g(m, loss::UNPERTURBED_RATIO_SEQ_P99_9),
                ]
            })
            .collect(),
        probe: st
            .iter()
            .filter(|m| m.get(alp_trainer::metrics::PROBE_ENTROPY).is_some())
            .map(|m| ProbePoint {
                step: m.step as f64,
                values: m
                    .values
                    .iter()
                    .filter(|(k, _)| k.starts_with(alp_trainer::metrics::PROBE_PREFIX))
                    .map(|(k, v)| (k.clone(), *v))
                    .collect(),
            })
            .collect(),
        grad_norm_spikes: Some(
            grad.iter()
                .filter(|&&x| grad_median > 0.0 && x > 5.0 * grad_median)
                .count(),
        ),
        sigma: st
            .last()
            .map(|m| {
                m.values
                    .iter()
                    .filter(|(k, _)| k.starts_with(alp_trainer::metrics::SIGMA_LAYER))
                    .map(|(_, v)| *v)
                    .collect()
            })
            .unwrap_or_default(),
        warm_start: String::new(),
    }
}

/// The fingerprint of a warm start: the first 16 hex digits of the SHA-256 of its latest
/// checkpoint's weights.
pub fn warm_start_id(sft_dir: &Path) -> Result<String> {
    use sha2::Digest;
    let weights = alp_trainer::checkpoint::weights_file(&alp_trainer::checkpoint::latest(sft_dir)?);
    let bytes = std::fs::read(&weights).map_err(|e| Error::file_op("read", &weights, e))?;
    let digest = sha2::Sha256::digest(&bytes);
    Ok(digest[..8].iter().map(|b| format!("{b:02x}")).collect())
}

/// A shared warm start: SFT and the evaluation before RL, saved as `DIR/sft` (warm start 0)
/// or `DIR/sft-ws<w>` (reused when it exists); warm start `w` > 0 trains from
/// `model.init_seed = w`.
pub fn warm_start(
    plan: &Plan,
    extra: &[String],
    dir: &Path,
    w: usize,
    log: &mut dyn FnMut(&str),
) -> Result<PathBuf> {
    let sft_dir = if w == 0 {
        dir.join("sft")
    } else {
        dir.join(format!("sft-ws{w}"))
    };
    if alp_trainer::checkpoint::latest(&sft_dir).is_ok() {
        log(&format!("reusing the warm start in {}", sft_dir.display()));
        return Ok(sft_dir);
    }
    let mut sets = plan.base.clone();
    sets.extend(extra.iter().cloned());
    if w > 0 {
        sets.push(format!("model.init_seed={w}"));
    }
    let cfg = TrainConfig::default().apply_overrides(&sets)?;
    let mut s = Session::create(cfg, sft_dir.clone())?;
    log(&format!("SFT warm start ({} steps)", s.config().sft.steps));
    s.sft(None, &mut |_, _| {})?;
    let e = s.evaluate(s.config().eval.pass_k, "after SFT")?;
    log(&crate::console::eval_line("after SFT", &e));
    s.set_eval_before(e);
    let saved = s.save_checkpoint();
    for line in s.take_messages() {
        log(&line);
    }
    saved?;
    Ok(sft_dir)
}

/// The directory of one (setting, method, seed) under a comparison's `dir`.
fn run_dir(dir: &Path, setting: &Setting, arm: &Arm, seed: u64) -> PathBuf {
    dir.join("runs")
        .join(&setting.name)
        .join(&arm.name)
        .join(format!("seed{seed}"))
}

/// A finished run's result, if it has one.
fn read_result(run_dir: &Path) -> Option<RunResult> {
    let text = std::fs::read_to_string(run_dir.join("result.toml")).ok()?;
    toml::from_str(&text).ok()
}

/// A run as `compare.json` records it: JSON has no NaN, so a metric a run did not have is
/// `null` there and NaN again here.
#[derive(Deserialize)]
struct RecordedRun {
    seed: u64,
    final_accuracy: Option<f64>,
    final_avg_at_k: Option<f64>,
    ratio_p99_9_max: Option<f64>,
    ratio_max: Option<f64>,
    train_ratio_p99_9_max: Option<f64>,
    kl_spikes: usize,
    collapsed_at: Option<u64>,
    early_mismatch: [Option<f64>; 4],
    heldout: Vec<(Option<f64>, Option<f64>)>,
    curves: Vec<[Option<f64>; 4]>,
    sigma: Vec<Option<f64>>,
    #[serde(default)]
    run_mismatch: Vec<Option<f64>>,
    #[serde(default)]
    seq_ratio_curves: Vec<[Option<f64>; 5]>,
    #[serde(default)]
    probe: Vec<ProbePoint>,
    #[serde(default)]
    grad_norm_spikes: Option<usize>,
    #[serde(default)]
    warm_start: String,
}

impl From<RecordedRun> for RunResult {
    fn from(r: RecordedRun) -> Self {
        let f = |x: Option<f64>| x.unwrap_or(f64::NAN);
        RunResult {
            seed: r.seed,
            final_accuracy: f(r.final_accuracy),
            final_avg_at_k: f(r.final_avg_at_k),
            ratio_p99_9_max: f(r.ratio_p99_9_max),
            ratio_max: f(r.ratio_max),
            train_ratio_p99_9_max: f(r.train_ratio_p99_9_max),
            kl_spikes: r.kl_spikes,
            collapsed_at: r.collapsed_at,
            early_mismatch: r.early_mismatch.map(f),
            heldout: r.heldout.into_iter().map(|(a, b)| (f(a), f(b))).collect(),
            curves: r.curves.into_iter().map(|c| c.map(f)).collect(),
            sigma: r.sigma.into_iter().map(f).collect(),
            run_mismatch: r.run_mismatch.into_iter().map(f).collect(),
            seq_ratio_curves: r.seq_ratio_curves.into_iter().map(|c| c.map(f)).collect(),
            probe: r.probe,
            grad_norm_spikes: r.grad_norm_spikes,
            warm_start: r.warm_start,
        }
    }
}

#[derive(Deserialize)]
struct RecordedRow {
    setting: String,
    method: String,
    /// The row's overrides when it ran (absent in records written before they were kept).
    sets: Option<Vec<String>>,
    seeds: Vec<RecordedRun>,
}

#[derive(Deserialize)]
struct RecordFile {
    /// The plan's base overrides when it ran (absent in older records).
    base: Option<Vec<String>>,
    /// The machine the report named when it was written.
    #[serde(default)]
    machine: Option<String>,
    settings: Vec<Setting>,
    methods: Vec<RecordedRow>,
}

/// The finished runs that `DIR/compare.json` records, by (setting, method, seed): what a
/// clean clone has of a sweep once its run directories (ignored by git) are gone. A recorded
/// run is reused only where its setting's overrides (and, where recorded, the plan's base and
/// the method row's overrides) equal the plan's; `stale` names the rows that did not.
#[derive(Debug, Default)]
pub struct Recorded {
    runs: std::collections::HashMap<(String, String, u64), RunResult>,
    /// `setting / method` rows recorded with other overrides than the plan's (not reused).
    pub stale: Vec<String>,
    /// The machine the record names (its runs ran there; `--report-only` keeps it).
    pub machine: Option<String>,
}

impl Recorded {
    /// Reads `dir/compare.json`; none there is an empty record, an unreadable one an error
    /// naming the file.
    pub fn read(plan: &Plan, dir: &Path) -> Result<Recorded> {
        let path = dir.join("compare.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Recorded::default()),
            Err(e) => return Err(Error::file_op("read", &path, e)),
        };
        let f: RecordFile = serde_json::from_str(&text).map_err(|e| Error::Parse {
            path: path.clone(),
            message: format!(
                "{e}; it is the record of finished runs: restore it (git checkout) or move it away to run them again"
            ),
        })?;
        let mut out = Recorded {
            machine: f.machine.clone(),
            ..Default::default()
        };
        if let Some(base) = f.base.as_ref().filter(|b| **b != plan.base) {
            out.stale
                .push(format!("every row (base `{}`)", base.join(" ")));
            return Ok(out);
        }
        for row in f.methods {
            let setting_now = plan.settings.iter().find(|s| s.name == row.setting);
            let arm_now = plan.arms.iter().find(|a| a.name == row.method);
            let (Some(setting_now), Some(arm_now)) = (setting_now, arm_now) else {
                continue;
            };
            let setting_then = f.settings.iter().find(|s| s.name == row.setting);
            let same = setting_then.is_some_and(|s| s.sets == setting_now.sets)
                && row.sets.as_ref().is_none_or(|s| *s == arm_now.sets);
            if !same {
                out.stale.push(format!("{} / {}", row.setting, row.method));
                continue;
            }
            for r in row.seeds {
                let seed = r.seed;
                out.runs
                    .insert((row.setting.clone(), row.method.clone(), seed), r.into());
            }
        }
        Ok(out)
    }

    /// The recorded result of one run, if any.
    pub fn get(&self, setting: &str, method: &str, seed: u64) -> Option<&RunResult> {
        self.runs
            .get(&(setting.to_string(), method.to_string(), seed))
    }

    /// How many runs are recorded (and reusable).
    pub fn len(&self) -> usize {
        self.runs.len()
    }

    /// No run recorded.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }
}

/// One run's result from its directory, else from the record.
fn finished(
    dir: &Path,
    recorded: &Recorded,
    (setting, arm, seed): (&Setting, &Arm, u64),
) -> Option<RunResult> {
    read_result(&run_dir(dir, setting, arm, seed))
        .or_else(|| recorded.get(&setting.name, &arm.name, seed).cloned())
}

/// Warm start `w` of `dir` and its fingerprint, made on first use.
struct WarmStart<'a> {
    plan: &'a Plan,
    extra: &'a [String],
    dir: &'a Path,
    w: usize,
    made: Option<(PathBuf, String)>,
}

impl WarmStart<'_> {
    fn get(&mut self, log: &mut dyn FnMut(&str)) -> Result<&(PathBuf, String)> {
        if self.made.is_none() {
            let sft = warm_start(self.plan, self.extra, self.dir, self.w, log)?;
            let id = warm_start_id(&sft)?;
            self.made = Some((sft, id));
        }
        Ok(self.made.as_ref().expect("made above"))
    }
}

/// The finished runs of `plan` under `dir` (run directories, else `compare.json`'s record),
/// in plan order, without running anything: every (setting, method) with at least one
/// finished seed (a sweep still running elsewhere, or stopped; paired statistics use the
/// seeds both sides have).
pub fn read_finished(plan: &Plan, dir: &Path) -> Result<Vec<Row>> {
    let recorded = Recorded::read(plan, dir)?;
    let mut out = Vec::new();
    for setting in &plan.settings {
        for arm in &plan.arms {
            let results: Vec<RunResult> = plan
                .runs()
                .filter_map(|seed| finished(dir, &recorded, (setting, arm, seed)))
                .collect();
            if !results.is_empty() {
                out.push((setting.name.clone(), arm.name.clone(), results));
            }
        }
    }
    Ok(out)
}

/// Runs (or reads back) one (setting, method, seed) from the warm start in `sft_dir`, whose
/// fingerprint ([`warm_start_id`]) `warm_id` is recorded with the result.
pub fn run_one(
    plan: &Plan,
    extra: &[String],
    (sft_dir, warm_id): (&Path, &str),
    (setting, arm, seed): (&Setting, &Arm, u64),
    dir: &Path,
) -> Result<RunResult> {
    let run_dir = run_dir(dir, setting, arm, seed);
    // TOML keeps NaN (a metric a method does not have) where JSON cannot.
    let cached = run_dir.join("result.toml");
    if let Some(r) = read_result(&run_dir) {
        return Ok(r);
    }
    if run_dir.exists() {
        // An unfinished run from an interrupted compare: start it again.
        std::fs::remove_dir_all(&run_dir).map_err(|e| Error::io(&run_dir, e))?;
    }
    let mut sets = plan.base.clone();
    sets.extend(extra.iter().cloned());
    sets.extend(arm.sets.iter().cloned());
    sets.extend(setting.sets.iter().cloned());
    // Run index `seed` is warm start w's seed k (the index itself with one warm start).
    sets.push(format!("seed={}", plan.run_index(seed).1));
    let mut sink = MemorySink::default();
    let cfg = TrainConfig::default().apply_overrides(&sets)?;
    let out = run::train_with(
        cfg,
        RunOptions {
            warm_start: Some(sft_dir.to_path_buf()),
            out: Some(run_dir.clone()),
            ..Default::default()
        },
        &mut sink,
    );
    // A run that blew up is a result (collapsed), not an abort of the comparison.
    let mut r = summarise(seed, &sink);
    r.warm_start = warm_id.to_string();
    if let Err(e) = out {
        r.collapsed_at = r.collapsed_at.or(Some(sink.steps.len() as u64));
        std::fs::write(run_dir.join("error.txt"), e.to_string())
            .map_err(|e| Error::io(&run_dir, e))?;
    }
    let text = toml::to_string(&r).map_err(|e| Error::Msg(e.to_string()))?;
    std::fs::write(&cached, text).map_err(|e| Error::io(&cached, e))?;
    Ok(r)
}

/// The results of one (setting, method): setting name, method name, one result per seed.
pub type Row = (String, String, Vec<RunResult>);

/// Every run of the plan, in order; `log` gets a line per run and `progress` the rows so far
/// after every (setting, method) (to write a partial report).
pub fn run_all(
    plan: &Plan,
    extra: &[String],
    dir: &Path,
    log: &mut dyn FnMut(&str),
    progress: &mut dyn FnMut(&[Row]) -> Result<()>,
) -> Result<Vec<Row>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let recorded = Recorded::read(plan, dir)?;
    for s in &recorded.stale {
        log(&format!(
            "compare.json records {s} with other overrides than this plan's: run again"
        ));
    }
    let mut out = Vec::new();
    // Each made only when a run is left to do or a record is to be checked against it.
    let mut warms: Vec<WarmStart> = (0..plan.warm_starts.max(1))
        .map(|w| WarmStart {
            plan,
            extra,
            dir,
            w,
            made: None,
        })
        .collect();
    let mut told_other_warm_start = false;
    for setting in &plan.settings {
        for arm in &plan.arms {
            let mut results = Vec::new();
            for seed in plan.runs().filter(|i| plan.runs_here(*i)) {
                let warm = &mut warms[plan.run_index(seed).0];
                if let Some(r) = read_result(&run_dir(dir, setting, arm, seed)) {
                    results.push(r);
                    continue;
                }
                // A recorded run is reused only from this warm start: pairs must share it.
                if let Some(r) = recorded.get(&setting.name, &arm.name, seed) {
                    if r.warm_start == warm.get(log)?.1 {
                        results.push(r.clone());
                        continue;
                    }
                    if !std::mem::replace(&mut told_other_warm_start, true) {
                        log("compare.json records runs from another warm start (another machine or build): they are run again");
                    }
                }
                let (sft, id) = warm.get(log)?;
                let t0 = std::time::Instant::now();
                let r = run_one(plan, extra, (sft, id), (setting, arm, seed), dir)?;
                log(&format!(
                    "{} / {} / seed {seed}: accuracy {:.1}%, unperturbed ratio p99.9 ≤ {:.3}{} ({:.0} s)",
                    setting.name,
                    arm.name,
                    100.0 * r.final_accuracy,
                    r.ratio_p99_9_max,
                    r.collapsed_at.map(|s| format!(", collapsed at step {s}")).unwrap_or_default(),
                    t0.elapsed().as_secs_f64()
                ));
                results.push(r);
            }
            out.push((setting.name.clone(), arm.name.clone(), results));
            progress(&out)?;
        }
    }
    Ok(out)
}
