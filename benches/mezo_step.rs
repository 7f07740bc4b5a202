//! One MeZO step, the mezo half of benches/mezo_step_vs_pytorch.py and of the GPU check.
//!
//!   cargo bench --bench mezo_step -- [--model DIR] [--random-opt tiny|125m|1.3b|2.7b|6.7b|13b]
//!       [--device cpu|cuda] [--dtype f32|bf16|f16] [--batch 8] [--seq 64] [--threads N]
//!       [--steps 3] [--rng fast|reference] [--separate-passes] [--forward-only]
//!   cargo bench --bench mezo_step -- --stream-only [--threads 1]
//!
//! A prompt model (RoBERTa/BERT) is scored by the label words at one mask position per row, a
//! causal LM by its next-token loss (`lm_loss`). `--random-opt` benchmarks a random OPT of that
//! published size, its weights made on the device itself (`transformers`' initialisation; only a
//! config.json is written, to a temporary directory), so that a 13B model needs neither disk nor
//! host memory of its size.
//!
//! On a GPU it also measures the device's copy bandwidth (`copy_gbs`: a 1 GiB device-to-device
//! copy, bytes read plus written per second, after the device memory is read) and the fast
//! stream's kernels against it: the update (`update_gbs`, reads and writes θ) and, with the paired
//! pass, forming both perturbed sides of every tensor (`perturb_gbs`, reads θ once and writes two
//! copies), each with its fraction of the copy bandwidth.
//!
//! Prints `mezo step_ms=<median> forward_ms=<median> step_over_forward=<median> peak_rss_mb=<VmHWM>`
//! (steps alternate with plain forward passes, whose median is forward_ms; step_over_forward is
//! the median of each step's time over that of the forward pass just before it), and on a GPU
//! `device_mem_mb=<in use at the end>`: libtorch's caching allocator keeps what it reserved, so
//! that is its peak plus the context. With --forward-only it runs forward passes alone, so its
//! peaks are those of inference. Under mpirun the global batch is split over the ranks (data
//! parallel, one all-reduce per evaluation), and rank 0 prints. The fast stream scores both sides
//! of a direction in one forward pass over the doubled batch, as `mezo train` does;
//! `--separate-passes` runs two (`mezo train --no-paired-pass`).

mod common;

use common::{arg, median};
use mezo::dist::{Dist, Reduce};
use mezo::model::cache::{lm_loss_by_side, next_token_targets};
use mezo::model::{self, Dtype, FreezeRules, LoadOptions, RandomWeights};
use mezo::optim::zo::{Perturbations, Rng, Updater, ZoOptimizer};
use mezo::optim::{Trainable, WeightDecay};
use std::path::Path;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN);
    kb / 1024.0
}

/// Writes the config.json of an `OPTForCausalLM` of the named published size into `dir` (the LM
/// head tied to the embeddings, as in the released models).
fn write_opt_config(dir: &Path, size: &str) {
    let (layers, hidden, ffn, heads) = match size {
        "13b" => (40, 5120, 20480, 40),
        "6.7b" => (32, 4096, 16384, 32),
        "2.7b" => (32, 2560, 10240, 32),
        "1.3b" => (24, 2048, 8192, 32),
        "125m" => (12, 768, 3072, 12),
        "tiny" => (2, 64, 256, 4),
        other => panic!("--random-opt tiny|125m|1.3b|2.7b|6.7b|13b, not {other}"),
    };
    let (vocab, positions) = (50272i64, 2048i64);
    let config = serde_json::json!({
        "model_type": "opt", "architectures": ["OPTForCausalLM"], "vocab_size": vocab,
        "hidden_size": hidden, "ffn_dim": ffn, "num_hidden_layers": layers,
        "num_attention_heads": heads, "max_position_embeddings": positions,
        "word_embed_proj_dim": hidden, "do_layer_norm_before": true, "activation_function": "relu",
        "pad_token_id": 1, "bos_token_id": 2, "eos_token_id": 2, "torch_dtype": "float16",
    });
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dist = Dist::init().expect("MPI");
    if args.iter().any(|a| a == "--stream-only") {
        return stream_only(arg(&args, "--threads", "1").parse().unwrap());
    }
    let batch: i64 = arg(&args, "--batch", "8").parse().unwrap();
    let seq: i64 = arg(&args, "--seq", "64").parse().unwrap();
    let threads: i32 = arg(&args, "--threads", "1").parse().unwrap();
    let steps: usize = arg(&args, "--steps", "3").parse().unwrap();
    let forward_only = args.iter().any(|a| a == "--forward-only");
    // The fast stream's default; --separate-passes scores ℓ− in a pass of its own.
    let paired_pass = !args.iter().any(|a| a == "--separate-passes");
    let rng = match arg(&args, "--rng", "fast").as_str() {
        "reference" => Rng::Reference,
        "fast" => Rng::Fast,
        other => panic!("--rng fast|reference, not {other}"),
    };
    let device = match arg(&args, "--device", "cpu").as_str() {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        other => panic!("--device cpu|cuda, not {other}"),
    };
    let dtype = match arg(&args, "--dtype", "f32").as_str() {
        "f32" => Dtype::F32,
        "bf16" => Dtype::Bf16,
        "f16" => Dtype::F16,
        other => panic!("--dtype f32|bf16|f16, not {other}"),
    };
    mezo::dist::device::set_threads(threads as usize);
    let random = arg(&args, "--random-opt", "");
    let scratch = tempfile::tempdir().unwrap();
    let dir = match arg(&args, "--model", "") {
        dir if !dir.is_empty() => std::path::PathBuf::from(dir),
        _ => scratch.path().to_path_buf(),
    };
    let random_weights = (!random.is_empty()).then(|| {
        write_opt_config(&dir, &random);
        RandomWeights { std: 0.02, seed: 0 }
    });
    let options = LoadOptions { num_labels: Some(2), random_weights, ..LoadOptions::new(device, dtype) };
    let loading = Instant::now();
    let m = model::load(&dir, &options).unwrap_or_else(|e| panic!("{e}"));
    if dist.is_root() {
        eprintln!("model ready in {:.1} s ({} tensors)", loading.elapsed().as_secs_f64(), m.params.len());
    }
    let model_bytes: f64 =
        m.params.iter().map(|p| (p.tensor.numel() * p.tensor.kind().elt_size_in_bytes()) as f64).sum();
    let vocab = m.config["vocab_size"].as_i64().unwrap();
    tch::manual_seed(0);
    let ids = Tensor::randint_low(4, vocab - 2, [batch, seq], (Kind::Int64, Device::Cpu));
    let _ = ids.narrow(1, 10, 1).fill_(vocab - 1);
    let labels = Tensor::randint(2, [batch], (Kind::Int64, Device::Cpu));
    let share = mezo::data::batch::shard(batch as usize, dist.rank(), dist.size());
    let (ids, labels) = (
        ids.narrow(0, share.start as i64, share.len() as i64).to_device(device),
        labels.narrow(0, share.start as i64, share.len() as i64).to_device(device),
    );
    let mask = ids.ones_like();
    let pos = Tensor::full([share.len() as i64, 1], 10, (Kind::Int64, device));
    let words = Tensor::from_slice(&[5i64, 6]).to_device(device);
    let targets = next_token_targets(&ids, &mask);
    // The summed loss of this rank's rows on each side of the forward pass (the batch `sides`
    // times over, see mezo::model::nn::WeightView).
    let local_losses = |sides: i64| -> Vec<f64> {
        let _guard = tch::no_grad_guard();
        let copies = |t: &Tensor| if sides == 1 { t.shallow_clone() } else { t.repeat([sides, 1]) };
        match (m.encoder(), m.causal_lm()) {
            (Some(e), _) => {
                let scores = e.label_scores(&copies(&ids), &copies(&mask), &copies(&pos), &words);
                let part = scores.size()[0] / sides;
                (0..sides)
                    .map(|s| {
                        scores
                            .narrow(0, s * part, part)
                            .to_kind(Kind::Float)
                            .cross_entropy_loss::<Tensor>(&labels, None, tch::Reduction::Sum, -100, 0.0)
                            .double_value(&[])
                    })
                    .collect()
            }
            (None, Some(lm)) => {
                let losses = lm_loss_by_side(lm, &copies(&ids), &copies(&mask), &copies(&targets));
                Vec::<f64>::try_from(losses.to_kind(Kind::Double).to_device(Device::Cpu))
                    .unwrap()
                    .into_iter()
                    .map(|l| l * share.len() as f64)
                    .collect()
            }
            _ => panic!("{}: neither a prompt model nor a causal LM", dir.display()),
        }
    };
    let loss = |sides: i64| -> anyhow::Result<Vec<f64>> {
        let mut sums = local_losses(sides);
        sums.push(share.len() as f64);
        dist.all_reduce(&mut sums, Reduce::Sum);
        let count = sums.pop().unwrap();
        Ok(sums.into_iter().map(|s| s / count).collect())
    };
    // GPU work is asynchronous: a step's time includes its update's kernels.
    let sync = || {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    let time_forward = || {
        let start = Instant::now();
        loss(1).unwrap();
        start.elapsed().as_secs_f64() * 1e3
    };
    let forwards: Vec<f64> = (0..steps.max(3)).map(|_| time_forward()).collect();
    // The fast stream's kernels alone, ms: both sides of every tensor, and the update.
    let (mut perturb_ms, mut update_ms): (Option<f64>, Option<f64>) = (None, None);
    let (forward_ms, step_ms, step_over_forward) = if forward_only {
        (median(forwards), f64::NAN, f64::NAN)
    } else {
        let trainable: Vec<Trainable> = m
            .trainable(&FreezeRules::default())
            .into_iter()
            .map(|p| Trainable { name: p.name.clone(), tensor: p.tensor.shallow_clone() })
            .collect();
        let perturbations = Perturbations::new(rng, &trainable, paired_pass).unwrap();
        let mut updater = Updater::new(ZoOptimizer::Sgd, rng, &trainable);
        // As `mezo train`: rows no pass reads wait for their updates, plain passes read the
        // current weights.
        let _current = match &perturbations {
            Perturbations::Fast { stream, .. } => {
                updater = updater.deferring_rows(stream);
                Some(mezo::model::nn::install_view(stream.current_view()))
            }
            Perturbations::Reference => None,
        };
        // Every rank: the loss all-reduces.
        if let Perturbations::Fast { stream, .. } = &perturbations {
            // Plain, perturbed and paired (both sides at once) forward passes alternated, then
            // updates: where a step's time goes beyond its two forward passes.
            let (mut plain, mut perturbed, mut paired, mut update) = (vec![], vec![], vec![], vec![]);
            let mut perturb_pairs: Vec<f64> = vec![];
            for _ in 0..steps.max(3) {
                let start = Instant::now();
                loss(1).unwrap();
                plain.push(start.elapsed().as_secs_f64() * 1e3);
                let start = Instant::now();
                mezo::model::nn::with_view(stream.view(7, 1e-3), || loss(1)).unwrap();
                perturbed.push(start.elapsed().as_secs_f64() * 1e3);
                // Not with --separate-passes, whose peak memory must not include a paired pass.
                if paired_pass {
                    let start = Instant::now();
                    mezo::model::nn::with_view(stream.paired_view(7, 1e-3), || loss(2)).unwrap();
                    paired.push(start.elapsed().as_secs_f64() * 1e3);
                }
                let start = Instant::now();
                updater.apply(&trainable, &[(7, 0.0)], 0.0, 0.0, WeightDecay::AllTensors);
                sync();
                update.push(start.elapsed().as_secs_f64() * 1e3);
                // Not with --separate-passes either: two perturbed copies of the largest tensor at
                // once are the paired pass's memory, not theirs.
                if device.is_cuda() && paired_pass {
                    // Both sides of every tensor formed, as a paired pass does, and dropped.
                    sync();
                    let start = Instant::now();
                    for (index, t) in trainable.iter().enumerate() {
                        drop(mezo::optim::fast::perturbed_pair(&t.tensor, [7, index as u32], 1e-3, -1e-3));
                    }
                    sync();
                    perturb_pairs.push(start.elapsed().as_secs_f64() * 1e3);
                }
            }
            if !perturb_pairs.is_empty() {
                perturb_ms = Some(median(perturb_pairs.clone()).max(1e-9));
            }
            update_ms = Some(median(update.clone()).max(1e-9));
            if dist.is_root() {
                let paired = match paired.is_empty() {
                    true => String::new(),
                    false => format!(", paired forward (both sides) {:.0} ms", median(paired)),
                };
                println!(
                    "fast stream: forward {:.0} ms, perturbed forward {:.0} ms{paired}, update {:.0} ms",
                    median(plain),
                    median(perturbed),
                    median(update)
                );
            }
        }
        // Steps alternate with plain forward passes, so that both medians see the same phases
        // of a shared machine.
        let (mut forwards, mut steps_ms, mut updates) = (vec![], vec![], vec![]);
        for i in 0..steps {
            forwards.push(time_forward());
            let start = Instant::now();
            let seed = 1000 + i as u64;
            let (_, g) = perturbations.direction(&trainable, seed, 1e-3, true, loss).unwrap();
            let update = Instant::now();
            updater.apply(&trainable, &[(seed, g)], 1e-6, 0.0, WeightDecay::AllTensors);
            sync();
            updates.push(update.elapsed().as_secs_f64() * 1e3);
            steps_ms.push(start.elapsed().as_secs_f64() * 1e3);
        }
        if dist.is_root() {
            println!("steps: update {:.0} ms (median)", median(updates));
        }
        // Each step over the forward pass just before it: a ratio that a slow or fast phase of
        // the machine, lasting seconds, shifts less than it shifts either median.
        let ratios = steps_ms.iter().zip(&forwards).map(|(s, f)| s / f).collect();
        (median(forwards), median(steps_ms), median(ratios))
    };
    let device_mem = match device {
        Device::Cuda(i) => {
            let (free, total) = mezo::cuda::context(i).unwrap().mem_get_info().unwrap();
            format!(" device_mem_mb={:.0}", (total - free) as f64 / (1 << 20) as f64)
        }
        _ => String::new(),
    };
    // After the device memory is read: the copy's two 1 GiB buffers stay in libtorch's cache.
    let copy_gbs = match device {
        Device::Cuda(i) => Some(copy_bandwidth_gbs(i as i64)),
        _ => None,
    };
    let mut bandwidth = String::new();
    if let Some(copy) = copy_gbs {
        bandwidth += &format!(" copy_gbs={copy:.0}");
        // Bytes read plus written: θ and two perturbed copies; θ read and written.
        for (name, ms, bytes) in
            [("perturb", perturb_ms, 3.0 * model_bytes), ("update", update_ms, 2.0 * model_bytes)]
        {
            if let Some(ms) = ms {
                let gbs = bytes / ms / 1e6;
                bandwidth +=
                    &format!(" {name}_ms={ms:.2} {name}_gbs={gbs:.0} {name}_fraction={:.2}", gbs / copy);
            }
        }
    }
    if dist.is_root() {
        println!(
            "mezo rng={rng:?} batch={batch} seq={seq} model_gb={:.2} step_ms={step_ms:.1} forward_ms={forward_ms:.1} \
             step_over_forward={step_over_forward:.3} peak_rss_mb={:.0}{device_mem}{bandwidth} ranks={}",
            model_bytes / 1e9,
            peak_rss_mb(),
            dist.size()
        );
    }
}

/// The device's copy bandwidth, GB/s of bytes read plus written: the median of five copies of a
/// 1 GiB buffer into another.
fn copy_bandwidth_gbs(ordinal: i64) -> f64 {
    let bytes = 1i64 << 30;
    let source = Tensor::ones([bytes / 2], (Kind::Half, Device::Cuda(ordinal as usize)));
    let mut target = source.empty_like();
    let times: Vec<f64> = (0..6)
        .map(|_| {
            tch::Cuda::synchronize(ordinal);
            let start = Instant::now();
            target.copy_(&source);
            tch::Cuda::synchronize(ordinal);
            start.elapsed().as_secs_f64()
        })
        .skip(1)
        .collect();
    2.0 * bytes as f64 / median(times) / 1e9
}

/// `--stream-only`: the fast stream alone on `threads` threads (default one), nanoseconds per
/// element: drawing normals (always one thread), forming a perturbed pair of a weight matrix
/// (θ ± εz, stored θ read from memory) and the update.
fn stream_only(threads: i32) {
    use mezo::optim::{fast, philox};
    tch::set_num_threads(threads);
    let mut z = vec![0f32; 1 << 24];
    let key = philox::key(12345, 3);
    let per_element = |f: &mut dyn FnMut() -> usize| {
        median(
            (0..5)
                .map(|_| {
                    let start = Instant::now();
                    let n = f();
                    start.elapsed().as_secs_f64() * 1e9 / n as f64
                })
                .collect(),
        )
    };
    let mut first = 0;
    let draw = per_element(&mut || {
        philox::fill(key, first, &mut z);
        first += 1 << 24;
        z.len()
    });
    let weights: Vec<Tensor> =
        (0..8).map(|_| Tensor::randn([3072, 768], (Kind::Float, Device::Cpu))).collect();
    let n = weights.iter().map(|w| w.numel()).sum::<usize>();
    let pair = per_element(&mut || {
        weights.iter().for_each(|w| drop(fast::perturbed_pair(w, key, 1e-3, -1e-3)));
        n
    });
    let trainable: Vec<mezo::optim::Trainable> = weights
        .iter()
        .map(|w| mezo::optim::Trainable { name: "w".into(), tensor: w.shallow_clone() })
        .collect();
    let update = per_element(&mut || {
        fast::apply(&trainable, &[(7, 0.5)], 1e-9, 0.0, mezo::optim::WeightDecay::AllTensors);
        n
    });
    println!(
        "fast stream, {threads} thread(s): normals {draw:.2} ns each (one thread), perturbed pair {pair:.2} ns \
         an element, update {update:.2} ns an element (checksum {})",
        z.iter().sum::<f32>()
    );
}
