/* Elementwise maths (erf, exp, GELU and its gradient, ReLU's gradient) and the softmax helpers of the
 * attention kernels. Each kernel writes fresh outputs (nothing in place). Needs pool.c. */

#include "kernels.h"

#define SQRT1_2 0.70710678118654752440f
#define INV_SQRT_2PI 0.39894228040143267794f

typedef struct {
  const float *x, *dy;
  float *y;
} unary_args;

/* Each loop runs whole vectors, the last one padded (vload_n / vstore_n). */
SIMD_CLONES FUSED_MATH static void erf_range(void *p, int64_t b, int64_t e) {
  unary_args *a = p;
  for (int64_t i = b; i < e; i += VW) {
    vfloat x = vload_n(a->x + i, e - i);
    vstore_n(a->y + i, verff_with_exp(x, vfast_expf(-x * x)), e - i);
  }
}

SIMD_CLONES FUSED_MATH static void exp_range(void *p, int64_t b, int64_t e) {
  unary_args *a = p;
  for (int64_t i = b; i < e; i += VW) vstore_n(a->y + i, vfast_expf(vload_n(a->x + i, e - i)), e - i);
}

/* GELU in its erf form (not the tanh approximation): y = x * Phi(x), Phi(x) = (1 + erf(x / sqrt 2)) / 2,
 * erf by verff_poly. */
SIMD_CLONES static void gelu_range(void *p, int64_t b, int64_t e) {
  unary_args *a = p;
  for (int64_t i = b; i < e; i += VW) {
    vfloat x = vload_n(a->x + i, e - i), h = x * SQRT1_2;
    vstore_n(a->y + i, 0.5f * x * (1.0f + verff_poly(h)), e - i);
  }
}

/* dx = dy * (Phi(x) + x * phi(x)), phi the standard normal density (y holds dx), exp(-h^2) with
 * h = x / sqrt 2. Phi takes its erf from h as gelu_range does, so gelu_with_grad_range below can give
 * GELU(x) bit for bit as gelu_range does. */
SIMD_CLONES static void gelu_grad_range(void *p, int64_t b, int64_t e) {
  unary_args *a = p;
  for (int64_t i = b; i < e; i += VW) {
    vfloat v = vload_n(a->x + i, e - i), h = v * SQRT1_2;
    vfloat gauss = vfast_expf(-h * h);
    vfloat cdf = 0.5f * (1.0f + verff_poly(h));
    vstore_n(a->y + i, vload_n(a->dy + i, e - i) * (cdf + v * (INV_SQRT_2PI * gauss)), e - i);
  }
}

/* Both at once from one exp and one erf per element: out = GELU(x) (as gelu_range) and
 * dx = dy * GELU'(x) (as gelu_grad_range). */
typedef struct {
  const float *x, *dy;
  float *out, *dx;
} gelu_both_args;

SIMD_CLONES static void gelu_with_grad_range(void *p, int64_t b, int64_t e) {
  gelu_both_args *a = p;
  for (int64_t i = b; i < e; i += VW) {
    vfloat v = vload_n(a->x + i, e - i), h = v * SQRT1_2;
    vfloat gauss = vfast_expf(-h * h), erf = verff_poly(h);
    vstore_n(a->out + i, 0.5f * v * (1.0f + erf), e - i);
    vstore_n(a->dx + i, vload_n(a->dy + i, e - i) * (0.5f * (1.0f + erf) + v * (INV_SQRT_2PI * gauss)), e - i);
  }
}

/* ReLU's gradient: dx = dy where x > 0, else 0 (y holds dx). */
SIMD_CLONES static void relu_grad_range(void *p, int64_t b, int64_t e) {
  unary_args *a = p;
  int64_t i = b;
  for (; i + VW <= e; i += VW) vstore(a->y + i, vselect(vload(a->x + i) > 0.0f, vload(a->dy + i), vsplat(0.0f)));
  for (; i < e; i++) a->y[i] = a->x[i] > 0.0f ? a->dy[i] : 0.0f; /* the tail: a scalar loop branches (slow) */
}

void seemore_erf(const float *x, float *y, int32_t n) {
  unary_args a = {x, NULL, y};
  parallel_for(n, GRAIN, erf_range, &a);
}

void seemore_exp(const float *x, float *y, int32_t n) {
  unary_args a = {x, NULL, y};
  parallel_for(n, GRAIN, exp_range, &a);
}

void seemore_gelu(const float *x, float *y, int32_t n) {
  unary_args a = {x, NULL, y};
  parallel_for(n, GRAIN, gelu_range, &a);
}

void seemore_gelu_grad(const float *x, const float *dy, float *dx, int32_t n) {
  unary_args a = {x, dy, dx};
  parallel_for(n, GRAIN, gelu_grad_range, &a);
}

void seemore_gelu_with_grad(const float *x, const float *dy, float *out, float *dx, int32_t n) {
  gelu_both_args a = {x, dy, out, dx};
  parallel_for(n, GRAIN, gelu_with_grad_range, &a);
}

void seemore_relu_grad(const float *x, const float *dy, float *dx, int32_t n) {
  unary_args a = {x, dy, dx};
  parallel_for(n, GRAIN, relu_grad_range, &a);
}

/* ---------------------------------------------------------------------------------------------
 * Softmax and its gradient, row by row, for the attention kernels. */

/* Softmax of each row of p (rows, cols), in place. With seen >= 0 (causal), row i sees only its
 * first seen + i + 1 entries (the rest become 0: a masked score would give exp() = 0 anyway). */
SIMD_CLONES FUSED_MATH static void softmax_rows(float *p, int64_t rows, int64_t cols, int64_t seen) {
  const float *end = p + rows * cols;
  /* Rows are short (tens of entries): exp() runs over the whole block in one flat loop, whose vectors
   * are independent, instead of row by row, where each row's few vectors wait on exp's latency. */
  for (int64_t i = 0; i < rows; i++) { /* each row minus the max of the entries it sees */
    float *row = p + i * cols;
    int64_t n = seen >= 0 ? seen + i + 1 : cols;
    vfloat m = vsplat(row[0]);
    for (int64_t j = 0; j < n; j += VW) {
      vfloat x = vread(row + j, n - j, end, row[0]); /* spare lanes repeat row[0] */
      m = vselect(x > m, x, m);
    }
    float max = m[0];
    for (int l = 1; l < VW; l++) max = m[l] > max ? m[l] : max;
    for (int64_t j = 0; j < n; j++) row[j] -= max;
  }
  int64_t k = 0, total = rows * cols;
  for (; k < total; k += VW) vstore_n(p + k, vfast_expf(vload_n(p + k, total - k)), total - k);
  for (int64_t i = 0; i < rows; i++) { /* divide by the sum; entries a row does not see become 0 */
    float *row = p + i * cols;
    int64_t n = seen >= 0 ? seen + i + 1 : cols, j;
    vfloat sums = vsplat(0.0f);
    for (j = 0; j < n; j += VW) sums += vread(row + j, n - j, end, 0.0f);
    float sum = 0.0f;
    for (int l = 0; l < VW; l++) sum += sums[l];
    float inv = 1.0f / sum;
    for (j = 0; j < n; j++) row[j] *= inv;
    for (; j < cols; j++) row[j] = 0.0f;
  }
}

/* Softmax's gradient for one row in place: d = p * (d * mult - sum(d * mult * p)), with mult from the
 * dropout flags (0 or 1 / keep; mask NULL: 1). */
SIMD_CLONES static void softmax_grad_row(float *d, const float *p, const uint8_t *mask, float inv_keep,
                                         int64_t n, const float *d_end, const float *p_end) {
  if (mask) {
    for (int64_t j = 0; j < n; j++) d[j] *= (float)mask[j] * inv_keep;
  }
  vfloat sums = vsplat(0.0f);
  for (int64_t j = 0; j < n; j += VW) {
    sums += vread(d + j, n - j, d_end, 0.0f) * vread(p + j, n - j, p_end, 0.0f);
  }
  float s = 0.0f;
  for (int l = 0; l < VW; l++) s += sums[l];
  for (int64_t j = 0; j < n; j++) d[j] = p[j] * (d[j] - s);
}
