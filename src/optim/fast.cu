// The fast stream's GPU kernels (compiled at run time by NVRTC, see fast_cuda.rs): Philox4x32-10,
// Box-Muller, the perturbed copies and the update, spelling out the CPU stream's operations in
// its order so that, compiled without FMA contraction, they give its bits. fast_cuda.rs prepends
// the polynomial coefficients as #defines, so that both sides share one copy of them.

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
