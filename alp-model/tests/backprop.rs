//! The workspace builds a patched candle-core (vendor/candle-core/PATCHED.md). The backward pass
//! stores the first gradient contribution instead of adding it to zeros: these tests hold it to
//! closed-form gradients where tensors are used several times, broadcast, transposed, narrowed
//! and gathered — the cases where a stored gradient is later added to or shared. Sums that keep
//! the last dimension add whole blocks, and the matmul no longer zeroes its output first: these
//! tests hold both to plain loops.
mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::rel_diff;

#[test]
fn a_tensor_used_several_times_gets_the_sum_of_its_gradients() {
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 5), &dev).unwrap()).unwrap();
    // f = Σ (x·x + x + x) = Σ x² + 2x  →  df/dx = 2x + 2 (x enters an Add twice and a Mul twice).
    let y = ((x.as_tensor() * x.as_tensor()).unwrap() + (x.as_tensor() + x.as_tensor()).unwrap())
        .unwrap()
        .sum_all()
        .unwrap();
    let g = y.backward().unwrap();
    let got = g.get(x.as_tensor()).unwrap();
    let want = ((x.as_tensor() * 2.0).unwrap() + 2.0).unwrap();
    assert!(rel_diff(got, &want) < 1e-6);
}

#[test]
fn matmul_broadcast_narrow_and_gather_gradients_match_their_closed_forms() {
    let dev = Device::Cpu;
    let (n, k, m, v) = (4, 6, 3, 7);
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap()).unwrap();
    let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap()).unwrap();
    let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, m, &dev).unwrap()).unwrap();
    let e = Var::from_tensor(&Tensor::randn(0f32, 1.0, (v, k), &dev).unwrap()).unwrap();
    let c = Tensor::randn(0f32, 1.0, (n, m), &dev).unwrap();
    let ids = Tensor::new(&[1u32, 4, 1, 6], &dev).unwrap();
    // f = Σ c ⊙ ((x + E[ids])·wᵀ + b)  +  Σ narrow(x, 1, 2, 3)  +  Σ (x·wᵀ)ᵀ ⊙ cᵀ
    let xe = (x.as_tensor() + e.as_tensor().index_select(&ids, 0).unwrap()).unwrap();
    let lin = xe
        .matmul(&w.as_tensor().t().unwrap())
        .unwrap()
        .broadcast_add(b.as_tensor())
        .unwrap();
    let f1 = (&lin * &c).unwrap().sum_all().unwrap();
    let f2 = x.as_tensor().narrow(1, 2, 3).unwrap().sum_all().unwrap();
    let xw_t = x
        .as_tensor()
        .matmul(&w.as_tensor().t().unwrap())
        .unwrap()
        .t()
        .unwrap();
    let f3 = (&xw_t * c.t().unwrap()).unwrap().sum_all().unwrap();
    let f = ((f1 + f2).unwrap() + f3).unwrap();
    let g = f.backward().unwrap();

    let cw = c.matmul(w.as_tensor()).unwrap(); // [n, k]
    let mut narrow_ones = vec![0f32; n * k];
    for r in 0..n {
        for j in 2..5 {
            narrow_ones[r * k + j] = 1.0;
        }
    }
    let narrow_ones = Tensor::from_vec(narrow_ones, (n, k), &dev).unwrap();
    let dx = ((&cw * 2.0).unwrap() + narrow_ones).unwrap();
    let dw = (c.t().unwrap().matmul(&xe).unwrap() + c.t().unwrap().matmul(x.as_tensor()).unwrap())
        .unwrap();
    let db = c.sum(0).unwrap();
    // E's rows get c·w for every position that gathered them (row 1 twice).
    let mut de = Tensor::zeros((v, k), DType::F32, &dev).unwrap();
    for (pos, row) in [(0usize, 1usize), (1, 4), (2, 1), (3, 6)] {
        let add = cw.narrow(0, pos, 1).unwrap();
        let cur = de.narrow(0, row, 1).unwrap();
        de = de
            .slice_assign(&[row..row + 1, 0..k], &(cur + add).unwrap())
            .unwrap();
    }
    for (what, var, want) in [("x", &x, dx), ("w", &w, dw), ("b", &b, db), ("E", &e, de)] {
        let got = g.get(var.as_tensor()).unwrap();
        assert_eq!(got.dims(), want.dims(), "{what}");
        let r = rel_diff(got, &want);
        assert!(r < 1e-5, "d{what}: relative difference {r}");
    }
}

/// `t`'s elements summed over `dims` (sorted), keeping them, by a plain loop in element order.
fn plain_sum_keepdim(t: &Tensor, dims: &[usize]) -> Vec<f32> {
    let shape = t.dims().to_vec();
    let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let out_shape: Vec<usize> = shape
        .iter()
        .enumerate()
        .map(|(i, &d)| if dims.contains(&i) { 1 } else { d })
        .collect();
    let mut out = vec![0f32; out_shape.iter().product()];
    for (flat, x) in v.iter().enumerate() {
        let (mut rem, mut o, mut stride) = (flat, 0, 1);
        for i in (0..shape.len()).rev() {
            let idx = rem % shape[i];
            rem /= shape[i];
            if !dims.contains(&i) {
                o += idx * stride;
            }
            stride *= out_shape[i];
        }
        out[o] += x;
    }
    out
}

#[test]
fn sums_over_any_dimensions_equal_a_plain_loop_bit_for_bit() {
    let dev = Device::Cpu;
    let t = Tensor::randn(0f32, 1.0, (3, 4, 5, 6), &dev).unwrap();
    let dims_sets: [&[usize]; 10] = [
        &[0],
        &[1],
        &[2],
        &[3],
        &[0, 1],
        &[1, 2],
        &[0, 2],
        &[2, 3],
        &[0, 3],
        &[0, 1, 2],
    ];
    // Contiguous inputs (the patched block path where the last dimension is kept) and a
    // transposed one (the strided path): both add in element order, as the loop does.
    for input in [t.clone(), t.transpose(1, 2).unwrap()] {
        for dims in dims_sets {
            let got = input
                .sum_keepdim(dims.to_vec())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert_eq!(got, plain_sum_keepdim(&input, dims), "sum over {dims:?}");
        }
    }
}

#[test]
fn matmul_writes_every_output_element() {
    let dev = Device::Cpu;
    // Leave freed memory full of NaN where the next outputs are likely to be allocated: an
    // element the product did not write would show.
    drop(
        Tensor::full(f32::NAN, (1 << 16,), &dev)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap(),
    );
    for (b, m, n, k) in [
        (1, 1, 1, 1),
        (2, 3, 5, 7),
        (3, 17, 9, 33),
        (1, 64, 40, 8),
        (2, 3, 4, 0),
    ] {
        let a = Tensor::randn(0f32, 1.0, (b, m, k), &dev).unwrap();
        let c = Tensor::randn(0f32, 1.0, (b, k, n), &dev).unwrap();
        let got = a.matmul(&c).unwrap();
        let (av, cv) = (
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            c.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        let gv = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for bi in 0..b {
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|t| {
                            av[bi * m * k + i * k + t] as f64 * cv[bi * k * n + t * n + j] as f64
                        })
                        .sum();
                    let g = gv[bi * m * n + i * n + j] as f64;
                    assert!(
                        (g - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "{b}x{m}x{n}x{k} at ({bi},{i},{j}): {g} vs {want}"
                    );
                }
            }
        }
    }
}

#[test]
fn a_transposed_right_operand_gets_a_contiguous_gradient_with_the_same_values() {
    let dev = Device::Cpu;
    // A linear layer (rank 2) and attention scores (rank 4): `a · bᵀ` with `b` contiguous.
    for (a_shape, b_shape) in [
        (vec![5usize, 7], vec![3usize, 7]),
        (vec![2, 3, 4, 8], vec![2, 3, 6, 8]),
    ] {
        let a =
            Var::from_tensor(&Tensor::randn(0f32, 1.0, a_shape.as_slice(), &dev).unwrap()).unwrap();
        let b =
            Var::from_tensor(&Tensor::randn(0f32, 1.0, b_shape.as_slice(), &dev).unwrap()).unwrap();
        let y = a.as_tensor().matmul(&b.as_tensor().t().unwrap()).unwrap();
        let c = Tensor::randn(0f32, 1.0, y.dims(), &dev).unwrap();
        let g = (&y * &c).unwrap().sum_all().unwrap().backward().unwrap();
        // d/db Σ c ⊙ (a·bᵀ) = cᵀ·a, d/da = c·b.
        let want_b = c.t().unwrap().matmul(a.as_tensor()).unwrap();
        let want_a = c.matmul(b.as_tensor()).unwrap();
        let got_b = g.get(b.as_tensor()).unwrap();
        assert!(got_b.is_contiguous(), "{b_shape:?}: the gradient is a view");
        assert!(rel_diff(got_b, &want_b) < 1e-6);
        assert!(rel_diff(g.get(a.as_tensor()).unwrap(), &want_a) < 1e-6);
    }
}
