//! A tiny Doge learns through the DMA op: AdamW on a repeating token pattern lowers the loss,
//! and every parameter (A and dt_proj included) gets a gradient.

mod common;

use candle_core::{Tensor, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use common::*;
use doge::{DogeForCausalLM, ModelOptions};

fn loss(model: &DogeForCausalLM, ids: &Tensor) -> Tensor {
    let n = ids.dim(1).unwrap();
    let logits = model.forward(&ids.narrow(1, 0, n - 1).unwrap()).unwrap();
    let targets = ids.narrow(1, 1, n - 1).unwrap();
    let v = logits.dim(D::Minus1).unwrap();
    candle_nn::loss::cross_entropy(
        &logits.reshape(((), v)).unwrap(),
        &targets.flatten_all().unwrap(),
    )
    .unwrap()
}

#[test]
fn a_tiny_model_trains_through_the_op() {
    let mut config = small_config();
    config.num_hidden_layers = 1;
    let model = random_model(config, ModelOptions::default());
    // A pattern of period 7 that a window of 5 can still predict from recent tokens.
    let row: Vec<u32> = (0..32)
        .map(|i| [5u32, 9, 2, 33, 17, 9, 40][i % 7])
        .collect();
    let ids = Tensor::new(row.as_slice(), &CPU)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let vars = model.vars().all_vars();
    let mut opt = AdamW::new(
        vars.clone(),
        ParamsAdamW {
            lr: 3e-3,
            weight_decay: 0.0,
            ..Default::default()
        },
    )
    .unwrap();
    let first = loss(&model, &ids);
    let grads = first.backward().unwrap();
    let data = model.vars().data().lock().unwrap();
    for name in [
        "model.layers.0.self_attn.A",
        "model.layers.0.self_attn.dt_proj.weight",
    ] {
        let g = grads.get(data[name].as_tensor()).expect(name);
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(norm > 0.0 && norm.is_finite(), "{name}: {norm}");
    }
    drop(data);
    let first = first.to_scalar::<f32>().unwrap();
    let mut last = first;
    for _ in 0..40 {
        let l = loss(&model, &ids);
        last = l.to_scalar::<f32>().unwrap();
        opt.backward_step(&l).unwrap();
    }
    assert!(last < 0.3 * first, "loss {first} -> {last}");

    // The trained weights survive a save and a load.
    let dir = tempfile::tempdir().unwrap();
    model.save(dir.path()).unwrap();
    let loaded = DogeForCausalLM::load(dir.path(), ModelOptions::default(), &CPU).unwrap();
    let (a, b) = (loss(&model, &ids), loss(&loaded, &ids));
    assert_eq!(a.to_scalar::<f32>().unwrap(), b.to_scalar::<f32>().unwrap());
}
