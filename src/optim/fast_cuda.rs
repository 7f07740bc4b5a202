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

const SOURCE: &str = r#"
typedef unsigned int u32;
typedef unsigned long long u64;
typedef unsigned short u16;

__device__ __forceinline__ void philox(u32 c[4], u32 k0, u32 k1) {
    for (int r = 0; r < 10; ++r) {
        if (r > 0) { k0 += 0x9E3779B9u; k1 += 0xBB67AE85u; }
        u32 hi0 = __umulhi(0xD2511F53u, c[0]), lo0 = 0xD2511F53u * c[0];
        u32 hi1 = __umulhi(0xCD9E8D57u, c[2]), lo1 = 0xCD9E8D57u * c[2];
        u32 n0 = hi1 ^ c[1] ^ k0, n2 = hi0 ^ c[3] ^ k1;
        c[0] = n0; c[1] = lo1; c[2] = n2; c[3] = lo0;
    }
}

__device__ __forceinline__ float ln01(float x) {
    int bits = __float_as_int(x);
    int e = ((bits >> 23) & 0xff) - 126;
    float m = __int_as_float((bits & 0x007fffff) | 0x3f000000);
    bool small = m < 0.70710678118654752440f;
    e -= small ? 1 : 0;
    float t = small ? (m + m - 1.0f) : (m - 1.0f);
    float ef = (float)e;
    float z = t * t;
    float y = LN_P0;
    y = y * t + LN_P1;
    y = y * t + LN_P2;
    y = y * t + LN_P3;
    y = y * t + LN_P4;
    y = y * t + LN_P5;
    y = y * t + LN_P6;
    y = y * t + LN_P7;
    y = y * t + LN_P8;
    y = y * t * z;
    y += LN2_LOW * ef;
    y += -0.5f * z;
    return t + y + LN2_HIGH * ef;
}

__device__ __forceinline__ void sincos_turns(u32 m, float* sin_out, float* cos_out) {
    u32 quadrant = (m + (1u << 21)) >> 22;
    float rest = (float)((int)m - (int)(quadrant << 22)) * (1.0f / 16777216.0f);
    float a = rest * 6.28318530717958647692f;
    float a2 = a * a;
    float s = a + a * a2 * ((SIN_P0 * a2 + SIN_P1) * a2 + SIN_P2);
    float c = 1.0f - 0.5f * a2 + a2 * a2 * ((COS_P0 * a2 + COS_P1) * a2 + COS_P2);
    float sn = (quadrant & 1u) ? c : s;
    float cs = (quadrant & 1u) ? s : c;
    if (quadrant & 2u) sn = -sn;
    if ((quadrant + 1u) & 2u) cs = -cs;
    *sin_out = sn;
    *cos_out = cs;
}

__device__ __forceinline__ void box_muller(u32 a, u32 b, float* z0, float* z1) {
    float u = ((float)(int)(a >> 8) + 0.5f) * (1.0f / 16777216.0f);
    float r = sqrtf(-2.0f * ln01(u));
    float s, c;
    sincos_turns(b >> 8, &s, &c);
    *z0 = r * c;
    *z1 = r * s;
}

__device__ __forceinline__ void normals4(u32 k0, u32 k1, u64 k, float z[4]) {
    u32 c[4] = {(u32)k, (u32)(k >> 32), 0u, 0u};
    philox(c, k0, k1);
    box_muller(c[0], c[1], &z[0], &z[1]);
    box_muller(c[2], c[3], &z[2], &z[3]);
}

__device__ __forceinline__ float normal_at(u32 k0, u32 k1, u64 e) {
    float z[4];
    normals4(k0, k1, e / 4, z);
    return z[e % 4];
}

__device__ __forceinline__ float bf16_to_f32(u16 h) { return __int_as_float(((u32)h) << 16); }
__device__ __forceinline__ u16 f32_to_bf16(float f) {
    u32 x = __float_as_uint(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (u16)((x >> 16) | 0x0040u);
    return (u16)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}
__device__ __forceinline__ float f16_to_f32(u16 h) {
    float f; asm("{ .reg .f16 t; mov.b16 t, %1; cvt.f32.f16 %0, t; }" : "=f"(f) : "h"(h)); return f;
}
__device__ __forceinline__ u16 f32_to_f16(float f) {
    u16 h; asm("{ .reg .f16 t; cvt.rn.f16.f32 t, %1; mov.b16 %0, t; }" : "=h"(h) : "f"(f)); return h;
}

struct F32 { typedef float T; static __device__ float get(T v) { return v; } static __device__ T put(float v) { return v; } };
struct BF16 { typedef u16 T; static __device__ float get(T v) { return bf16_to_f32(v); } static __device__ T put(float v) { return f32_to_bf16(v); } };
struct F16 { typedef u16 T; static __device__ float get(T v) { return f16_to_f32(v); } static __device__ T put(float v) { return f32_to_f16(v); } };

// out[e] = theta[e] + c z[e]; with two sides also out[n + e] = theta[e] + d z[e].
template <typename V>
__device__ void perturb(typename V::T* out, const typename V::T* theta, u64 n, u32 k0, u32 k1, float c, float d, int sides) {
    u64 k = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (4 * k >= n) return;
    float z[4];
    normals4(k0, k1, k, z);
    for (int j = 0; j < 4; ++j) {
        u64 e = 4 * k + j;
        if (e < n) {
            float t = V::get(theta[e]);
            out[e] = V::put(t + c * z[j]);
            if (sides == 2) out[n + e] = V::put(t + d * z[j]);
        }
    }
}

template <typename V>
__device__ void perturb_rows(typename V::T* rows, const long long* ids, u64 count, u64 width, u32 k0, u32 k1, float c) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count * width) return;
    u64 e = (u64)ids[i / width] * width + i % width;
    rows[i] = V::put(V::get(rows[i]) + c * normal_at(k0, k1, e));
}

// dirs: (step seed, g bits) per direction; z_d is the stream under key (seed_d, index).
template <typename V>
__device__ void update(typename V::T* theta, u64 n, const u32* dirs, int directions, u32 index, float lr, float decay) {
    u64 k = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (4 * k >= n) return;
    float a[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int d = 0; d < directions; ++d) {
        float z[4];
        normals4(dirs[2 * d], index, k, z);
        float g = __uint_as_float(dirs[2 * d + 1]);
        for (int j = 0; j < 4; ++j) a[j] += g * z[j];
    }
    for (int j = 0; j < 4; ++j) {
        u64 e = 4 * k + j;
        if (e < n) {
            float t = V::get(theta[e]);
            float step = decay != 0.0f ? a[j] + decay * t : a[j];
            theta[e] = V::put(t - lr * step);
        }
    }
}

extern "C" __global__ void perturb_f32(float* o, const float* t, u64 n, u32 k0, u32 k1, float c, float d, int sides) { perturb<F32>(o, t, n, k0, k1, c, d, sides); }
extern "C" __global__ void perturb_bf16(u16* o, const u16* t, u64 n, u32 k0, u32 k1, float c, float d, int sides) { perturb<BF16>(o, t, n, k0, k1, c, d, sides); }
extern "C" __global__ void perturb_f16(u16* o, const u16* t, u64 n, u32 k0, u32 k1, float c, float d, int sides) { perturb<F16>(o, t, n, k0, k1, c, d, sides); }
extern "C" __global__ void perturb_f64(double* o, const double* t, u64 n, u32 k0, u32 k1, double c, double d, int sides) {
    u64 k = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (4 * k >= n) return;
    float z[4];
    normals4(k0, k1, k, z);
    for (int j = 0; j < 4; ++j) {
        u64 e = 4 * k + j;
        if (e < n) { o[e] = t[e] + c * (double)z[j]; if (sides == 2) o[n + e] = t[e] + d * (double)z[j]; }
    }
}

extern "C" __global__ void rows_f32(float* r, const long long* ids, u64 count, u64 w, u32 k0, u32 k1, float c) { perturb_rows<F32>(r, ids, count, w, k0, k1, c); }
extern "C" __global__ void rows_bf16(u16* r, const long long* ids, u64 count, u64 w, u32 k0, u32 k1, float c) { perturb_rows<BF16>(r, ids, count, w, k0, k1, c); }
extern "C" __global__ void rows_f16(u16* r, const long long* ids, u64 count, u64 w, u32 k0, u32 k1, float c) { perturb_rows<F16>(r, ids, count, w, k0, k1, c); }
extern "C" __global__ void rows_f64(double* r, const long long* ids, u64 count, u64 w, u32 k0, u32 k1, double c) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count * w) return;
    u64 e = (u64)ids[i / w] * w + i % w;
    r[i] = r[i] + c * (double)normal_at(k0, k1, e);
}

extern "C" __global__ void update_f32(float* t, u64 n, const u32* dirs, int d, u32 index, float lr, float decay) { update<F32>(t, n, dirs, d, index, lr, decay); }
extern "C" __global__ void update_bf16(u16* t, u64 n, const u32* dirs, int d, u32 index, float lr, float decay) { update<BF16>(t, n, dirs, d, index, lr, decay); }
extern "C" __global__ void update_f16(u16* t, u64 n, const u32* dirs, int d, u32 index, float lr, float decay) { update<F16>(t, n, dirs, d, index, lr, decay); }
extern "C" __global__ void update_f64(double* t, u64 n, const u32* dirs, int d, u32 index, double lr, double decay) {
    u64 k = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (4 * k >= n) return;
    float a[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int j = 0; j < d; ++j) {
        float z[4];
        normals4(dirs[2 * j], index, k, z);
        float g = __uint_as_float(dirs[2 * j + 1]);
        for (int i = 0; i < 4; ++i) a[i] += g * z[i];
    }
    for (int i = 0; i < 4; ++i) {
        u64 e = 4 * k + i;
        if (e < n) { double step = decay != 0.0 ? (double)a[i] + decay * t[e] : (double)a[i]; t[e] = t[e] - lr * step; }
    }
}
"#;

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

/// θ + c z(key) as a new tensor on θ's device for `coeffs` = [c]; for [a, b], both stacked,
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
