//! `mezo check`: proves on a real allocation that the ranks can talk, write one HDF5 file together,
//! and use their GPUs, before a long job finds out the hard way.
//!
//! Every check runs on every rank; its outcome is agreed on by all ranks (a failure on one rank
//! fails the check everywhere), so the report on rank 0 speaks for the whole job.

use crate::dist::{device::DeviceRequest, Dist, Reduce};
use crate::h5::{H5File, TransferMode};
use anyhow::{bail, ensure, Context, Result};
use ndarray::{ArrayD, Dimension, IxDyn};
use std::path::PathBuf;

/// What to check and where.
#[derive(Debug, Clone)]
pub struct CheckConfig {
    /// Directory for the HDF5 test file; must be shared by all ranks (a parallel file system
    /// across nodes).
    pub scratch_dir: PathBuf,
    /// Keep the HDF5 test file instead of deleting it.
    pub keep_file: bool,
    pub device: DeviceRequest,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    Pass(String),
    Skip(String),
    /// The failures of every rank that failed, as "rank R: error".
    Fail(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub name: &'static str,
    pub status: Status,
}

impl Outcome {
    pub fn render(&self) -> String {
        match &self.status {
            Status::Pass(detail) => format!("{:<16} pass  {detail}", self.name),
            Status::Skip(why) => format!("{:<16} skip  {why}", self.name),
            Status::Fail(errors) => format!("{:<16} FAIL  {}", self.name, errors.join("; ")),
        }
    }

    pub fn failed(&self) -> bool {
        matches!(self.status, Status::Fail(_))
    }
}

/// What a check found on one rank.
enum Local {
    Pass(String),
    Skip(String),
}

/// What `run` found: every check's outcome, and the time of one all-reduce of a MeZO step's
/// payload (the "all-reduce time" outcome's number).
#[derive(Debug, Clone)]
pub struct Report {
    pub outcomes: Vec<Outcome>,
    pub all_reduce_seconds: f64,
}

/// Runs all checks; collective.
pub fn run(dist: &Dist, config: &CheckConfig) -> Report {
    let gpu = match config.device {
        DeviceRequest::Cpu => Err("--device cpu".to_string()),
        request => match request.resolve(dist.local_rank()) {
            Ok(tch::Device::Cuda(i)) => Ok(i),
            Ok(_) => Err("no CUDA device visible to libtorch".to_string()),
            Err(e) => Err(format!("{e:#}")),
        },
    };
    // A device that was asked for explicitly must be there; `auto` may fall back to the CPU.
    let require_gpu = matches!(config.device, DeviceRequest::Cuda | DeviceRequest::CudaIndex(_));
    let on_gpu = |f: &dyn Fn(usize) -> Result<Local>| -> Result<Local> {
        match &gpu {
            Ok(i) => f(*i),
            Err(why) if require_gpu => bail!("{why}"),
            Err(why) => Ok(Local::Skip(why.clone())),
        }
    };
    let all_reduce = agree(dist, "all-reduce", check_all_reduce(dist));
    let all_reduce_seconds = all_reduce_latency(dist);
    let outcomes = vec![
        all_reduce,
        agree(
            dist,
            "all-reduce time",
            Ok(Local::Pass(format!(
                "{:.1} µs per sum of 2 f64 over {} rank(s) (a MeZO step's; mean of {LATENCY_REPETITIONS})",
                all_reduce_seconds * 1e6,
                dist.size()
            ))),
        ),
        agree(dist, "broadcast", check_broadcast(dist)),
        agree(dist, "all-gather", check_all_gather(dist)),
        agree(dist, "hdf5 row blocks", check_hdf5(dist, config)),
        agree(dist, "torch cuda", on_gpu(&check_torch_cuda)),
        agree(dist, "nvrtc compile", check_nvrtc_compile()),
        agree(
            dist,
            "nvrtc kernel",
            on_gpu(&|i| {
                crate::cuda::run_smoke_kernel(i)
                    .map(|n| Local::Pass(format!("saxpy on {n} floats on cuda:{i}")))
            }),
        ),
        agree(
            dist,
            "fast stream on gpu",
            on_gpu(&|i| crate::optim::fast::check_gpu_matches_cpu(i).map(Local::Pass)),
        ),
        agree(
            dist,
            "nccl all-reduce",
            on_gpu(&|i| {
                crate::dist::nccl::smoke_test(dist, i).map(|(n, nccl)| {
                    let by = if nccl { "NCCL" } else { "MPI (ranks share a GPU, which NCCL refuses)" };
                    Local::Pass(format!("{n} floats summed over {} rank(s) by {by}", dist.size()))
                })
            }),
        ),
    ];
    Report { outcomes, all_reduce_seconds }
}

/// Combines the ranks' results: any failure fails; else any skip skips; else rank 0's detail.
fn agree(dist: &Dist, name: &'static str, local: Result<Local>) -> Outcome {
    let (code, text) = match &local {
        Ok(Local::Pass(d)) => (0u8, d.clone()),
        Ok(Local::Skip(d)) => (1, d.clone()),
        Err(e) => (2, format!("rank {}: {e:#}", dist.rank())),
    };
    let codes = dist.all_gather(&[code]);
    let texts = dist.all_gather_strings(&text);
    let worst = codes.iter().map(|c| c[0]).max().unwrap_or(0);
    let status = match worst {
        0 => Status::Pass(texts[0].clone()),
        1 => Status::Skip(texts[codes.iter().position(|c| c[0] == 1).unwrap_or(0)].clone()),
        _ => Status::Fail(codes.iter().zip(texts).filter(|(c, _)| c[0] == 2).map(|(_, t)| t).collect()),
    };
    Outcome { name, status }
}

fn check_all_reduce(dist: &Dist) -> Result<Local> {
    let n = dist.size();
    let r = dist.rank() as f64;
    // Sums of small integers and powers of two are exact in any reduction order.
    let mut v = [r + 1.0, 0.5f64.powi(dist.rank() as i32 + 1), r, r];
    dist.all_reduce(&mut v[..2], Reduce::Sum);
    dist.all_reduce(&mut v[2..3], Reduce::Max);
    dist.all_reduce(&mut v[3..4], Reduce::Min);
    let want = [(n * (n + 1) / 2) as f64, 1.0 - 0.5f64.powi(n as i32), (n - 1) as f64, 0.0];
    ensure!(v == want, "got {v:?}, expected {want:?}");
    let mut counts = [dist.rank() as u64 + 1];
    dist.all_reduce(&mut counts, Reduce::Sum);
    ensure!(counts[0] == (n * (n + 1) / 2) as u64, "u64 sum {} wrong", counts[0]);
    Ok(Local::Pass(format!("f64 sum/max/min and u64 sum over {n} rank(s)")))
}

/// All-reduces timed by [`all_reduce_latency`] (after as many untimed ones).
const LATENCY_REPETITIONS: usize = 1000;

/// Seconds per all-reduce (sum) of two f64, the payload of a MeZO step: the mean over
/// [`LATENCY_REPETITIONS`] after as many to warm up, of the slowest rank. Collective.
fn all_reduce_latency(dist: &Dist) -> f64 {
    let mut values = [1.0f64, 2.0];
    for _ in 0..LATENCY_REPETITIONS {
        dist.all_reduce(&mut values, Reduce::Sum);
    }
    dist.barrier();
    let clock = std::time::Instant::now();
    for _ in 0..LATENCY_REPETITIONS {
        values = [1.0, 2.0];
        dist.all_reduce(&mut values, Reduce::Sum);
    }
    let mut seconds = [clock.elapsed().as_secs_f64() / LATENCY_REPETITIONS as f64];
    dist.all_reduce(&mut seconds, Reduce::Max);
    seconds[0]
}

fn check_broadcast(dist: &Dist) -> Result<Local> {
    let pattern = |root: usize| -> Vec<u64> {
        (0..64).map(|i| 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i + 1 + root as u64)).collect()
    };
    for root in [0, dist.size() - 1] {
        let mut values = if dist.rank() == root { pattern(root) } else { vec![0; 64] };
        dist.broadcast(&mut values, root);
        ensure!(values == pattern(root), "u64 values from rank {root} arrived changed");
    }
    for text in ["{\"config\": \"from rank 0\", \"λ\": 0.5}", ""] {
        let mut bytes = if dist.is_root() { text.as_bytes().to_vec() } else { b"stale".to_vec() };
        dist.broadcast_bytes(&mut bytes, 0);
        ensure!(bytes == text.as_bytes(), "byte string {text:?} from rank 0 arrived changed");
    }
    Ok(Local::Pass("u64 vectors from the first and the last rank, byte strings".to_string()))
}

fn check_all_gather(dist: &Dist) -> Result<Local> {
    // Rank r sends r+1 values, so lengths differ between ranks.
    let mine: Vec<f64> = (0..=dist.rank()).map(|i| (dist.rank() * 100 + i) as f64).collect();
    let all = dist.all_gather(&mine);
    for (r, got) in all.iter().enumerate() {
        let want: Vec<f64> = (0..=r).map(|i| (r * 100 + i) as f64).collect();
        ensure!(*got == want, "rank {r} sent {want:?}, arrived as {got:?}");
    }
    Ok(Local::Pass(format!("vectors of lengths 1..={}", dist.size())))
}

/// The value every cell of the test dataset must hold: its own index, encoded.
fn cell(i: &[usize]) -> f64 {
    i.iter().fold(0.0, |acc, &x| acc * 16.0 + x as f64) + 0.125
}

fn check_hdf5(dist: &Dist, config: &CheckConfig) -> Result<Local> {
    let n = dist.size();
    // Uneven blocks: rank r owns r+1 rows. Trailing axes like a kernel block [N, C, M, C].
    let rows = |r: usize| r + 1;
    let total: usize = (0..n).map(rows).sum();
    let first: usize = (0..dist.rank()).map(rows).sum();
    let shape = [total, 2, 5, 2];
    // The file name must be the same on all ranks: rank 0 picks it.
    let mut tag = [std::process::id() as u64];
    dist.broadcast(&mut tag, 0);
    let path = config.scratch_dir.join(format!("mezo-check-{}.h5", tag[0]));

    let file = H5File::create(dist, &path)?;
    file.create_dataset::<f64>("train", &shape)?;
    file.create_dataset::<i64>("train_labels", &[total])?;
    let mut block_shape = shape;
    block_shape[0] = rows(dist.rank());
    let block = ArrayD::from_shape_fn(IxDyn(&block_shape), |i| {
        let mut global = i.slice().to_vec();
        global[0] += first;
        cell(&global)
    });
    let mode = file.write_rows("train", first, block.view())?;
    // Rank 0 writes all labels and the others take part with no rows.
    let label_rows = if dist.is_root() { total } else { 0 };
    let label_block = ArrayD::from_shape_fn(IxDyn(&[label_rows]), |i| i[0] as i64 * 3 - 1);
    file.write_rows("train_labels", 0, label_block.view())?;
    let path = file.commit(dist)?;

    let file = H5File::open(dist, &path)?;
    let read = file.read_rows::<f64>("train", 0..total)?;
    let read_labels = file.read_rows::<i64>("train_labels", 0..total)?;
    file.close()?;
    dist.barrier();
    if dist.is_root() && !config.keep_file {
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    }
    if let Some((i, v)) = read.indexed_iter().find(|(i, v)| **v != cell(i.slice())) {
        bail!("cell {:?} read back as {v}, written as {}", i.slice(), cell(i.slice()));
    }
    if let Some((i, v)) = read_labels.iter().enumerate().find(|(i, v)| **v != *i as i64 * 3 - 1) {
        bail!("label {i} read back as {v}");
    }
    let how = match mode {
        TransferMode::Collective => "one collective MPI-IO write",
        TransferMode::Independent if dist.uses_mpi() => bail!("HDF5 fell back to independent I/O"),
        TransferMode::Independent => "one process, POSIX driver",
    };
    let kept = if config.keep_file { format!(", kept at {}", path.display()) } else { String::new() };
    Ok(Local::Pass(format!(
        "f64 {shape:?} in uneven row blocks by {n} rank(s) ({how}), read back exactly{kept}"
    )))
}

fn check_torch_cuda(ordinal: usize) -> Result<Local> {
    let device = tch::Device::Cuda(ordinal);
    let a = tch::Tensor::arange(64 * 48, (tch::Kind::Float, tch::Device::Cpu)).reshape([64, 48]) / 1000.0;
    let b = a.transpose(0, 1).contiguous();
    let cpu = a.matmul(&b);
    let gpu = a.to_device(device).matmul(&b.to_device(device)).to_device(tch::Device::Cpu);
    let diff = (&gpu - &cpu).abs().max().double_value(&[]);
    let scale = cpu.abs().max().double_value(&[]);
    // TF32 would be ~1e-3 relative; anything larger is a broken device path.
    ensure!(diff <= 2e-3 * scale, "matmul on cuda:{ordinal} differs from CPU by {diff} (scale {scale})");
    let z = tch::Tensor::randn([1000], (tch::Kind::Float, device));
    let var = z.var(true).double_value(&[]);
    ensure!((0.8..1.2).contains(&var), "randn on cuda:{ordinal} has variance {var}");
    Ok(Local::Pass(format!("matmul 64x48x64 matches CPU (max diff {diff:.2e}), randn on cuda:{ordinal}")))
}

fn check_nvrtc_compile() -> Result<Local> {
    if !crate::cuda::nvrtc_present() {
        return Ok(Local::Skip("libnvrtc not loadable".into()));
    }
    let ptx = crate::cuda::compile_smoke_kernel()?;
    Ok(Local::Pass(format!("saxpy compiled to {} bytes of PTX", ptx.to_src().len())))
}
