//! Forward-pass timing of a Hugging Face model directory, the mezo half of
//! benches/forward_vs_transformers.py (which runs the `transformers` half in the same run).
//!
//!   cargo bench --bench forward -- --model DIR --mode prompt|causal [--batch 8] [--seq 64]
//!       [--threads N] [--iters 10]
//!
//! prompt: label-word scores at one mask position per row (RoBERTa/BERT); causal: the mean
//! next-token cross-entropy over every position (OPT/Llama), through `lm_loss` (the LM head and the
//! loss on chunks of positions). Prints one line:
//! `mezo <mode> median_ms=<ms>`.

mod common;

use common::{arg, median};
use mezo::model::cache::{lm_loss, next_token_targets};
use mezo::model::{self, Dtype, LoadOptions};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = arg(&args, "--model", "");
    assert!(!dir.is_empty(), "--model DIR is required");
    let mode = arg(&args, "--mode", "prompt");
    let batch: i64 = arg(&args, "--batch", "8").parse().unwrap();
    let seq: i64 = arg(&args, "--seq", "64").parse().unwrap();
    let threads: i32 = arg(&args, "--threads", "1").parse().unwrap();
    let iters: usize = arg(&args, "--iters", "10").parse().unwrap();
    // As every mezo command does: threads, and the allocator thresholds.
    mezo::dist::device::set_threads(threads as usize);
    let _guard = tch::no_grad_guard();
    let options = LoadOptions::new(Device::Cpu, Dtype::F32);
    let m = model::load(std::path::Path::new(&dir), &options).unwrap_or_else(|e| panic!("{e}"));
    let vocab = m.config["vocab_size"].as_i64().unwrap();
    tch::manual_seed(0);
    let ids = Tensor::randint_low(4, vocab - 2, [batch, seq], (Kind::Int64, Device::Cpu));
    let mask = ids.ones_like();
    let mut step: Box<dyn FnMut() -> f64> = match mode.as_str() {
        "prompt" => {
            let e = m.encoder().expect("prompt mode needs an encoder");
            let mask_id = vocab - 1;
            let _ = ids.narrow(1, 10, 1).fill_(mask_id);
            let pos = Tensor::full([batch, 1], 10, (Kind::Int64, Device::Cpu));
            let words = Tensor::from_slice(&[5i64, 6]);
            Box::new(move || e.label_scores(&ids, &mask, &pos, &words).sum(Kind::Double).double_value(&[]))
        }
        "causal" => {
            let lm = m.causal_lm().expect("causal mode needs a causal LM");
            let targets = next_token_targets(&ids, &mask);
            Box::new(move || lm_loss(lm, &ids, &mask, &targets).double_value(&[]))
        }
        "causal-logits" => {
            let lm = m.causal_lm().expect("causal mode needs a causal LM");
            Box::new(move || lm.forward(&ids, &mask, None).sum(Kind::Double).double_value(&[]))
        }
        "lm-head" => {
            // The output projection alone, on the model's tied embedding matrix.
            let weight = m.params[0].tensor.shallow_clone();
            let x = Tensor::randn([batch, seq, weight.size()[1]], (Kind::Float, Device::Cpu));
            Box::new(move || x.linear::<Tensor>(&weight, None).sum(Kind::Float).double_value(&[]))
        }
        other => panic!("unknown mode {other}"),
    };
    for _ in 0..2 {
        step();
    }
    let times: Vec<f64> = (0..iters)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(step());
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    println!("mezo {mode} median_ms={:.2}", median(times));
}
