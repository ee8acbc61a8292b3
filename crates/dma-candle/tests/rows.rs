//! `gather_rows` against a direct f64 computation of the lookup and of its gradient (the sum of
//! the upstream rows over every repeat of an id), on fresh random inputs.

use candle_core::{DType, Device, Tensor, Var};
use dma_candle::gather_rows;
use proptest::prelude::*;

/// Row-major `rows x width` values, the ids, and the upstream gradient `ids.len() x width`.
fn lookup_case() -> impl Strategy<Value = (usize, usize, Vec<f32>, Vec<u32>, Vec<f32>)> {
    (1usize..40, 1usize..9, 0usize..60).prop_flat_map(|(rows, width, n)| {
        (
            Just(rows),
            Just(width),
            prop::collection::vec(-4.0f32..4.0, rows * width),
            prop::collection::vec(0..rows as u32, n),
            prop::collection::vec(-4.0f32..4.0, n * width),
        )
    })
}

fn max_rel_err(got: &[f32], want: &[f64]) -> f64 {
    let scale = want.iter().fold(1.0f64, |m, x| m.max(x.abs()));
    got.iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w).abs() / scale)
        .fold(0.0, f64::max)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn lookup_and_gradient_match_f64((rows, width, table, ids, upstream) in lookup_case()) {
        let dev = Device::Cpu;
        let n = ids.len();
        let table_var = Var::from_vec(table.clone(), (rows, width), &dev).unwrap();
        let ids_t = Tensor::from_vec(ids.clone(), n, &dev).unwrap();
        let out = gather_rows(&table_var, &ids_t).unwrap();
        prop_assert_eq!(out.dims(), &[n, width]);
        let want: Vec<f64> = ids
            .iter()
            .flat_map(|&id| table[id as usize * width..(id as usize + 1) * width].iter())
            .map(|&x| x as f64)
            .collect();
        let got: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
        prop_assert_eq!(max_rel_err(&got, &want), 0.0);

        let g = Tensor::from_vec(upstream.clone(), (n, width), &dev).unwrap();
        let grads = (out * g).unwrap().sum_all().unwrap().backward().unwrap();
        let mut want = vec![0f64; rows * width];
        for (i, &id) in ids.iter().enumerate() {
            for c in 0..width {
                want[id as usize * width + c] += upstream[i * width + c] as f64;
            }
        }
        let got: Vec<f32> = grads.get(&table_var).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        prop_assert!(max_rel_err(&got, &want) < 1e-5, "gradient error {}", max_rel_err(&got, &want));
    }
}

/// A bf16 table (candle's own `index_add` backward) and a table of rank 3 with i64 ids.
#[test]
fn other_dtypes_and_ranks() {
    let dev = Device::Cpu;
    let table = Var::from_tensor(
        &Tensor::arange(0f32, 24.0, &dev)
            .unwrap()
            .reshape((4, 3, 2))
            .unwrap(),
    )
    .unwrap();
    let ids = Tensor::new(&[3i64, 1, 3], &dev).unwrap();
    let out = gather_rows(&table, &ids).unwrap();
    assert_eq!(out.dims(), &[3, 3, 2]);
    assert_eq!(
        out.get(0)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap(),
        [18., 19., 20., 21., 22., 23.]
    );
    let grads = out.sum_all().unwrap().backward().unwrap();
    let grad: Vec<f32> = grads
        .get(&table)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let want: Vec<f32> = [0., 1., 0., 2.].iter().flat_map(|&x| [x; 6]).collect();
    assert_eq!(grad, want);

    let half = Var::from_tensor(&table.to_dtype(DType::BF16).unwrap()).unwrap();
    let out = gather_rows(&half, &ids).unwrap();
    let grads = out
        .to_dtype(DType::F32)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let grad: Vec<f32> = grads
        .get(&half)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(grad, want);
}

#[test]
fn bad_ids_are_errors() {
    let dev = Device::Cpu;
    let table = Tensor::zeros((4, 2), DType::F32, &dev).unwrap();
    let err = |ids: Tensor| gather_rows(&table, &ids).unwrap_err().to_string();
    assert!(err(Tensor::new(&[[0u32, 1]], &dev).unwrap()).contains("`ids` must have shape [n]"));
    assert!(err(Tensor::new(&[0f32, 1.], &dev).unwrap()).contains("`ids` has dtype F32"));
    assert!(!err(Tensor::new(&[0u32, 4], &dev).unwrap()).is_empty());
    let scalar = Tensor::new(1f32, &dev).unwrap();
    let ids = Tensor::new(&[0u32], &dev).unwrap();
    assert!(gather_rows(&scalar, &ids)
        .unwrap_err()
        .to_string()
        .contains("`table` must have shape [rows, ...]"));
}
