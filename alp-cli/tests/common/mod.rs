//! What several test binaries of alp-cli share: the settings of a run that takes a second
//! and a checkpoint of the embedded default's shape.
#![allow(dead_code)]

/// The settings of a run that takes about a second (synchronous rollouts).
pub const SMALL: &[&str] = &[
    "sft.steps=2",
    "sft.batch_size=4",
    "rl.steps=2",
    "rl.prompts_per_step=2",
    "rl.group_size=2",
    "rl.mini_batch=4",
    "rl.micro_batch=4",
    "rl.max_new_tokens=6",
    "rl.max_total_tokens=16",
    "rl.max_staleness=0",
    "eval.tasks=4",
    "eval.pass_k=0",
    "eval.every=0",
    "checkpoint.every=1",
];

/// The default config with [`SMALL`] and then `extra` applied.
pub fn small_config(extra: &[&str]) -> alp_trainer::config::TrainConfig {
    let sets: Vec<String> = SMALL.iter().chain(extra).map(|s| s.to_string()).collect();
    alp_trainer::config::TrainConfig::default()
        .apply_overrides(&sets)
        .unwrap()
}

/// A random checkpoint of the embedded default's shape with its tokenizer.
pub fn default_checkpoint() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let cfg = alp_model::presets::alp_default();
    alp_model::ModelWeights::random(&cfg, 0, candle_core::DType::F32, &candle_core::Device::Cpu)
        .unwrap()
        .save(dir.path())
        .unwrap();
    alp_trainer::default_task::build_tokenizer()
        .unwrap()
        .save(dir.path())
        .unwrap();
    dir
}
