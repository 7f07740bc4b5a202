//! The fast stream's CPU loops over elements: perturbed copies and updates in blocks of the
//! generator's normals, split into parallel tasks whose boundaries never change a value, each
//! compiled for AVX-512, AVX2 and the baseline with the same bits.

use crate::optim::philox;
use half::{bf16, f16};
use tch::{Device, Tensor};

/// About how many elements a parallel task gets ([`task_len`]).
pub(super) const CHUNK: usize = 1 << 16;

/// Elements per parallel task over `n` elements: about [`CHUNK`], in as many tasks as a multiple
/// of the team's threads (threads that start together finish together: 9 tasks on 2 threads, a
/// 768 × 768 matrix, would leave one idle for a ninth of the time), each a whole number of the
/// generator's 128-normal blocks. Which task computes an element never changes its value.
pub(super) fn task_len(n: usize) -> usize {
    if n <= CHUNK {
        return n.max(1);
    }
    let threads = tch::get_num_threads().max(1) as usize;
    let tasks = n.div_ceil(CHUNK).next_multiple_of(threads);
    n.div_ceil(tasks).next_multiple_of(128)
}

/// Elements generated at once inside a task: z for them lives in an L1-resident buffer. Small
/// blocks let the loads and stores of one block overlap the drawing of the next (256: a pair
/// formed 20 % faster and an update 10 % faster than with 2048, measured with `--stream-only`).
pub(super) const BLOCK: usize = 256;

/// The element types the fast stream handles, with its arithmetic.
pub(super) trait Value: Copy + Send + Sync {
    /// θ + c z.
    fn perturb(self, c: f64, z: f32) -> Self;
    /// θ − η (a + λ θ).
    fn update(self, a: f32, lr: f64, decay: f64) -> Self;
}

impl Value for f32 {
    #[inline(always)]
    fn perturb(self, c: f64, z: f32) -> f32 {
        self + c as f32 * z
    }
    #[inline(always)]
    fn update(self, a: f32, lr: f64, decay: f64) -> f32 {
        let step = if decay != 0.0 { a + decay as f32 * self } else { a };
        self - lr as f32 * step
    }
}

impl Value for f64 {
    #[inline(always)]
    fn perturb(self, c: f64, z: f32) -> f64 {
        self + c * f64::from(z)
    }
    #[inline(always)]
    fn update(self, a: f32, lr: f64, decay: f64) -> f64 {
        let step = if decay != 0.0 { f64::from(a) + decay * self } else { f64::from(a) };
        self - lr * step
    }
}

macro_rules! half_value {
    ($t:ty) => {
        impl Value for $t {
            #[inline(always)]
            fn perturb(self, c: f64, z: f32) -> $t {
                <$t>::from_f32(self.to_f32().perturb(c, z))
            }
            #[inline(always)]
            fn update(self, a: f32, lr: f64, decay: f64) -> $t {
                <$t>::from_f32(self.to_f32().update(a, lr, decay))
            }
        }
    };
}
half_value!(bf16);
half_value!(f16);

/// Runs `$body` with `$T` the Rust type of `$kind`.
macro_rules! by_kind {
    ($kind:expr, $T:ident => $body:expr) => {
        match $kind {
            Kind::Float => {
                type $T = f32;
                $body
            }
            Kind::Double => {
                type $T = f64;
                $body
            }
            Kind::BFloat16 => {
                type $T = bf16;
                $body
            }
            Kind::Half => {
                type $T = f16;
                $body
            }
            other => panic!("the fast stream perturbs floating-point tensors, not {other:?}"),
        }
    };
}

/// Defines `fn $name<T: Value>(..)` three times over, for AVX-512, AVX2 and the baseline, and
/// calls the widest the CPU has.
///
/// The crate is built for the x86-64 baseline (SSE2), where the loops around the generator (θ ± c z
/// over a block, the update's sum and write) ran four floats a step and cost about half as much
/// again as drawing z; the same source compiled with AVX-512 enabled does sixteen. Rust never
/// contracts a · b + c into a fused multiply-add, so every version computes the same bits (tested).
macro_rules! widest {
    ($(#[$doc:meta])* $vis:vis fn $name:ident<T: Value>($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$doc])*
        $vis fn $name<T: Value>($($arg: $ty),*) {
            #[inline(always)]
            fn generic<T: Value>($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512<T: Value>($($arg: $ty),*) {
                    generic($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                fn avx2<T: Value>($($arg: $ty),*) {
                    generic($($arg),*)
                }
                match philox::isa() {
                    // SAFETY: the CPU has AVX-512F.
                    philox::Isa::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: the CPU has AVX2.
                    philox::Isa::Avx2 => return unsafe { avx2($($arg),*) },
                    philox::Isa::Baseline => {}
                }
            }
            generic($($arg),*)
        }
    };
}

widest! {
    /// `dst = src + c z(first ..)`, block by block.
    pub(super) fn perturb_chunk<T: Value>(key: [u32; 2], first: usize, src: &[T], dst: &mut [T], c: f64) {
        let mut z = [0f32; BLOCK];
        for (bi, (dst, src)) in dst.chunks_mut(BLOCK).zip(src.chunks(BLOCK)).enumerate() {
            let z = &mut z[..dst.len()];
            philox::fill(key, (first + bi * BLOCK) as u64, z);
            for ((d, s), z) in dst.iter_mut().zip(src).zip(z.iter()) {
                *d = s.perturb(c, *z);
            }
        }
    }
}

widest! {
    /// `plus = src + a z(first ..)` and `minus = src + b z(first ..)` from one draw of z.
    pub(super) fn perturb_pair_chunk<T: Value>(
        key: [u32; 2],
        first: usize,
        src: &[T],
        plus: &mut [T],
        minus: &mut [T],
        a: f64,
        b: f64,
    ) {
        let mut z = [0f32; BLOCK];
        let blocks = plus.chunks_mut(BLOCK).zip(minus.chunks_mut(BLOCK)).zip(src.chunks(BLOCK));
        for (bi, ((plus, minus), src)) in blocks.enumerate() {
            let z = &mut z[..src.len()];
            philox::fill(key, (first + bi * BLOCK) as u64, z);
            for (((p, m), s), z) in plus.iter_mut().zip(minus.iter_mut()).zip(src).zip(z.iter()) {
                *p = s.perturb(a, *z);
                *m = s.perturb(b, *z);
            }
        }
    }
}

widest! {
    /// `rows` (whole rows of `width`, the first of them row `first_row` of the gathered batch)
    /// plus c z of their stored rows `ids[r]`, c = `coeffs[r / part]`.
    pub(super) fn perturb_rows_chunk<T: Value>(
        key: [u32; 2],
        rows: &mut [T],
        width: usize,
        first_row: usize,
        ids: &[i64],
        coeffs: &[f64],
        part: usize,
    ) {
        let mut z = [0f32; BLOCK];
        for (ri, row) in rows.chunks_mut(width).enumerate() {
            let r = first_row + ri;
            let (id, c) = (ids[r] as usize, coeffs[r / part]);
            for (bi, row) in row.chunks_mut(BLOCK).enumerate() {
                let z = &mut z[..row.len()];
                philox::fill(key, (id * width + bi * BLOCK) as u64, z);
                for (v, z) in row.iter_mut().zip(z.iter()) {
                    *v = v.perturb(c, *z);
                }
            }
        }
    }
}

widest! {
    /// θ ← θ − η (Σ_j g_j z_j + λ θ) over `theta`, elements `first ..` of its tensor.
    pub(super) fn update_chunk<T: Value>(keyed: &[([u32; 2], f32)], first: usize, theta: &mut [T], lr: f64, lambda: f64) {
        let (mut a, mut z) = ([0f32; BLOCK], [0f32; BLOCK]);
        let Some((&(key, g), rest)) = keyed.split_first() else { return };
        for (bi, theta) in theta.chunks_mut(BLOCK).enumerate() {
            let start = (first + bi * BLOCK) as u64;
            let (a, z) = (&mut a[..theta.len()], &mut z[..theta.len()]);
            philox::fill(key, start, z);
            // The sum a starts from +0, which its first term's rounding (and sign of zero) keeps.
            if rest.is_empty() {
                for (v, z) in theta.iter_mut().zip(z.iter()) {
                    *v = v.update(0.0 + g * z, lr, lambda);
                }
                continue;
            }
            for (a, z) in a.iter_mut().zip(z.iter()) {
                *a = 0.0 + g * z;
            }
            for &(key, g) in rest {
                philox::fill(key, start, z);
                for (a, z) in a.iter_mut().zip(z.iter()) {
                    *a += g * z;
                }
            }
            for (v, a) in theta.iter_mut().zip(a.iter()) {
                *v = v.update(*a, lr, lambda);
            }
        }
    }
}

/// The elements of a contiguous CPU tensor.
///
/// # Safety
/// `t` must be a contiguous CPU tensor whose elements are `T`s, not aliased mutably elsewhere for the
/// lifetime of the slice.
// A tensor handle is a shared reference to storage that libtorch lets any handle write.
#[allow(clippy::mut_from_ref)]
pub(super) unsafe fn slice_mut<T>(t: &Tensor) -> &mut [T] {
    // (Not checked against tch's `Element::KIND`: tch 0.24 declares bf16 as Kind::Half.)
    debug_assert!(t.is_contiguous() && t.device() == Device::Cpu);
    let n = t.numel();
    if n == 0 {
        return &mut [];
    }
    std::slice::from_raw_parts_mut(t.data_ptr() as *mut T, n)
}

pub(super) use by_kind;
