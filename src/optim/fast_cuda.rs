//! The fast stream on a GPU: NVRTC kernels (through cudarc) that form θ + c z and apply the
//! update in one pass over libtorch's own device memory, on the legacy default stream that
//! libtorch also uses, so they order with its kernels without extra synchronisation.
//!
//! The kernels spell out the operations of [`super::philox`] and [`super::fast`] in the same
//! order and are compiled with `--fmad=false` (no contraction into FMA), so a GPU run draws the
//! same z and computes the same perturbed weights and updates as a CPU run, bit for bit.

use anyhow::{anyhow, Context, Result};
use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use tch::{Device, Kind, Tensor};

const SOURCE: &str = include_str!("fast.cu");

/// Compiles the kernels (libnvrtc only, no GPU needed).
pub fn compile() -> Result<cudarc::nvrtc::Ptx> {
    if !crate::cuda::nvrtc_present() {
        return Err(anyhow!("the fast stream on a GPU needs libnvrtc (the torch wheel's nvidia-cuda-nvrtc)"));
    }
    let options = cudarc::nvrtc::CompileOptions {
        fmad: Some(false),
        prec_sqrt: Some(true),
        ftz: Some(false),
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(source(), options)
        .context("compiling the fast-stream kernels with NVRTC")
}

/// [`SOURCE`] after `#define`s of the polynomial coefficients, written from the constants the
/// CPU paths use (Rust prints the shortest decimal that reads back as the same f32).
fn source() -> String {
    use super::philox::{COS_POLY, LN2_HIGH, LN2_LOW, LN_POLY, SIN_POLY};
    let mut defines = String::new();
    let named = [("LN_P", &LN_POLY[..]), ("SIN_P", &SIN_POLY[..]), ("COS_P", &COS_POLY[..])];
    for (prefix, poly) in named {
        for (i, c) in poly.iter().enumerate() {
            defines += &format!("#define {prefix}{i} {c:?}f\n");
        }
    }
    defines += &format!("#define LN2_HIGH {LN2_HIGH:?}f\n#define LN2_LOW {LN2_LOW:?}f\n");
    defines + SOURCE
}

/// The loaded kernels of one device.
pub struct Kernels {
    stream: Arc<CudaStream>,
    functions: HashMap<String, CudaFunction>,
}

impl Kernels {
    fn function(&self, name: &str) -> &CudaFunction {
        &self.functions[name]
    }
}

/// The kernels of `device`, compiled and loaded once per process.
pub fn kernels(device: Device) -> Result<Arc<Kernels>> {
    static LOADED: OnceLock<Mutex<HashMap<usize, Arc<Kernels>>>> = OnceLock::new();
    let Device::Cuda(ordinal) = device else { return Err(anyhow!("{device:?} is not a CUDA device")) };
    let mut loaded = LOADED.get_or_init(Default::default).lock().expect("kernel cache poisoned");
    if let Some(k) = loaded.get(&ordinal) {
        return Ok(Arc::clone(k));
    }
    let ctx = crate::cuda::context(ordinal)?;
    let module = ctx.load_module(compile()?).context("loading the fast-stream kernels")?;
    let mut functions = HashMap::new();
    for op in ["perturb", "rows", "update"] {
        for ty in ["f32", "bf16", "f16", "f64"] {
            let name = format!("{op}_{ty}");
            functions.insert(name.clone(), module.load_function(&name)?);
        }
    }
    let k = Arc::new(Kernels { stream: ctx.default_stream(), functions });
    loaded.insert(ordinal, Arc::clone(&k));
    Ok(k)
}

fn suffix(kind: Kind) -> &'static str {
    match kind {
        Kind::Float => "f32",
        Kind::BFloat16 => "bf16",
        Kind::Half => "f16",
        Kind::Double => "f64",
        other => panic!("the fast stream perturbs floating-point tensors, not {other:?}"),
    }
}

fn loaded(t: &Tensor) -> Arc<Kernels> {
    // FastStream::new loaded them for every device it accepted.
    kernels(t.device()).expect("fast-stream kernels are loaded")
}

fn grid(threads: u64) -> LaunchConfig {
    let block = 256u32;
    LaunchConfig {
        grid_dim: (threads.div_ceil(u64::from(block)) as u32, 1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Launches a kernel whose arguments were pushed on `args`, `threads` threads in all.
fn fire(mut args: cudarc::driver::LaunchArgs<'_>, name: &str, threads: u64) {
    if threads == 0 {
        return;
    }
    // SAFETY: every caller pushes the argument list of `name`'s signature, with device pointers of
    // live libtorch tensors of the matching dtype and element counts.
    unsafe { args.launch(grid(threads)) }.unwrap_or_else(|e| panic!("launching {name}: {e}"));
}

/// θ + c z(key) as a new tensor on θ's device for `coeffs` = `[c]`; for `[a, b]`, both stacked,
/// `[2, ..θ]`, from one read of θ and one z.
pub fn perturbed(t: &Tensor, key: [u32; 2], coeffs: &[f64]) -> Tensor {
    let k = loaded(t);
    let (c, d, sides) = match *coeffs {
        [c] => (c, 0.0, 1i32),
        [c, d] => (c, d, 2),
        _ => panic!("one or two sides, not {}", coeffs.len()),
    };
    let out = if sides == 1 {
        t.empty_like()
    } else {
        let mut shape = vec![2];
        shape.extend(t.size());
        Tensor::empty(shape.as_slice(), (t.kind(), t.device()))
    };
    let (out_ptr, in_ptr, n) = (out.data_ptr() as u64, t.data_ptr() as u64, t.numel() as u64);
    let (cf, df, name) = (c as f32, d as f32, format!("perturb_{}", suffix(t.kind())));
    let mut b = k.stream.launch_builder(k.function(&name));
    b.arg(&out_ptr).arg(&in_ptr).arg(&n).arg(&key[0]).arg(&key[1]);
    if t.kind() == Kind::Double {
        b.arg(&c).arg(&d);
    } else {
        b.arg(&cf).arg(&df);
    }
    b.arg(&sides);
    fire(b, &name, n.div_ceil(4));
    out
}

/// Adds c z(key) to the gathered rows `rows` (`[..ids, width]`) of a stored matrix.
pub fn perturb_rows_in_place(rows: &Tensor, ids: &Tensor, width: usize, key: [u32; 2], c: f64) {
    let k = loaded(rows);
    let ids = ids.to_kind(Kind::Int64).contiguous();
    let (rows_ptr, ids_ptr) = (rows.data_ptr() as u64, ids.data_ptr() as u64);
    let (count, width) = (ids.numel() as u64, width as u64);
    let (cf, name) = (c as f32, format!("rows_{}", suffix(rows.kind())));
    let mut b = k.stream.launch_builder(k.function(&name));
    b.arg(&rows_ptr).arg(&ids_ptr).arg(&count).arg(&width).arg(&key[0]).arg(&key[1]);
    if rows.kind() == Kind::Double {
        b.arg(&c);
    } else {
        b.arg(&cf);
    }
    fire(b, &name, count * width);
}

/// The directions of one update on one device, (step seed, g_j) per direction: copied to the
/// device once and read by the update kernel of every tensor. Copying them per tensor cost a
/// stream synchronisation each, a round trip per tensor that made the update of a ~400-tensor
/// model mostly waiting. The buffer is freed in stream order after the kernels that read it
/// (cudarc), so nothing waits for them here.
pub struct Directions {
    kernels: Arc<Kernels>,
    words: CudaSlice<u32>,
    count: i32,
}

impl Directions {
    /// `directions` = [(step seed, g_j)], the seeds as the first word of their keys.
    pub fn new(device: Device, directions: &[(u32, f32)]) -> Directions {
        let kernels = kernels(device).expect("fast-stream kernels are loaded");
        let words: Vec<u32> = directions.iter().flat_map(|&(seed, g)| [seed, g.to_bits()]).collect();
        let words =
            kernels.stream.clone_htod(&words).unwrap_or_else(|e| panic!("copying the update's seeds: {e}"));
        Directions { kernels, words, count: directions.len() as i32 }
    }
}

/// θ ← θ − η (Σ_j g_j z_j + λ θ), z_j under key (seed_j, `index`): tensor `index`'s update.
pub fn update(t: &Tensor, index: u32, directions: &Directions, lr: f64, decay: f64) {
    let k = &directions.kernels;
    let (ptr, n) = (t.data_ptr() as u64, t.numel() as u64);
    let name = format!("update_{}", suffix(t.kind()));
    let (lr32, decay32) = (lr as f32, decay as f32);
    let mut b = k.stream.launch_builder(k.function(&name));
    b.arg(&ptr).arg(&n).arg(&directions.words).arg(&directions.count).arg(&index);
    if t.kind() == Kind::Double {
        b.arg(&lr).arg(&decay);
    } else {
        b.arg(&lr32).arg(&decay32);
    }
    fire(b, &name, n.div_ceil(4));
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_kernels_compile_without_a_gpu() {
        let ptx = super::compile().unwrap();
        let src = ptx.to_src();
        for name in ["perturb_f32", "rows_bf16", "update_f16", "update_f64"] {
            assert!(src.contains(&format!(".entry {name}")), "{name} missing from the PTX");
        }
        // The CPU paths' coefficients reach the kernels exactly (PTX writes f32 immediates as
        // 0f + their bits; `x + (−c)` may become `x − c`, which rounds the same).
        use crate::optim::philox::{COS_POLY, LN2_HIGH, LN2_LOW, LN_POLY, SIN_POLY};
        let constants = LN_POLY.iter().chain(&SIN_POLY).chain(&COS_POLY).chain(&[LN2_HIGH, LN2_LOW]);
        for c in constants {
            let found = [*c, -c].iter().any(|v| src.contains(&format!("0f{:08X}", v.to_bits())));
            assert!(found, "coefficient {c:?} missing from the PTX");
        }
        // No contraction: the CPU stream's roundings are the GPU's.
        assert!(!src.contains("fma.rn.f32"), "the kernels must not contract into FMA");
    }
}
