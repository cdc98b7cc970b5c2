/* Layer norm and its gradient over the last axis, rows split across threads. Needs pool.c. */

#include "kernels.h"

/* Layer norm over the last axis of x (rows, cols): y = (x - mean) * rstd * g + b, with the biased
 * variance; also returns each row's mean and rstd = 1 / sqrt(var + eps) for the backward pass. */
typedef struct {
  const float *x, *g, *b;
  float *y, *mean, *rstd;
  int32_t cols;
  float eps;
} layer_norm_args;

/* The gradient's sums over a row in DW double lanes (then the lanes, then the tail): as exact as the
 * scalar double loop, but vectorized; the order is fixed, so results do not depend on the split. */
#define DW 8
typedef float vfloat_d __attribute__((vector_size(4 * DW)));
typedef double vdouble __attribute__((vector_size(8 * DW)));

VINLINE vdouble vloadd(const double *p) {
  vdouble v;
  memcpy(&v, p, sizeof v);
  return v;
}
VINLINE void vstored(double *p, vdouble v) { memcpy(p, &v, sizeof v); }

VINLINE double vsum_lanes(vdouble acc) {
  double s = 0;
  for (int l = 0; l < DW; l++) s += acc[l];
  return s;
}

/* A row's sum, and its sum of squared deviations from mu (each difference taken in float): in float
 * vectors of VW lanes (two, alternating), then the lanes and the tail in double. The order is fixed, so
 * results do not depend on how rows are split. (Summing in double lanes was as exact as a scalar double
 * loop, but widening each float took most of layer norm's time.) */
VINLINE double row_sum(const float *x, int64_t n) {
  vfloat acc0 = vsplat(0.0f), acc1 = vsplat(0.0f);
  int64_t i = 0;
  for (; i + 2 * VW <= n; i += 2 * VW) {
    acc0 += vload(x + i);
    acc1 += vload(x + i + VW);
  }
  if (i + VW <= n) acc0 += vload(x + i), i += VW;
  vfloat acc = acc0 + acc1;
  double s = 0;
  for (int l = 0; l < VW; l++) s += acc[l];
  for (; i < n; i++) s += x[i];
  return s;
}

VINLINE double row_sum_sq_dev(const float *x, float mu, int64_t n) {
  vfloat acc0 = vsplat(0.0f), acc1 = vsplat(0.0f);
  int64_t i = 0;
  for (; i + 2 * VW <= n; i += 2 * VW) {
    vfloat d0 = vload(x + i) - mu, d1 = vload(x + i + VW) - mu;
    acc0 += d0 * d0;
    acc1 += d1 * d1;
  }
  if (i + VW <= n) {
    vfloat d = vload(x + i) - mu;
    acc0 += d * d;
    i += VW;
  }
  vfloat acc = acc0 + acc1;
  double s = 0;
  for (int l = 0; l < VW; l++) s += acc[l];
  for (; i < n; i++) s += (double)(x[i] - mu) * (x[i] - mu);
  return s;
}

SIMD_CLONES static void layer_norm_range(void *p, int64_t r0, int64_t r1) {
  layer_norm_args *a = p;
  int32_t cols = a->cols;
  for (int64_t r = r0; r < r1; r++) {
    const float *xr = a->x + r * cols;
    float *yr = a->y + r * cols;
    float mu = (float)(row_sum(xr, cols) / cols);
    float rs = (float)(1.0 / sqrt(row_sum_sq_dev(xr, mu, cols) / cols + (double)a->eps));
    int32_t c = 0;
    for (; c + VW <= cols; c += VW) {
      vstore(yr + c, (vload(xr + c) - mu) * rs * vload(a->g + c) + vload(a->b + c));
    }
    for (; c < cols; c++) yr[c] = (xr[c] - mu) * rs * a->g[c] + a->b[c];
    a->mean[r] = mu;
    a->rstd[r] = rs;
  }
}

void seemore_layer_norm(const float *x, const float *g, const float *b, float *y, float *mean,
                        float *rstd, int32_t rows, int32_t cols, float eps) {
  layer_norm_args a = {x, g, b, y, mean, rstd, cols, eps};
  parallel_for(rows, GRAIN / (cols > 0 ? cols : 1), layer_norm_range, &a);
}

/* Gradients of seemore_layer_norm: with xhat = (x - mean) * rstd and d = dy * g,
 * dx = rstd * (d - mean(d) - xhat * mean(d * xhat)); dg = sum over rows of dy * xhat; db = sum of dy. */
#define LN_GRAD_BLOCK 32 /* rows per block of column sums (dg, db) */

typedef struct {
  const float *dy, *x, *g, *mean, *rstd;
  float *dx;
  double *partial; /* per block: the column sums for dg, then for db (2 cols doubles) */
  int64_t rows;
  int32_t cols;
} layer_norm_grad_args;

/* Blocks k0..k1 of LN_GRAD_BLOCK rows: dx of each row, and each block's column sums of dy * xhat
 * and dy (in double) into its own slot of `partial`. */
SIMD_CLONES static void layer_norm_grad_range(void *p, int64_t k0, int64_t k1) {
  layer_norm_grad_args *a = p;
  int32_t cols = a->cols;
  for (int64_t k = k0; k < k1; k++) {
    double *pg = a->partial + k * 2 * cols, *pb = pg + cols;
    memset(pg, 0, (size_t)cols * 2 * sizeof(double));
    int64_t end = (k + 1) * LN_GRAD_BLOCK < a->rows ? (k + 1) * LN_GRAD_BLOCK : a->rows;
    for (int64_t r = k * LN_GRAD_BLOCK; r < end; r++) {
      const float *xr = a->x + r * cols, *dyr = a->dy + r * cols;
      float *dxr = a->dx + r * cols; /* holds xhat, then dx */
      float mu = a->mean[r], rs = a->rstd[r];
      vdouble acc_d = {0}, acc_dx = {0};
      int32_t c = 0;
      for (; c + DW <= cols; c += DW) {
        vfloat_d x8, dy8, g8;
        memcpy(&x8, xr + c, sizeof x8);
        memcpy(&dy8, dyr + c, sizeof dy8);
        memcpy(&g8, a->g + c, sizeof g8);
        vfloat_d xhat = (x8 - mu) * rs, d = dy8 * g8;
        vdouble xhat_w = __builtin_convertvector(xhat, vdouble), dy_w = __builtin_convertvector(dy8, vdouble);
        vdouble d_w = __builtin_convertvector(d, vdouble);
        acc_d += d_w;
        acc_dx += d_w * xhat_w;
        vstored(pg + c, vloadd(pg + c) + dy_w * xhat_w);
        vstored(pb + c, vloadd(pb + c) + dy_w);
        memcpy(dxr + c, &xhat, sizeof xhat);
      }
      double sum_d = vsum_lanes(acc_d), sum_dx = vsum_lanes(acc_dx);
      for (; c < cols; c++) {
        float xhat = (xr[c] - mu) * rs, d = dyr[c] * a->g[c];
        sum_d += d;
        sum_dx += (double)d * xhat;
        pg[c] += (double)dyr[c] * xhat;
        pb[c] += dyr[c];
        dxr[c] = xhat;
      }
      float mean_d = (float)(sum_d / cols), mean_dx = (float)(sum_dx / cols);
      for (c = 0; c + VW <= cols; c += VW) {
        vstore(dxr + c, rs * (vload(dyr + c) * vload(a->g + c) - mean_d - vload(dxr + c) * mean_dx));
      }
      for (; c < cols; c++) dxr[c] = rs * (dyr[c] * a->g[c] - mean_d - dxr[c] * mean_dx);
    }
  }
}

/* The blocks' column sums are added in block order: the result does not depend on threads. */
int32_t seemore_layer_norm_grad(const float *dy, const float *x, const float *g, const float *mean,
                                const float *rstd, float *dx, float *dg, float *db, int32_t rows,
                                int32_t cols) {
  int64_t blocks = ((int64_t)rows + LN_GRAD_BLOCK - 1) / LN_GRAD_BLOCK;
  double *partial = malloc((size_t)(blocks * 2 * cols) * sizeof(double));
  if (!partial) return -2;
  layer_norm_grad_args a = {dy, x, g, mean, rstd, dx, partial, rows, cols};
  parallel_for(blocks, GRAIN / ((int64_t)LN_GRAD_BLOCK * (cols > 0 ? cols : 1)) + 1, layer_norm_grad_range, &a);
  for (int32_t c = 0; c < cols; c++) {
    double sg = 0, sb = 0;
    for (int64_t k = 0; k < blocks; k++) {
      sg += partial[k * 2 * cols + c];
      sb += partial[k * 2 * cols + cols + c];
    }
    dg[c] = (float)sg;
    db[c] = (float)sb;
  }
  free(partial);
  return 0;
}
