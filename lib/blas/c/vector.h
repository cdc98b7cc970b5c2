/* Vector helpers of the elementwise kernels: VW floats at once with GCC/Clang vector extensions (libm's
 * expf and erff are scalar calls the compiler does not vectorize), exp and erf as branch-free
 * polynomials. Loops marked SIMD_CLONES are built for AVX-512, AVX2 and SSE2, and the loader picks the
 * best the CPU has, so the shared library stays portable. */

#ifndef SEEMORE_VECTOR_H
#define SEEMORE_VECTOR_H

#include <stdint.h>
#include <string.h>

#define VW 16
typedef float vfloat __attribute__((vector_size(4 * VW)));
typedef int32_t vint __attribute__((vector_size(4 * VW)));
#define VINLINE static inline __attribute__((always_inline))
#if defined(__x86_64__) && defined(__linux__) && (defined(__clang__) || __GNUC__ >= 7)
#define SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define SIMD_CLONES
#endif
/* The loops of exp, erf and softmax may fuse a multiply and an add into one FMA instruction (everything
 * else is built with -ffp-contract=off): their results then differ in the last bits between CPUs with
 * FMA and without, as OpenBLAS's do. GELU's loops stay unfused: which products GCC fuses depends on the
 * rest of each function, and GELU, its gradient and the two at once must give the same bits. Clang has
 * no optimize attribute: there every loop stays unfused. */
#if defined(__GNUC__) && !defined(__clang__)
#define FUSED_MATH __attribute__((optimize("fp-contract=fast")))
#else
#define FUSED_MATH
#endif

VINLINE vfloat vload(const float *p) {
  vfloat v;
  memcpy(&v, p, sizeof v);
  return v;
}
VINLINE void vstore(float *p, vfloat v) { memcpy(p, &v, sizeof v); }
/* Lane-wise (mask ? a : b), mask lanes all ones or all zeros (as vector comparisons give). */
VINLINE vfloat vselect(vint mask, vfloat a, vfloat b) { return (vfloat)(((vint)a & mask) | ((vint)b & ~mask)); }
VINLINE vfloat vsplat(float x) { return (vfloat){0} + x; }
/* Lanes l < n all ones, the rest zero (a mask for vselect). */
VINLINE vint lanes_below(int64_t n) {
  vint lane;
  for (int l = 0; l < VW; l++) lane[l] = l;
  return lane < (int32_t)(n < VW ? n : VW);
}
/* The first n lanes from p (all VW when n >= VW), the others `fill`. Reads a whole vector when it ends
 * at or before `end` (the array's end); only the array's last part-vector is gathered lane by lane. */
VINLINE vfloat vread(const float *p, int64_t n, const float *end, float fill) {
  if (n >= VW) return vload(p);
  if (p + VW <= end) return vselect(lanes_below(n), vload(p), vsplat(fill));
  float buf[VW];
  for (int l = 0; l < VW; l++) buf[l] = l < n ? p[l] : fill;
  return vload(buf);
}
/* n <= VW floats from p as one vector (the lanes past n zero), and the first n lanes of v to p: a loop's
 * last part-vector goes through the same vector code as the rest, so an element's result does not
 * depend on where it sits (with FMA the scalar code would round differently). */
VINLINE vfloat vload_n(const float *p, int64_t n) { return vread(p, n, p + n, 0.0f); }
VINLINE void vstore_n(float *p, vfloat v, int64_t n) {
  if (n >= VW) {
    vstore(p, v);
    return;
  }
  float buf[VW];
  vstore(buf, v);
  memcpy(p, buf, (size_t)n * sizeof(float));
}

/* exp(x), relative error < 2e-7 (Cephes polynomial), branch-free. The power of two is applied in two
 * halves so results stay right down into the denormals and overflow to +inf above ~88.72. */
VINLINE vfloat vfast_expf(vfloat x) {
  x = vselect(x < -104.0f, vsplat(-104.0f), x);
  x = vselect(x > 88.8f, vsplat(88.8f), x);
  vfloat z = x * 1.44269504088896341f;
  vfloat half = (vfloat)(((vint)z & INT32_MIN) | (vint)vsplat(0.5f)); /* copysignf(0.5f, z) */
  vint k = __builtin_convertvector(z + half, vint);
  vfloat n = __builtin_convertvector(k, vfloat);
  vfloat r = x - n * 0.693359375f + n * 2.12194440e-4f;
  vfloat p = vsplat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  vfloat y = p * r * r + r + 1.0f;
  vint k1 = k >> 1, k2 = k - k1;
  return y * (vfloat)((k1 + 127) << 23) * (vfloat)((k2 + 127) << 23);
}

/* erf(x) by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), the formula tfjs's cpu backend uses,
 * given exp_mx2 = exp(-x^2). */
VINLINE vfloat verff_with_exp(vfloat x, vfloat exp_mx2) {
  vint sign = (vint)x & INT32_MIN;
  vfloat v = (vfloat)((vint)x & INT32_MAX);
  vfloat t = 1.0f / (1.0f + 0.3275911f * v);
  vfloat poly = ((((1.061405429f * t - 1.453152027f) * t) + 1.421413741f) * t - 0.284496736f) * t + 0.254829592f;
  return (vfloat)((vint)(1.0f - poly * t * exp_mx2) | sign);
}

/* erf(x) by Abramowitz & Stegun 7.1.28, 1 - 1/(1 + a1 v + ... + a6 v^6)^16 with v = |x|: no exp, so
 * about half the instructions of 7.1.26. In float its error is < 1.7e-6 (the 16th power's rounding),
 * which makes GELU's < 9e-7; GELU and its gradient use it, tf.erf (erf_range) keeps 7.1.26. */
VINLINE vfloat verff_poly(vfloat x) {
  vint sign = (vint)x & INT32_MIN;
  vfloat v = (vfloat)((vint)x & INT32_MAX);
  vfloat p = ((((4.30638e-5f * v + 2.765672e-4f) * v + 1.520143e-4f) * v + 9.2705272e-3f) * v + 4.22820123e-2f);
  p = (p * v + 7.05230784e-2f) * v + 1.0f;
  p = p * p, p = p * p, p = p * p, p = p * p;
  return (vfloat)((vint)(1.0f - 1.0f / p) | sign);
}

#endif
