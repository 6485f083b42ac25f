//! Engine throughput: generating 32 new tokens from 32-token random prompts at batch 1, 16 and
//! 64 (sampling at temperature 1, no early stop), for the ~25M config and the shape of `alp
//! train`'s embedded default. CPU by default; `ALP_BENCH_DEVICE=cuda:0` for a GPU.
use std::sync::Arc;

use alp_benches::{bench_device, random_requests};
use alp_model::{presets, ModelWeights};
use alp_rollout::{Engine, EngineConfig};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn bench(c: &mut Criterion) {
    let dev = bench_device().expect("ALP_BENCH_DEVICE");
    let dtype = alp_benches::bench_dtype(&dev);
    let (prompt_len, new_tokens) = (32, 32);
    for (name, cfg) in [
        ("qwen2-25m", presets::qwen2_25m()),
        ("alp-default", presets::alp_default()),
    ] {
        let model = ModelWeights::random(&cfg, 0, dtype, &dev)
            .and_then(|w| w.build())
            .expect("model");
        let model = Arc::new(model);
        let engine = Engine::new(model.clone(), EngineConfig::default()).expect("engine");
        // Two independent batches on two threads (what `alp bench rollout` does on a CPU).
        let sharded = Engine::new(
            model,
            EngineConfig {
                shards: 2,
                ..Default::default()
            },
        )
        .expect("engine");
        let mut g = c.benchmark_group(format!("{name}/generate"));
        g.sample_size(10);
        for batch in [1usize, 16, 64] {
            let requests = random_requests(batch, prompt_len, new_tokens, cfg.vocab_size);
            g.throughput(Throughput::Elements((batch * new_tokens) as u64));
            g.bench_function(BenchmarkId::new("batch", batch), |b| {
                b.iter(|| engine.generate(&requests).unwrap())
            });
            if batch > 1 {
                g.bench_function(BenchmarkId::new("batch-2-shards", batch), |b| {
                    b.iter(|| sharded.generate(&requests).unwrap())
                });
            }
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
