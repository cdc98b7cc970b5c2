/* Memory-bound kernels: transpose, gather, im2col and its adjoint, bias rows, sums; and handing freed
 * host memory back. Needs pool.c. */

#include "kernels.h"
#ifdef __GLIBC__
#include <malloc.h>
#endif

/* Hands the free pages of the C heap back to the system (glibc's malloc_trim). glibc keeps what a
 * program frees in its heap, and start-up frees a lot: building a model and reading data allocate and
 * drop typed arrays of tens of MiB in all, which would otherwise stay resident for good. */
void seemore_release_host_memory(void) {
#ifdef __GLIBC__
  malloc_trim(0);
#endif
}

/* ---------------------------------------------------------------------------------------------
 * Transpose of 4-byte elements, any rank up to 8: dst = transpose(src, perm).
 * The output's last axis is written contiguously; when it reads a strided input axis, the output
 * axis that reads the input's contiguous axis is tiled with it so both sides stay in cache. */

#define MAX_RANK 8
#define TILE 32

typedef struct {
  const int32_t *src;
  int32_t *dst;
  int n_axes, tiled;
  int axes[MAX_RANK];
  int64_t out_shape[MAX_RANK], out_stride[MAX_RANK], step[MAX_RANK];
  int64_t rows, cols, far, out_row; /* the last output axis (cols), and q's when tiled (rows) */
} transpose_args;

/* Steps t0..t1 of the outer odometer (over `axes`, the last fastest), each one row (or tile row). */
static void transpose_range(void *p, int64_t t0, int64_t t1) {
  const transpose_args *a = p;
  int64_t coord[MAX_RANK] = {0}, in_pos = 0, out_pos = 0, rest = t0;
  for (int i = a->n_axes - 1; i >= 0; i--) { /* the odometer's position at step t0 */
    int d = a->axes[i];
    coord[i] = rest % a->out_shape[d];
    rest /= a->out_shape[d];
    in_pos += coord[i] * a->step[d];
    out_pos += coord[i] * a->out_stride[d];
  }
  int64_t rows = a->rows, cols = a->cols, far = a->far, out_row = a->out_row;
  for (int64_t t = t0; t < t1; t++) {
    if (!a->tiled) {
      memcpy(a->dst + out_pos, a->src + in_pos, (size_t)cols * sizeof(int32_t));
    } else {
      for (int64_t i0 = 0; i0 < rows; i0 += TILE) {
        int64_t i1 = i0 + TILE < rows ? i0 + TILE : rows;
        for (int64_t j0 = 0; j0 < cols; j0 += TILE) {
          int64_t j1 = j0 + TILE < cols ? j0 + TILE : cols;
          for (int64_t i = i0; i < i1; i++) {
            int32_t *o = a->dst + out_pos + i * out_row;
            const int32_t *x = a->src + in_pos + i;
            for (int64_t j = j0; j < j1; j++) o[j] = x[j * far];
          }
        }
      }
    }
    for (int i = a->n_axes - 1; i >= 0; i--) {
      int d = a->axes[i];
      coord[i]++;
      in_pos += a->step[d];
      out_pos += a->out_stride[d];
      if (coord[i] < a->out_shape[d]) break;
      in_pos -= a->step[d] * coord[i];
      out_pos -= a->out_stride[d] * coord[i];
      coord[i] = 0;
    }
  }
}

void seemore_transpose32(const int32_t *src, int32_t *dst, int32_t rank, const int32_t *shape,
                         const int32_t *perm) {
  transpose_args a = {.src = src, .dst = dst};
  int64_t in_stride[MAX_RANK];
  int64_t total = 1;
  if (rank <= 0 || rank > MAX_RANK) return;
  for (int d = rank - 1; d >= 0; d--) {
    in_stride[d] = total;
    total *= shape[d];
  }
  if (total == 0) return;
  int64_t s = 1;
  for (int d = rank - 1; d >= 0; d--) {
    a.out_shape[d] = shape[perm[d]];
    a.step[d] = in_stride[perm[d]];
    a.out_stride[d] = s;
    s *= a.out_shape[d];
  }
  int last = rank - 1;
  int q = -1; /* output axis that reads the input's contiguous axis */
  for (int d = 0; d < rank; d++)
    if (perm[d] == rank - 1) q = d;

  /* Axes walked by the outer odometer: all but the last (and q when tiling). */
  a.tiled = (q != last);
  int64_t outer = 1;
  for (int d = 0; d < rank; d++) {
    if (d == last || (a.tiled && d == q)) continue;
    a.axes[a.n_axes++] = d;
    outer *= a.out_shape[d];
  }
  a.cols = a.out_shape[last];
  a.rows = a.tiled ? a.out_shape[q] : 1;
  a.far = a.step[last];
  a.out_row = a.tiled ? a.out_stride[q] : 0;
  /* Steps are independent (each writes its own part of dst): they are shared among the threads. */
  parallel_for(outer, GRAIN / (a.rows * a.cols) + 1, transpose_range, &a);
}

/* ---------------------------------------------------------------------------------------------
 * Gather of 4-byte elements along one axis: src (outer, dim, inner) -> dst (outer, n_index, inner),
 * dst[o, i, :] = src[o, index[i], :]. Callers check that every index is in [0, dim). */

void seemore_gather32(const int32_t *src, int32_t *dst, int32_t outer, int32_t dim, int32_t inner,
                      const int32_t *index, int32_t n_index) {
  for (int64_t o = 0; o < outer; o++) {
    const int32_t *from = src + o * dim * (int64_t)inner;
    int32_t *to = dst + o * n_index * (int64_t)inner;
    for (int64_t i = 0; i < n_index; i++) {
      memcpy(to + i * inner, from + (int64_t)index[i] * inner, (size_t)inner * sizeof(int32_t));
    }
  }
}

/* ---------------------------------------------------------------------------------------------
 * im2col of a 3x3 convolution with stride 2 and padding 1 over NHWC x (B, H, W, C), H and W even:
 * cols (B, H/2, W/2, 9, C) with taps in (dy, dx) order; output (y, x) tap (dy, dx) reads pixel
 * (2y + dy - 1, 2x + dx - 1), zero outside the image. col2im is its adjoint: every tap's value is
 * added back onto the pixel it was read from (dx is overwritten). */

void seemore_im2col3x3s2(const float *x, float *cols, int32_t B, int32_t H, int32_t W, int32_t C) {
  const int64_t h = H / 2, w = W / 2;
  float *out = cols;
  for (int64_t b = 0; b < B; b++) {
    for (int64_t y = 0; y < h; y++) {
      for (int64_t xo = 0; xo < w; xo++) {
        for (int dy = 0; dy < 3; dy++) {
          for (int dx = 0; dx < 3; dx++, out += C) {
            const int64_t r = 2 * y + dy - 1, c = 2 * xo + dx - 1;
            if (r < 0 || r >= H || c < 0 || c >= W) memset(out, 0, (size_t)C * sizeof(float));
            else memcpy(out, x + ((b * H + r) * W + c) * C, (size_t)C * sizeof(float));
          }
        }
      }
    }
  }
}

void seemore_col2im3x3s2(const float *dcols, float *dx_out, int32_t B, int32_t H, int32_t W, int32_t C) {
  const int64_t h = H / 2, w = W / 2;
  memset(dx_out, 0, (size_t)B * H * W * C * sizeof(float));
  const float *in = dcols;
  for (int64_t b = 0; b < B; b++) {
    for (int64_t y = 0; y < h; y++) {
      for (int64_t xo = 0; xo < w; xo++) {
        for (int dy = 0; dy < 3; dy++) {
          for (int dx = 0; dx < 3; dx++, in += C) {
            const int64_t r = 2 * y + dy - 1, c = 2 * xo + dx - 1;
            if (r < 0 || r >= H || c < 0 || c >= W) continue;
            float *to = dx_out + ((b * H + r) * W + c) * C;
            for (int64_t k = 0; k < C; k++) to[k] += in[k];
          }
        }
      }
    }
  }
}

/* ---------------------------------------------------------------------------------------------
 * dst (rows, n) = row repeated: a bias, the starting value of a product that adds it (beta = 1). */

static void fill_bias(float *dst, const float *row, int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; r++) memcpy(dst + r * n, row, (size_t)n * sizeof(float));
}

typedef struct {
  float *dst;
  const float *row;
  int64_t n;
} fill_args;

static void fill_range(void *p, int64_t r0, int64_t r1) {
  fill_args *a = p;
  fill_bias(a->dst + r0 * a->n, a->row, r1 - r0, a->n);
}

void seemore_fill_rows(float *dst, const float *row, int32_t rows, int32_t n) {
  fill_args a = {dst, row, n};
  parallel_for(rows, (1 << 16) / (n > 0 ? n : 1) + 1, fill_range, &a);
}

/* ---------------------------------------------------------------------------------------------
 * Column sums of x (rows, cols), the common case (a bias's gradient): columns split across threads,
 * each column summed by one thread in row order, so the result does not depend on the split. */
typedef struct {
  const float *src;
  float *dst;
  int64_t rows, cols;
} column_sum_args;

#define COLUMN_BLOCK 256
SIMD_CLONES static void column_sum_range(void *p, int64_t c0, int64_t c1) {
  column_sum_args *a = p;
  double acc[COLUMN_BLOCK];
  for (int64_t b = c0; b < c1; b += COLUMN_BLOCK) {
    int64_t w = c1 - b < COLUMN_BLOCK ? c1 - b : COLUMN_BLOCK;
    for (int64_t j = 0; j < w; j++) acc[j] = 0.0;
    for (int64_t r = 0; r < a->rows; r++) {
      const float *x = a->src + r * a->cols + b;
      for (int64_t j = 0; j < w; j++) acc[j] += x[j];
    }
    for (int64_t j = 0; j < w; j++) a->dst[b + j] = (float)acc[j];
  }
}

static void column_sums(const float *src, float *dst, int64_t rows, int64_t cols) {
  column_sum_args a = {src, dst, rows, cols};
  parallel_for(cols, GRAIN / (rows > 0 ? rows : 1) + 16, column_sum_range, &a);
}

/* ---------------------------------------------------------------------------------------------
 * Sum over axes, on the simplified shape: n_groups alternating runs of kept / reduced axes
 * (reduced[g] = 1 for a reduced group). Accumulates in double; dst has the kept groups' size. */

int32_t seemore_sum(const float *src, float *dst, int32_t n_groups, const int32_t *sizes,
                    const int32_t *reduced) {
  int64_t in_step[MAX_RANK], out_step[MAX_RANK], out_size = 1;
  if (n_groups <= 0 || n_groups > MAX_RANK) return -1;
  if (n_groups == 2 && reduced[0] && !reduced[1]) {
    column_sums(src, dst, sizes[0], sizes[1]);
    return 0;
  }
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
