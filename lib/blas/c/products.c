/* The products: OpenBLAS's cblas_sgemm and, when it is installed, oneDNN's dnnl_sgemm, both looked up
 * here so that the kernels call them without an FFI round trip; seemore_sgemm cuts a product into
 * slices on the pool's threads. Needs pool.c. */

#include "kernels.h"

/* OpenBLAS's cblas_sgemm, from the library Deno already opened (dlopen of the same path returns the
 * same handle). */
typedef void (*sgemm_fn)(int order, int trans_a, int trans_b, int m, int n, int k, float alpha,
                         const float *a, int lda, const float *b, int ldb, float beta, float *c,
                         int ldc);
static sgemm_fn sgemm = NULL;
enum { ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112 };

/* OpenBLAS's thread count (absent from other BLAS libraries: then products are never split). */
static void (*blas_set_threads)(int) = NULL;
static int (*blas_get_threads)(void) = NULL;

/* 0 on success; -1 if the library cannot be opened, -2 if it has no cblas_sgemm. */
int32_t seemore_bind_sgemm(const char *path) {
  void *lib = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
  if (!lib) lib = dlopen(path, RTLD_NOW);
  if (!lib) return -1;
  sgemm = (sgemm_fn)dlsym(lib, "cblas_sgemm");
  *(void **)&blas_set_threads = dlsym(lib, "openblas_set_num_threads");
  *(void **)&blas_get_threads = dlsym(lib, "openblas_get_num_threads");
  if (!blas_set_threads || !blas_get_threads) blas_set_threads = NULL, blas_get_threads = NULL;
  return sgemm ? 0 : -2;
}

/* oneDNN's dnnl_sgemm (libdnnl.so.2): row-major like cblas_sgemm, with 'N' / 'T' for the transposes;
 * its JIT kernels are faster than OpenBLAS's on one thread (bench/README.md). It is only ever called on
 * one thread (each calling thread's OpenMP team set to 1): we cut products ourselves, as below. */
typedef int32_t (*dnnl_sgemm_fn)(char trans_a, char trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                                 const float *a, int64_t lda, const float *b, int64_t ldb, float beta,
                                 float *c, int64_t ldc);
static dnnl_sgemm_fn dnnl_sgemm = NULL;
static void (*omp_set_threads)(int) = NULL;
static int32_t dnnl_on = 0;
static __thread int32_t omp_single = 0; /* this thread's OpenMP team is set to one thread */

/* 0 on success (products then use oneDNN); -1 if the library cannot be opened, -2 if it lacks a symbol. */
int32_t seemore_bind_dnnl(const char *path) {
  void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!lib) return -1;
  dnnl_sgemm_fn f = (dnnl_sgemm_fn)dlsym(lib, "dnnl_sgemm");
  *(void **)&omp_set_threads = dlsym(lib, "omp_set_num_threads"); /* its OpenMP runtime's */
  if (!f || !omp_set_threads) return -2;
  dnnl_sgemm = f;
  dnnl_on = 1;
  return 0;
}

/* Products through oneDNN (on = 1, when bound) or OpenBLAS (0); on < 0 only asks. Returns whether
 * oneDNN is now in use. */
int32_t seemore_use_dnnl(int32_t on) {
  if (on >= 0) dnnl_on = on && dnnl_sgemm;
  return dnnl_on;
}

/* Makes OpenBLAS use n threads from now on (asked each time: ffi.ts may have set it too). */
static void blas_use_threads(int n) {
  if (blas_set_threads && blas_get_threads() != n) blas_set_threads(n);
}

/* Many small products in one call (a batched matmul whose items are too small for one FFI call each
 * to pay): c[i] = op(a[a_index[i]]) op(b[b_index[i]]) + beta c[i], row-major, op(a) m x k, op(b)
 * k x n, items packed one after another. Returns 0, or -1 without sgemm. */
int32_t seemore_sgemm_batch(int32_t trans_a, int32_t trans_b, int32_t m, int32_t n, int32_t k,
                            const float *a, const int32_t *a_index, const float *b,
                            const int32_t *b_index, float beta, float *c, int32_t batch) {
  if (!sgemm) return -1;
  park_helpers();
  int64_t a_size = (int64_t)m * k, b_size = (int64_t)k * n, c_size = (int64_t)m * n;
  for (int32_t i = 0; i < batch; i++) {
    sgemm(ROW_MAJOR, trans_a ? TRANS : NO_TRANS, trans_b ? TRANS : NO_TRANS, m, n, k, 1.0f,
          a + a_index[i] * a_size, trans_a ? m : k, b + b_index[i] * b_size, trans_b ? k : n, beta,
          c + i * c_size, n);
  }
  return 0;
}

/* One product C = alpha op(A) op(B) + beta C (row-major, as cblas_sgemm), on `threads` threads. With
 * oneDNN (seemore_bind_dnnl), every product is cut along M (or N when it is longer) into one slice per
 * thread, each slice one single-thread dnnl_sgemm, the others on the pool's helpers. With OpenBLAS, only
 * products up to SPLIT_MAX multiply-adds (the decoder's) are cut so, into single-thread OpenBLAS calls:
 * a spinning helper starts at once, where OpenBLAS's sleeping worker takes tens of microseconds to
 * wake. Bigger products (the ViT's) go to OpenBLAS's own threads: sliced, each slice would pack the
 * whole of the other operand again. Every slice is the same kernel on fewer rows, so results do not
 * depend on the split. Returns 0, or -1 without sgemm. */

#define SPLIT_MAX (64.0 * 1024 * 1024)

typedef struct {
  int trans_a, trans_b, m, n, k, lda, ldb, ldc;
  float alpha, beta;
  const float *a, *b;
  float *c;
  int64_t parts; /* the product is cut into this many slices of M (by_rows) or of N */
  int by_rows;
} gemm_args;

/* One product on this thread: oneDNN's when in use, else OpenBLAS's (on the threads it is set to). */
static void product(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a, int lda,
                    const float *b, int ldb, float beta, float *c, int ldc) {
  if (dnnl_on) {
    if (!omp_single) omp_set_threads(1), omp_single = 1;
    char ta = trans_a ? 'T' : 'N', tb = trans_b ? 'T' : 'N';
    if (dnnl_sgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc) == 0) return;
    /* else oneDNN failed (it allocates its packing buffers per call): OpenBLAS does the product */
  }
  sgemm(ROW_MAJOR, trans_a ? TRANS : NO_TRANS, trans_b ? TRANS : NO_TRANS, m, n, k, alpha, a, lda, b, ldb,
        beta, c, ldc);
}

/* Rows r0..r1 of C (or its columns c0..c1) on this thread. */
static void gemm_slice(const gemm_args *g, int64_t r0, int64_t r1) {
  if (g->by_rows) {
    const float *a = g->trans_a ? g->a + r0 : g->a + r0 * g->lda;
    product(g->trans_a, g->trans_b, (int)(r1 - r0), g->n, g->k, g->alpha, a, g->lda, g->b, g->ldb, g->beta,
            g->c + r0 * g->ldc, g->ldc);
  } else {
    const float *b = g->trans_b ? g->b + r0 * g->ldb : g->b + r0;
    product(g->trans_a, g->trans_b, g->m, (int)(r1 - r0), g->k, g->alpha, g->a, g->lda, b, g->ldb, g->beta,
            g->c + r0, g->ldc);
  }
}

/* Where slice p of `parts` starts along `n`: an equal share, rounded to OpenBLAS's 16-row blocks. */
static int64_t slice_start(int64_t n, int64_t p, int64_t parts) {
  if (p >= parts) return n;
  int64_t at = (n * p / parts + 8) & ~(int64_t)15;
  return at < n ? at : n;
}

static void gemm_slices(void *args, int64_t p0, int64_t p1) {
  gemm_args *g = args;
  int64_t n = g->by_rows ? g->m : g->n;
  for (int64_t p = p0; p < p1; p++) {
    gemm_slice(g, slice_start(n, p, g->parts), slice_start(n, p + 1, g->parts));
  }
}

int32_t seemore_sgemm(int32_t trans_a, int32_t trans_b, int32_t m, int32_t n, int32_t k, float alpha,
                      const float *a, int32_t lda, const float *b, int32_t ldb, float beta, float *c,
                      int32_t ldc, int32_t threads) {
  if (!sgemm) return -1;
  int64_t parts = threads < n_threads ? threads : n_threads;
  gemm_args g = {trans_a, trans_b, m, n, k, lda, ldb, ldc, alpha, beta, a, b, c, parts, m >= n};
  int cut = parts > 1 && (m >= n ? m : n) >= 16 * parts;
  if (cut && (dnnl_on || (blas_set_threads && (double)m * n * k <= SPLIT_MAX))) {
    if (!dnnl_on) blas_use_threads(1);
    parallel_for(parts, 1, gemm_slices, &g);
    return 0;
  }
  if (!dnnl_on) { /* OpenBLAS on its own threads, the helpers asleep so that they get the cores */
    park_helpers();
    blas_use_threads(threads);
  }
  g.by_rows = 1;
  gemm_slice(&g, 0, m);
  return 0;
}
