//! The fused kernels with a backward against their differentiable twins: values within 1e-5
//! (relative), gradients within 1e-4, on odd shapes drawn by proptest; and the model's training
//! path against the reference path, gradient of every parameter included.
use crate::kernels::fused::{self, twin};
use crate::{presets, ModelWeights, NoPerturbation, Numerics};
use candle_core::{DType, Device, Tensor, Var};
use proptest::prelude::*;

fn randn(shape: &[usize], seed: u64) -> Tensor {
    // A deterministic pseudo-random tensor (proptest picks the seed).
    let n: usize = shape.iter().product();
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// max |a − b| / max(1, max |b|).
fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    let diff = a
        .iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(diff.is_finite(), "non-finite difference");
    diff / scale
}

/// Runs `f` on `inputs`, the first `n_vars` of them as fresh variables, takes the gradient of a
/// random projection of its output, and returns the output and the gradient of each variable.
fn value_and_grads(
    inputs: &[Tensor],
    n_vars: usize,
    f: &dyn Fn(&[Tensor]) -> candle_core::Result<Tensor>,
) -> (Tensor, Vec<Tensor>) {
    let ts: Vec<Tensor> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if i < n_vars {
                Var::from_tensor(t).unwrap().as_tensor().clone()
            } else {
                t.clone()
            }
        })
        .collect();
    let y = f(&ts).unwrap();
    let proj = randn(y.dims(), 99);
    let loss = (&y * &proj).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let g = ts[..n_vars]
        .iter()
        .map(|t| {
            grads
                .get(t)
                .expect("every variable gets a gradient")
                .clone()
        })
        .collect();
    (y, g)
}

/// Values and the gradients of every input.
fn check(
    inputs: &[Tensor],
    fast: &dyn Fn(&[Tensor]) -> candle_core::Result<Tensor>,
    slow: &dyn Fn(&[Tensor]) -> candle_core::Result<Tensor>,
) {
    check_vars(inputs, inputs.len(), fast, slow)
}

/// Values and the gradients of the first `n_vars` inputs (the rest are constants).
fn check_vars(
    inputs: &[Tensor],
    n_vars: usize,
    fast: &dyn Fn(&[Tensor]) -> candle_core::Result<Tensor>,
    slow: &dyn Fn(&[Tensor]) -> candle_core::Result<Tensor>,
) {
    let (yf, gf) = value_and_grads(inputs, n_vars, fast);
    let (ys, gs) = value_and_grads(inputs, n_vars, slow);
    let e = rel_err(&yf, &ys);
    assert!(e <= 1e-5, "values differ by {e}");
    for (i, (a, b)) in gf.iter().zip(&gs).enumerate() {
        let e = rel_err(a, b);
        assert!(e <= 1e-4, "gradient of input {i} differs by {e}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn rms_norm_matches_twin(rows in 1usize..70, d in 1usize..300, seed in 0u64..1000) {
        let x = randn(&[rows, d], seed);
        let w = randn(&[d], seed + 1);
        check(
            &[x, w],
            &|t| fused::rms_norm(&t[0], &t[1], 1e-6),
            &|t| twin::rms_norm(&t[0], &t[1], 1e-6),
        );
    }

    #[test]
    fn rope_matches_twin(b in 1usize..3, h in 1usize..5, t in 1usize..20, half in 1usize..40, seed in 0u64..1000, seq_major in any::<bool>()) {
        // Heads-first input, or the projections' [b, t, heads, hd] (the transpose in the kernel).
        let shape = if seq_major { [b, t, h, 2 * half] } else { [b, h, t, 2 * half] };
        let x = randn(&shape, seed);
        let cos = randn(&[b, t, half], seed + 1);
        let sin = randn(&[b, t, half], seed + 2);
        let heads_first = |x: &Tensor| -> candle_core::Result<Tensor> {
            if seq_major { x.transpose(1, 2)?.contiguous() } else { Ok(x.clone()) }
        };
        // The tables are constants: only x has a gradient.
        check_vars(
            &[x, cos, sin],
            1,
            &|v| if seq_major { fused::rope_from_seq_major(&v[0], &v[1], &v[2]) } else { fused::rope(&v[0], &v[1], &v[2]) },
            &|v| twin::rope(&heads_first(&v[0])?, &v[1], &v[2]),
        );
    }

    #[test]
    fn softmax_matches_twin(rows in 1usize..50, d in 1usize..300, seed in 0u64..1000, mask in any::<bool>()) {
        let mut x = randn(&[rows, d], seed);
        if mask && d > 1 {
            // A causal-style mask: -inf on part of each row, as attention has.
            let m: Vec<f32> = (0..rows * d).map(|i| if i % d > (i / d) % d { f32::NEG_INFINITY } else { 0.0 }).collect();
            x = (x + Tensor::from_vec(m, (rows, d), &Device::Cpu).unwrap()).unwrap();
        }
        check(&[x], &|t| fused::softmax_last_dim(&t[0]), &|t| twin::softmax_last_dim(&t[0]));
    }

    #[test]
    fn silu_mul_matches_twin(rows in 1usize..50, d in 1usize..400, seed in 0u64..1000) {
        let g = (randn(&[rows, d], seed) * 3.0).unwrap();
        let u = randn(&[rows, d], seed + 1);
        check(&[g, u], &|t| fused::silu_mul(&t[0], &t[1]), &|t| twin::silu_mul(&t[0], &t[1]));
    }

    /// The inference op (no backward, vectorised `exp`): values only, odd widths included.
    #[test]
    fn silu_mul_inference_matches_twin(rows in 1usize..50, d in 1usize..400, seed in 0u64..1000) {
        let g = (randn(&[rows, d], seed) * 3.0).unwrap();
        let u = randn(&[rows, d], seed + 1);
        let e = rel_err(&fused::silu_mul_inference(&g, &u).unwrap(), &twin::silu_mul(&g, &u).unwrap());
        prop_assert!(e <= 1e-6, "values differ by {}", e);
    }

    /// Inside `single_threaded` (a rollout shard) the forward kernels, and candle's
    /// element-wise ops large enough for its thread pool, run on the calling thread alone: the
    /// same bits as split across threads, for sizes on both sides of the split.
    #[test]
    fn forward_ops_on_one_thread_match_the_pool_bit_for_bit(rows in 1usize..200, d in 1usize..400, seed in 0u64..1000) {
        let x = randn(&[rows, d], seed);
        let y = randn(&[rows, d], seed + 1);
        let w = randn(&[d], seed + 2);
        let half = d.div_ceil(2);
        let xr = randn(&[1, rows, 2, 2 * half], seed + 3);
        let (cos, sin) = (randn(&[1, rows, half], seed + 4), randn(&[1, rows, half], seed + 5));
        let ops = || -> candle_core::Result<Vec<Tensor>> {
            Ok(vec![
                fused::rms_norm(&x, &w, 1e-6)?,
                fused::softmax_last_dim(&x)?,
                fused::silu_mul_inference(&x, &y)?,
                fused::silu_mul(&x, &y)?,
                fused::rope_from_seq_major(&xr, &cos, &sin)?,
                // 64K elements or more take candle's barrier pool outside `single_threaded`.
                ((&x * 3.0)?.exp()? + &y)?,
            ])
        };
        let pooled = ops().unwrap();
        let alone = crate::single_threaded(ops).unwrap();
        for (i, (a, b)) in alone.iter().zip(&pooled).enumerate() {
            let (a, b) = (a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
            prop_assert!(a.iter().zip(&b).all(|(a, b)| a.to_bits() == b.to_bits()), "op {} differs", i);
        }
    }

    #[test]
    fn log_softmax_gather_matches_twin(rows in 1usize..60, v in 1usize..3000, seed in 0u64..1000) {
        let x = (randn(&[rows, v], seed) * 5.0).unwrap();
        let tg: Vec<u32> = (0..rows).map(|r| ((r as u64 * 7919 + seed) % v as u64) as u32).collect();
        let tg = Tensor::new(tg, &Device::Cpu).unwrap();
        check(&[x], &|t| fused::log_softmax_gather(&t[0], &tg), &|t| twin::log_softmax_gather(&t[0], &tg));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// A frozen weight's product (gemm straight into the output) against candle's matmul: the
    /// values and `x`'s gradient; the weight, a variable here, gets no gradient at all.
    #[test]
    fn frozen_linear_matches_the_matmul_and_gives_the_weight_no_gradient(rows in 1usize..70, k in 1usize..200, n in 1usize..300, seed in 0u64..1000) {
        let x = randn(&[rows, k], seed);
        let w = Var::from_tensor(&randn(&[n, k], seed + 1)).unwrap();
        check_vars(
            &[x],
            1,
            &|t| fused::frozen_linear(&t[0], w.as_tensor()),
            &|t| t[0].matmul(&w.as_tensor().detach().t()?),
        );
        let xv = Var::from_tensor(&randn(&[rows, k], seed)).unwrap();
        let y = fused::frozen_linear(xv.as_tensor(), w.as_tensor()).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        prop_assert!(g.get(xv.as_tensor()).is_some());
        prop_assert!(g.get(w.as_tensor()).is_none(), "the frozen weight got a gradient");
    }
}

/// Whether `t` holds a subnormal value.
fn has_subnormal(t: &Tensor) -> bool {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .any(|v| v.is_subnormal())
}

/// Rows whose entries spread over 200 nats: candle's softmax (the twin) writes subnormal
/// probabilities and gradients there, which slow every product that reads them ~100× on
/// Intel CPUs; the fused kernels write 0 instead and otherwise agree with the twin.
#[test]
fn softmax_kernels_write_no_subnormals_where_probabilities_underflow() {
    let (rows, d) = (8, 256);
    let v: Vec<f32> = (0..rows * d)
        .map(|i| -((i % d) as f32) * 200.0 / d as f32 + (i / d) as f32 * 0.01)
        .collect();
    let x = Tensor::from_vec(v, (rows, d), &Device::Cpu).unwrap();
    assert!(
        has_subnormal(&twin::softmax_last_dim(&x).unwrap()),
        "the case does not underflow"
    );
    let xv = Var::from_tensor(&x).unwrap();
    let y = fused::softmax_last_dim(xv.as_tensor()).unwrap();
    assert!(!has_subnormal(&y), "softmax");
    let proj = randn(&[rows, d], 5);
    let g = (&y * &proj).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(
        !has_subnormal(g.get(xv.as_tensor()).unwrap()),
        "softmax backward"
    );
    check(
        std::slice::from_ref(&x),
        &|t| fused::softmax_last_dim(&t[0]),
        &|t| twin::softmax_last_dim(&t[0]),
    );
    // The log-softmax gather's backward writes the probabilities too.
    let tg = Tensor::new((0..rows as u32).collect::<Vec<_>>(), &Device::Cpu).unwrap();
    let xv = Var::from_tensor(&x).unwrap();
    let lp = fused::log_softmax_gather(xv.as_tensor(), &tg).unwrap();
    let g = lp.sum_all().unwrap().backward().unwrap();
    assert!(
        !has_subnormal(g.get(xv.as_tensor()).unwrap()),
        "log-softmax gather backward"
    );
    check(&[x], &|t| fused::log_softmax_gather(&t[0], &tg), &|t| {
        twin::log_softmax_gather(&t[0], &tg)
    });
}

#[test]
fn non_contiguous_and_non_f32_inputs_take_a_correct_path() {
    // A transposed input is made contiguous; an f64 input goes to the twin.
    let x = randn(&[6, 5], 3).t().unwrap();
    let w = randn(&[6], 4);
    let a = fused::rms_norm(&x, &w, 1e-6).unwrap();
    let b = twin::rms_norm(&x.contiguous().unwrap(), &w, 1e-6).unwrap();
    assert!(rel_err(&a, &b) <= 1e-6);
    let x64 = x.to_dtype(DType::F64).unwrap();
    let c = fused::softmax_last_dim(&x64).unwrap();
    assert_eq!(c.dtype(), DType::F64);
    let d = twin::softmax_last_dim(&x).unwrap();
    assert!(rel_err(&c.to_dtype(DType::F32).unwrap(), &d) <= 1e-6);
}

#[test]
fn training_path_matches_reference_path_with_every_gradient() {
    // The default model shape with q/k/v bias and a padded batch: logits and the gradient of
    // every parameter agree between the fused-with-backward path and the candle-ops path.
    let cfg = presets::by_name("tiny").unwrap();
    let weights = ModelWeights::random(&cfg, 5, DType::F32, &Device::Cpu).unwrap();
    let (model, varmap) = weights.build_trainable().unwrap();
    let ids = Tensor::new(
        &[[3u32, 9, 27, 1, 4, 8, 2], [0, 0, 5, 6, 7, 8, 9]],
        &Device::Cpu,
    )
    .unwrap();
    let targets = Tensor::new(
        &[[9u32, 27, 1, 4, 8, 2, 3], [0, 0, 6, 7, 8, 9, 10]],
        &Device::Cpu,
    )
    .unwrap();
    let run = |n: Numerics| {
        let logits = model
            .forward_full(&ids, &[0, 2], &NoPerturbation, n)
            .unwrap();
        let lp = crate::token_logprobs(&logits, &targets, 0.7).unwrap();
        let loss = lp.sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let mut named: Vec<(String, Tensor)> = varmap
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                let g = grads
                    .get(v.as_tensor())
                    .unwrap_or_else(|| panic!("{k} got no gradient under {n:?}"))
                    .clone();
                (k.clone(), g)
            })
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        (logits, named)
    };
    let (lf, gf) = run(Numerics::Training);
    let (lr, gr) = run(Numerics::Reference);
    assert!(rel_err(&lf, &lr) <= 1e-5, "logits differ");
    assert_eq!(gf.len(), gr.len());
    assert!(!gf.is_empty());
    for ((k, a), (_, b)) in gf.iter().zip(&gr) {
        let e = rel_err(a, b);
        assert!(e <= 1e-4, "gradient of {k} differs by {e}");
    }
}
