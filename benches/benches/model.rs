//! Prefill and decode-step throughput of the decoder (CPU by default; `ALP_BENCH_DEVICE=cuda:0`),
//! and the inference path's product (`alp_model::bench_internals::gemm::linear`) against candle's matmul by rows.
use alp_benches::{bench_device, random_tokens};
use alp_model::NoPerturbation;
use alp_model::{presets, Config, ModelWeights};
use candle_core::Tensor;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

/// (name, config, prefill batch, prefill length, decode batches). The Qwen2.5-0.5B shape only
/// runs on a GPU (on two CPU cores one step takes seconds).
fn shapes(gpu: bool) -> Vec<(&'static str, Config, usize, usize, Vec<usize>)> {
    let mut v = vec![("qwen2-25m", presets::qwen2_25m(), 8, 128, vec![1, 64, 256])];
    if gpu {
        v.push((
            "qwen2.5-0.5b",
            presets::qwen2_5_0_5b(),
            8,
            512,
            vec![1, 64, 256],
        ));
    }
    v
}

fn bench(c: &mut Criterion) {
    let dev = bench_device().expect("ALP_BENCH_DEVICE");
    let dtype = alp_benches::bench_dtype(&dev);
    for (name, cfg, pb, pl, decode_batches) in shapes(!dev.is_cpu()) {
        let model = ModelWeights::random(&cfg, 0, dtype, &dev)
            .and_then(|w| w.build())
            .expect("model");
        let mut g = c.benchmark_group(format!("{name}/prefill"));
        g.sample_size(10);
        g.throughput(Throughput::Elements((pb * pl) as u64));
        let ids =
            Tensor::from_vec(random_tokens(pb * pl, cfg.vocab_size, 1), (pb, pl), &dev).unwrap();
        g.bench_function(BenchmarkId::from_parameter(format!("{pb}x{pl}")), |b| {
            b.iter(|| {
                let mut cache = model.new_cache(pl, &[]);
                model
                    .forward_last(&ids, &mut cache, &NoPerturbation)
                    .unwrap()
            })
        });
        g.finish();

        let mut g = c.benchmark_group(format!("{name}/decode_step"));
        g.sample_size(20);
        let ctx = 64;
        for &b in &decode_batches {
            g.throughput(Throughput::Elements(b as u64));
            let prompt =
                Tensor::from_vec(random_tokens(b * ctx, cfg.vocab_size, 2), (b, ctx), &dev)
                    .unwrap();
            let mut cache = model.new_cache(ctx + 1, &[]);
            model
                .forward_last(&prompt, &mut cache, &NoPerturbation)
                .unwrap();
            let step = Tensor::from_vec(random_tokens(b, cfg.vocab_size, 3), (b, 1), &dev).unwrap();
            g.bench_function(BenchmarkId::new("batch", b), |bench| {
                bench.iter(|| {
                    cache.truncate(ctx);
                    model
                        .forward_last(&step, &mut cache, &NoPerturbation)
                        .unwrap()
                })
            });
        }
        g.finish();
    }
}

/// One MLP up-projection of the 25M shape (512 → 1408) at growing row counts: the inference
/// path's shape-picked product, and its packed variant over a prepared weight (the rollout
/// snapshot's), against candle's matmul (the reference), to place
/// `alp_model::bench_internals::gemm::SMALL_M_ROWS` on this CPU. The weight stays in cache here; a decode step's
/// weights stream from memory.
fn linear(c: &mut Criterion) {
    let dev = candle_core::Device::Cpu;
    let (k, n) = (512, 1408);
    let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
    // The rollout snapshot's path, where the CPU has it (AVX-512).
    let packed = alp_model::bench_internals::gemm::PackedWeight::new(&w).unwrap();
    let mut g = c.benchmark_group("linear_512x1408");
    g.sample_size(20);
    for m in [1usize, 16, 32, 64, 128, 256, 512, 1024] {
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        g.bench_function(BenchmarkId::new("alp", m), |b| {
            b.iter(|| alp_model::bench_internals::gemm::linear(&x, &w).unwrap())
        });
        g.bench_function(BenchmarkId::new("candle", m), |b| {
            b.iter(|| alp_model::bench_internals::gemm::linear_reference(&x, &w).unwrap())
        });
        if let Some(p) = &packed {
            g.bench_function(BenchmarkId::new("alp-packed", m), |b| {
                b.iter(|| alp_model::bench_internals::gemm::linear_packed(&x, &w, p).unwrap())
            });
        }
    }
    g.finish();
}

/// The half-precision rollout snapshot's product (bf16, then f16) at the Qwen2.5-0.5B MLP shape (896 → 4864), decode's
/// and prefill's row counts: alp's half-precision kernel over a bf16 weight packed once
/// (`gemm::linear_half`) against its twin, today's path before it (both operands widened to
/// f32, the packed f32 kernel for at most `SMALL_M_ROWS` rows and candle's matmul above, the
/// product rounded back to bf16), and against the plain loop it is tested against (small row
/// counts only).
fn linear_half(c: &mut Criterion) {
    for dtype in [candle_core::DType::BF16, candle_core::DType::F16] {
        linear_half_in(c, dtype);
    }
}

/// [`linear_half`] for weights of `dtype` (bf16: `linear_half_896x4864`; f16: the same with
/// `_f16`).
fn linear_half_in(c: &mut Criterion, dtype: candle_core::DType) {
    use alp_model::bench_internals::gemm;
    use candle_core::DType;
    let dev = candle_core::Device::Cpu;
    let (k, n) = (896, 4864);
    let w = Tensor::randn(0f32, 1.0, (n, k), &dev)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    let Some(half) = gemm::HalfWeight::new(&w).unwrap() else {
        eprintln!("linear_half: this CPU has no AVX-512F, nothing to measure");
        return;
    };
    let wide = w.to_dtype(DType::F32).unwrap();
    let packed = gemm::PackedWeight::new(&wide).unwrap();
    let name = if dtype == DType::F16 {
        "linear_half_896x4864_f16"
    } else {
        "linear_half_896x4864"
    };
    let mut g = c.benchmark_group(name);
    g.sample_size(10);
    for m in [1usize, 16, 64, 128, 512] {
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        g.bench_function(BenchmarkId::new("alp-half", m), |b| {
            b.iter(|| gemm::linear_half(&x, &half).unwrap())
        });
        g.bench_function(BenchmarkId::new("widened-f32", m), |b| {
            b.iter(|| {
                let xf = x.to_dtype(DType::F32).unwrap();
                let y = match &packed {
                    Some(p) => gemm::linear_packed(&xf, &wide, p).unwrap(),
                    None => gemm::linear(&xf, &wide).unwrap(),
                };
                y.to_dtype(dtype).unwrap()
            })
        });
        if m <= 16 {
            g.bench_function(BenchmarkId::new("plain-loop", m), |b| {
                b.iter(|| gemm::linear_half_reference(&x, &w).unwrap())
            });
        }
    }
    g.finish();
}

/// The exact numerics' kernels (`Numerics::Exact`) against their twins on the fast path, at
/// the Qwen2.5-0.5B shape: the product (896 → 4,864) over the kept packed copy at any row count
/// (`gemm::linear_exact`) against `gemm::linear` (the packed kernel up to `SMALL_M_ROWS` rows,
/// candle's matmul above), and attention over each query's visible keys
/// (`attention::attention_exact`) against the one-pass inference kernel with a mask, for a
/// decode step (16 rows against 128 cached keys) and a prefill (4 × 128).
fn exact(c: &mut Criterion) {
    use alp_model::bench_internals::{attention, gemm};
    let dev = candle_core::Device::Cpu;
    let (k, n) = (896, 4864);
    let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
    let Some(packed) = gemm::PackedWeight::new(&w).unwrap() else {
        eprintln!("exact: this CPU has no packed kernel, nothing to measure");
        return;
    };
    let mut g = c.benchmark_group("linear_exact_896x4864");
    g.sample_size(10);
    for m in [1usize, 64, 512] {
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        g.bench_function(BenchmarkId::new("exact", m), |b| {
            b.iter(|| gemm::linear_exact(&x, &w, Some(&packed)).unwrap())
        });
        g.bench_function(BenchmarkId::new("fast", m), |b| {
            b.iter(|| gemm::linear_packed(&x, &w, &packed).unwrap())
        });
    }
    g.finish();
    let (nh, nkv, hd) = (14, 2, 64);
    let mut g = c.benchmark_group("attention_exact_0.5b");
    g.sample_size(10);
    for (name, b, t, start) in [
        ("decode_b16_l128", 16, 1, 127),
        ("prefill_b4_t128", 4, 128, 0),
    ] {
        let l = start + t;
        let q = Tensor::randn(0f32, 1.0, (b, nh, t, hd), &dev).unwrap();
        let kv = Tensor::randn(0f32, 1.0, (b, nkv, l, hd), &dev).unwrap();
        let mask: Vec<f32> = (0..t)
            .flat_map(|i| {
                (0..l).map(move |j| {
                    if j <= start + i {
                        0.0
                    } else {
                        f32::NEG_INFINITY
                    }
                })
            })
            .collect();
        let mask = Tensor::from_vec(mask, (1, 1, 1, t, l), &dev).unwrap();
        let scale = 1.0 / (hd as f64).sqrt();
        g.bench_function(BenchmarkId::new("exact", name), |bch| {
            bch.iter(|| attention::attention_exact(&q, &kv, &kv, &[], start, scale).unwrap())
        });
        g.bench_function(BenchmarkId::new("fast", name), |bch| {
            bch.iter(|| attention::attention(&q, &kv, &kv, Some(&mask), scale).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, bench, linear, linear_half, exact);
criterion_main!(benches);
