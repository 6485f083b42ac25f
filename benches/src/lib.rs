//! Shared helpers of the alp criterion benchmarks (`cargo bench -p alp-benches`).
//!
//! The device comes from `ALP_BENCH_DEVICE` (`cpu`, the default, or `cuda:N`).
//!
//! ```
//! std::env::remove_var("ALP_BENCH_DEVICE");
//! assert!(alp_benches::bench_device().unwrap().is_cpu());
//! ```
#![warn(missing_docs)]

use candle_core::Device;

/// The device named by `ALP_BENCH_DEVICE` (default `cpu`).
pub fn bench_device() -> alp_core::Result<Device> {
    let s = std::env::var("ALP_BENCH_DEVICE").unwrap_or_else(|_| "cpu".into());
    alp_model::parse_device(&s)
}

/// Deterministic pseudo-random token ids in `0..vocab`.
pub fn random_tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut x = seed ^ 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((x >> 33) % vocab as u64) as u32
        })
        .collect()
}

/// `batch` generation requests of `prompt_len` random prompt tokens and `new_tokens` new ones
/// each (temperature 1, seed = index, no early stop): the rollout benches' workload.
pub fn random_requests(
    batch: usize,
    prompt_len: usize,
    new_tokens: usize,
    vocab: usize,
) -> Vec<alp_rollout::Request> {
    (0..batch)
        .map(|i| alp_rollout::Request {
            prompt: random_tokens(prompt_len, vocab, i as u64),
            params: alp_rollout::SamplingParams {
                max_new_tokens: new_tokens,
                seed: i as u64,
                ignore_eos: true,
                ..Default::default()
            },
        })
        .collect()
}

/// The dtype benchmarks use on `dev`: f32 on the CPU, bf16 on a GPU.
pub fn bench_dtype(dev: &candle_core::Device) -> candle_core::DType {
    if dev.is_cpu() {
        candle_core::DType::F32
    } else {
        candle_core::DType::BF16
    }
}
