//! The fast stream's normal numbers: Philox4x32-10 (Salmon et al., "Parallel random numbers: as
//! easy as 1, 2, 3", SC 2011) keyed by (step seed, tensor index), counted by element, with a
//! Box-Muller transform.
//!
//! Element `e` of tensor `i` at step seed `s` is a pure function of (s, i, e): counter
//! `(e / 4, 0, 0)` under key `(s, i)` gives four 32-bit words; words 0 and 1 become the normals
//! of elements 4k and 4k + 1, words 2 and 3 those of 4k + 2 and 4k + 3. Any element, any row
//! range, any chunk can be generated on its own, in any order and on any number of threads, with
//! the same result: that is what lets the forward pass perturb only the embedding rows a batch
//! uses, and the update stream through a tensor in parallel chunks.
//!
//! The transform uses only IEEE-exact operations (integer arithmetic, `+ − ×`, `sqrt`) and no
//! fused multiply-add, with our own polynomials for `ln` and `sin`/`cos`, so the numbers do not
//! depend on the platform's libm or on the SIMD width the compiler picks; the CUDA kernel in
//! `fast_cuda` spells out the same operations (compiled without contraction) to give the same
//! numbers on a GPU.
//!
//! Speed (one thread, the 2-core AMD EPYC CI machines, `cargo bench --bench mezo_step --
//! --stream-only`): 0.87–0.99 ns a normal with AVX-512 (Zen 4), 1.47–1.49 ns with AVX2 (Zen 3).
//! Both paths are hand-written intrinsics that run several independent counter groups in lockstep: one group
//! is a chain of dependent multiplies (Philox's ten rounds, then the `ln` polynomial) whose
//! latency, not throughput, bounded the compiler-vectorised loop (1.53 ns with AVX-512). About
//! half of the time is Philox, half the transform (whose `ln` polynomial is a 9-step Horner
//! chain: evaluated in another order it would round differently).

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// The raw generator: four 32-bit words for `counter` under `key`.
#[inline(always)]
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let [mut c0, mut c1, mut c2, mut c3] = counter;
    let [mut k0, mut k1] = key;
    for round in 0..10 {
        if round > 0 {
            k0 = k0.wrapping_add(W0);
            k1 = k1.wrapping_add(W1);
        }
        let p0 = u64::from(M0) * u64::from(c0);
        let p1 = u64::from(M1) * u64::from(c2);
        let (hi0, lo0) = ((p0 >> 32) as u32, p0 as u32);
        let (hi1, lo1) = ((p1 >> 32) as u32, p1 as u32);
        (c0, c1, c2, c3) = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0);
    }
    [c0, c1, c2, c3]
}

/// Cephes `logf`'s polynomial on t = m − 1, m in [√½, √2): y = (..((P₀ t + P₁) t + P₂)..) t + P₈,
/// highest power first; every path (scalar, AVX2, AVX-512, CUDA) evaluates it in this order.
pub(crate) const LN_POLY: [f32; 9] = [
    7.037_683_6e-2,
    -1.151_461e-1,
    1.167_699_9e-1,
    -1.242_014_1e-1,
    1.424_932_3e-1,
    -1.666_805_8e-1,
    2.000_071_4e-1,
    -2.499_999_4e-1,
    3.333_333e-1,
];
/// ln 2 split into a short high part and a correction: e ln 2 added without rounding error.
pub(crate) const LN2_HIGH: f32 = 0.693_359_4;
pub(crate) const LN2_LOW: f32 = -2.121_944_4e-4;
/// Cephes' minimax sin(a) = a + a³ p(a²) and cos(a) = 1 − a²/2 + a⁴ q(a²) on [−π/4, π/4], the
/// coefficients of p and q highest power first (Horner).
pub(crate) const SIN_POLY: [f32; 3] = [-1.951_529_6e-4, 8.332_161e-3, -1.666_665_5e-1];
pub(crate) const COS_POLY: [f32; 3] = [2.443_315_7e-5, -1.388_731_6e-3, 4.166_664_6e-2];

/// `ln(x)` for x in (0, 1], within about 2 ulp, branch-free.
#[inline(always)]
fn ln(x: f32) -> f32 {
    const SQRT_HALF: f32 = std::f32::consts::FRAC_1_SQRT_2;
    let bits = x.to_bits() as i32;
    // x = m · 2^e with m in [0.5, 1).
    let mut e = ((bits >> 23) & 0xff) - 126;
    let m = f32::from_bits(((bits & 0x007f_ffff) | 0x3f00_0000) as u32);
    let small = m < SQRT_HALF;
    e -= small as i32;
    let t = if small { m + m - 1.0 } else { m - 1.0 };
    let e = e as f32;
    let z = t * t;
    let mut y = LN_POLY[0];
    for p in &LN_POLY[1..] {
        y = y * t + p;
    }
    y = y * t * z;
    y += LN2_LOW * e;
    y += -0.5 * z;
    t + y + LN2_HIGH * e
}

/// (sin, cos) of 2π·m/2^24 for an integer 0 ≤ m < 2^24: an exact reduction to the nearest
/// quarter turn, then the polynomials [`SIN_POLY`] and [`COS_POLY`].
#[inline(always)]
fn sincos_turns(m: u32) -> (f32, f32) {
    let quadrant = (m + (1 << 21)) >> 22;
    let rest = (m as i32 - (quadrant << 22) as i32) as f32 * (1.0 / 16_777_216.0);
    let a = rest * std::f32::consts::TAU;
    let a2 = a * a;
    let horner = |poly: &[f32; 3]| poly[1..].iter().fold(poly[0], |p, c| p * a2 + c);
    let s = a + a * a2 * horner(&SIN_POLY);
    let c = 1.0 - 0.5 * a2 + a2 * a2 * horner(&COS_POLY);
    let (sin, cos) = if quadrant & 1 == 1 { (c, s) } else { (s, c) };
    let sin = if quadrant & 2 == 2 { -sin } else { sin };
    let cos = if (quadrant + 1) & 2 == 2 { -cos } else { cos };
    (sin, cos)
}

/// Two standard normals from two 32-bit words (the top 24 bits of each).
#[inline(always)]
fn box_muller(a: u32, b: u32) -> (f32, f32) {
    // u in (0, 1), exact in f32.
    let u = ((a >> 8) as i32 as f32 + 0.5) * (1.0 / 16_777_216.0);
    let r = (-2.0 * ln(u)).sqrt();
    let (sin, cos) = sincos_turns(b >> 8);
    (r * cos, r * sin)
}

/// The four normals of counter `k`: elements 4k .. 4k + 4.
#[inline(always)]
pub fn normals4(key: [u32; 2], k: u64) -> [f32; 4] {
    let [x0, x1, x2, x3] = philox4x32_10([k as u32, (k >> 32) as u32, 0, 0], key);
    let (z0, z1) = box_muller(x0, x1);
    let (z2, z3) = box_muller(x2, x3);
    [z0, z1, z2, z3]
}

/// The generator key of tensor `index` at step seed `seed`.
pub fn key(seed: u64, index: usize) -> [u32; 2] {
    assert!(seed <= u64::from(u32::MAX), "fast-stream step seeds are 32-bit, got {seed}");
    [seed as u32, index as u32]
}

/// Element `e` of the stream (for tests and the odd single element).
pub fn normal(key: [u32; 2], e: u64) -> f32 {
    normals4(key, e / 4)[(e % 4) as usize]
}

/// Counters per block: enough independent lanes for the compiler to fill any SIMD width.
const LANES: usize = 16;

/// `out[j] = z(first + j)`, whole blocks of `block_len` normals written in place by `block`.
#[inline(always)]
fn fill_with(
    key: [u32; 2],
    first: u64,
    out: &mut [f32],
    block_len: usize,
    block: impl Fn([u32; 2], u64, &mut [f32]),
) {
    let len = out.len();
    let mut j = 0usize;
    // Head: up to the next multiple of 4.
    while j < len && !(first + j as u64).is_multiple_of(4) {
        out[j] = normal(key, first + j as u64);
        j += 1;
    }
    while len - j >= block_len {
        block(key, (first + j as u64) / 4, &mut out[j..j + block_len]);
        j += block_len;
    }
    while len - j >= 4 {
        out[j..j + 4].copy_from_slice(&normals4(key, (first + j as u64) / 4));
        j += 4;
    }
    while j < len {
        out[j] = normal(key, first + j as u64);
        j += 1;
    }
}

/// `4 · LANES` normals of counters k0 .. k0 + LANES, lane-major so that each step of Philox and
/// of the transform is one vector operation across lanes.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // lane-indexed on purpose: one vector operation per step
fn fill_block(key: [u32; 2], k0: u64, out: &mut [f32]) {
    let mut words = [[0u32; LANES]; 4];
    for lane in 0..LANES {
        let k = k0 + lane as u64;
        let x = philox4x32_10([k as u32, (k >> 32) as u32, 0, 0], key);
        for w in 0..4 {
            words[w][lane] = x[w];
        }
    }
    let mut z = [[0f32; LANES]; 4];
    for lane in 0..LANES {
        let (a, b) = box_muller(words[0][lane], words[1][lane]);
        let (c, d) = box_muller(words[2][lane], words[3][lane]);
        z[0][lane] = a;
        z[1][lane] = b;
        z[2][lane] = c;
        z[3][lane] = d;
    }
    for lane in 0..LANES {
        for w in 0..4 {
            out[4 * lane + w] = z[w][lane];
        }
    }
}

/// `[f(0), .., f(N − 1)]`: one operation on N independent vectors, written next to each other so
/// that the core overlaps their latencies (a single block of the generator is one long chain).
#[cfg(target_arch = "x86_64")]
macro_rules! each {
    (|$i:ident| $e:expr) => {
        std::array::from_fn(|$i| $e)
    };
}

/// [`fill_block`] written out in AVX-512 intrinsics, two groups of 16 counters in lockstep: this
/// path runs over every weight several times per step. Every operation is the scalar one, in the
/// same order and without fused multiply-add, so the numbers are bit-identical (tested).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{COS_POLY, LANES, LN2_HIGH, LN2_LOW, LN_POLY, M0, M1, SIN_POLY, W0, W1};
    use std::arch::x86_64::*;

    pub fn available() -> bool {
        std::is_x86_feature_detected!("avx512f")
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn ln<const N: usize>(x: [__m512; N]) -> [__m512; N] {
        let c = _mm512_set1_ps;
        let (add, sub, mul) = (_mm512_add_ps, _mm512_sub_ps, _mm512_mul_ps);
        let bits: [__m512i; N] = each!(|i| _mm512_castps_si512(x[i]));
        let e: [__m512i; N] = each!(|i| _mm512_sub_epi32(
            _mm512_and_si512(_mm512_srli_epi32::<23>(bits[i]), _mm512_set1_epi32(0xff)),
            _mm512_set1_epi32(126),
        ));
        let m: [__m512; N] = each!(|i| _mm512_castsi512_ps(_mm512_or_si512(
            _mm512_and_si512(bits[i], _mm512_set1_epi32(0x007f_ffff)),
            _mm512_set1_epi32(0x3f00_0000),
        )));
        let small: [__mmask16; N] =
            each!(|i| _mm512_cmp_ps_mask::<_CMP_LT_OQ>(m[i], c(std::f32::consts::FRAC_1_SQRT_2)));
        let e: [__m512i; N] = each!(|i| _mm512_mask_sub_epi32(e[i], small[i], e[i], _mm512_set1_epi32(1)));
        let t: [__m512; N] =
            each!(|i| _mm512_mask_blend_ps(small[i], sub(m[i], c(1.0)), sub(add(m[i], m[i]), c(1.0))));
        let e: [__m512; N] = each!(|i| _mm512_cvtepi32_ps(e[i]));
        let z: [__m512; N] = each!(|i| mul(t[i], t[i]));
        let mut y: [__m512; N] = [c(LN_POLY[0]); N];
        for &p in &LN_POLY[1..] {
            y = each!(|i| add(mul(y[i], t[i]), c(p)));
        }
        let y: [__m512; N] = each!(|i| mul(mul(y[i], t[i]), z[i]));
        let y: [__m512; N] = each!(|i| add(y[i], mul(c(LN2_LOW), e[i])));
        let y: [__m512; N] = each!(|i| add(y[i], mul(c(-0.5), z[i])));
        each!(|i| add(add(t[i], y[i]), mul(c(LN2_HIGH), e[i])))
    }

    /// (sin, cos) of 2π·m/2^24, as `super::sincos_turns`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn sincos_turns<const N: usize>(m: [__m512i; N]) -> ([__m512; N], [__m512; N]) {
        let c = _mm512_set1_ps;
        let (add, sub, mul) = (_mm512_add_ps, _mm512_sub_ps, _mm512_mul_ps);
        let quadrant: [__m512i; N] =
            each!(|i| _mm512_srli_epi32::<22>(_mm512_add_epi32(m[i], _mm512_set1_epi32(1 << 21))));
        let rest: [__m512; N] =
            each!(|i| _mm512_cvtepi32_ps(_mm512_sub_epi32(m[i], _mm512_slli_epi32::<22>(quadrant[i]))));
        let a: [__m512; N] = each!(|i| mul(mul(rest[i], c(1.0 / 16_777_216.0)), c(std::f32::consts::TAU)));
        let a2: [__m512; N] = each!(|i| mul(a[i], a[i]));
        let horner =
            |poly: &[f32; 3], x: __m512| poly[1..].iter().fold(c(poly[0]), |p, &k| add(mul(p, x), c(k)));
        let s: [__m512; N] = each!(|i| add(a[i], mul(mul(a[i], a2[i]), horner(&SIN_POLY, a2[i]))));
        let co: [__m512; N] =
            each!(|i| add(sub(c(1.0), mul(c(0.5), a2[i])), mul(mul(a2[i], a2[i]), horner(&COS_POLY, a2[i]))));
        let one = _mm512_set1_epi32(1);
        let two = _mm512_set1_epi32(2);
        let sign = _mm512_set1_epi32(i32::MIN);
        let flip = |v: __m512, k: __mmask16| {
            _mm512_castsi512_ps(_mm512_mask_xor_epi32(
                _mm512_castps_si512(v),
                k,
                _mm512_castps_si512(v),
                sign,
            ))
        };
        let swap: [__mmask16; N] = each!(|i| _mm512_test_epi32_mask(quadrant[i], one));
        let sin = each!(|i| flip(
            _mm512_mask_blend_ps(swap[i], s[i], co[i]),
            _mm512_test_epi32_mask(quadrant[i], two)
        ));
        let cos = each!(|i| flip(
            _mm512_mask_blend_ps(swap[i], co[i], s[i]),
            _mm512_test_epi32_mask(_mm512_add_epi32(quadrant[i], one), two)
        ));
        (sin, cos)
    }

    /// Normals (r cos θ, r sin θ) from the words pairs (a_i, b_i).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn box_muller<const N: usize>(a: [__m512i; N], b: [__m512i; N]) -> ([__m512; N], [__m512; N]) {
        let c = _mm512_set1_ps;
        let u: [__m512; N] = each!(|i| _mm512_mul_ps(
            _mm512_add_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32::<8>(a[i])), c(0.5)),
            c(1.0 / 16_777_216.0),
        ));
        let ln_u = ln(u);
        let r: [__m512; N] = each!(|i| _mm512_sqrt_ps(_mm512_mul_ps(c(-2.0), ln_u[i])));
        let (sin, cos) = sincos_turns::<N>(each!(|i| _mm512_srli_epi32::<8>(b[i])));
        (each!(|i| _mm512_mul_ps(r[i], cos[i])), each!(|i| _mm512_mul_ps(r[i], sin[i])))
    }

    /// `out[j] = z(first + j)`.
    #[target_feature(enable = "avx512f")]
    pub fn fill(key: [u32; 2], first: u64, out: &mut [f32]) {
        // The closure inherits this function's target features.
        super::fill_with(key, first, out, GROUPS * 4 * LANES, |key, k0, out| fill_block(key, k0, out));
    }

    /// Groups of 16 counters generated in lockstep by [`fill_block`].
    const GROUPS: usize = 2;

    /// `GROUPS · 4 · LANES` normals of counters k0 .. k0 + GROUPS · LANES, in element order.
    #[target_feature(enable = "avx512f")]
    fn fill_block(key: [u32; 2], k0: u64, out: &mut [f32]) {
        const _: () = assert!(LANES == 16);
        assert_eq!(out.len(), GROUPS * 4 * LANES);
        // Philox in 64-bit lanes, eight counters a vector (HALVES = 2 · GROUPS vectors): each
        // word sits in its lane's low half, so one unsigned multiply gives the full product (lo
        // in place, hi one shift away) without regrouping even and odd lanes. The high halves
        // carry garbage that never reaches a low half: multiplies read only the low 32 bits,
        // shifts bring down only clean product bits, and xors and adds act bitwise/carry upward.
        const HALVES: usize = 2 * GROUPS;
        let lanes = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7);
        // Counter words 0 and 1 are the low and high halves of k0 + 8 h + lane.
        let counter: [__m512i; HALVES] =
            each!(|h| _mm512_add_epi64(_mm512_set1_epi64((k0 + 8 * h as u64) as i64), lanes));
        let mut c0 = counter;
        let mut c1: [__m512i; HALVES] = each!(|h| _mm512_srli_epi64::<32>(counter[h]));
        let mut c2 = [_mm512_setzero_si512(); HALVES];
        let mut c3 = [_mm512_setzero_si512(); HALVES];
        let (mut k0v, mut k1v) = (_mm512_set1_epi64(i64::from(key[0])), _mm512_set1_epi64(i64::from(key[1])));
        let (m0, m1) = (_mm512_set1_epi64(i64::from(M0)), _mm512_set1_epi64(i64::from(M1)));
        for round in 0..10 {
            if round > 0 {
                k0v = _mm512_add_epi32(k0v, _mm512_set1_epi64(i64::from(W0)));
                k1v = _mm512_add_epi32(k1v, _mm512_set1_epi64(i64::from(W1)));
            }
            let p0: [__m512i; HALVES] = each!(|h| _mm512_mul_epu32(c0[h], m0));
            let p1: [__m512i; HALVES] = each!(|h| _mm512_mul_epu32(c2[h], m1));
            // a ^ b ^ c in one instruction.
            let xor3 = |a, b, c| _mm512_ternarylogic_epi32::<0x96>(a, b, c);
            c0 = each!(|h| xor3(_mm512_srli_epi64::<32>(p1[h]), c1[h], k0v));
            c1 = p1;
            c2 = each!(|h| xor3(_mm512_srli_epi64::<32>(p0[h]), c3[h], k1v));
            c3 = p0;
        }
        // Back to 16 words a vector, counters k0 + 16 g + lane: the low halves of two vectors.
        let low = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let words = |c: &[__m512i; HALVES]| -> [__m512i; GROUPS] {
            each!(|g| _mm512_permutex2var_epi32(c[2 * g], low, c[2 * g + 1]))
        };
        let (c0, c1, c2, c3) = (words(&c0), words(&c1), words(&c2), words(&c3));
        // Both Box-Muller pairs of every group at once.
        let (a, b): ([__m512i; 2 * GROUPS], [__m512i; 2 * GROUPS]) = (
            each!(|i| if i % 2 == 0 { c0[i / 2] } else { c2[i / 2] }),
            each!(|i| if i % 2 == 0 { c1[i / 2] } else { c3[i / 2] }),
        );
        let (cos, sin) = box_muller(a, b);
        for (g, out) in out.chunks_exact_mut(4 * LANES).enumerate() {
            let z = [cos[2 * g], sin[2 * g], cos[2 * g + 1], sin[2 * g + 1]];
            store_element_order(z, out);
        }
    }

    /// Lane-major to element order, out[4 · lane + w] = z_w[lane], in registers: pairs, then
    /// quadruples within 128-bit lanes, then a 4 × 4 transpose of the 128-bit lanes.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn store_element_order([z0, z1, z2, z3]: [__m512; 4], out: &mut [f32]) {
        let (t0, t1) = (_mm512_unpacklo_ps(z0, z1), _mm512_unpackhi_ps(z0, z1));
        let (t2, t3) = (_mm512_unpacklo_ps(z2, z3), _mm512_unpackhi_ps(z2, z3));
        let (pd, ps) = (_mm512_castps_pd, _mm512_castpd_ps);
        let u0 = ps(_mm512_unpacklo_pd(pd(t0), pd(t2)));
        let u1 = ps(_mm512_unpackhi_pd(pd(t0), pd(t2)));
        let u2 = ps(_mm512_unpacklo_pd(pd(t1), pd(t3)));
        let u3 = ps(_mm512_unpackhi_pd(pd(t1), pd(t3)));
        let v0 = _mm512_shuffle_f32x4::<0b01_00_01_00>(u0, u1);
        let v1 = _mm512_shuffle_f32x4::<0b01_00_01_00>(u2, u3);
        let v2 = _mm512_shuffle_f32x4::<0b11_10_11_10>(u0, u1);
        let v3 = _mm512_shuffle_f32x4::<0b11_10_11_10>(u2, u3);
        let rows = [
            _mm512_shuffle_f32x4::<0b10_00_10_00>(v0, v1),
            _mm512_shuffle_f32x4::<0b11_01_11_01>(v0, v1),
            _mm512_shuffle_f32x4::<0b10_00_10_00>(v2, v3),
            _mm512_shuffle_f32x4::<0b11_01_11_01>(v2, v3),
        ];
        for (chunk, row) in out.chunks_exact_mut(16).zip(rows) {
            // SAFETY: `chunk` holds 16 f32.
            unsafe { _mm512_storeu_ps(chunk.as_mut_ptr(), row) };
        }
    }
}

/// The AVX2 twin of [`avx512`] for CPUs without AVX-512 (AMD Zen 1–3, many Intel parts): 1.47
/// ns a normal on a Zen 3 EPYC, where the compiler's AVX2 vectorisation of [`fill_block`] took
/// 3.8 (measured on an AVX-512 machine restricted to AVX2). Two phases over a block (below);
/// same operations, same order, no FMA: the same bits (tested).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{COS_POLY, LN2_HIGH, LN2_LOW, LN_POLY, M0, M1, SIN_POLY, W0, W1};
    use std::arch::x86_64::*;

    pub fn available() -> bool {
        std::is_x86_feature_detected!("avx2")
    }

    /// (hi, lo) halves of the products a · m, lane by lane.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn mulhilo(a: __m256i, m: __m256i) -> (__m256i, __m256i) {
        let even = _mm256_mul_epu32(a, m);
        let odd = _mm256_mul_epu32(_mm256_srli_epi64::<32>(a), m);
        let hi = _mm256_blend_epi32::<0b1010_1010>(_mm256_srli_epi64::<32>(even), odd);
        let lo = _mm256_blend_epi32::<0b1010_1010>(even, _mm256_slli_epi64::<32>(odd));
        (hi, lo)
    }

    /// Lanes where `(v & bit) != 0`, as an all-ones mask.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn has(v: __m256i, bit: i32) -> __m256 {
        let bit = _mm256_set1_epi32(bit);
        _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(v, bit), bit))
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn ln<const N: usize>(x: [__m256; N]) -> [__m256; N] {
        let c = _mm256_set1_ps;
        let (add, sub, mul) = (_mm256_add_ps, _mm256_sub_ps, _mm256_mul_ps);
        let bits: [__m256i; N] = each!(|i| _mm256_castps_si256(x[i]));
        let e: [__m256i; N] = each!(|i| _mm256_sub_epi32(
            _mm256_and_si256(_mm256_srli_epi32::<23>(bits[i]), _mm256_set1_epi32(0xff)),
            _mm256_set1_epi32(126),
        ));
        let m: [__m256; N] = each!(|i| _mm256_castsi256_ps(_mm256_or_si256(
            _mm256_and_si256(bits[i], _mm256_set1_epi32(0x007f_ffff)),
            _mm256_set1_epi32(0x3f00_0000),
        )));
        let small: [__m256; N] =
            each!(|i| _mm256_cmp_ps::<_CMP_LT_OQ>(m[i], c(std::f32::consts::FRAC_1_SQRT_2)));
        // e − 1 where small: the mask is −1 there.
        let e: [__m256i; N] = each!(|i| _mm256_add_epi32(e[i], _mm256_castps_si256(small[i])));
        let t: [__m256; N] =
            each!(|i| _mm256_blendv_ps(sub(m[i], c(1.0)), sub(add(m[i], m[i]), c(1.0)), small[i]));
        let e: [__m256; N] = each!(|i| _mm256_cvtepi32_ps(e[i]));
        let z: [__m256; N] = each!(|i| mul(t[i], t[i]));
        let mut y: [__m256; N] = [c(LN_POLY[0]); N];
        for &p in &LN_POLY[1..] {
            y = each!(|i| add(mul(y[i], t[i]), c(p)));
        }
        let y: [__m256; N] = each!(|i| mul(mul(y[i], t[i]), z[i]));
        let y: [__m256; N] = each!(|i| add(y[i], mul(c(LN2_LOW), e[i])));
        let y: [__m256; N] = each!(|i| add(y[i], mul(c(-0.5), z[i])));
        each!(|i| add(add(t[i], y[i]), mul(c(LN2_HIGH), e[i])))
    }

    /// (sin, cos) of 2π·m/2^24, as `super::sincos_turns`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn sincos_turns<const N: usize>(m: [__m256i; N]) -> ([__m256; N], [__m256; N]) {
        let c = _mm256_set1_ps;
        let (add, sub, mul) = (_mm256_add_ps, _mm256_sub_ps, _mm256_mul_ps);
        let quadrant: [__m256i; N] =
            each!(|i| _mm256_srli_epi32::<22>(_mm256_add_epi32(m[i], _mm256_set1_epi32(1 << 21))));
        let rest: [__m256; N] =
            each!(|i| _mm256_cvtepi32_ps(_mm256_sub_epi32(m[i], _mm256_slli_epi32::<22>(quadrant[i]))));
        let a: [__m256; N] = each!(|i| mul(mul(rest[i], c(1.0 / 16_777_216.0)), c(std::f32::consts::TAU)));
        let a2: [__m256; N] = each!(|i| mul(a[i], a[i]));
        let horner =
            |poly: &[f32; 3], x: __m256| poly[1..].iter().fold(c(poly[0]), |p, &k| add(mul(p, x), c(k)));
        let s: [__m256; N] = each!(|i| add(a[i], mul(mul(a[i], a2[i]), horner(&SIN_POLY, a2[i]))));
        let co: [__m256; N] =
            each!(|i| add(sub(c(1.0), mul(c(0.5), a2[i])), mul(mul(a2[i], a2[i]), horner(&COS_POLY, a2[i]))));
        let sign = c(-0.0);
        let flip = |v: __m256, mask: __m256| _mm256_xor_ps(v, _mm256_and_ps(mask, sign));
        let swap: [__m256; N] = each!(|i| has(quadrant[i], 1));
        let sin = each!(|i| flip(_mm256_blendv_ps(s[i], co[i], swap[i]), has(quadrant[i], 2)));
        let cos = each!(|i| flip(
            _mm256_blendv_ps(co[i], s[i], swap[i]),
            has(_mm256_add_epi32(quadrant[i], _mm256_set1_epi32(1)), 2)
        ));
        (sin, cos)
    }

    /// Normals (r cos θ, r sin θ) from the words pairs (a_i, b_i).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn box_muller<const N: usize>(a: [__m256i; N], b: [__m256i; N]) -> ([__m256; N], [__m256; N]) {
        let c = _mm256_set1_ps;
        let u: [__m256; N] = each!(|i| _mm256_mul_ps(
            _mm256_add_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32::<8>(a[i])), c(0.5)),
            c(1.0 / 16_777_216.0),
        ));
        let ln_u = ln(u);
        let r: [__m256; N] = each!(|i| _mm256_sqrt_ps(_mm256_mul_ps(c(-2.0), ln_u[i])));
        let (sin, cos) = sincos_turns::<N>(each!(|i| _mm256_srli_epi32::<8>(b[i])));
        (each!(|i| _mm256_mul_ps(r[i], cos[i])), each!(|i| _mm256_mul_ps(r[i], sin[i])))
    }

    /// `out[j] = z(first + j)`.
    #[target_feature(enable = "avx2")]
    pub fn fill(key: [u32; 2], first: u64, out: &mut [f32]) {
        // The closure inherits this function's target features.
        super::fill_with(key, first, out, 32 * VECTORS, |key, k0, out| fill_block(key, k0, out));
    }

    /// Vectors of 8 counters a block: 128 normals.
    const VECTORS: usize = 4;
    /// Vectors of counters that go through Philox's rounds in lockstep, and pairs of word
    /// vectors through the transform: enough independent chains to hide the latencies, few
    /// enough that the state stays in the 16 registers.
    const LOCKSTEP: usize = 2;

    /// `32 · VECTORS` normals of counters k0 .. k0 + 8 · VECTORS, in element order.
    ///
    /// In two phases, through an L1-resident buffer of words: Philox for all counters, then the
    /// transform, each with as many vectors in lockstep as the registers hold (Philox two of
    /// counters, the transform four of word pairs). Done in one go, all vectors of both phases in
    /// lockstep, the live state spilled to the stack in every round and every Horner step: 2.40
    /// ns a normal on a Zen 3 EPYC, 1.45 ns now (one thread, an L1-sized buffer, best of 20).
    #[target_feature(enable = "avx2")]
    fn fill_block(key: [u32; 2], k0: u64, out: &mut [f32]) {
        assert_eq!(out.len(), 32 * VECTORS);
        // words[v][w]: word w of counters k0 + 8 v .. k0 + 8 v + 8.
        let mut words = [[_mm256_setzero_si256(); 4]; VECTORS];
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        for first in (0..VECTORS).step_by(LOCKSTEP) {
            // Counter words 0 and 1: the low and high halves of k0 + 8 v + lane. The low half
            // wraps at most once within a vector; the high half then carries one.
            let counter_words = |v: usize| {
                let base = k0 + 8 * v as u64;
                let low = _mm256_add_epi32(_mm256_set1_epi32(base as u32 as i32), lanes);
                // Lanes whose low word wrapped: low < base's low word, unsigned.
                let flip = _mm256_set1_epi32(i32::MIN);
                let wrapped = _mm256_cmpgt_epi32(
                    _mm256_xor_si256(_mm256_set1_epi32(base as u32 as i32), flip),
                    _mm256_xor_si256(low, flip),
                );
                // −1 where wrapped: subtracting it adds the carry.
                let high = _mm256_sub_epi32(_mm256_set1_epi32((base >> 32) as u32 as i32), wrapped);
                (low, high)
            };
            let start: [(__m256i, __m256i); LOCKSTEP] = each!(|v| counter_words(first + v));
            let mut c0: [__m256i; LOCKSTEP] = each!(|v| start[v].0);
            let mut c1: [__m256i; LOCKSTEP] = each!(|v| start[v].1);
            let mut c2 = [_mm256_setzero_si256(); LOCKSTEP];
            let mut c3 = [_mm256_setzero_si256(); LOCKSTEP];
            let (mut k0v, mut k1v) = (_mm256_set1_epi32(key[0] as i32), _mm256_set1_epi32(key[1] as i32));
            let (m0, m1) = (_mm256_set1_epi64x(i64::from(M0)), _mm256_set1_epi64x(i64::from(M1)));
            for round in 0..10 {
                if round > 0 {
                    k0v = _mm256_add_epi32(k0v, _mm256_set1_epi32(W0 as i32));
                    k1v = _mm256_add_epi32(k1v, _mm256_set1_epi32(W1 as i32));
                }
                let p0: [(__m256i, __m256i); LOCKSTEP] = each!(|v| mulhilo(c0[v], m0));
                let p1: [(__m256i, __m256i); LOCKSTEP] = each!(|v| mulhilo(c2[v], m1));
                c0 = each!(|v| _mm256_xor_si256(_mm256_xor_si256(p1[v].0, c1[v]), k0v));
                c1 = each!(|v| p1[v].1);
                c2 = each!(|v| _mm256_xor_si256(_mm256_xor_si256(p0[v].0, c3[v]), k1v));
                c3 = each!(|v| p0[v].1);
            }
            for v in 0..LOCKSTEP {
                words[first + v] = [c0[v], c1[v], c2[v], c3[v]];
            }
        }
        for (v, out) in out.chunks_exact_mut(64).enumerate() {
            let ([x0, x1, x2, x3], [y0, y1, y2, y3]) = (words[2 * v], words[2 * v + 1]);
            let (cos, sin) = box_muller([x0, x2, y0, y2], [x1, x3, y1, y3]);
            store_element_order([cos[0], sin[0], cos[1], sin[1]], &mut out[..32]);
            store_element_order([cos[2], sin[2], cos[3], sin[3]], &mut out[32..]);
        }
    }

    /// out[4 · lane + w] = z_w[lane] for 8 lanes: pairs, then quadruples within 128-bit halves,
    /// then the halves put in lane order.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn store_element_order([z0, z1, z2, z3]: [__m256; 4], out: &mut [f32]) {
        let (t0, t1) = (_mm256_unpacklo_ps(z0, z1), _mm256_unpackhi_ps(z0, z1));
        let (t2, t3) = (_mm256_unpacklo_ps(z2, z3), _mm256_unpackhi_ps(z2, z3));
        let (pd, ps) = (_mm256_castps_pd, _mm256_castpd_ps);
        // u_r holds lanes r and r + 4.
        let u0 = ps(_mm256_unpacklo_pd(pd(t0), pd(t2)));
        let u1 = ps(_mm256_unpackhi_pd(pd(t0), pd(t2)));
        let u2 = ps(_mm256_unpacklo_pd(pd(t1), pd(t3)));
        let u3 = ps(_mm256_unpackhi_pd(pd(t1), pd(t3)));
        let rows = [
            _mm256_permute2f128_ps::<0x20>(u0, u1),
            _mm256_permute2f128_ps::<0x20>(u2, u3),
            _mm256_permute2f128_ps::<0x31>(u0, u1),
            _mm256_permute2f128_ps::<0x31>(u2, u3),
        ];
        for (chunk, row) in out.chunks_exact_mut(8).zip(rows) {
            // SAFETY: `chunk` holds 8 f32.
            unsafe { _mm256_storeu_ps(chunk.as_mut_ptr(), row) };
        }
    }
}

/// The path of CPUs without AVX2, and of other architectures: [`fill_block`] as the compiler
/// vectorises it.
fn fill_portable(key: [u32; 2], first: u64, out: &mut [f32]) {
    fill_with(key, first, out, 4 * LANES, fill_block);
}

/// The vector instruction sets the fast stream's loops are compiled for: this generator's and
/// those of `fast`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Isa {
    Baseline,
    Avx2,
    Avx512,
}

/// The widest of [`Isa`] this CPU has (in tests, at most `ISA_CAP`).
pub(crate) fn isa() -> Isa {
    static DETECTED: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    let detected = *DETECTED.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if avx512::available() {
                return Isa::Avx512;
            }
            if avx2::available() {
                return Isa::Avx2;
            }
        }
        Isa::Baseline
    });
    #[cfg(test)]
    let detected = detected.min(match ISA_CAP.load(std::sync::atomic::Ordering::Relaxed) {
        0 => Isa::Baseline,
        1 => Isa::Avx2,
        _ => Isa::Avx512,
    });
    detected
}

/// Tests narrow [`isa`] to compare the versions (0 baseline, 1 AVX2, 2 the widest). Results do
/// not depend on it, so tests running meanwhile are unaffected.
#[cfg(test)]
pub(crate) static ISA_CAP: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(2);

/// `out[j] = z(first + j)`.
pub fn fill(key: [u32; 2], first: u64, out: &mut [f32]) {
    match isa() {
        // SAFETY: the CPU has AVX-512F.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { avx512::fill(key, first, out) },
        // SAFETY: the CPU has AVX2.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2::fill(key, first, out) },
        _ => fill_portable(key, first, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random123's known-answer vectors for philox4x32-10 (kat_vectors).
    #[test]
    fn philox_matches_random123() {
        assert_eq!(philox4x32_10([0; 4], [0; 2]), [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]);
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
        );
        assert_eq!(
            philox4x32_10([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0]),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    /// The stream's numbers are part of every fast-stream trajectory: runs replay and resume from
    /// them, on CPU and GPU. These pin them.
    #[test]
    fn the_stream_keeps_its_numbers() {
        let key = key(42, 3);
        for (e, bits) in [
            (0u64, 0xbf0d18d6u32),
            (1, 0xbf84beb0),
            (2, 0x3f1ad3c2),
            (3, 0x3f3e1698),
            (1001, 0xc02eb186),
            (123_457, 0x3e547a59),
            (1 << 33, 0x3de3d2c6),
        ] {
            assert_eq!(normal(key, e).to_bits(), bits, "element {e}");
            let mut block = vec![0f32; 300];
            fill(key, e, &mut block);
            assert_eq!(block[0].to_bits(), bits, "element {e} from fill");
        }
    }

    #[test]
    fn ln_and_sincos_are_accurate() {
        for i in 1..=100_000u32 {
            let x = i as f32 / 100_000.0;
            let err = (f64::from(ln(x)) - f64::from(x).ln()).abs();
            assert!(err <= 2e-7 * f64::from(x).ln().abs().max(1e-30) + 1e-7, "ln({x}): error {err}");
        }
        for m in (0..(1u32 << 24)).step_by(997) {
            let angle = std::f64::consts::TAU * f64::from(m) / 16_777_216.0;
            let (s, c) = sincos_turns(m);
            assert!((f64::from(s) - angle.sin()).abs() < 3e-7, "sin at {m}");
            assert!((f64::from(c) - angle.cos()).abs() < 3e-7, "cos at {m}");
        }
    }

    #[test]
    fn blocks_equal_single_elements_at_any_offset() {
        let key = key(123_456_789, 7);
        for first in [0u64, 1, 3, 4, 5, 62, 64, 1001] {
            let mut out = vec![0f32; 300];
            fill(key, first, &mut out);
            for (j, z) in out.iter().enumerate() {
                assert_eq!(z.to_bits(), normal(key, first + j as u64).to_bits(), "first {first}, j {j}");
            }
        }
    }

    /// The hand-vectorised AVX-512 and AVX2 paths and the compiler-vectorised one give the same
    /// bits.
    #[test]
    fn every_code_path_gives_the_same_numbers() {
        let key = key(4_000_000_007, 11);
        for first in [0u64, 3, 64, (1 << 32) * 4 - 70] {
            let mut portable = vec![0f32; 1000];
            fill_portable(key, first, &mut portable);
            for (j, z) in portable.iter().enumerate().step_by(37) {
                assert_eq!(z.to_bits(), normal(key, first + j as u64).to_bits(), "first {first}, j {j}");
            }
            let bits = |v: &[f32]| v.iter().map(|z| z.to_bits()).collect::<Vec<_>>();
            #[cfg(target_arch = "x86_64")]
            if avx512::available() {
                let mut wide = vec![0f32; 1000];
                // SAFETY: checked just above.
                unsafe { avx512::fill(key, first, &mut wide) };
                assert_eq!(bits(&wide), bits(&portable), "AVX-512, first {first}");
            }
            #[cfg(target_arch = "x86_64")]
            if avx2::available() {
                let mut wide = vec![0f32; 1000];
                // SAFETY: checked just above.
                unsafe { avx2::fill(key, first, &mut wide) };
                assert_eq!(bits(&wide), bits(&portable), "AVX2, first {first}");
            }
        }
    }

    #[test]
    fn the_stream_is_standard_normal() {
        let mut z = vec![0f32; 1 << 20];
        fill(key(42, 0), 0, &mut z);
        let n = z.len() as f64;
        let mean = z.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = z.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n;
        let kurt = z.iter().map(|&v| (f64::from(v) - mean).powi(4)).sum::<f64>() / n / var.powi(2);
        let within1 = z.iter().filter(|v| v.abs() < 1.0).count() as f64 / n;
        assert!(mean.abs() < 5e-3, "mean {mean}");
        assert!((var - 1.0).abs() < 5e-3, "variance {var}");
        assert!((kurt - 3.0).abs() < 0.03, "kurtosis {kurt}");
        assert!((within1 - 0.682_689).abs() < 2e-3, "P(|z| < 1) = {within1}");
        // Different tensors and seeds give unrelated streams.
        let mut other = vec![0f32; 1 << 12];
        fill(key(42, 1), 0, &mut other);
        let corr: f64 = other.iter().zip(&z).map(|(a, b)| f64::from(a * b)).sum::<f64>() / 4096.0;
        assert!(corr.abs() < 0.06, "correlation {corr}");
    }
}
