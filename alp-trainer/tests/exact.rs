//! Bit-exact rollouts (`rl.rollout_numerics = "exact"`): the engine runs the trainer's exact
//! numerics and stores log-probs as the trainer scores them, so at staleness 0 the ratio of
//! the trainer's log-probs over the stored ones is exactly 1 for every token — through a whole
//! RL step on the embedded default, and on a random Qwen2.5-0.5B-shaped model scored the way a
//! step scores, with f32 and with bf16 weights for both. The fast engine's numbers differ (the
//! control: the same assertions fail there).
use alp_loss::names::{
    ENGINE_KL_K3, ENGINE_RATIO_TOKEN_MAX, ENGINE_RATIO_TOKEN_MIN, RATIO_TOKEN_MAX, RATIO_TOKEN_MIN,
};
use alp_model::{presets, ModelWeights, NoPerturbation};
use alp_rollout::{Engine, EngineConfig, Request, SamplingParams};
use alp_trainer::batch::SeqBatch;
use alp_trainer::config::TrainConfig;
use alp_trainer::rl_step::score;
use alp_trainer::Session;
use candle_core::{DType, Device};

fn config(numerics: &str, dtype: &str) -> TrainConfig {
    let sets: Vec<String> = [
        "sft.steps=20",
        "sft.batch_size=8",
        "rl.steps=1",
        "rl.prompts_per_step=4",
        "rl.group_size=4",
        "rl.mini_batch=16",
        // The trainer's forwards hold other rows than the engine's batches did.
        "rl.micro_batch=6",
        "rl.max_staleness=0",
        "rl.recompute_logp_old=true",
        "rl.objective.method=bypass",
        "rl.rollout.engine.shards=2",
        "eval.every=0",
        "eval.tasks=2",
        "eval.pass_k=0",
        "checkpoint.every=0",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        format!("rl.rollout_numerics={numerics}"),
        format!("rl.rollout_dtype={dtype}"),
        format!("model.dtype={dtype}"),
    ])
    .collect();
    TrainConfig::default().apply_overrides(&sets).unwrap()
}

#[test]
fn exact_rollouts_make_the_ratio_exactly_one_at_staleness_zero_on_the_embedded_default() {
    for (numerics, dtype) in [
        ("exact", "f32"),
        ("exact", "bf16"),
        ("fast", "f32"),
        ("fast", "bf16"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Session::create(config(numerics, dtype), dir.path().join("run")).unwrap();
        s.sft(None, &mut |_, _| {}).unwrap();
        let m = s.step().unwrap();
        let (hi, lo, k3) = (
            m[ENGINE_RATIO_TOKEN_MAX],
            m[ENGINE_RATIO_TOKEN_MIN],
            m[ENGINE_KL_K3],
        );
        let (rhi, rlo) = (m[RATIO_TOKEN_MAX], m[RATIO_TOKEN_MIN]);
        if numerics == "exact" {
            // π_old/μ (the trainer's recomputed log-probs over the stored ones) and π/μ at
            // the step's only update: every token's ratio is 1.
            assert_eq!(
                (hi, lo, k3),
                (1.0, 1.0, 0.0),
                "π_old/μ under exact numerics"
            );
            assert_eq!((rhi, rlo), (1.0, 1.0), "π/μ at the first update");
        } else {
            assert!(
                hi > 1.0 && lo < 1.0,
                "the fast engine differs: {lo} .. {hi}"
            );
        }
    }
}

#[test]
fn exact_rollouts_of_a_random_0_5b_shaped_model_are_scored_bit_for_bit() {
    for dtype in [DType::F32, DType::BF16] {
        exact_rollouts_of_a_random_0_5b_shaped_model_in(dtype);
    }
}

fn exact_rollouts_of_a_random_0_5b_shaped_model_in(dtype: DType) {
    let dev = Device::Cpu;
    let cfg = presets::qwen2_5_0_5b();
    let w = ModelWeights::random(&cfg, 11, dtype, &dev).unwrap();
    let engine = Engine::from_weights(
        &w,
        dtype,
        &dev,
        EngineConfig {
            exact_numerics: true,
            shards: 2,
            ..Default::default()
        },
    )
    .unwrap();
    // Prompts of different lengths (left padding in the engine's prefill and in the
    // trainer's batch), two samples of one of them (prefix reuse).
    let prompts: Vec<Vec<u32>> = vec![
        vec![9, 1_000, 77_000, 151_000, 3],
        vec![42, 8, 120_000, 5, 66, 7, 90_001, 12, 4],
        vec![9, 1_000, 77_000, 151_000, 3],
        vec![500, 600, 700],
    ];
    let requests: Vec<Request> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| Request {
            prompt: p.clone(),
            params: SamplingParams {
                temperature: if i == 3 { 0.7 } else { 1.0 },
                max_new_tokens: 6,
                ignore_eos: true,
                seed: i as u64,
                ..Default::default()
            },
        })
        .collect();
    let done = engine.generate(&requests).unwrap();
    // The trainer's side: a trainable copy of the same weights, exact numerics, its forward
    // and scoring, all rows together and each alone.
    let (mut model, _vars) = w.build_trainable().unwrap();
    model.set_exact_numerics(true).unwrap();
    let mask: Vec<Vec<u8>> = done.iter().map(|c| vec![1u8; c.tokens.len()]).collect();
    let rows: Vec<(&[u32], &[u32], &[u8])> = prompts
        .iter()
        .zip(&done)
        .zip(&mask)
        .map(|((p, c), m)| (p.as_slice(), c.tokens.as_slice(), m.as_slice()))
        .collect();
    let scored = |idx: &[usize]| -> Vec<Vec<f32>> {
        let sub: Vec<_> = idx.iter().map(|&i| rows[i]).collect();
        let temps: Vec<f64> = idx
            .iter()
            .map(|&i| {
                let t = requests[i].params.temperature;
                if t > 0.0 {
                    t as f64
                } else {
                    1.0
                }
            })
            .collect();
        // The trainer scores one temperature per forward (its step's).
        assert!(temps.iter().all(|&t| t == temps[0]));
        let b = SeqBatch::new(&sub, &dev).unwrap();
        let fwd = b.training_forward(&model, &NoPerturbation, false).unwrap();
        score(&b, &fwd.logits, &temps, None)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()
    };
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for group in [vec![0, 1, 2], vec![1], vec![2, 0], vec![3]] {
        let got = scored(&group);
        for (row, &i) in got.iter().zip(&group) {
            let n = done[i].tokens.len();
            assert_eq!(
                bits(&row[..n]),
                bits(&done[i].logprobs),
                "{dtype:?}: request {i} scored among {group:?}"
            );
        }
    }
}

#[test]
fn exact_rollouts_refuse_what_they_cannot_make_exact_by_name() {
    let with = |sets: &[&str]| -> String {
        let mut c = config("exact", "f32");
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        c = c.apply_overrides(&sets).unwrap();
        c.validate().unwrap_err().to_string()
    };
    for (sets, field) in [
        (&["rl.rollout_dtype=bf16"][..], "rl.rollout_dtype"),
        (
            &["model.dtype=f16", "rl.rollout_dtype=f16"][..],
            "rl.rollout_dtype",
        ),
        (&["rl.rollout_quant=int8"][..], "rl.rollout_quant"),
        (&["rl.sampling.top_k=20"][..], "rl.sampling"),
        (
            &[
                "rl.rollout.backend=remote",
                "rl.rollout.servers=[\"http://127.0.0.1:9\"]",
            ][..],
            "rl.rollout.backend",
        ),
    ] {
        let e = with(sets);
        assert!(e.contains(field) && e.contains("exact"), "{sets:?}: {e}");
    }
    config("exact", "bf16").validate().unwrap();
    config("exact", "f32").validate().unwrap();
}
