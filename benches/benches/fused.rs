//! Each fused kernel with a backward (`alp_model::fused`) against its twin composed from candle
//! ops, forward + backward, at the training shapes of the ~25M config (16 × 127 tokens, hidden
//! 512, 8 heads of 64, MLP 1408, vocabulary 2048); and the inference attention
//! (`alp_model::attention`) against candle's composition at a decode step. CPU only: on other
//! devices both take the twin.
use alp_model::bench_internals::fused::{self, twin};
use candle_core::{Device, Tensor, Var};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

type Op = fn(&[Tensor]) -> candle_core::Result<Tensor>;

/// Forward, then the backward of a sum (every output element gets gradient 1).
fn fwd_bwd(op: Op, vars: &[Tensor]) {
    let y = op(vars).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    criterion::black_box(grads);
}

fn bench(c: &mut Criterion) {
    let dev = Device::Cpu;
    let (rows, d, heads, t, hd, inter, vocab) = (16 * 127, 512, 8, 127, 64, 1408, 2048);
    let var = |shape: &[usize]| {
        Var::from_tensor(&Tensor::randn(0f32, 1., shape, &dev).unwrap())
            .unwrap()
            .as_tensor()
            .clone()
    };
    let konst = |shape: &[usize]| Tensor::randn(0f32, 1., shape, &dev).unwrap();
    let targets = Tensor::from_vec(alp_benches::random_tokens(rows, vocab, 7), rows, &dev).unwrap();
    let tg = targets.clone();
    // (name, inputs, fused, twin, elements processed)
    let cases: Vec<(&str, Vec<Tensor>, Op, Op, usize)> = vec![
        (
            "rms_norm",
            vec![var(&[rows, d]), var(&[d])],
            |v| fused::rms_norm(&v[0], &v[1], 1e-6),
            |v| twin::rms_norm(&v[0], &v[1], 1e-6),
            rows * d,
        ),
        (
            "rope",
            vec![
                var(&[16, heads, t, hd]),
                konst(&[16, t, hd / 2]),
                konst(&[16, t, hd / 2]),
            ],
            |v| fused::rope(&v[0], &v[1], &v[2]),
            |v| twin::rope(&v[0], &v[1], &v[2]),
            16 * heads * t * hd,
        ),
        (
            "softmax",
            vec![var(&[16, heads, t, t])],
            |v| fused::softmax_last_dim(&v[0]),
            |v| twin::softmax_last_dim(&v[0]),
            16 * heads * t * t,
        ),
        (
            "silu_mul",
            vec![var(&[rows, inter]), var(&[rows, inter])],
            |v| fused::silu_mul(&v[0], &v[1]),
            |v| twin::silu_mul(&v[0], &v[1]),
            rows * inter,
        ),
    ];
    for (name, inputs, fast, slow, elems) in cases {
        let mut g = c.benchmark_group(format!("fused/{name}"));
        g.sample_size(10);
        g.throughput(Throughput::Elements(elems as u64));
        g.bench_function(BenchmarkId::from_parameter("fused"), |b| {
            b.iter(|| fwd_bwd(fast, &inputs))
        });
        g.bench_function(BenchmarkId::from_parameter("twin"), |b| {
            b.iter(|| fwd_bwd(slow, &inputs))
        });
        g.finish();
    }
    // The gather needs the targets, which a plain fn pointer cannot capture.
    let logits = var(&[rows, vocab]);
    let mut g = c.benchmark_group("fused/log_softmax_gather");
    g.sample_size(10);
    g.throughput(Throughput::Elements((rows * vocab) as u64));
    g.bench_function(BenchmarkId::from_parameter("fused"), |b| {
        b.iter(|| {
            let y = fused::log_softmax_gather(&logits, &targets).unwrap();
            criterion::black_box(y.sum_all().unwrap().backward().unwrap());
        })
    });
    g.bench_function(BenchmarkId::from_parameter("twin"), |b| {
        b.iter(|| {
            let y = twin::log_softmax_gather(&logits, &tg).unwrap();
            criterion::black_box(y.sum_all().unwrap().backward().unwrap());
        })
    });
    g.finish();

    // Inference attention (no backward) at a decode step of one rollout shard: 32 sequences,
    // 8 query heads over 4 KV heads of 64, 95 cached positions in a cache of 128.
    let (b, kv, l) = (32, 4, 95);
    let q = konst(&[b, heads, 1, hd]);
    let cache = |_| konst(&[b, kv, 128, hd]).narrow(2, 0, l).unwrap();
    let (k, v) = (cache(0), cache(1));
    let scale = 1.0 / (hd as f64).sqrt();
    let mut g = c.benchmark_group("fused/attention_decode");
    g.sample_size(20);
    g.throughput(Throughput::Elements((b * heads * l * hd) as u64));
    g.bench_function(BenchmarkId::from_parameter("fused"), |bn| {
        bn.iter(|| {
            criterion::black_box(alp_model::bench_internals::attention::attention(
                &q, &k, &v, None, scale,
            ))
        })
    });
    g.bench_function(BenchmarkId::from_parameter("reference"), |bn| {
        bn.iter(|| {
            let r =
                alp_model::bench_internals::attention::attention_reference(&q, &k, &v, None, scale);
            criterion::black_box(r)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
