//! One MeZO step on a prompt model, the mezo half of benches/mezo_step_vs_pytorch.py.
//!
//!   cargo bench --bench mezo_step -- --model DIR [--batch 8] [--seq 64] [--threads N]
//!       [--steps 3] [--rng fast|reference] [--forward-only]
//!
//! Prints `mezo step_ms=<median> forward_ms=<median> peak_rss_mb=<VmHWM>`. With
//! --forward-only it runs forward passes alone, so its peak RSS is that of inference. Under mpirun
//! the global batch is split over the ranks (data parallel, one all-reduce per evaluation), and
//! rank 0 prints.

use mezo::dist::{Dist, Reduce};
use mezo::model::{self, Dtype, FreezeRules, LoadOptions};
use mezo::optim::zo::{Perturbations, Rng, Trainable, Updater, WeightDecay, ZoOptimizer};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_string())
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN);
    kb / 1024.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dist = Dist::init().expect("MPI");
    if args.iter().any(|a| a == "--stream-only") {
        return stream_only();
    }
    let dir = arg(&args, "--model", "");
    let batch: i64 = arg(&args, "--batch", "8").parse().unwrap();
    let seq: i64 = arg(&args, "--seq", "64").parse().unwrap();
    let threads: i32 = arg(&args, "--threads", "1").parse().unwrap();
    let steps: usize = arg(&args, "--steps", "3").parse().unwrap();
    let forward_only = args.iter().any(|a| a == "--forward-only");
    let rng = match arg(&args, "--rng", "fast").as_str() {
        "reference" => Rng::Reference,
        "fast" => Rng::Fast,
        other => panic!("--rng fast|reference, not {other}"),
    };
    mezo::dist::device::set_threads(threads as usize);
    let options = LoadOptions { num_labels: Some(2), ..LoadOptions::new(Device::Cpu, Dtype::F32) };
    let m = model::load(std::path::Path::new(&dir), &options).unwrap_or_else(|e| panic!("{e}"));
    let e = m.encoder().expect("a prompt model");
    let vocab = m.config["vocab_size"].as_i64().unwrap();
    tch::manual_seed(0);
    let ids = Tensor::randint_low(4, vocab - 2, [batch, seq], (Kind::Int64, Device::Cpu));
    let _ = ids.narrow(1, 10, 1).fill_(vocab - 1);
    let labels = Tensor::randint(2, [batch], (Kind::Int64, Device::Cpu));
    let share = mezo::data::batch::shard(batch as usize, dist.rank(), dist.size());
    let (ids, labels) = (
        ids.narrow(0, share.start as i64, share.len() as i64),
        labels.narrow(0, share.start as i64, share.len() as i64),
    );
    let mask = ids.ones_like();
    let pos = Tensor::full([share.len() as i64, 1], 10, (Kind::Int64, Device::Cpu));
    let words = Tensor::from_slice(&[5i64, 6]);
    let loss = || -> anyhow::Result<f64> {
        let _guard = tch::no_grad_guard();
        let sum = e
            .label_scores(&ids, &mask, &pos, &words)
            .cross_entropy_loss::<Tensor>(&labels, None, tch::Reduction::Sum, -100, 0.0)
            .double_value(&[]);
        let mut sums = [sum, share.len() as f64];
        dist.all_reduce(&mut sums, Reduce::Sum);
        Ok(sums[0] / sums[1])
    };
    let forward_ms = median(
        (0..steps.max(3))
            .map(|_| {
                let start = Instant::now();
                loss().unwrap();
                start.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    );
    let step_ms = if forward_only {
        f64::NAN
    } else {
        let trainable: Vec<Trainable> = m
            .trainable(&FreezeRules::default())
            .into_iter()
            .map(|p| Trainable { name: p.name.clone(), tensor: p.tensor.shallow_clone() })
            .collect();
        let perturbations = Perturbations::new(rng, &trainable).unwrap();
        let mut updater = Updater::new(ZoOptimizer::Sgd, rng, &trainable);
        // Every rank: the loss all-reduces.
        if let Perturbations::Fast(stream) = &perturbations {
            let start = Instant::now();
            mezo::model::nn::with_view(stream.view(7, 1e-3), loss).unwrap();
            let perturbed = start.elapsed().as_secs_f64() * 1e3;
            let start = Instant::now();
            updater.apply(&trainable, &[(7, 0.0)], 0.0, 0.0, WeightDecay::AllTensors);
            let update = start.elapsed().as_secs_f64() * 1e3;
            if dist.is_root() {
                println!("fast stream: perturbed forward {perturbed:.0} ms, update {update:.0} ms");
            }
        }
        median(
            (0..steps)
                .map(|i| {
                    let start = Instant::now();
                    let seed = 1000 + i as u64;
                    let (_, g) = perturbations.direction(&trainable, seed, 1e-3, true, loss).unwrap();
                    updater.apply(&trainable, &[(seed, g)], 1e-6, 0.0, WeightDecay::AllTensors);
                    start.elapsed().as_secs_f64() * 1e3
                })
                .collect(),
        )
    };
    if dist.is_root() {
        println!(
            "mezo rng={rng:?} step_ms={step_ms:.1} forward_ms={forward_ms:.1} peak_rss_mb={:.0} ranks={}",
            peak_rss_mb(),
            dist.size()
        );
    }
}

/// `--stream-only`: the fast stream's generator alone, one thread: nanoseconds per normal.
fn stream_only() {
    let mut z = vec![0f32; 1 << 24];
    let key = mezo::optim::philox::key(12345, 3);
    let ns = median(
        (0..5)
            .map(|i| {
                let start = Instant::now();
                mezo::optim::philox::fill(key, i << 24, &mut z);
                start.elapsed().as_secs_f64() * 1e9 / z.len() as f64
            })
            .collect(),
    );
    println!("philox normals: {ns:.2} ns each on one thread (checksum {})", z.iter().sum::<f32>());
}
