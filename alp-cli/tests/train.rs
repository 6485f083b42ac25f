//! The trainer: config round trip and validation, exact resume, the NaN guard, crash-safe
//! checkpoints, and a 2-step RL run of every method.

use alp_cli::run::{train, RunOptions};
// The sandbox tests' skip rule, shared with alp-envs' tests.
#[path = "../../alp-envs/tests/common/mod.rs"]
mod sandbox_skip;

use alp_core::TaskSource;
use alp_envs::math::Split;
use alp_loss::METHODS;
use alp_rollout::{run_episodes, Engine, EngineConfig, Episodes};
use alp_trainer::checkpoint;
use alp_trainer::config::TrainConfig;
use alp_trainer::default_task::ArithmeticTasks;
use alp_trainer::metrics;
use alp_trainer::trainer::Trainer;
use candle_core::{DType, Device};
use std::collections::BTreeMap;
use std::path::Path;

/// A config that runs in seconds: a few SFT steps, tiny batches, synchronous rollouts.
fn small() -> TrainConfig {
    TrainConfig::default()
        .apply_overrides(&[
            "sft.steps=3".into(),
            "sft.batch_size=8".into(),
            "rl.steps=4".into(),
            "rl.prompts_per_step=2".into(),
            "rl.group_size=2".into(),
            "rl.mini_batch=2".into(),
            "rl.micro_batch=2".into(),
            "rl.max_staleness=0".into(),
            "rl.lr=1e-3".into(),
            "rl.max_new_tokens=6".into(),
            "rl.max_total_tokens=16".into(),
            "rl.max_turns=2".into(),
            "eval.tasks=4".into(),
            "eval.pass_k=0".into(),
            "eval.every=0".into(),
            "checkpoint.every=2".into(),
        ])
        .unwrap()
}

fn quiet() -> RunOptions {
    RunOptions {
        skip_eval: true,
        ..Default::default()
    }
}

/// Largest |a − b| over two tensors of the same shape.
fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn weights_of(run: &Path) -> BTreeMap<String, Vec<f32>> {
    let ck = checkpoint::latest(run).unwrap();
    let w = checkpoint::load_weights(&ck, DType::F32, &Device::Cpu).unwrap();
    w.tensors
        .iter()
        .map(|(k, t)| {
            (
                k.clone(),
                t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            )
        })
        .collect()
}

#[test]
fn config_round_trips_and_validation_names_the_fields() {
    let c = TrainConfig::default();
    c.validate().unwrap();
    assert_eq!(TrainConfig::from_toml(&c.to_toml().unwrap()).unwrap(), c);
    let c2 = c
        .apply_overrides(&["rl.objective.method=grpo".into(), "rl.lr=0.0001".into()])
        .unwrap();
    assert_eq!(c2.rl.objective.name(), "grpo");
    assert_eq!(c2.rl.lr, 1e-4);
    assert_eq!(TrainConfig::from_toml(&c2.to_toml().unwrap()).unwrap(), c2);
    let cases: &[(&[&str], &str)] = &[
        (&["rl.mini_batch=48"], "rl.mini_batch"),
        (&["rl.group_size=1"], "rl.group_size"),
        (
            &["rl.objective.method=grpo", "rl.recompute_logp_old=false"],
            "rl.recompute_logp_old",
        ),
        (&["rl.max_staleness=-1"], "rl.max_staleness"),
        (&["rl.max_turns=0"], "rl.max_turns"),
        (&["sft.lr=-1"], "sft.lr"),
        (&["rl.grad_clip=-1"], "rl.grad_clip"),
        (&["tasks.hard_fraction=2"], "tasks.hard_fraction"),
        (&["rl.temperature=nan"], "rl.temperature"),
        (&["rl.steps=many"], "rl.steps"),
        (&["rl.prompts_per_step=1000000000"], "rl.prompts_per_step"),
        (&["eval.tasks=1000000000"], "eval.tasks"),
        (&["rl.rollout_dtype=f8"], "rl.rollout_dtype"),
        (&["rl.env=chess"], "rl.env"),
        (&["model.preset=huge"], "preset"),
        (&["rl.sampling.top_p=2"], "rl.sampling.top_p"),
        (&["rl.sampling.min_p=-0.5"], "rl.sampling.min_p"),
        (&["rl.sampling.max_support=0"], "rl.sampling.max_support"),
    ];
    for (sets, field) in cases {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let err = c
            .apply_overrides(&sets)
            .and_then(|c| c.validate())
            .unwrap_err()
            .to_string();
        assert!(err.contains(field), "{sets:?}: {err}");
    }
    assert!(c
        .apply_overrides(&["rl.no_such_thing=1".into()])
        .unwrap_err()
        .to_string()
        .contains("rl.no_such_thing"));
    assert!(TrainConfig::from_toml("[rl]\nsteps = \"many\"").is_err());
}

#[test]
fn a_base_model_whose_tokenizer_lacks_chat_tokens_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = alp_model::presets::alp_default();
    alp_model::ModelWeights::random(&cfg, 0, DType::F32, &Device::Cpu)
        .unwrap()
        .save(dir.path())
        .unwrap();
    // The default tokenizer without its chat template.
    let tok = alp_trainer::default_task::build_tokenizer().unwrap();
    alp_model::Tokenizer::from_tokenizer(tok.inner().clone())
        .save(dir.path())
        .unwrap();
    let c = TrainConfig::default()
        .apply_overrides(&[format!("model.base={}", dir.path().display())])
        .unwrap();
    let err = Trainer::new(c).err().expect("refused").to_string();
    assert!(err.contains("model.base") && err.contains("chat"), "{err}");
}

#[test]
fn resume_is_bit_identical_in_sync_mode() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    train(
        small(),
        RunOptions {
            out: Some(a.path().into()),
            ..quiet()
        },
    )
    .unwrap();
    train(
        small(),
        RunOptions {
            out: Some(b.path().into()),
            max_steps_this_run: Some(2),
            ..quiet()
        },
    )
    .unwrap();
    let mid = weights_of(b.path());
    train(
        small(),
        RunOptions {
            resume: Some(b.path().into()),
            ..quiet()
        },
    )
    .unwrap();
    let wa = weights_of(a.path());
    let wb = weights_of(b.path());
    assert_eq!(wa.len(), wb.len());
    for (k, v) in &wa {
        assert_eq!(v, &wb[k], "{k} differs after resume");
    }
    assert!(
        wa.iter().any(|(k, v)| v != &mid[k]),
        "the two resumed steps changed the weights"
    );
    assert_eq!(
        checkpoint::read_manifest(&checkpoint::latest(b.path()).unwrap())
            .unwrap()
            .step,
        4
    );
}

fn one_batch(t: &Trainer, step: u64) -> Vec<alp_core::TrajectoryGroup> {
    batch_at(t, step, 1.0)
}

/// Two tasks × two samples from an f32 engine over the trainer's current weights.
fn batch_at(t: &Trainer, step: u64, temperature: f32) -> Vec<alp_core::TrajectoryGroup> {
    rollouts_with(t, &t.episode_config(temperature, step), step)
}

/// Puts a NaN into the first gradient of a mini-batch, as a blown-up backward would.
fn poison(g: &mut alp_trainer::optim::Gradients) {
    if let Some(Some(t)) = g.theta.first_mut() {
        *t = (&*t * f64::NAN).unwrap();
    }
}

#[test]
fn a_nan_skips_the_update_and_repeated_nans_stop_with_an_error() {
    let mut cfg = small();
    cfg.rl.max_bad_steps = 2;
    let mut t = Trainer::new(cfg).unwrap();
    let before = t
        .weights()
        .unwrap()
        .snapshot(DType::F32, &Device::Cpu)
        .unwrap();
    let groups = one_batch(&t, 0);
    let m = t.rl_step_with(&groups, 0, &mut poison).unwrap();
    assert!(m["skipped_updates"] >= 1.0);
    let after = t.weights().unwrap();
    for (k, v) in &before.tensors {
        let d = max_abs_diff(v, &after.tensors[k]);
        assert_eq!(d, 0.0, "{k} changed despite the NaN");
    }
    // A clean step updates again.
    let m = t.rl_step(&one_batch(&t, 1), 1).unwrap();
    assert_eq!(m["skipped_updates"], 0.0);
    t.rl_step_with(&one_batch(&t, 2), 2, &mut poison).unwrap();
    let err = t
        .rl_step_with(&one_batch(&t, 3), 3, &mut poison)
        .unwrap_err()
        .to_string();
    assert!(err.contains("non-finite"), "{err}");
}

#[test]
fn a_killed_write_leaves_the_last_checkpoint_loadable() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small();
    cfg.rl.steps = 2;
    train(
        cfg,
        RunOptions {
            out: Some(dir.path().into()),
            ..quiet()
        },
    )
    .unwrap();
    let good = checkpoint::latest(dir.path()).unwrap();
    let w = weights_of(dir.path());
    // A write killed half-way: a temporary directory with a torn file, never renamed.
    let torn = dir.path().join("checkpoints/.tmp-step-000004-999");
    std::fs::create_dir_all(torn.join("model")).unwrap();
    std::fs::write(torn.join("model/model.safetensors"), b"\x10\x00\x00").unwrap();
    assert_eq!(checkpoint::latest(dir.path()).unwrap(), good);
    assert_eq!(weights_of(dir.path()), w);
    let man = checkpoint::read_manifest(&good).unwrap();
    assert_eq!(man.step, 2);
}

#[test]
fn every_method_runs_two_rl_steps() {
    for method in METHODS {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = small()
            .apply_overrides(&[format!("rl.objective.method={method}")])
            .unwrap();
        cfg.rl.steps = 2;
        cfg.checkpoint.every = 0;
        train(
            cfg,
            RunOptions {
                out: Some(dir.path().into()),
                ..quiet()
            },
        )
        .unwrap_or_else(|e| panic!("{method}: {e}"));
        let text = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{method}");
        for l in &lines {
            assert!(l["reward/mean"].is_number(), "{method}: {l}");
            assert!(
                l["loss"].as_f64().is_some_and(f64::is_finite),
                "{method}: no finite loss in {l}"
            );
        }
        assert!(
            dir.path().join("summary.json").exists() && dir.path().join("plots/sigma.svg").exists()
        );
    }
}

#[test]
fn an_interrupted_run_writes_a_checkpoint_and_the_summary() {
    let dir = tempfile::tempdir().unwrap();
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut cfg = small();
    cfg.rl.steps = 50;
    // Pressed before the first RL step: nothing more runs, but what ran is kept.
    flag.store(true, std::sync::atomic::Ordering::SeqCst);
    let out = train(
        cfg,
        RunOptions {
            out: Some(dir.path().into()),
            interrupt: Some(flag),
            ..quiet()
        },
    )
    .unwrap();
    assert!(out.interrupted);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["interrupted"], true);
    assert_eq!(summary["rl_steps"], 0);
    assert_eq!(
        checkpoint::read_manifest(&checkpoint::latest(dir.path()).unwrap())
            .unwrap()
            .step,
        0
    );
}

#[test]
fn trainer_recomputation_matches_the_engine_on_the_same_weights() {
    // f32 rollouts from the current weights: the engine part of the mismatch is float noise,
    // at temperature 1 and at another temperature (the trainer applies the sampler's).
    for temperature in [1.0f32, 0.7] {
        let mut cfg = small();
        cfg.rl.temperature = temperature;
        let mut t = Trainer::new(cfg).unwrap();
        let groups = batch_at(&t, 9, temperature);
        let m = t.rl_step(&groups, 0).unwrap();
        let max = m["mismatch/engine/ratio_token/max"];
        let min = m["mismatch/engine/ratio_token/min"];
        assert!(
            (max - 1.0).abs() < 1e-3 && (min - 1.0).abs() < 1e-3,
            "T={temperature}: engine ratio in [{min}, {max}]"
        );
    }
}

/// Two tasks × two samples from an f32 engine over the trainer's weights with `ec`.
fn rollouts_with(
    t: &Trainer,
    ec: &alp_rollout::EpisodeConfig,
    task_seed: u64,
) -> Vec<alp_core::TrajectoryGroup> {
    let engine = Engine::from_weights(
        &t.weights().unwrap(),
        DType::F32,
        &Device::Cpu,
        EngineConfig::default(),
    )
    .unwrap()
    .with_tokenizer(t.tokenizer.clone())
    .with_version(t.version);
    let mut src = ArithmeticTasks::new(&t.cfg.tasks, Split::Train, task_seed);
    let tasks: Vec<_> = (0..2).filter_map(|_| src.next_task()).collect();
    let episodes = Episodes {
        tasks: &tasks,
        make_env: &t.make_env(),
        group_size: 2,
        config: ec,
        tools: None,
    };
    run_episodes(&engine, &t.tokenizer, &episodes).unwrap()
}

/// Largest |log π_trainer − log μ| over the generated tokens of `trajs`, the trainer scoring
/// with the current weights (over the kept supports when the trajectories carry them).
fn max_recompute_gap(t: &Trainer, trajs: &[&alp_core::Trajectory]) -> f32 {
    let adv = vec![0.0f32; trajs.len()];
    let scorers = alp_trainer::rl_step::Scorers {
        old: Some(&t.model),
        sampler: None,
        sampler_is_old: true,
        sampler_logp: None,
        reference: None,
    };
    let n = trajs.len();
    let minis = alp_trainer::rl_step::build_minibatches(
        trajs,
        &adv,
        alp_trainer::rl_step::BatchShape {
            mini_batch: n,
            micro_batch: n,
            micro_batch_tokens: 0,
            threads: 1,
        },
        alp_loss::Aggregation::TokenMean,
        scorers,
        &Device::Cpu,
    )
    .unwrap();
    let mut gap = 0.0f32;
    for m in minis.iter().flat_map(|m| &m.micros) {
        let d = ((m.logp_old.as_ref().unwrap() - &m.logp_infer).unwrap() * &m.batch.mask)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        gap = gap.max(d);
    }
    gap
}

#[test]
fn truncated_sampling_is_scored_over_the_kept_support_exactly() {
    let samplings: [(&str, &[&str]); 4] = [
        ("top-p 0.9", &["rl.sampling.top_p=0.9"]),
        ("top-k 20", &["rl.sampling.top_k=20"]),
        ("min-p 0.05", &["rl.sampling.min_p=0.05"]),
        (
            "all three",
            &[
                "rl.sampling.top_k=20",
                "rl.sampling.top_p=0.9",
                "rl.sampling.min_p=0.05",
            ],
        ),
    ];
    // A sharper policy than the random init (so that truncation cuts real mass).
    let mut base =
        Trainer::new(small().apply_overrides(&["sft.steps=30".into()]).unwrap()).unwrap();
    alp_trainer::sft::run_sft(&mut base, 0, None, &mut |_, _| {}).unwrap();
    let w = base.weights().unwrap();
    for (name, sets) in samplings {
        for temperature in [1.0f32, 0.7] {
            let mut sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            sets.push(format!("rl.temperature={temperature}"));
            let cfg = small().apply_overrides(&sets).unwrap();
            let t = Trainer::from_weights(cfg, &w, base.tokenizer.as_ref().clone()).unwrap();
            let groups = rollouts_with(&t, &t.rollout_episode_config(11), 3);
            let trajs: Vec<&alp_core::Trajectory> =
                groups.iter().flat_map(|g| &g.trajectories).collect();
            assert!(trajs.iter().all(|t| t.supports.is_some()), "{name}");
            let exact = max_recompute_gap(&t, &trajs);
            assert!(
                exact < 1e-5,
                "{name} T={temperature}: |log π_S − log μ| up to {exact}"
            );
            // Without the mask the trainer scores over the full vocabulary: biased.
            let unmasked: Vec<alp_core::Trajectory> = trajs
                .iter()
                .map(|t| alp_core::Trajectory {
                    supports: None,
                    ..(*t).clone()
                })
                .collect();
            let unmasked: Vec<&alp_core::Trajectory> = unmasked.iter().collect();
            let biased = max_recompute_gap(&t, &unmasked);
            assert!(
                biased > 1e-2,
                "{name} T={temperature}: the full-vocabulary score is off by only {biased}"
            );
            // The trainer refuses truncated rollouts without their supports unless told.
            let g2 = vec![alp_core::TrajectoryGroup {
                task_id: "x".into(),
                trajectories: unmasked.iter().map(|t| (*t).clone()).collect(),
            }];
            assert!(alp_trainer::rl_step::flatten(&g2, false).is_err());
            assert!(alp_trainer::rl_step::flatten(&g2, true).is_ok());
        }
    }
}

/// A GRPO trainer with a large, unclipped learning rate (updates that really move the policy)
/// and one more setting.
fn fast_grpo(extra: &str) -> Trainer {
    let mut cfg = small()
        .apply_overrides(&[
            "rl.objective.method=grpo".into(),
            extra.into(),
            "rl.lr=0.01".into(),
        ])
        .unwrap();
    cfg.rl.grad_clip = 0.0;
    Trainer::new(cfg).unwrap()
}

#[test]
fn logp_old_is_the_policy_the_step_starts_from_in_every_mini_batch_and_epoch() {
    // Two mini-batches × two epochs with a large learning rate: the later updates move the
    // policy, but log π_old (the engine part compares it with the f32 sampler on the same
    // weights) must still be the pre-step policy.
    let mut t = fast_grpo("rl.ppo_epochs=2");
    let before = t
        .weights()
        .unwrap()
        .snapshot(DType::F32, &Device::Cpu)
        .unwrap();
    let mut groups = batch_at(&t, 11, 1.0);
    // Non-zero advantages, so that the updates really move the policy.
    for g in &mut groups {
        g.trajectories[0].outcome.reward = 1.0;
    }
    let m = t.rl_step(&groups, 0).unwrap();
    let (min, max) = (
        m["mismatch/engine/ratio_token/min"],
        m["mismatch/engine/ratio_token/max"],
    );
    assert!(
        (max - 1.0).abs() < 1e-3 && (min - 1.0).abs() < 1e-3,
        "engine ratio in [{min}, {max}]"
    );
    let after = t.weights().unwrap();
    let moved = before
        .tensors
        .iter()
        .any(|(k, v)| max_abs_diff(v, &after.tensors[k]) > 1e-4);
    assert!(moved, "the updates moved the weights");
}

/// θ gradients of a one-mini-batch step (4 trajectories) with `micro_batch` rows per
/// micro-batch, and the step's metrics.
fn step_grads(
    aggregation: &str,
    micro_batch: usize,
    groups: &[alp_core::TrajectoryGroup],
) -> (Vec<Vec<f32>>, alp_trainer::StepMetrics) {
    step_grads_with(
        &[
            "rl.objective.method=grpo".into(),
            format!("rl.aggregation={aggregation}"),
            format!("rl.micro_batch={micro_batch}"),
            "rl.micro_batch_tokens=0".into(),
            "model.parallel_micro_batches=1".into(),
        ],
        groups,
    )
}

/// θ gradients and metrics of a one-mini-batch step (4 trajectories) under `overrides`.
fn step_grads_with(
    overrides: &[String],
    groups: &[alp_core::TrajectoryGroup],
) -> (Vec<Vec<f32>>, alp_trainer::StepMetrics) {
    let cfg = small()
        .apply_overrides(&["rl.mini_batch=4".into()])
        .and_then(|c| c.apply_overrides(overrides))
        .unwrap();
    let mut t = Trainer::new(cfg).unwrap();
    let mut grads = Vec::new();
    let m = t
        .rl_step_with(groups, 0, &mut |g| {
            grads = g
                .theta
                .iter()
                .flatten()
                .map(|x| x.flatten_all().unwrap().to_vec1::<f32>().unwrap())
                .collect();
        })
        .unwrap();
    (grads, m)
}

/// Two groups of two whose responses differ in length, with advantages that are not zero.
fn uneven_batch() -> Vec<alp_core::TrajectoryGroup> {
    uneven_batch_of(&Trainer::new(small()).unwrap())
}

/// [`uneven_batch`] sampled (in f32) from the current weights of `t`.
fn uneven_batch_of(t: &Trainer) -> Vec<alp_core::TrajectoryGroup> {
    let mut groups = batch_at(t, 5, 1.0);
    for g in &mut groups {
        g.trajectories[0].outcome.reward = 1.0;
    }
    // Shorten two responses, so that the micro-batches hold unequal token counts.
    for (g, keep) in [(0, 2), (1, 4)] {
        let t = &mut groups[g].trajectories[1];
        t.response.truncate(keep);
        t.loss_mask.truncate(keep);
        t.logp_infer.truncate(keep);
    }
    let lens: Vec<usize> = groups
        .iter()
        .flat_map(|g| g.trajectories.iter().map(|t| t.num_generated()))
        .collect();
    assert!(
        lens.iter().any(|&l| l != lens[0]),
        "the test needs responses of unequal lengths: {lens:?}"
    );
    groups
}

#[test]
fn micro_batch_split_gives_the_mini_batch_loss_and_gradient_for_every_aggregation() {
    let groups = uneven_batch();
    for agg in ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"] {
        let (whole, mw) = step_grads(agg, 4, &groups);
        let (split, ms) = step_grads(agg, 1, &groups);
        let (lw, ls) = (mw[metrics::LOSS], ms[metrics::LOSS]);
        assert!(
            (lw - ls).abs() <= 1e-6 * lw.abs().max(1e-3),
            "{agg}: loss {lw} in one piece, {ls} split"
        );
        let (mut diff, mut norm) = (0.0f64, 0.0f64);
        for (a, b) in whole.iter().zip(&split) {
            for (x, y) in a.iter().zip(b) {
                diff += ((x - y) as f64).powi(2);
                norm += (*x as f64).powi(2);
            }
        }
        let rel = (diff / norm).sqrt();
        assert!(
            norm > 0.0 && rel <= 1e-6,
            "{agg}: gradient relative difference {rel}"
        );
    }
}

/// Relative L2 distance between two gradient lists.
fn rel_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (a, b) in a.iter().zip(b) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            diff += ((x - y) as f64).powi(2);
            norm += (*x as f64).powi(2);
        }
    }
    assert!(norm > 0.0, "a zero gradient proves nothing");
    (diff / norm).sqrt()
}

#[test]
fn length_planned_parallel_micro_batches_give_the_one_piece_gradient() {
    // The reference: the mini-batch in one padded forward on one thread. The fast path: rows
    // sorted by length and cut by a token budget into micro-batches of unequal size, two
    // computed at once, gradients summed in a fixed order.
    let groups = uneven_batch();
    let lens: Vec<usize> = groups
        .iter()
        .flat_map(|g| {
            g.trajectories
                .iter()
                .map(|t| t.prompt.len() + t.response.len())
        })
        .collect();
    let budget = 2 * lens.iter().max().unwrap() - 1;
    for agg in ["token-mean", "seq-mean-token-sum"] {
        let base = |tokens: usize, threads: usize| {
            vec![
                "rl.objective.method=grpo".to_string(),
                format!("rl.aggregation={agg}"),
                "rl.micro_batch=4".into(),
                format!("rl.micro_batch_tokens={tokens}"),
                format!("model.parallel_micro_batches={threads}"),
            ]
        };
        let (whole, mw) = step_grads_with(&base(0, 1), &groups);
        let (planned, mp) = step_grads_with(&base(budget, 2), &groups);
        let (lw, lp) = (mw[metrics::LOSS], mp[metrics::LOSS]);
        assert!(
            (lw - lp).abs() <= 1e-6 * lw.abs().max(1e-3),
            "{agg}: loss {lw} in one piece, {lp} planned"
        );
        let rel = rel_diff(&whole, &planned);
        assert!(rel <= 1e-6, "{agg}: gradient relative difference {rel}");
        for k in [metrics::ENTROPY, metrics::loss::RATIO_TOKEN_MAX] {
            assert!(
                (mw[k] - mp[k]).abs() <= 1e-5 * mw[k].abs().max(1.0),
                "{k}: {} vs {}",
                mw[k],
                mp[k]
            );
        }
    }
}

#[test]
fn alp_noise_is_the_same_whether_micro_batches_run_one_by_one_or_together() {
    // The noise of micro-batch i is keyed to (step, i), not to a shared context that
    // concurrent micro-batches would overwrite.
    let groups = uneven_batch();
    let run = |threads: usize| {
        step_grads_with(
            &[
                "rl.objective.method=alp-seq".into(),
                "perturbation.sigma_init=0.5".into(),
                "rl.micro_batch=1".into(),
                format!("model.parallel_micro_batches={threads}"),
            ],
            &groups,
        )
    };
    let (one, m1) = run(1);
    let (two, m2) = run(4);
    let rel = rel_diff(&one, &two);
    assert!(rel <= 1e-6, "gradient relative difference {rel}");
    assert_eq!(m1[metrics::LOSS], m2[metrics::LOSS]);
    // And the noise is really there: σ = 0 changes the gradient.
    let (quiet, _) = step_grads_with(
        &[
            "rl.objective.method=alp-seq".into(),
            "perturbation.sigma_init=0".into(),
            "perturbation.learnable=false".into(),
            "rl.micro_batch=1".into(),
        ],
        &groups,
    );
    assert!(rel_diff(&one, &quiet) > 1e-3);
}

#[test]
fn step_ratio_tails_are_those_of_all_the_steps_tokens() {
    let mut groups = uneven_batch();
    // Different tails per micro-batch: a large ratio in the first, a small one in the third.
    groups[0].trajectories[0].logp_infer[0] -= 30f32.ln();
    groups[1].trajectories[0].logp_infer[0] += 2f32.ln();
    let t = Trainer::new(small()).unwrap();
    // Every token at once, under the weights the step starts from.
    let trajs: Vec<&alp_core::Trajectory> =
        groups.iter().flat_map(|g| g.trajectories.iter()).collect();
    let rows: Vec<(&[u32], &[u32], &[u8])> = trajs
        .iter()
        .map(|t| {
            (
                t.prompt.as_slice(),
                t.response.as_slice(),
                t.loss_mask.as_slice(),
            )
        })
        .collect();
    let b = alp_trainer::batch::SeqBatch::new(&rows, &Device::Cpu).unwrap();
    let logp = b
        .response_logprobs(&t.model, &alp_model::NoPerturbation)
        .unwrap();
    let infer: Vec<&[f32]> = trajs.iter().map(|t| t.logp_infer.as_slice()).collect();
    let all =
        alp_loss::mismatch_report(&logp, None, &b.pad_rows(&infer).unwrap(), &b.mask).unwrap();
    let (_, m) = step_grads("token-mean", 1, &groups);
    for key in [
        metrics::loss::RATIO_TOKEN_P99_9,
        metrics::loss::RATIO_TOKEN_MAX,
        metrics::loss::RATIO_TOKEN_MIN,
        metrics::loss::RATIO_SEQ_MAX,
    ] {
        let (want, got) = (all[key], m[key]);
        assert!(
            (want - got).abs() <= 1e-4 * want.abs(),
            "{key}: step {got}, all tokens {want}"
        );
    }
    assert!(m[metrics::loss::RATIO_TOKEN_MAX] > 25.0);
}

#[test]
fn every_plotted_curve_has_data_after_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small()
        .apply_overrides(&["rl.steps=2".into(), "eval.every=1".into()])
        .unwrap();
    train(
        cfg,
        RunOptions {
            out: Some(dir.path().into()),
            ..Default::default()
        },
    )
    .unwrap();
    let specs = alp_cli::report::plot_specs(dir.path()).unwrap();
    assert_eq!(specs.len(), 5);
    for p in &specs {
        assert!(!p.curves.is_empty(), "{}: no curves", p.file);
        for (name, pts) in &p.curves {
            assert!(
                !pts.is_empty(),
                "{}: the curve `{name}` has no data",
                p.file
            );
        }
        let svg = std::fs::read_to_string(dir.path().join("plots").join(p.file)).unwrap();
        for (name, _) in &p.curves {
            assert!(
                svg.contains(name.as_str()),
                "{}: legend lacks `{name}`",
                p.file
            );
        }
    }
}

#[test]
fn set_parses_a_value_by_the_type_of_its_field() {
    let c = TrainConfig::default()
        .apply_overrides(&["model.base=123".into(), "model.device=true".into()])
        .unwrap();
    assert_eq!(
        (c.model.base.as_str(), c.model.device.as_str()),
        ("123", "true")
    );
    let c = TrainConfig::default()
        .apply_overrides(&["rl.lr=1".into(), "rl.max_staleness=3".into()])
        .unwrap();
    assert_eq!((c.rl.lr, c.rl.max_staleness), (1.0, 3));
    for (set, key) in [
        ("rl.steps=1.5", "rl.steps"),
        ("rl.perturb_always=yes", "rl.perturb_always"),
        ("rl.env=chess", "rl.env"),
    ] {
        let e = TrainConfig::default()
            .apply_overrides(&[set.into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains(key) && !e.contains("line "), "{set}: {e}");
    }
}

#[test]
fn stale_batches_split_the_mismatch_into_engine_and_staleness() {
    // f32 rollouts: the engine part is float noise even for a batch two versions old, while
    // the staleness part shows the updates since. Both ways of scoring under the sampling
    // version: a copy kept by the trainer (`at-update`), and the log-probs scored with the
    // sampling version's copy when the batch was sampled (`at-sampling`, what the session's
    // worker does), given to the trainer before the step.
    let split = |mode: &str| {
        let mut t = fast_grpo("rl.max_staleness=2");
        t.cfg.rl.score_sampler = match mode {
            "at-update" => alp_trainer::config::SamplerScoring::AtUpdate,
            _ => alp_trainer::config::SamplerScoring::AtSampling,
        };
        t.remember_version().unwrap();
        let scorer = t.sampler_scorer().unwrap();
        assert_eq!(scorer.is_some(), mode == "at-sampling");
        let mut old = uneven_batch_of(&t);
        for g in &mut old {
            g.trajectories[0].outcome.reward = 1.0;
        }
        // Scored now, under version 0, as the worker does when it samples.
        let scored = scorer.as_ref().map(|m| {
            let trajs: Vec<&alp_core::Trajectory> =
                old.iter().flat_map(|g| g.trajectories.iter()).collect();
            alp_trainer::rl_step::score_trajectories(m, &trajs, 3, &Device::Cpu).unwrap()
        });
        drop(scorer);
        for _ in 0..2 {
            t.rl_step(&uneven_batch_of(&t), t.version).unwrap();
        }
        if let Some(logp) = scored {
            t.set_sampler_logprobs(2, logp);
        }
        let m = t.rl_step(&old, 0).unwrap();
        assert_eq!(m[metrics::STALENESS], 2.0);
        let (lo, hi) = (
            m[metrics::loss::ENGINE_RATIO_TOKEN_MIN],
            m[metrics::loss::ENGINE_RATIO_TOKEN_MAX],
        );
        assert!(
            (hi - 1.0).abs() < 1e-3 && (lo - 1.0).abs() < 1e-3,
            "{mode}: engine [{lo}, {hi}]"
        );
        let s = |k: &str| m[format!("{}/{k}", metrics::loss::STALE_RATIO_TOKEN).as_str()];
        assert!(
            s("max") > 1.01 || s("min") < 0.99,
            "{mode}: staleness [{}, {}]",
            s("min"),
            s("max")
        );
        [lo, hi, s("min"), s("max"), m[metrics::loss::STALE_KL_K3]]
    };
    let (kept, scored) = (split("at-update"), split("at-sampling"));
    for (a, b) in kept.iter().zip(&scored) {
        assert!(
            (a - b).abs() <= 1e-5 * a.abs().max(1e-6),
            "{kept:?} vs {scored:?}"
        );
    }
}

#[test]
fn quantised_rollouts_round_every_matrix_to_its_grid() {
    let cfg = small()
        .apply_overrides(&[
            "rl.rollout_quant=int4".into(),
            "rl.rollout_dtype=f32".into(),
        ])
        .unwrap();
    let t = Trainer::new(cfg).unwrap();
    let snap = t.rollout_snapshot().unwrap();
    let w = &snap.tensors["model.layers.0.mlp.down_proj.weight"];
    let rows: Vec<Vec<f32>> = w.to_vec2().unwrap();
    for r in rows.iter().take(4) {
        let scale = r.iter().fold(0f32, |a, x| a.max(x.abs())) / 7.0;
        for x in r {
            let q = x / scale;
            assert!(
                (q - q.round()).abs() < 1e-3 && q.abs() <= 7.001,
                "{x} / {scale}"
            );
        }
    }
    let orig = &t.weights().unwrap().tensors["model.layers.0.mlp.down_proj.weight"];
    assert!(max_abs_diff(orig, w) > 0.0);
}

#[test]
fn a_kl_term_to_the_reference_is_added_to_the_loss() {
    let groups = uneven_batch();
    let (_, plain) = step_grads("token-mean", 4, &groups);
    let cfg = small()
        .apply_overrides(&[
            "rl.objective.method=grpo".into(),
            "rl.mini_batch=4".into(),
            "rl.micro_batch=1".into(),
            "rl.kl.coef=0.5".into(),
            "rl.kl.estimator=k1".into(),
        ])
        .unwrap();
    let mut t = Trainer::new(cfg).unwrap();
    let m = t.rl_step(&groups, 0).unwrap();
    // The reference is the policy the step starts from: k1 over the first forward is 0, so the
    // loss is unchanged and the estimate is 0 (to float noise).
    assert!(m[metrics::KL_REF].abs() < 1e-5, "{}", m[metrics::KL_REF]);
    assert!((m[metrics::LOSS] - plain[metrics::LOSS]).abs() < 1e-5);
    // After an update the policy has moved away from the reference.
    let m2 = t.rl_step(&groups, 1).unwrap();
    assert!(m2[metrics::KL_REF].abs() > 1e-7, "{}", m2[metrics::KL_REF]);
    assert!(TrainConfig::default()
        .apply_overrides(&["rl.kl.coef=-1".into()])
        .unwrap()
        .validate()
        .is_err());
}

#[test]
fn the_python_environment_runs_through_train_and_eval() {
    if sandbox_skip::skip_without_sandbox("#[test]") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = small()
        .apply_overrides(&[
            "rl.env=python".into(),
            "rl.steps=2".into(),
            "rl.python.timeout_s=10".into(),
        ])
        .unwrap();
    assert_eq!(cfg.rl.env.turn_stop_strings(), ["```output"]);
    let mut sink = alp_trainer::metrics::MemorySink::default();
    let out = alp_cli::run::train_with(
        cfg,
        RunOptions {
            out: Some(dir.path().into()),
            ..Default::default()
        },
        &mut sink,
    )
    .unwrap();
    assert_eq!(sink.steps.len(), 2);
    assert!(out.before.is_some() && out.after.is_some());
    // The episodes opened with the code-block instructions.
    let t = Trainer::from_weights(
        small().apply_overrides(&["rl.env=python".into()]).unwrap(),
        &checkpoint::load_weights(
            &checkpoint::latest(dir.path()).unwrap(),
            DType::F32,
            &Device::Cpu,
        )
        .unwrap(),
        alp_trainer::default_task::build_tokenizer().unwrap(),
    )
    .unwrap();
    let env = t.make_env();
    let mut src = ArithmeticTasks::new(&t.cfg.tasks, Split::Train, 1);
    let task = src.next_task().unwrap();
    let mut e = env(&task).unwrap();
    let msgs = e.reset(&task).unwrap();
    assert_eq!(msgs[0].content, alp_envs::CODE_BLOCK_SYSTEM);
    match e.step("```python\nprint(6*7)\n```\n```output").unwrap() {
        alp_core::Step::Observation(m) => assert_eq!(m[0].content.trim(), "42"),
        other => panic!("{other:?}"),
    }
    // Bad limits are named.
    let err = validation_error("rl.python.timeout_s=0");
    assert!(err.contains("rl.python.timeout_s"), "{err}");
}

#[test]
fn the_python_environment_stops_before_any_work_where_its_sandbox_cannot_start() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let cfg = small().apply_overrides(&["rl.env=python".into()]).unwrap();
    let made = alp_trainer::Session::create(cfg, run_dir.clone());
    match alp_envs::tools::PythonSandbox::new(Default::default()) {
        Ok(_) => assert!(made.is_ok(), "{:?}", made.err()),
        Err(_) => {
            let err = made.err().expect("created without a sandbox").to_string();
            assert!(
                err.contains("rl.env") && err.contains("apt-get install bubblewrap"),
                "{err}"
            );
            assert!(!run_dir.exists(), "the run directory was written");
        }
    }
}

#[test]
fn a_bad_engine_limit_is_named_by_its_full_key() {
    let err = validation_error("rl.rollout.engine.max_batch=0");
    assert!(err.contains("`rl.rollout.engine.max_batch`"), "{err}");
}

/// The error `validate` gives the small config with one override that parses but is invalid.
fn validation_error(set: &str) -> String {
    small()
        .apply_overrides(&[set.into()])
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string()
}

/// Every parameter's gradient as a flat vector (all present).
fn flat_grads(g: &[Option<candle_core::Tensor>]) -> Vec<Vec<f32>> {
    g.iter()
        .map(|x| {
            x.as_ref()
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        })
        .collect()
}

#[test]
fn sft_micro_batches_by_length_give_the_whole_batch_update() {
    // The reference: the whole SFT batch padded to its longest row, one forward. The fast
    // path: rows sorted by length, cut by a token budget, two micro-batches at a time; the
    // loss is still the mean over all the batch's trained tokens, and the update the same.
    let tok = alp_trainer::default_task::build_tokenizer().unwrap();
    let demos =
        alp_trainer::default_task::demonstrations(&tok, &Default::default(), 0.5, 3, 24).unwrap();
    let lens: Vec<usize> = demos
        .iter()
        .map(|d| d.prompt.len() + d.response.len())
        .collect();
    assert!(lens.iter().max() > lens.iter().min(), "{lens:?}");
    let run = |tokens: usize, threads: usize| {
        let cfg = small()
            .apply_overrides(&[
                format!("sft.micro_batch_tokens={tokens}"),
                format!("model.parallel_micro_batches={threads}"),
            ])
            .unwrap();
        let t = Trainer::new(cfg).unwrap();
        let (loss, g) = t.sft_gradients(&demos).unwrap();
        (loss, flat_grads(&g))
    };
    let (lw, gw) = run(0, 1);
    let (lp, gp) = run(4 * lens.iter().max().unwrap(), 2);
    assert!(
        (lw - lp).abs() <= 1e-6 * lw,
        "loss {lw} whole, {lp} planned"
    );
    let rel = rel_diff(&gw, &gp);
    assert!(rel <= 1e-6, "gradient relative difference {rel}");
}

#[test]
fn gradient_checkpointing_gives_the_plain_gradients_in_rl_and_sft() {
    // `model.gradient_checkpointing` recomputes each decoder layer in the backward: an ALP
    // step (layer-wise noise recomputed from its key, micro-batches in parallel) and an SFT
    // batch get the gradients of the plain backward.
    let groups = uneven_batch();
    let run = |ck: bool| {
        step_grads_with(
            &[
                "rl.objective.method=alp-seq".into(),
                "perturbation.sigma_init=0.5".into(),
                "rl.micro_batch=2".into(),
                "model.parallel_micro_batches=2".into(),
                format!("model.gradient_checkpointing={ck}"),
            ],
            &groups,
        )
    };
    let (plain, mp) = run(false);
    let (ck, mc) = run(true);
    let rel = rel_diff(&plain, &ck);
    assert!(rel <= 1e-5, "RL gradient relative difference {rel}");
    let (lp, lc) = (mp[metrics::LOSS], mc[metrics::LOSS]);
    assert!(
        (lp - lc).abs() <= 1e-6 * lp.abs().max(1e-3),
        "loss {lp} vs {lc}"
    );

    let tok = alp_trainer::default_task::build_tokenizer().unwrap();
    let demos =
        alp_trainer::default_task::demonstrations(&tok, &Default::default(), 0.5, 3, 12).unwrap();
    let sft = |ck: bool| {
        let cfg = small()
            .apply_overrides(&[format!("model.gradient_checkpointing={ck}")])
            .unwrap();
        let (loss, g) = Trainer::new(cfg).unwrap().sft_gradients(&demos).unwrap();
        (loss, flat_grads(&g))
    };
    let ((l0, g0), (l1, g1)) = (sft(false), sft(true));
    assert!((l0 - l1).abs() <= 1e-6 * l0, "SFT loss {l0} vs {l1}");
    let rel = rel_diff(&g0, &g1);
    assert!(rel <= 1e-5, "SFT gradient relative difference {rel}");
}
