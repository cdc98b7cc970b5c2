/* Small CPU kernels for tfjs's wasm backend, called through Deno FFI (see native.ts).
 * Built on first use with `cc -O3 -std=c99 -shared -fPIC kernels.c -lm`. Callers check all sizes;
 * these functions trust their arguments. Keep seemore_abi_version in step with native.ts. */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int32_t seemore_abi_version(void) { return 1; }

/* ---------------------------------------------------------------------------------------------
 * Transpose of 4-byte elements, any rank up to 8: dst = transpose(src, perm).
 * The output's last axis is written contiguously; when it reads a strided input axis, the output
 * axis that reads the input's contiguous axis is tiled with it so both sides stay in cache. */

#define MAX_RANK 8
#define TILE 32

void seemore_transpose32(const int32_t *src, int32_t *dst, int32_t rank, const int32_t *shape,
                         const int32_t *perm) {
  int64_t in_stride[MAX_RANK], out_shape[MAX_RANK], out_stride[MAX_RANK], step[MAX_RANK];
  int64_t total = 1;
  if (rank <= 0 || rank > MAX_RANK) return;
  for (int d = rank - 1; d >= 0; d--) {
    in_stride[d] = total;
    total *= shape[d];
  }
  if (total == 0) return;
  int64_t s = 1;
  for (int d = rank - 1; d >= 0; d--) {
    out_shape[d] = shape[perm[d]];
    step[d] = in_stride[perm[d]];
    out_stride[d] = s;
    s *= out_shape[d];
  }
  int last = rank - 1;
  int q = -1; /* output axis that reads the input's contiguous axis */
  for (int d = 0; d < rank; d++)
    if (perm[d] == rank - 1) q = d;

  /* Axes walked by the outer odometer: all but the last (and q when tiling). */
  int tiled = (q != last);
  int axes[MAX_RANK], n_axes = 0;
  int64_t outer = 1;
  for (int d = 0; d < rank; d++) {
    if (d == last || (tiled && d == q)) continue;
    axes[n_axes++] = d;
    outer *= out_shape[d];
  }
  int64_t coord[MAX_RANK] = {0};
  int64_t in_pos = 0, out_pos = 0;
  int64_t cols = out_shape[last];
  for (int64_t t = 0; t < outer; t++) {
    if (!tiled) {
      memcpy(dst + out_pos, src + in_pos, (size_t)cols * sizeof(int32_t));
    } else {
      int64_t rows = out_shape[q], far = step[last], out_row = out_stride[q];
      for (int64_t i0 = 0; i0 < rows; i0 += TILE) {
        int64_t i1 = i0 + TILE < rows ? i0 + TILE : rows;
        for (int64_t j0 = 0; j0 < cols; j0 += TILE) {
          int64_t j1 = j0 + TILE < cols ? j0 + TILE : cols;
          for (int64_t i = i0; i < i1; i++) {
            int32_t *o = dst + out_pos + i * out_row;
            const int32_t *x = src + in_pos + i;
            for (int64_t j = j0; j < j1; j++) o[j] = x[j * far];
          }
        }
      }
    }
    for (int a = n_axes - 1; a >= 0; a--) {
      int d = axes[a];
      coord[a]++;
      in_pos += step[d];
      out_pos += out_stride[d];
      if (coord[a] < out_shape[d]) break;
      in_pos -= step[d] * coord[a];
      out_pos -= out_stride[d] * coord[a];
      coord[a] = 0;
    }
  }
}

/* ---------------------------------------------------------------------------------------------
 * Sum over axes, on the simplified shape: n_groups alternating runs of kept / reduced axes
 * (reduced[g] = 1 for a reduced group). Accumulates in double; dst has the kept groups' size. */

int32_t seemore_sum(const float *src, float *dst, int32_t n_groups, const int32_t *sizes,
                    const int32_t *reduced) {
  int64_t in_step[MAX_RANK], out_step[MAX_RANK], out_size = 1;
  if (n_groups <= 0 || n_groups > MAX_RANK) return -1;
  int64_t s = 1;
  for (int g = n_groups - 1; g >= 0; g--) {
    in_step[g] = s;
    s *= sizes[g];
    out_step[g] = 0;
    if (!reduced[g]) {
      out_step[g] = out_size;
      out_size *= sizes[g];
    }
  }
  double *acc = calloc((size_t)out_size, sizeof(double));
  if (!acc) return -2;
  int last = n_groups - 1;
  int64_t len = sizes[last], outer = 1;
  for (int g = 0; g < last; g++) outer *= sizes[g];
  int64_t coord[MAX_RANK] = {0};
  int64_t in_pos = 0, out_pos = 0;
  for (int64_t t = 0; t < outer; t++) {
    const float *x = src + in_pos;
    if (reduced[last]) {
      double total = 0;
      for (int64_t j = 0; j < len; j++) total += x[j];
      acc[out_pos] += total;
    } else {
      double *a = acc + out_pos;
      for (int64_t j = 0; j < len; j++) a[j] += x[j];
    }
    for (int g = last - 1; g >= 0; g--) {
      coord[g]++;
      in_pos += in_step[g];
      out_pos += out_step[g];
      if (coord[g] < sizes[g]) break;
      in_pos -= in_step[g] * coord[g];
      out_pos -= out_step[g] * coord[g];
      coord[g] = 0;
    }
  }
  for (int64_t i = 0; i < out_size; i++) dst[i] = (float)acc[i];
  free(acc);
  return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Elementwise maths and fused layers. Each writes fresh outputs (nothing in place). */

#define SQRT1_2 0.70710678118654752440f
#define INV_SQRT_2PI 0.39894228040143267794f

/* exp(x) in float, relative error < 2e-7 (Cephes polynomial); branch-free so loops vectorize
 * (libm's expf/erff are scalar calls, 4-15 ns each here). The power of two is applied in two
 * halves so results stay right down into the denormals and overflow to +inf above ~88.72. */
static inline float fast_expf(float x) {
  x = x < -104.0f ? -104.0f : x;
  x = x > 88.8f ? 88.8f : x;
  float z = x * 1.44269504088896341f;
  int32_t k = (int32_t)(z + copysignf(0.5f, z)); /* round to nearest, in [-150, 128] */
  float n = (float)k;
  float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  float y = p * r * r + r + 1.0f;
  int32_t k1 = k >> 1, k2 = k - k1;
  union { int32_t i; float f; } s1, s2;
  s1.i = (k1 + 127) << 23;
  s2.i = (k2 + 127) << 23;
  return y * s1.f * s2.f;
}

/* erf(x) by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), the formula tfjs's cpu backend uses. */
static inline float fast_erff(float x) {
  float v = fabsf(x);
  float t = 1.0f / (1.0f + 0.3275911f * v);
  float poly = ((((1.061405429f * t - 1.453152027f) * t) + 1.421413741f) * t - 0.284496736f) * t + 0.254829592f;
  return copysignf(1.0f - poly * t * fast_expf(-v * v), x);
}

void seemore_erf(const float *restrict x, float *restrict y, int32_t n) {
  for (int32_t i = 0; i < n; i++) y[i] = fast_erff(x[i]);
}

void seemore_exp(const float *restrict x, float *restrict y, int32_t n) {
  for (int32_t i = 0; i < n; i++) y[i] = fast_expf(x[i]);
}

/* GELU, exact erf form: y = x * Phi(x), Phi(x) = (1 + erf(x / sqrt 2)) / 2. */
void seemore_gelu(const float *restrict x, float *restrict y, int32_t n) {
  for (int32_t i = 0; i < n; i++) y[i] = 0.5f * x[i] * (1.0f + fast_erff(x[i] * SQRT1_2));
}

/* dx = dy * (Phi(x) + x * phi(x)), phi the standard normal density. */
void seemore_gelu_grad(const float *restrict x, const float *restrict dy, float *restrict dx, int32_t n) {
  for (int32_t i = 0; i < n; i++) {
    float v = x[i];
    float cdf = 0.5f * (1.0f + fast_erff(v * SQRT1_2));
    float pdf = INV_SQRT_2PI * fast_expf(-0.5f * v * v);
    dx[i] = dy[i] * (cdf + v * pdf);
  }
}

/* Layer norm over the last axis of x (rows, cols): y = (x - mean) * rstd * g + b, with the biased
 * variance; also returns each row's mean and rstd = 1 / sqrt(var + eps) for the backward pass. */
void seemore_layer_norm(const float *x, const float *g, const float *b, float *y, float *mean,
                        float *rstd, int32_t rows, int32_t cols, float eps) {
  for (int32_t r = 0; r < rows; r++) {
    const float *xr = x + (int64_t)r * cols;
    float *yr = y + (int64_t)r * cols;
    double s = 0;
    for (int32_t c = 0; c < cols; c++) s += xr[c];
    float mu = (float)(s / cols);
    double ss = 0;
    for (int32_t c = 0; c < cols; c++) {
      float d = xr[c] - mu;
      ss += (double)d * d;
    }
    float rs = (float)(1.0 / sqrt(ss / cols + (double)eps));
    for (int32_t c = 0; c < cols; c++) yr[c] = (xr[c] - mu) * rs * g[c] + b[c];
    mean[r] = mu;
    rstd[r] = rs;
  }
}

/* Gradients of seemore_layer_norm: with xhat = (x - mean) * rstd and d = dy * g,
 * dx = rstd * (d - mean(d) - xhat * mean(d * xhat)); dg = sum over rows of dy * xhat; db = sum of dy. */
int32_t seemore_layer_norm_grad(const float *dy, const float *x, const float *g, const float *mean,
                                const float *rstd, float *dx, float *dg, float *db, int32_t rows,
                                int32_t cols) {
  double *acc_g = calloc((size_t)cols * 2, sizeof(double));
  if (!acc_g) return -2;
  double *acc_b = acc_g + cols;
  for (int32_t r = 0; r < rows; r++) {
    const float *xr = x + (int64_t)r * cols, *dyr = dy + (int64_t)r * cols;
    float *dxr = dx + (int64_t)r * cols;
    float mu = mean[r], rs = rstd[r];
    double sum_d = 0, sum_dx = 0;
    for (int32_t c = 0; c < cols; c++) {
      float xhat = (xr[c] - mu) * rs;
      float d = dyr[c] * g[c];
      sum_d += d;
      sum_dx += (double)d * xhat;
      acc_g[c] += (double)dyr[c] * xhat;
      acc_b[c] += dyr[c];
    }
    float mean_d = (float)(sum_d / cols), mean_dx = (float)(sum_dx / cols);
    for (int32_t c = 0; c < cols; c++) {
      float xhat = (xr[c] - mu) * rs;
      dxr[c] = rs * (dyr[c] * g[c] - mean_d - xhat * mean_dx);
    }
  }
  for (int32_t c = 0; c < cols; c++) {
    dg[c] = (float)acc_g[c];
    db[c] = (float)acc_b[c];
  }
  free(acc_g);
  return 0;
}

/* One Adam step (torch.optim.Adam without weight decay), in float32 like the op-by-op version:
 * m' = b1 m + (1 - b1) g;  v' = b2 v + (1 - b2) g^2;  p' = p - step_size * m' / (sqrt(v') / sqrt_bc2 + eps)
 * with step_size = lr / (1 - b1^t) and sqrt_bc2 = sqrt(1 - b2^t). */
void seemore_adam(const float *p, const float *m, const float *v, const float *g, float *p_out,
                  float *m_out, float *v_out, int32_t n, float beta1, float beta2, float step_size,
                  float sqrt_bc2, float eps) {
  float one_b1 = 1.0f - beta1, one_b2 = 1.0f - beta2;
  for (int32_t i = 0; i < n; i++) {
    float gi = g[i];
    float mi = m[i] * beta1 + gi * one_b1;
    float vi = v[i] * beta2 + (gi * gi) * one_b2;
    float denom = sqrtf(vi) / sqrt_bc2 + eps;
    p_out[i] = p[i] - (mi / denom) * step_size;
    m_out[i] = mi;
    v_out[i] = vi;
  }
}
