/* Small CPU kernels for tfjs's wasm backend, called through Deno FFI (see native.ts).
 * Built on first use with `cc -O3 -std=c99 -fno-trapping-math -fno-math-errno -ffp-contract=off
 * -shared -fPIC -Wl,-z,nodelete kernels.c -lm -ldl -pthread` (native.ts has the flags). Callers
 * check all sizes; these functions trust their arguments. Keep seemore_abi_version in step with
 * native.ts. */

#define _GNU_SOURCE /* dlopen's RTLD_NOLOAD */
#include <dlfcn.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int32_t seemore_abi_version(void) { return 21; }

/* ---------------------------------------------------------------------------------------------
 * OpenBLAS's cblas_sgemm, looked up in the library Deno already opened (dlopen of the same path
 * returns the same handle), so the attention kernels below can call it without an FFI round trip. */

typedef void (*sgemm_fn)(int order, int trans_a, int trans_b, int m, int n, int k, float alpha,
                         const float *a, int lda, const float *b, int ldb, float beta, float *c,
                         int ldc);
static sgemm_fn sgemm = NULL;
enum { ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112 };

/* OpenBLAS's thread count (absent from other BLAS libraries: then products are never split). */
static void (*blas_set_threads)(int) = NULL;
static int (*blas_get_threads)(void) = NULL;

static void park_helpers(void);

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

/* oneDNN's dnnl_sgemm (libdnnl.so.2), when it is installed: row-major like cblas_sgemm, with 'N' / 'T'
 * for the transposes. Its JIT kernels run this Zen 4's products at 111-117 GFLOP/s on one thread where
 * OpenBLAS 0.3.21 reaches 105 (and 16-row products at 112 against 70). It is only ever called on one
 * thread (each calling thread's OpenMP team set to 1): we cut products ourselves, as below. */
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

/* ---------------------------------------------------------------------------------------------
 * parallel_for: fn(args, begin, end) over [0, n) in chunks of `grain`, on this thread and on the
 * pool's n_threads - 1 helper threads (started on first use and kept). Chunks are claimed from a
 * shared counter, so when the machine is busy and a helper does not get a core, this thread simply
 * does more of them; it waits only for chunks a helper has already started.
 *
 * After a job, a helper spins for HELPER_SPIN_NS before it sleeps: a training step hands out a job
 * every few tens of microseconds, and waking a sleeping thread costs 25-45 µs on a VM that halts an
 * idle vCPU at once. park_helpers() sends them to sleep at once instead, before OpenBLAS runs a
 * product on its own threads, which need the cores. A parallel_for called from a helper (a kernel
 * inside a kernel's chunk), or while another thread is using the pool, runs on the calling thread.
 *
 * Jobs live in a ring of slots. A helper that wakes late may look at a slot that has since been
 * reused: each slot carries its job's number, and it is rewritten only when no helper is inside it
 * (the writer marks it invalid, then waits for `users` to drop to 0: with sequentially consistent
 * atomics on both sides, either the writer sees the helper or the helper sees the mark). */

typedef void (*range_fn)(void *args, int64_t begin, int64_t end);

typedef struct {
  range_fn fn;
  void *args;
  int64_t n, grain, next, done;
} job_t;

typedef struct {
  job_t job;
  int64_t seq;   /* the job's number, -1 while the slot is rewritten */
  int32_t users; /* helpers inside the job */
} slot_t;

#define MAX_THREADS 16
#define POOL_SLOTS 64
#define HELPER_SPIN_NS 200000
static int32_t n_threads = 1;
static slot_t slots[POOL_SLOTS];
static int64_t posted = 0;      /* number of the last job handed out */
static int64_t parked = -1;     /* helpers that have seen this job sleep instead of spinning */
static int32_t helpers = 0;     /* helper threads started */
static int32_t sleepers = 0;    /* helpers waiting on `wake` */
static int32_t pool_in_use = 0; /* a thread is handing out a job */
static int64_t jobs_shared = 0; /* for tests: proof that the split path ran */
static pthread_mutex_t wake_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static __thread int32_t on_helper = 0;

#define LOAD(x) __atomic_load_n(&(x), __ATOMIC_SEQ_CST)
#define STORE(x, v) __atomic_store_n(&(x), (v), __ATOMIC_SEQ_CST)

/* Threads for the kernels that split their work (1 = no helpers; 0 = leave as is); returns the
 * number in use. */
int32_t seemore_set_threads(int32_t n) {
  if (n > 0) STORE(n_threads, n > MAX_THREADS ? MAX_THREADS : n);
  return n_threads;
}

/* How many jobs parallel_for has shared with helper threads so far. */
int64_t seemore_jobs_shared(void) { return LOAD(jobs_shared); }

static void run_chunks(job_t *job) {
  for (;;) {
    int64_t begin = __atomic_fetch_add(&job->next, job->grain, __ATOMIC_RELAXED);
    if (begin >= job->n) return;
    int64_t end = begin + job->grain < job->n ? begin + job->grain : job->n;
    job->fn(job->args, begin, end);
    __atomic_fetch_add(&job->done, end - begin, __ATOMIC_RELEASE);
  }
}

static int64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

/* Waits for a job after `seen` and returns its number: spinning first (when `spin`), then asleep. */
static int64_t next_job(int64_t seen, int spin) {
  int64_t s, t0 = spin ? now_ns() : 0;
  for (uint32_t i = 1; spin; i++) {
    if ((s = LOAD(posted)) != seen) return s;
    cpu_relax();
    if (i % 32 == 0 && (LOAD(parked) >= seen || now_ns() - t0 > HELPER_SPIN_NS)) break;
  }
  pthread_mutex_lock(&wake_lock);
  __atomic_add_fetch(&sleepers, 1, __ATOMIC_SEQ_CST);
  while ((s = LOAD(posted)) == seen) pthread_cond_wait(&wake, &wake_lock);
  __atomic_sub_fetch(&sleepers, 1, __ATOMIC_SEQ_CST);
  pthread_mutex_unlock(&wake_lock);
  return s;
}

static void *helper(void *p) {
  int32_t index = (int32_t)(intptr_t)p;
  int64_t seen = LOAD(posted);
  on_helper = 1;
  for (;;) {
    seen = next_job(seen, index < LOAD(n_threads) - 1);
    if (index >= LOAD(n_threads) - 1) continue; /* fewer threads wanted now */
    slot_t *slot = &slots[seen % POOL_SLOTS];
    __atomic_add_fetch(&slot->users, 1, __ATOMIC_SEQ_CST);
    if (LOAD(slot->seq) == seen) run_chunks(&slot->job);
    __atomic_sub_fetch(&slot->users, 1, __ATOMIC_SEQ_CST);
  }
  return NULL;
}

static void start_helpers(void) {
  while (helpers < n_threads - 1) {
    pthread_t thread;
    if (pthread_create(&thread, NULL, helper, (void *)(intptr_t)helpers) != 0) return;
    pthread_detach(thread);
    helpers++;
  }
}

/* Spinning helpers go to sleep now (until the next job). */
static void park_helpers(void) { STORE(parked, LOAD(posted)); }

static void parallel_for(int64_t n, int64_t grain, range_fn fn, void *args) {
  if (grain < 1) grain = 1;
  int32_t free_pool = 0;
  if (n_threads <= 1 || n < 2 * grain || on_helper ||
      !__atomic_compare_exchange_n(&pool_in_use, &free_pool, 1, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
    if (n > 0) fn(args, 0, n);
    return;
  }
  start_helpers();
  int64_t seq = posted + 1;
  slot_t *slot = &slots[seq % POOL_SLOTS];
  STORE(slot->seq, -1);
  while (LOAD(slot->users) != 0) sched_yield();
  slot->job = (job_t){fn, args, n, grain, 0, 0};
  STORE(slot->seq, seq);
  STORE(posted, seq);
  if (LOAD(sleepers) > 0) {
    pthread_mutex_lock(&wake_lock);
    pthread_cond_broadcast(&wake);
    pthread_mutex_unlock(&wake_lock);
  }
  __atomic_add_fetch(&jobs_shared, 1, __ATOMIC_RELAXED);
  run_chunks(&slot->job);
  while (__atomic_load_n(&slot->job.done, __ATOMIC_ACQUIRE) < n) sched_yield();
  STORE(pool_in_use, 0);
}

/* Elements per chunk for the elementwise kernels, and heads per chunk for attention: big enough that
 * handing a chunk to a helper pays, and that small calls (generation's rows) never involve one. 2^14
 * (was 2^16 while helpers were started per call) splits the decoder's layer norms (800 x 128) too: its
 * gradient went from 80-200 to 60-120 µs a call. */
#define GRAIN (1 << 14)
#define ATTENTION_GRAIN 16

/* ---------------------------------------------------------------------------------------------
 * One product C = alpha op(A) op(B) + beta C (row-major, as cblas_sgemm), on `threads` threads.
 * With oneDNN (seemore_bind_dnnl), every product is cut along M (or N when it is longer) into one
 * slice per thread, each slice one single-thread dnnl_sgemm, the others on the pool's helpers: cut
 * so, the ViT's 592 x 512 x 2048 runs at 215-221 GFLOP/s on two threads, where OpenBLAS's own two
 * threads reach 198-210 (in-process A/B of the original config, 12 interleaved rounds: train step
 * 207 -> 194 ms, forward 64 -> 60). With OpenBLAS, only products up to SPLIT_MAX multiply-adds (the
 * decoder's, 800 x 128 x 512 at the original config) are cut so, into single-thread OpenBLAS calls:
 * a spinning helper starts at once, where OpenBLAS's sleeping worker takes 25-45 µs to wake
 * (in-process A/B, 30 interleaved rounds of the original config on 2 threads: train step 256 -> 243
 * ms, forward 85 -> 78). Bigger products (the ViT's, 592 x 512 x 2048) go to OpenBLAS's own threads:
 * sliced, each slice would pack the whole of the other operand again, and they ran slower. Every
 * slice is the same kernel on fewer rows, so results do not depend on the split (tested: equal to one
 * thread's, bit for bit, on either library). Returns 0, or -1 without sgemm. */

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
 * Sum over axes, on the simplified shape: n_groups alternating runs of kept / reduced axes
 * (reduced[g] = 1 for a reduced group). Accumulates in double; dst has the kept groups' size. */

static void column_sums(const float *src, float *dst, int64_t rows, int64_t cols); /* below */

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

/* ---------------------------------------------------------------------------------------------
 * Elementwise maths and fused layers. Each writes fresh outputs (nothing in place). */

#define SQRT1_2 0.70710678118654752440f
#define INV_SQRT_2PI 0.39894228040143267794f

/* exp, erf and GELU below run on VW floats at once, with GCC/Clang vector extensions (libm's expf and
 * erff are scalar calls, 4-15 ns each here, and the compiler does not vectorize them: the clamps and
 * the exponent trick defeat it); written this way GELU runs ~3x faster than SSE2 auto-vectorized code
 * and ~10x faster than scalar code. On x86-64 Linux the loops below are built three times (AVX-512,
 * AVX2, SSE2) and the loader picks the best the CPU has (target_clones), so the shared library stays
 * portable. */

#define VW 16
typedef float vfloat __attribute__((vector_size(4 * VW)));
typedef int32_t vint __attribute__((vector_size(4 * VW)));
#define VINLINE static inline __attribute__((always_inline))
#if defined(__x86_64__) && defined(__linux__) && (defined(__clang__) || __GNUC__ >= 7)
#define SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define SIMD_CLONES
#endif
/* The loops of exp, erf and softmax may fuse a multiply and an add into one FMA instruction (the rest of
 * the file is built with -ffp-contract=off): Horner's polynomials then take half the instructions (GELU
 * with 7.1.26's erf: 0.82 -> 0.64 ns per element on one thread). Results differ in the last bits between
 * CPUs with FMA and without (as OpenBLAS's do). GELU's three loops stay unfused: which products GCC fuses
 * depends on the rest of each function, and GELU, its gradient and the two at once must give the same
 * bits (fused, a change elsewhere in one of them made the gradients differ by 1 ulp). Clang has no
 * optimize attribute: there every loop stays unfused. */
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
 * about half the instructions of 7.1.26 (GELU 0.82 -> 0.36 ns per element on one thread). In float its
 * error is < 1.7e-6 (the 16th power's rounding), which makes GELU's < 9e-7; GELU and its gradient use
 * it, tf.erf (erf_range) keeps 7.1.26. */
VINLINE vfloat verff_poly(vfloat x) {
  vint sign = (vint)x & INT32_MIN;
  vfloat v = (vfloat)((vint)x & INT32_MAX);
  vfloat p = ((((4.30638e-5f * v + 2.765672e-4f) * v + 1.520143e-4f) * v + 9.2705272e-3f) * v + 4.22820123e-2f);
  p = (p * v + 7.05230784e-2f) * v + 1.0f;
  p = p * p, p = p * p, p = p * p, p = p * p;
  return (vfloat)((vint)(1.0f - 1.0f / p) | sign);
}

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
  for (; i < e; i++) a->y[i] = a->x[i] > 0.0f ? a->dy[i] : 0.0f; /* the scalar loop branches: 4.6 ns/element */
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

/* Column sums of x (rows, cols), the common case (a bias's gradient): columns split across threads,
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
 * results do not depend on how rows are split. (They were summed in double lanes, as exact as a scalar
 * double loop, but widening each float took most of layer norm's time: 592 x 512 on one thread
 * 115 -> 73 us.) */
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

/* One Adam step (torch.optim.Adam without weight decay), in float32 like the op-by-op version:
 * m' = b1 m + (1 - b1) g;  v' = b2 v + (1 - b2) g^2;  p' = p - step_size * m' / (sqrt(v') / sqrt_bc2 + eps)
 * with step_size = lr / (1 - b1^t) and sqrt_bc2 = sqrt(1 - b2^t). */
typedef struct {
  const float *p, *m, *v, *g;
  float *p_out, *m_out, *v_out;
  float beta1, beta2, step_size, sqrt_bc2, eps;
} adam_args;

/* The step, in place on p, m and v (restrict parameters, not restrict locals, are what let gcc
 * vectorize it). */
static void adam_in_place_loop(float *restrict p, float *restrict m, float *restrict v,
                               const float *restrict g, int64_t b, int64_t e, const adam_args *h) {
  float beta1 = h->beta1, beta2 = h->beta2, one_b1 = 1.0f - beta1, one_b2 = 1.0f - beta2;
  float step_size = h->step_size, sqrt_bc2 = h->sqrt_bc2, eps = h->eps;
  for (int64_t i = b; i < e; i++) {
    float gi = g[i];
    float mi = m[i] * beta1 + gi * one_b1;
    float vi = v[i] * beta2 + (gi * gi) * one_b2;
    float denom = sqrtf(vi) / sqrt_bc2 + eps;
    p[i] = p[i] - (mi / denom) * step_size;
    m[i] = mi;
    v[i] = vi;
  }
}

/* Into fresh arrays: the outputs start as copies, then take the step in place. */
static void adam_range(void *args, int64_t b, int64_t e) {
  adam_args *a = args;
  size_t bytes = (size_t)(e - b) * sizeof(float);
  memcpy(a->p_out + b, a->p + b, bytes);
  memcpy(a->m_out + b, a->m + b, bytes);
  memcpy(a->v_out + b, a->v + b, bytes);
  adam_in_place_loop(a->p_out, a->m_out, a->v_out, a->g, b, e, a);
}

void seemore_adam(const float *p, const float *m, const float *v, const float *g, float *p_out,
                  float *m_out, float *v_out, int32_t n, float beta1, float beta2, float step_size,
                  float sqrt_bc2, float eps) {
  adam_args a = {p, m, v, g, p_out, m_out, v_out, beta1, beta2, step_size, sqrt_bc2, eps};
  parallel_for(n, GRAIN, adam_range, &a);
}

/* The same step for many parameters in one call, IN PLACE (p, m and v are overwritten), on the wasm
 * heap: parameter i has sizes[i] elements, and offsets[4i .. 4i+3] are the byte offsets of its p, m, v
 * and g in `heap`. The elements of all parameters form one range that the threads split. */
typedef struct {
  uint8_t *heap;
  const uint32_t *offsets;
  const int64_t *starts; /* starts[i] = elements before parameter i; starts[count] = total */
  int32_t count;
  adam_args h;
} adam_many_args;

static void adam_many_range(void *args, int64_t b, int64_t e) {
  adam_many_args *a = args;
  int32_t lo = 0, hi = a->count - 1; /* the last parameter starting at or before b */
  while (lo < hi) {
    int32_t mid = (lo + hi + 1) / 2;
    if (a->starts[mid] <= b) lo = mid;
    else hi = mid - 1;
  }
  for (int32_t i = lo; i < a->count && a->starts[i] < e; i++) {
    const uint32_t *o = a->offsets + 4 * (int64_t)i;
    int64_t from = (b > a->starts[i] ? b : a->starts[i]) - a->starts[i];
    int64_t to = (e < a->starts[i + 1] ? e : a->starts[i + 1]) - a->starts[i];
    adam_in_place_loop((float *)(a->heap + o[0]), (float *)(a->heap + o[1]), (float *)(a->heap + o[2]),
                       (const float *)(a->heap + o[3]), from, to, &a->h);
  }
}

/* Returns 0, or -2 out of memory. */
int32_t seemore_adam_in_place(uint8_t *heap, const uint32_t *offsets, const int32_t *sizes, int32_t count,
                              float beta1, float beta2, float step_size, float sqrt_bc2, float eps) {
  int64_t *starts = malloc(((size_t)count + 1) * sizeof(int64_t));
  if (!starts) return -2;
  starts[0] = 0;
  for (int32_t i = 0; i < count; i++) starts[i + 1] = starts[i] + sizes[i];
  adam_many_args a = {heap, offsets, starts, count, {0}};
  a.h.beta1 = beta1, a.h.beta2 = beta2, a.h.step_size = step_size, a.h.sqrt_bc2 = sqrt_bc2, a.h.eps = eps;
  parallel_for(starts[count], GRAIN, adam_many_range, &a);
  free(starts);
  return 0;
}

/* ---------------------------------------------------------------------------------------------
 * tf.randomUniform's noise, bit for bit: tfjs draws it from seedrandom's Alea generator and stores
 * each value as a float. Alea computes t = 2091639 s0 + c 2^-32 in doubles, where every s is a
 * multiple of 2^-32 and t < 2^53 / 2^32, so those doubles are exact: with S = s 2^32 the same step
 * is the integer multiply-with-carry T = 2091639 S0 + c, c' = T >> 32, S' = T mod 2^32 — the same
 * numbers, about 3x faster (the carry chain is an integer multiply-add instead of a float round trip).
 * state = {c, s0, s1, s2} as native.ts seeds it (exactly as seedrandom does). */

typedef struct {
  uint64_t c, s0, s1, s2; /* s scaled by 2^32 */
} alea_t;

static alea_t alea_load(const double *state) {
  alea_t g = {(uint64_t)state[0], (uint64_t)(state[1] * 4294967296.0), (uint64_t)(state[2] * 4294967296.0),
              (uint64_t)(state[3] * 4294967296.0)};
  return g;
}

static void alea_store(const alea_t *g, double *state) {
  state[0] = (double)g->c;
  state[1] = (double)g->s0 / 4294967296.0;
  state[2] = (double)g->s1 / 4294967296.0;
  state[3] = (double)g->s2 / 4294967296.0;
}

/* The next value as tf.randomUniform stores it (a float in [0, 1)). */
static inline float alea_next(alea_t *g) {
  uint64_t t = 2091639u * g->s0 + g->c;
  g->s0 = g->s1;
  g->s1 = g->s2;
  g->c = t >> 32;
  g->s2 = t & 0xffffffffu;
  return (float)((double)g->s2 * 2.3283064365386963e-10); /* 2^-32 */
}

/* Dropout keeps an element when floor(u + keep) != 0 in float32, u = float(S 2^-32) with S the
 * generator's new 32-bit value. That test only grows with S, so it is S >= a threshold, found once by
 * bisection with the very same float expression: the mask then costs one integer compare per draw. */
static uint64_t keep_threshold(float keep) {
  uint64_t lo = 0, hi = (uint64_t)1 << 32; /* the answer lies in [lo, hi]; hi = never kept */
  while (lo < hi) {
    uint64_t mid = (lo + hi) / 2;
    float u = (float)((double)mid * 2.3283064365386963e-10);
    if (floorf(u + keep) != 0.0f) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

/* Steps the generator; whether that draw keeps an element (see keep_threshold). */
static inline int alea_keeps(alea_t *g, uint64_t threshold) {
  uint64_t t = 2091639u * g->s0 + g->c;
  g->s0 = g->s1;
  g->s1 = g->s2;
  g->c = t >> 32;
  g->s2 = t & 0xffffffffu;
  return g->s2 >= threshold;
}

void seemore_uniform(double *state, float *out, int32_t n) {
  alea_t g = alea_load(state);
  for (int32_t i = 0; i < n; i++) out[i] = alea_next(&g);
  alea_store(&g, state);
}

/* ---------------------------------------------------------------------------------------------
 * Dropout with the multiplier tfjs's tf.dropout computes from its uniform noise u (drawn here from
 * the seeded state, as tf.randomUniform would):
 *   mult = floor(u + keep) / keep   (0 or 1/keep, in float32)      y = x * mult
 * The kept/dropped flags are stored as bytes for the backward pass: dx = dy * mult. */

/* Draws in chunks of `chunk`: chunk i starts from states[4i..4i+3], the seeded state advanced i * chunk
 * draws (native.ts jumps ahead to it), so chunks run on any thread and the draws are still the one
 * sequence tf.randomUniform makes. For each draw e: mask[e] = kept, and with x, y[e] = x[e] * mult. */
typedef struct {
  const double *states;
  int64_t chunk, n;
  uint64_t threshold;
  uint8_t *mask;
  const float *x;
  float *y;
  float scale;
} draws_args;

static void draws_range(void *p, int64_t c0, int64_t c1) {
  draws_args *a = p;
  for (int64_t c = c0; c < c1; c++) {
    alea_t g = alea_load(a->states + 4 * c);
    int64_t e0 = c * a->chunk, e1 = e0 + a->chunk < a->n ? e0 + a->chunk : a->n;
    for (int64_t e = e0; e < e1; e++) a->mask[e] = (uint8_t)alea_keeps(&g, a->threshold);
    if (a->x) {
      for (int64_t e = e0; e < e1; e++) a->y[e] = a->x[e] * ((float)a->mask[e] * a->scale);
    }
  }
}

static void draw_masks(const double *states, int64_t chunk, int64_t n, float keep, uint8_t *mask,
                       const float *x, float *y) {
  draws_args a = {states, chunk, n, keep_threshold(keep), mask, x, y, 1.0f / keep};
  parallel_for((n + chunk - 1) / chunk, 1, draws_range, &a);
}

void seemore_dropout(const float *restrict x, float *restrict y, uint8_t *restrict mask, int32_t n,
                     float keep, const double *states, int32_t chunk) {
  draw_masks(states, chunk, n, keep, mask, x, y); /* y = x * kept / keep */
}

void seemore_dropout_grad(const float *restrict dy, const uint8_t *restrict mask, float *restrict dx,
                          int32_t n, float keep) {
  float scale = 1.0f / keep;
  for (int32_t i = 0; i < n; i++) dx[i] = dy[i] * ((float)mask[i] * scale); /* a select would branch */
}

/* ---------------------------------------------------------------------------------------------
 * Multi-head self-attention reading q, k and v in place from the fused projection
 * qkv (B, T, 3C) = [all heads' queries | keys | values], head h at columns h*hs of each part,
 * and writing the heads side by side into out (B, T, C) — no split, no transposes:
 *   S = scale * Q K^T (+ causal mask);  P = softmax(S);  out = (P * mult) V
 * probs (B, H, T, T) receives P (before dropout), kept for the backward pass. With noise (dropout:
 * the states of the chunks of draws for (B, H, T, T) in that order, as seemore_dropout takes them),
 * mult and mask are as in seemore_dropout; with NULL, mult = 1 and mask is not touched.
 * Returns 0, or -1 without sgemm (seemore_bind_sgemm not called), -2 out of memory. */

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

typedef struct {
  const float *qkv, *dout, *saved_probs;
  const uint8_t *mask; /* NULL: no dropout */
  float *out, *probs, *dqkv;
  int64_t T, H, hs;
  float scale, keep;
  int32_t causal;
  int32_t failed; /* set when a chunk could not get its scratch memory */
} attention_args;

/* The attention weights after dropout, p * mask / keep, written to w (n of them); without a mask, p
 * itself. Returns the weights. */
static const float *dropout_weights(const float *p, const uint8_t *mask, float inv_keep, float *w, int64_t n) {
  if (!mask) return p;
  for (int64_t e = 0; e < n; e++) w[e] = p[e] * ((float)mask[e] * inv_keep);
  return w;
}

/* Heads bh0..bh1 (flat b * H + h) of the forward pass. */
static void attention_range(void *p, int64_t bh0, int64_t bh1) {
  attention_args *a = p;
  int64_t T = a->T, H = a->H, hs = a->hs, C = H * hs, C3 = 3 * C, TT = T * T;
  float inv_keep = 1.0f / a->keep; /* == floor(u + keep) / keep for a kept weight */
  float *dropped = a->mask ? malloc((size_t)TT * sizeof(float)) : NULL;
  if (a->mask && !dropped) {
    __atomic_store_n(&a->failed, 1, __ATOMIC_RELAXED);
    return;
  }
  for (int64_t bh = bh0; bh < bh1; bh++) {
    int64_t b = bh / H, h = bh % H;
    const float *q = a->qkv + b * T * C3 + h * hs, *k = q + C, *v = q + 2 * C;
    float *probs = a->probs + bh * TT;
    sgemm(ROW_MAJOR, NO_TRANS, TRANS, (int)T, (int)T, (int)hs, a->scale, q, (int)C3, k, (int)C3, 0.0f,
          probs, (int)T);
    softmax_rows(probs, T, T, a->causal ? 0 : -1);
    const float *weights = dropout_weights(probs, a->mask ? a->mask + bh * TT : NULL, inv_keep, dropped, TT);
    sgemm(ROW_MAJOR, NO_TRANS, NO_TRANS, (int)T, (int)hs, (int)T, 1.0f, weights, (int)T, v, (int)C3,
          0.0f, a->out + b * T * C + h * hs, (int)C);
  }
  free(dropped);
}

int32_t seemore_attention(const float *qkv, const double *noise, int32_t chunk, float *out, float *probs,
                          uint8_t *mask, int32_t B, int32_t T, int32_t H, int32_t hs, float scale,
                          int32_t causal, float keep) {
  if (!sgemm) return -1;
  int64_t TT = (int64_t)T * T;
  /* the dropout flags first, in tf.dropout's order: noise holds the states of its chunks of draws */
  if (noise) draw_masks(noise, chunk, (int64_t)B * H * TT, keep, mask, NULL, NULL);
  attention_args a = {qkv, NULL, NULL, noise ? mask : NULL, out, probs, NULL, T, H, hs, scale, keep, causal, 0};
  parallel_for((int64_t)B * H, ATTENTION_GRAIN, attention_range, &a);
  return a.failed ? -2 : 0;
}

/* Gradient of seemore_attention: from dout (B, T, C), the saved qkv, probs and mask (NULL when
 * there was no dropout), writes dqkv (B, T, 3C). With M = mult and W = P * M:
 *   dV = W^T dO;  dW = dO V^T;  dP = dW * M;  dS = P * (dP - rowsum(dP * P));
 *   dQ = scale * dS K;  dK = scale * dS^T Q. */
/* Heads bh0..bh1 of the backward pass (each writes only its own columns of dqkv). */
static void attention_grad_range(void *p, int64_t bh0, int64_t bh1) {
  attention_args *a = p;
  int64_t T = a->T, H = a->H, hs = a->hs, C = H * hs, C3 = 3 * C, TT = T * T;
  float inv_keep = 1.0f / a->keep;
  float *w = malloc((size_t)TT * 2 * sizeof(float));
  if (!w) {
    __atomic_store_n(&a->failed, 1, __ATOMIC_RELAXED);
    return;
  }
  float *dp = w + TT;
  for (int64_t bh = bh0; bh < bh1; bh++) {
    int64_t b = bh / H, h = bh % H;
    const float *q = a->qkv + b * T * C3 + h * hs, *k = q + C, *v = q + 2 * C;
    const float *d_o = a->dout + b * T * C + h * hs;
    float *dq = a->dqkv + b * T * C3 + h * hs, *dk = dq + C, *dv = dq + 2 * C;
    const float *probs = a->saved_probs + bh * TT;
    const uint8_t *m = a->mask ? a->mask + bh * TT : NULL;
    const float *weights = dropout_weights(probs, m, inv_keep, w, TT);
    sgemm(ROW_MAJOR, TRANS, NO_TRANS, (int)T, (int)hs, (int)T, 1.0f, weights, (int)T, d_o, (int)C, 0.0f,
          dv, (int)C3);
    sgemm(ROW_MAJOR, NO_TRANS, TRANS, (int)T, (int)T, (int)hs, 1.0f, d_o, (int)C, v, (int)C3, 0.0f, dp,
          (int)T);
    for (int64_t i = 0; i < T; i++) {
      softmax_grad_row(dp + i * T, probs + i * T, m ? m + i * T : NULL, inv_keep, T, dp + TT, probs + TT);
    }
    sgemm(ROW_MAJOR, NO_TRANS, NO_TRANS, (int)T, (int)hs, (int)T, a->scale, dp, (int)T, k, (int)C3, 0.0f,
          dq, (int)C3);
    sgemm(ROW_MAJOR, TRANS, NO_TRANS, (int)T, (int)hs, (int)T, a->scale, dp, (int)T, q, (int)C3, 0.0f,
          dk, (int)C3);
  }
  free(w);
}

int32_t seemore_attention_grad(const float *dout, const float *qkv, const float *probs,
                               const uint8_t *mask, float *dqkv, int32_t B, int32_t T, int32_t H,
                               int32_t hs, float scale, float keep) {
  if (!sgemm) return -1;
  attention_args a = {qkv, dout, probs, mask, NULL, NULL, dqkv, T, H, hs, scale, keep, 0, 0};
  parallel_for((int64_t)B * H, ATTENTION_GRAIN, attention_grad_range, &a);
  return a.failed ? -2 : 0;
}

/* Attention for generation with a key/value cache: qkv (B, Tn, 3C) holds the new positions, which
 * follow t_past cached ones in k_past / v_past (B, H, t_past, hs; NULL when t_past = 0). Writes the
 * grown caches k_all / v_all (B, H, t_past + Tn, hs) and out (B, Tn, C); new position i sees cached
 * positions and new ones up to itself (all of them when not causal). No dropout, no gradient. */
int32_t seemore_attention_cached(const float *qkv, const float *k_past, const float *v_past,
                                 float *out, float *k_all, float *v_all, int32_t B, int32_t Tn,
                                 int32_t t_past, int32_t H, int32_t hs, float scale, int32_t causal) {
  if (!sgemm) return -1;
  int64_t C = (int64_t)H * hs, C3 = 3 * C, t_all = (int64_t)t_past + Tn;
  float *scores = malloc((size_t)(Tn * t_all) * sizeof(float));
  if (!scores) return -2;
  for (int64_t b = 0; b < B; b++) {
    for (int64_t h = 0; h < H; h++) {
      int64_t bh = (b * H + h) * t_all * hs, bh_past = (b * H + h) * (int64_t)t_past * hs;
      float *k = k_all + bh, *v = v_all + bh;
      if (t_past > 0) {
        memcpy(k, k_past + bh_past, (size_t)(t_past * hs) * sizeof(float));
        memcpy(v, v_past + bh_past, (size_t)(t_past * hs) * sizeof(float));
      }
      const float *q = qkv + b * Tn * C3 + h * hs;
      for (int64_t i = 0; i < Tn; i++) {
        memcpy(k + (t_past + i) * hs, q + i * C3 + C, (size_t)hs * sizeof(float));
        memcpy(v + (t_past + i) * hs, q + i * C3 + 2 * C, (size_t)hs * sizeof(float));
      }
      sgemm(ROW_MAJOR, NO_TRANS, TRANS, Tn, (int)t_all, hs, scale, q, (int)C3, k, hs, 0.0f, scores,
            (int)t_all);
      softmax_rows(scores, Tn, t_all, causal ? t_past : -1);
      sgemm(ROW_MAJOR, NO_TRANS, NO_TRANS, Tn, hs, (int)t_all, 1.0f, scores, (int)t_all, v, hs, 0.0f,
            out + b * Tn * C + h * hs, (int)C);
    }
  }
  free(scores);
  return 0;
}

/* ---------------------------------------------------------------------------------------------
 * seeMoE's experts in one call: expert e is Linear(C, F) -> ReLU -> Linear(F, C) -> dropout, run on
 * its own group of rows of x (M, C) — counts[e] rows, the groups one after another. Its parameters
 * live in `heap` at the byte offsets offsets[4e .. 4e+3]: w1 [C, F], b1 [F], w2 [F, C], b2 [C].
 * Forward: h (M, F) = ReLU(x w1 + b1), kept for the gradient; y (M, C) = (h w2 + b2) * mult, with
 * mult and mask as seemore_dropout from expert e's noise state states[4e .. 4e+3] (states NULL: no
 * dropout, mask untouched). Experts are spread over the kernel threads, each product on one thread
 * (product(): oneDNN's, or OpenBLAS's set to one thread first). Returns 0, -1 without sgemm, -2 out of
 * memory. */
typedef struct {
  uint8_t *heap;
  const uint32_t *offsets, *grad_offsets;
  const int64_t *starts; /* first row of each group; starts[E] = M */
  const int32_t *order;  /* experts by falling row count: the largest start first, so threads end together */
  const float *x, *h_in, *dy;
  float *h, *y, *dx;
  uint8_t *mask;
  const uint8_t *mask_in;
  const double *states;
  float keep;
  int64_t C, F;
  int32_t failed;
} experts_args;

static float *heap_floats(uint8_t *heap, uint32_t offset) { return (float *)(void *)(heap + offset); }

static void experts_range(void *p, int64_t i0, int64_t i1) {
  experts_args *a = p;
  int64_t C = a->C, F = a->F;
  for (int64_t i = i0; i < i1; i++) {
    int64_t e = a->order[i], r0 = a->starts[e], n = a->starts[e + 1] - r0;
    if (n == 0) continue;
    const uint32_t *o = a->offsets + 4 * e;
    const float *x = a->x + r0 * C;
    float *h = a->h + r0 * F, *y = a->y + r0 * C;
    fill_bias(h, heap_floats(a->heap, o[1]), n, F);
    product(0, 0, (int)n, (int)F, (int)C, 1.0f, x, (int)C, heap_floats(a->heap, o[0]),
            (int)F, 1.0f, h, (int)F);
    unary_args relu = {h, h, h}; /* h where h > 0, else 0: ReLU in place */
    relu_grad_range(&relu, 0, n * F);
    fill_bias(y, heap_floats(a->heap, o[3]), n, C);
    product(0, 0, (int)n, (int)C, (int)F, 1.0f, h, (int)F, heap_floats(a->heap, o[2]),
            (int)C, 1.0f, y, (int)C);
    if (a->states) { /* expert e's dropout, in place: one chunk of draws from its own noise state */
      draws_args d = {a->states + 4 * e, n * C, n * C, keep_threshold(a->keep), a->mask + r0 * C, y, y,
                      1.0f / a->keep};
      draws_range(&d, 0, 1);
    }
  }
}

/* starts (E + 1 row offsets) then order (E expert ids, most rows first), in one allocation. */
static int64_t *group_plan(const int32_t *counts, int32_t E, int32_t **order) {
  int64_t *starts = malloc(((size_t)E + 1) * sizeof(int64_t) + (size_t)E * sizeof(int32_t));
  if (!starts) return NULL;
  int32_t *o = (int32_t *)(void *)(starts + E + 1);
  starts[0] = 0;
  for (int32_t e = 0; e < E; e++) {
    starts[e + 1] = starts[e] + counts[e];
    int32_t j = e; /* insertion sort, largest count first */
    while (j > 0 && counts[o[j - 1]] < counts[e]) {
      o[j] = o[j - 1];
      j--;
    }
    o[j] = e;
  }
  *order = o;
  return starts;
}

/* Plans the groups (row offsets, largest first) and runs fn over the experts on the kernel threads. */
static int32_t run_experts(experts_args *a, const int32_t *counts, int32_t E, range_fn fn) {
  if (!sgemm) return -1;
  int32_t *order;
  int64_t *starts = group_plan(counts, E, &order);
  if (!starts) return -2;
  a->starts = starts;
  a->order = order;
  blas_use_threads(1); /* the experts run side by side on the pool, each product on one thread */
  parallel_for(E, 1, fn, a);
  free(starts);
  return a->failed ? -2 : 0;
}

int32_t seemore_experts(uint8_t *heap, const uint32_t *offsets, const int32_t *counts, int32_t E,
                        const float *x, float *h, float *y, uint8_t *mask, const double *states, float keep,
                        int32_t C, int32_t F) {
  experts_args a = {.heap = heap, .offsets = offsets, .x = x, .h = h, .y = y, .mask = mask, .states = states,
                    .keep = keep, .C = C, .F = F};
  return run_experts(&a, counts, E, experts_range);
}

/* Gradient of seemore_experts: from dy (M, C), the saved x, h and mask (NULL: no dropout), writes
 * dx (M, C) and each expert's dw1, db1, dw2, db2 at grad_offsets[4e .. 4e+3] in heap (zeros for an
 * expert without rows). With d = dy * mult:  dw2 = h^T d;  db2 = colsum(d);  dz = (d w2^T) where
 * h > 0;  dw1 = x^T dz;  db1 = colsum(dz);  dx = dz w1^T. */
static void column_sums_into(float *dst, const float *src, int64_t rows, int64_t cols) {
  column_sum_args a = {src, dst, rows, cols};
  column_sum_range(&a, 0, cols); /* on this thread: the experts already use them all */
}

static void experts_grad_range(void *p, int64_t i0, int64_t i1) {
  experts_args *a = p;
  int64_t C = a->C, F = a->F;
  for (int64_t i = i0; i < i1; i++) {
    int64_t e = a->order[i], r0 = a->starts[e], n = a->starts[e + 1] - r0;
    const uint32_t *o = a->offsets + 4 * e, *go = a->grad_offsets + 4 * e;
    float *dw1 = heap_floats(a->heap, go[0]), *db1 = heap_floats(a->heap, go[1]);
    float *dw2 = heap_floats(a->heap, go[2]), *db2 = heap_floats(a->heap, go[3]);
    if (n == 0) {
      memset(dw1, 0, (size_t)(C * F) * sizeof(float));
      memset(db1, 0, (size_t)F * sizeof(float));
      memset(dw2, 0, (size_t)(F * C) * sizeof(float));
      memset(db2, 0, (size_t)C * sizeof(float));
      continue;
    }
    float *d = malloc((size_t)(n * (C + F)) * sizeof(float));
    if (!d) {
      __atomic_store_n(&a->failed, 1, __ATOMIC_RELAXED);
      continue;
    }
    float *dz = d + n * C;
    const float *x = a->x + r0 * C, *h = a->h_in + r0 * F, *dy = a->dy + r0 * C;
    if (a->mask_in) {
      seemore_dropout_grad(dy, a->mask_in + r0 * C, d, (int32_t)(n * C), a->keep);
    } else {
      memcpy(d, dy, (size_t)(n * C) * sizeof(float));
    }
    product(1, 0, (int)F, (int)C, (int)n, 1.0f, h, (int)F, d, (int)C, 0.0f, dw2, (int)C);
    column_sums_into(db2, d, n, C);
    product(0, 1, (int)n, (int)F, (int)C, 1.0f, d, (int)C, heap_floats(a->heap, o[2]),
            (int)C, 0.0f, dz, (int)F);
    unary_args relu_grad = {h, dz, dz}; /* dz where h > 0, else 0 */
    relu_grad_range(&relu_grad, 0, n * F);
    product(1, 0, (int)C, (int)F, (int)n, 1.0f, x, (int)C, dz, (int)F, 0.0f, dw1, (int)F);
    column_sums_into(db1, dz, n, F);
    product(0, 1, (int)n, (int)C, (int)F, 1.0f, dz, (int)F, heap_floats(a->heap, o[0]),
            (int)F, 0.0f, a->dx + r0 * C, (int)C);
    free(d);
  }
}

int32_t seemore_experts_grad(uint8_t *heap, const uint32_t *offsets, const uint32_t *grad_offsets,
                             const int32_t *counts, int32_t E, const float *x, const float *h,
                             const float *dy, const uint8_t *mask, float keep, float *dx, int32_t C,
                             int32_t F) {
  experts_args a = {.heap = heap, .offsets = offsets, .grad_offsets = grad_offsets, .x = x, .h_in = h,
                    .dy = dy, .dx = dx, .mask_in = mask, .keep = keep, .C = C, .F = F};
  return run_experts(&a, counts, E, experts_grad_range);
}

/* ---------------------------------------------------------------------------------------------
 * seeMoE's routing around the experts. A slot s = j N + n is token n's j-th choice (k choices).
 * Dispatch: inputs (M, C), row r = token order[r] mod N of x (N, C); its gradient sums each token's
 * rows back: dx[n] = sum of dinputs[r] over the rows r of token n (in row order).
 * Combine: out[n] = sum over j of gates[n, e] * merged[row] for slot s = j N + n with e = expert[s]
 * and row = row_of_slot[s] (no term when row < 0: the slot was dropped); its gradient
 * dmerged[row] = gates[n, e] * dout[n] and dgates[n, e] = dout[n] . merged[row] (0 elsewhere). */

void seemore_moe_dispatch(const float *x, const int32_t *order, float *inputs, int32_t N, int32_t M,
                          int32_t C) {
  for (int64_t r = 0; r < M; r++) {
    memcpy(inputs + r * C, x + (int64_t)(order[r] % N) * C, (size_t)C * sizeof(float));
  }
}

void seemore_moe_dispatch_grad(const float *dinputs, const int32_t *order, float *dx, int32_t N, int32_t M,
                               int32_t C) {
  memset(dx, 0, (size_t)((int64_t)N * C) * sizeof(float));
  for (int64_t r = 0; r < M; r++) {
    float *d = dx + (int64_t)(order[r] % N) * C;
    const float *g = dinputs + r * C;
    for (int64_t c = 0; c < C; c++) d[c] += g[c];
  }
}

void seemore_moe_combine(const float *merged, const float *gates, const int32_t *row_of_slot,
                         const int32_t *expert, float *out, int32_t N, int32_t k, int32_t C, int32_t E) {
  memset(out, 0, (size_t)((int64_t)N * C) * sizeof(float));
  for (int64_t j = 0; j < k; j++) {
    for (int64_t n = 0; n < N; n++) {
      int64_t s = j * N + n, row = row_of_slot[s];
      if (row < 0) continue;
      float g = gates[n * E + expert[s]];
      const float *m = merged + row * C;
      float *o = out + n * C;
      for (int64_t c = 0; c < C; c++) o[c] += g * m[c];
    }
  }
}

void seemore_moe_combine_grad(const float *dout, const float *merged, const float *gates,
                              const int32_t *row_of_slot, const int32_t *expert, float *dmerged,
                              float *dgates, int32_t N, int32_t k, int32_t M, int32_t C, int32_t E) {
  memset(dmerged, 0, (size_t)((int64_t)M * C) * sizeof(float));
  memset(dgates, 0, (size_t)((int64_t)N * E) * sizeof(float));
  for (int64_t j = 0; j < k; j++) {
    for (int64_t n = 0; n < N; n++) {
      int64_t s = j * N + n, row = row_of_slot[s];
      if (row < 0) continue;
      float g = gates[n * E + expert[s]], dot = 0.0f;
      const float *d = dout + n * C, *m = merged + row * C;
      float *dm = dmerged + row * C;
      for (int64_t c = 0; c < C; c++) {
        dm[c] = g * d[c];
        dot += d[c] * m[c];
      }
      dgates[n * E + expert[s]] += dot;
    }
  }
}

/* ---------------------------------------------------------------------------------------------
 * Attention of the first position only (the ViT's last block when only CLS is kept): its query
 * against every position's key and value. x (B, T, C) and the fused weight w [C, 3C] (queries, keys,
 * values; no biases), read in place. With one query per item, the keys and values of all B T rows
 * need not be made: for head h, with Wk_h and Wv_h its columns of w,
 *   score[t] = scale q_h . (x[t] Wk_h) = scale (q_h Wk_h^T) . x[t] = scale a_h . x[t]
 *   out_h = sum_t W[t] (x[t] Wv_h) = (sum_t W[t] x[t]) Wv_h = ctx_h Wv_h,   W = p mult
 * so the products are of B or H rows (B C C multiply-adds each) instead of B T rows (2 B T C C).
 * Per item b:  q (B, C) = x[:, 0] w[:, :C];  a (B, H, C): a_h = q_h Wk_h^T;
 *   p = softmax(scale a_h . x[t] over t);  ctx (B, H, C): ctx_h = sum_t p[t] mult[t] x[t];
 *   out_h = ctx_h Wv_h.
 * probs (B, H, T) receives p; with noise (the chunk states of B H T draws, as seemore_dropout), mult
 * and mask are dropout's; with NULL, mult = 1. q, a, ctx and probs are kept for the gradient.
 * Small products run on one thread each (product()), the items or heads shared among the kernel
 * threads. Returns 0, -1 without sgemm, -2 out of memory. */

typedef struct {
  const float *x, *w, *q, *probs, *dout;
  const uint8_t *mask;
  float *a, *ctx, *out, *scratch, *dx, *dw, *dq, *dctx, *da;
  int64_t B, T, C, H;
  float scale, inv_keep;
} first_args;

/* W = p mult for item b's (H, T) probabilities, in `scratch` when there is dropout. */
static const float *first_weights(const first_args *f, int64_t b, float *scratch) {
  int64_t n = f->H * f->T;
  return dropout_weights(f->probs + b * n, f->mask ? f->mask + b * n : NULL, f->inv_keep, scratch, n);
}

/* Heads h0..h1: a_h (B, C) = q_h (B, hs) Wk_h^T. */
static void first_keys(void *p, int64_t h0, int64_t h1) {
  first_args *f = p;
  int64_t C = f->C, hs = C / f->H;
  for (int64_t h = h0; h < h1; h++) {
    product(0, 1, (int)f->B, (int)C, (int)hs, 1.0f, f->q + h * hs, (int)C,
            f->w + C + h * hs, (int)(3 * C), 0.0f, f->a + h * C, (int)(f->H * C));
  }
}

/* Items b0..b1: scores (H, T) = scale a[b] x[b]^T, their softmax, then ctx[b] (H, C) = W x[b]. */
static void first_items(void *p, int64_t b0, int64_t b1) {
  first_args *f = p;
  int64_t T = f->T, C = f->C, H = f->H;
  for (int64_t b = b0; b < b1; b++) {
    float *probs = (float *)f->probs + b * H * T;
    const float *xb = f->x + b * T * C;
    product(0, 1, (int)H, (int)T, (int)C, f->scale, f->a + b * H * C, (int)C, xb,
            (int)C, 0.0f, probs, (int)T);
    softmax_rows(probs, H, T, -1);
    const float *wt = first_weights(f, b, f->scratch + b * H * T);
    product(0, 0, (int)H, (int)C, (int)T, 1.0f, wt, (int)T, xb, (int)C, 0.0f,
            f->ctx + b * H * C, (int)C);
  }
}

/* Heads h0..h1: out_h (B, hs) = ctx_h (B, C) Wv_h. */
static void first_values(void *p, int64_t h0, int64_t h1) {
  first_args *f = p;
  int64_t C = f->C, hs = C / f->H;
  for (int64_t h = h0; h < h1; h++) {
    product(0, 0, (int)f->B, (int)hs, (int)C, 1.0f, f->ctx + h * C, (int)(f->H * C),
            f->w + 2 * C + h * hs, (int)(3 * C), 0.0f, f->out + h * hs, (int)C);
  }
}

int32_t seemore_first_attention(const float *x, const float *w, float *q, float *a, float *ctx, float *out,
                                float *probs, uint8_t *mask, const double *noise, int32_t chunk, int32_t B,
                                int32_t T, int32_t C, int32_t H, float scale, float keep) {
  if (!sgemm) return -1;
  float *scratch = malloc((size_t)((int64_t)B * H * T) * sizeof(float));
  if (!scratch) return -2;
  first_args f = {.x = x, .w = w, .q = q, .probs = probs, .mask = noise ? mask : NULL, .a = a, .ctx = ctx,
                  .out = out, .scratch = scratch, .B = B, .T = T, .C = C, .H = H, .scale = scale,
                  .inv_keep = 1.0f / keep};
  seemore_sgemm(0, 0, B, C, C, 1.0f, x, T * C, w, 3 * C, 0.0f, q, C, n_threads);
  if (noise) draw_masks(noise, chunk, (int64_t)B * H * T, keep, mask, NULL, NULL);
  blas_use_threads(1);
  parallel_for(H, 1, first_keys, &f);
  parallel_for(B, 1, first_items, &f);
  parallel_for(H, 1, first_values, &f);
  free(scratch);
  return 0;
}

/* Its gradient: from dout (B, C) and the saved x, q, a, ctx, probs, mask (NULL: no dropout), writes
 * dx (B, T, C) and dw [C, 3C]. Per head h and item b, with W = p mult and g = dout_h:
 *   dWv_h = sum_b ctx_h^T g;  dctx_h = g Wv_h^T;  dp[t] = (dctx_h . x[t]) mult[t];
 *   ds = p (dp - sum(p dp));  da_h = scale sum_t ds[t] x[t];  dx[t] = sum_h W[t] dctx_h + scale ds[t] a_h;
 *   dq_h = da_h Wk_h;  dWk_h = sum_b da_h^T q_h;  dWq = x[:, 0]^T dq;  dx[0] += dq Wq^T.
 * Returns 0, -1 without sgemm, -2 out of memory. */

/* Heads h0..h1: dWv_h [C, hs] = ctx_h^T (C, B) dout_h;  dctx_h (B, C) = dout_h Wv_h^T. */
static void first_values_grad(void *p, int64_t h0, int64_t h1) {
  first_args *f = p;
  int64_t C = f->C, H = f->H, hs = C / H;
  for (int64_t h = h0; h < h1; h++) {
    product(1, 0, (int)C, (int)hs, (int)f->B, 1.0f, f->ctx + h * C, (int)(H * C),
            f->dout + h * hs, (int)C, 0.0f, f->dw + 2 * C + h * hs, (int)(3 * C));
    product(0, 1, (int)f->B, (int)C, (int)hs, 1.0f, f->dout + h * hs, (int)C,
            f->w + 2 * C + h * hs, (int)(3 * C), 0.0f, f->dctx + h * C, (int)(H * C));
  }
}

/* Items b0..b1: ds from dctx[b] x[b]^T, then dx[b] (T, C) = W^T dctx[b] + scale ds^T a[b] and
 * da[b] (H, C) = scale ds x[b]. */
static void first_items_grad(void *p, int64_t b0, int64_t b1) {
  first_args *f = p;
  int64_t T = f->T, C = f->C, H = f->H;
  for (int64_t b = b0; b < b1; b++) {
    float *ds = f->scratch + 2 * b * H * T + H * T;
    const float *xb = f->x + b * T * C, *probs = f->probs + b * H * T;
    const uint8_t *m = f->mask ? f->mask + b * H * T : NULL;
    product(0, 1, (int)H, (int)T, (int)C, 1.0f, f->dctx + b * H * C, (int)C, xb, (int)C,
            0.0f, ds, (int)T);
    const float *wt = first_weights(f, b, ds - H * T);
    for (int64_t h = 0; h < H; h++) { /* ds = p (dp - sum(p dp)), dp = dW mult; the scale goes in below */
      softmax_grad_row(ds + h * T, probs + h * T, m ? m + h * T : NULL, f->inv_keep, T, ds + H * T,
                       probs + H * T);
    }
    float *dxb = f->dx + b * T * C;
    product(1, 0, (int)T, (int)C, (int)H, 1.0f, wt, (int)T, f->dctx + b * H * C, (int)C,
            0.0f, dxb, (int)C);
    product(1, 0, (int)T, (int)C, (int)H, f->scale, ds, (int)T, f->a + b * H * C, (int)C,
            1.0f, dxb, (int)C);
    product(0, 0, (int)H, (int)C, (int)T, f->scale, ds, (int)T, xb, (int)C, 0.0f,
            f->da + b * H * C, (int)C);
  }
}

/* Heads h0..h1: dq_h (B, hs) = da_h (B, C) Wk_h;  dWk_h [C, hs] = da_h^T (C, B) q_h. */
static void first_keys_grad(void *p, int64_t h0, int64_t h1) {
  first_args *f = p;
  int64_t C = f->C, H = f->H, hs = C / H;
  for (int64_t h = h0; h < h1; h++) {
    product(0, 0, (int)f->B, (int)hs, (int)C, 1.0f, f->da + h * C, (int)(H * C),
            f->w + C + h * hs, (int)(3 * C), 0.0f, f->dq + h * hs, (int)C);
    product(1, 0, (int)C, (int)hs, (int)f->B, 1.0f, f->da + h * C, (int)(H * C),
            f->q + h * hs, (int)C, 0.0f, f->dw + C + h * hs, (int)(3 * C));
  }
}

int32_t seemore_first_attention_grad(const float *dout, const float *x, const float *w, const float *q,
                                     const float *a, const float *ctx, const float *probs,
                                     const uint8_t *mask, float *dx, float *dw, int32_t B, int32_t T,
                                     int32_t C, int32_t H, float scale, float keep) {
  if (!sgemm) return -1;
  int64_t BHC = (int64_t)B * H * C;
  float *dq = malloc((size_t)((int64_t)B * C + 2 * BHC + 2 * (int64_t)B * H * T) * sizeof(float));
  if (!dq) return -2;
  first_args f = {.x = x, .w = w, .q = q, .probs = probs, .dout = dout, .mask = mask, .a = (float *)a,
                  .ctx = (float *)ctx, .dx = dx, .dw = dw, .dq = dq, .dctx = dq + (int64_t)B * C,
                  .da = dq + (int64_t)B * C + BHC, .scratch = dq + (int64_t)B * C + 2 * BHC, .B = B, .T = T,
                  .C = C, .H = H, .scale = scale, .inv_keep = 1.0f / keep};
  blas_use_threads(1);
  parallel_for(H, 1, first_values_grad, &f);
  parallel_for(B, 1, first_items_grad, &f);
  parallel_for(H, 1, first_keys_grad, &f);
  seemore_sgemm(1, 0, C, C, B, 1.0f, x, T * C, dq, C, 0.0f, dw, 3 * C, n_threads);
  seemore_sgemm(0, 1, B, C, C, 1.0f, dq, C, w, 3 * C, 1.0f, dx, T * C, n_threads);
  free(dq);
  return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Generation's decoder step: one new position through the whole decoder in one call, the same maths
 * as Block.forward in evaluation (no dropout) with a key/value cache. For each row r of x (B, C),
 * the input at position t (this adds its position embedding): per layer
 *   a = ln1(x); q|k|v = a Wqkv; k, v go into the cache at t; o = attention of q over 0..t
 *   h = x + o Wproj + bproj;  n = ln2(h);  x = (pre_norm ? h : n) + GELU(n W1 + b1) W2 + b2
 * then logits (B, V) = ln_f(x) Whead + bhead.
 *
 * weights, one array: per layer ln1.g, ln1.b [C], qkv [C, 3C], proj.w [C, C], proj.b [C], ln2.g,
 * ln2.b [C], fc1.w [C, 4C], fc1.b [4C], fc2.w [4C, C], fc2.b [C]; then ln_f.g, ln_f.b [C],
 * head.w [C, V], head.b [V], the position table (rows 0..t are read). Matrices are [in, out],
 * row-major (native.ts decoderWeightCount counts the same layout).
 * cache: per layer the keys then the values, each (B, H, max_t, hs), max_t > t.
 * Rows are independent, so they are split across threads. Returns 0, or -2 out of memory. */

/* y (rows, n) = x (rows, k) W [k, n] + bias (NULL: none); each row of W is read once for all rows. */
SIMD_CLONES static void dense_rows(const float *x, const float *w, const float *bias, float *y,
                                   int64_t rows, int64_t k, int64_t n) {
  for (int64_t r = 0; r < rows; r++) {
    if (bias) memcpy(y + r * n, bias, (size_t)n * sizeof(float));
    else memset(y + r * n, 0, (size_t)n * sizeof(float));
  }
  for (int64_t i = 0; i < k; i++) {
    const float *wi = w + i * n;
    for (int64_t r = 0; r < rows; r++) {
      float xi = x[r * k + i];
      float *yr = y + r * n;
      for (int64_t j = 0; j < n; j++) yr[j] += xi * wi[j];
    }
  }
}

static void layer_norm_rows(const float *x, const float *g, const float *b, float *y, float *stats,
                            int64_t rows, int32_t cols, float eps) {
  layer_norm_args a = {x, g, b, y, stats, stats + rows, cols, eps};
  layer_norm_range(&a, 0, rows);
}

typedef struct {
  const float *weights, *x;
  float *cache, *logits;
  int64_t B, C, H, layers, V, t, max_t;
  float scale, eps;
  int32_t pre_norm, failed;
} decoder_step_args;

static void decoder_step_range(void *p, int64_t r0, int64_t r1) {
  decoder_step_args *a = p;
  int64_t rows = r1 - r0, C = a->C, H = a->H, hs = C / H, F = 4 * C, T = a->t + 1;
  /* scratch: x, n, o [rows, C] each; qkv [rows, 3C]; f [rows, 4C]; scores [T]; stats [2 rows] */
  float *x = malloc((size_t)(rows * (3 * C + 3 * C + F) + T + 2 * rows) * sizeof(float));
  if (!x) {
    __atomic_store_n(&a->failed, 1, __ATOMIC_RELAXED);
    return;
  }
  float *n = x + rows * C, *o = n + rows * C, *qkv = o + rows * C, *f = qkv + rows * 3 * C;
  float *scores = f + rows * F, *stats = scores + T;
  const float *w = a->weights;
  const int64_t layer_size = 2 * C + 3 * C * C + C * C + C + 2 * C + C * F + F + F * C + C;
  const float *pos = w + a->layers * layer_size + 2 * C + C * a->V + a->V + a->t * C;
  for (int64_t r = 0; r < rows; r++) {
    for (int64_t c = 0; c < C; c++) x[r * C + c] = a->x[(r0 + r) * C + c] + pos[c];
  }
  for (int64_t l = 0; l < a->layers; l++) {
    const float *ln1g = w, *ln1b = ln1g + C, *wqkv = ln1b + C, *wproj = wqkv + 3 * C * C;
    const float *bproj = wproj + C * C, *ln2g = bproj + C, *ln2b = ln2g + C, *w1 = ln2b + C;
    const float *b1 = w1 + C * F, *w2 = b1 + F, *b2 = w2 + F * C;
    w = b2 + C;
    float *kc = a->cache + l * 2 * a->B * H * a->max_t * hs, *vc = kc + a->B * H * a->max_t * hs;
    layer_norm_rows(x, ln1g, ln1b, n, stats, rows, (int32_t)C, a->eps);
    dense_rows(n, wqkv, NULL, qkv, rows, C, 3 * C); /* the projections have no bias */
    for (int64_t r = 0; r < rows; r++) {
      const float *q = qkv + r * 3 * C;
      for (int64_t h = 0; h < H; h++) {
        int64_t head = ((r0 + r) * H + h) * a->max_t * hs;
        float *kh = kc + head, *vh = vc + head, *out = o + r * C + h * hs;
        memcpy(kh + a->t * hs, q + C + h * hs, (size_t)hs * sizeof(float));
        memcpy(vh + a->t * hs, q + 2 * C + h * hs, (size_t)hs * sizeof(float));
        for (int64_t j = 0; j < T; j++) {
          float s = 0.0f;
          for (int64_t d = 0; d < hs; d++) s += q[h * hs + d] * kh[j * hs + d];
          scores[j] = a->scale * s;
        }
        softmax_rows(scores, 1, T, -1);
        for (int64_t d = 0; d < hs; d++) out[d] = 0.0f;
        for (int64_t j = 0; j < T; j++) {
          for (int64_t d = 0; d < hs; d++) out[d] += scores[j] * vh[j * hs + d];
        }
      }
    }
    float *hres = qkv; /* reuse: h = x + o Wproj + bproj, (rows, C) */
    dense_rows(o, wproj, bproj, hres, rows, C, C);
    for (int64_t e = 0; e < rows * C; e++) hres[e] += x[e];
    layer_norm_rows(hres, ln2g, ln2b, n, stats, rows, (int32_t)C, a->eps);
    dense_rows(n, w1, b1, f, rows, C, F);
    unary_args g = {f, NULL, f};
    gelu_range(&g, 0, rows * F);
    dense_rows(f, w2, b2, o, rows, F, C);
    const float *res = a->pre_norm ? hres : n;
    for (int64_t e = 0; e < rows * C; e++) x[e] = res[e] + o[e];
  }
  const float *lnfg = w, *lnfb = lnfg + C, *whead = lnfb + C, *bhead = whead + C * a->V;
  layer_norm_rows(x, lnfg, lnfb, n, stats, rows, (int32_t)C, a->eps);
  dense_rows(n, whead, bhead, a->logits + r0 * a->V, rows, C, a->V);
  free(x);
}

int32_t seemore_decoder_step(const float *weights, const float *x, float *cache, float *logits,
                             int32_t B, int32_t C, int32_t H, int32_t layers, int32_t V, int32_t t,
                             int32_t max_t, float scale, float eps, int32_t pre_norm) {
  decoder_step_args a = {weights, x, cache, logits, B, C, H, layers, V, t, max_t, scale, eps, pre_norm, 0};
  parallel_for(B, 8, decoder_step_range, &a);
  return a.failed ? -2 : 0;
}

/* ---------------------------------------------------------------------------------------------
 * One transformer block (lib/model/block.ts with seemore's GELU feed-forward) in one call each way:
 * the kernels above, called in the order and with the arguments the op-by-op fast path uses, so the
 * numbers are the same and a block costs two calls into C instead of ~60 tfjs kernels. Rows R = B T:
 *   a = LN1(x);  qkv = a Wqkv;  m = attention(qkv);  x1 = x + dropout(m Wp + bp);
 *   n = LN2(x1);  h = n W1 + b1;  out = (pre_norm ? x1 : n) + (GELU(h) W2 + b2)
 * Tensors are passed as offsets into the wasm heap, in the order of the BLK_ names below (the forward
 * pass writes BLK_OUT .. BLK_H; the backward pass reads them and writes BLK_DX and the gradients). The
 * dropout noise comes as chunk states (as seemore_dropout takes them): noise_att for the attention
 * weights (B, H, T, T), noise_proj for the projection's output (R, C); NULL without dropout (the masks
 * are then not touched). `scratch` holds 5 R C floats forward, 12 R C backward (F = 4 C). */

enum {
  BLK_X, BLK_G1, BLK_B1, BLK_WQKV, BLK_WP, BLK_BP, BLK_G2, BLK_B2, BLK_W1, BLK_BH, BLK_W2, BLK_BF,
  BLK_OUT, BLK_A, BLK_MEAN1, BLK_RSTD1, BLK_QKV, BLK_PROBS, BLK_MASK_ATT, BLK_MERGED, BLK_MASK_PROJ, BLK_X1,
  BLK_N, BLK_MEAN2, BLK_RSTD2, BLK_H, BLK_SCRATCH,
  BLK_DOUT, BLK_DX, BLK_GRADS, /* then the gradients of BLK_G1 .. BLK_BF, in that order */
  BLK_OFFSETS = BLK_GRADS + 11
};

typedef struct {
  int32_t B, T, C, H, pre_norm, causal;
  float scale, keep, eps;
} block_dims;

/* The thread count the fast path's matmul kernel asks for (kernels.ts, SMALL_GEMM). */
static int32_t product_threads(int64_t m, int64_t n, int64_t k) {
  return m * n * k < (1 << 20) ? 1 : n_threads;
}

/* c = a op(b) (+ bias row), as the dense layers' matmul kernel runs it. */
static void block_dense(const float *a, const float *w, const float *bias, float *c, int64_t R, int64_t K,
                        int64_t N) {
  if (bias) seemore_fill_rows(c, bias, (int32_t)R, (int32_t)N);
  seemore_sgemm(0, 0, (int32_t)R, (int32_t)N, (int32_t)K, 1.0f, a, (int32_t)K, w, (int32_t)N,
                bias ? 1.0f : 0.0f, c, (int32_t)N, product_threads(R, N, K));
}

/* dw = x^T dy (K, N) and, with a bias, db = column sums of dy, as the dense layers' gradient runs them. */
static void block_dense_weight_grad(const float *x, const float *dy, float *dw, float *db, int64_t R,
                                    int64_t K, int64_t N) {
  seemore_sgemm(1, 0, (int32_t)K, (int32_t)N, (int32_t)R, 1.0f, x, (int32_t)K, dy, (int32_t)N, 0.0f, dw,
                (int32_t)N, product_threads(K, N, R));
  if (db) column_sums(dy, db, R, N);
}

/* dx = dy w^T (R, K). */
static void block_dense_input_grad(const float *dy, const float *w, float *dx, int64_t R, int64_t K,
                                   int64_t N) {
  seemore_sgemm(0, 1, (int32_t)R, (int32_t)K, (int32_t)N, 1.0f, dy, (int32_t)N, w, (int32_t)N, 0.0f, dx,
                (int32_t)K, product_threads(R, K, N));
}

static void add_into(float *y, const float *x, int64_t n) { /* y = x + y, as tfjs's add(x, y) */
  for (int64_t i = 0; i < n; i++) y[i] = x[i] + y[i];
}

int32_t seemore_block(uint8_t *heap, const uint32_t *o, const double *noise_att, const double *noise_proj,
                      int32_t chunk, const block_dims *d) {
  if (!sgemm) return -1;
  int64_t R = (int64_t)d->B * d->T, C = d->C, F = 4 * C;
#define T_(i) heap_floats(heap, o[i])
  float *x = T_(BLK_X), *a = T_(BLK_A), *x1 = T_(BLK_X1), *n = T_(BLK_N), *h = T_(BLK_H), *out = T_(BLK_OUT);
  float *proj = T_(BLK_SCRATCH), *g = proj + R * C;
  seemore_layer_norm(x, T_(BLK_G1), T_(BLK_B1), a, T_(BLK_MEAN1), T_(BLK_RSTD1), (int32_t)R, (int32_t)C,
                     d->eps);
  block_dense(a, T_(BLK_WQKV), NULL, T_(BLK_QKV), R, C, 3 * C);
  int32_t rc = seemore_attention(T_(BLK_QKV), noise_att, chunk, T_(BLK_MERGED), T_(BLK_PROBS),
                                 heap + o[BLK_MASK_ATT], d->B, d->T, d->H, (int32_t)(C / d->H), d->scale,
                                 d->causal, d->keep);
  if (rc != 0) return rc;
  if (noise_proj) {
    block_dense(T_(BLK_MERGED), T_(BLK_WP), T_(BLK_BP), proj, R, C, C);
    seemore_dropout(proj, x1, heap + o[BLK_MASK_PROJ], (int32_t)(R * C), d->keep, noise_proj, chunk);
  } else {
    block_dense(T_(BLK_MERGED), T_(BLK_WP), T_(BLK_BP), x1, R, C, C); /* no dropout: straight into x1 */
  }
  add_into(x1, x, R * C); /* x1 = x + dropout(proj) */
  seemore_layer_norm(x1, T_(BLK_G2), T_(BLK_B2), n, T_(BLK_MEAN2), T_(BLK_RSTD2), (int32_t)R, (int32_t)C,
                     d->eps);
  block_dense(n, T_(BLK_W1), T_(BLK_BH), h, R, C, F);
  seemore_gelu(h, g, (int32_t)(R * F));
  block_dense(g, T_(BLK_W2), T_(BLK_BF), out, R, F, C);
  add_into(out, d->pre_norm ? x1 : n, R * C);
  return 0;
}

int32_t seemore_block_grad(uint8_t *heap, const uint32_t *o, int32_t has_dropout, const block_dims *d) {
  if (!sgemm) return -1;
  int64_t R = (int64_t)d->B * d->T, C = d->C, F = 4 * C;
  float *dout = T_(BLK_DOUT), *dx = T_(BLK_DX);
  float *grad[11];
  for (int i = 0; i < 11; i++) grad[i] = T_(BLK_GRADS + i);
  float *s = T_(BLK_SCRATCH), *g = s, *dg = s + R * F, *dh = s + 2 * R * F;
  /* the feed-forward: out = res + GELU(h) W2 + b2 */
  block_dense_input_grad(dout, T_(BLK_W2), dg, R, F, C);
  seemore_gelu_with_grad(T_(BLK_H), dg, g, dh, (int32_t)(R * F));
  block_dense_weight_grad(g, dout, grad[BLK_W2 - 1], grad[BLK_BF - 1], R, F, C);
  block_dense_weight_grad(T_(BLK_N), dh, grad[BLK_W1 - 1], grad[BLK_BH - 1], R, C, F);
  float *dn = s, *dx1 = s + R * C, *dproj = s + 2 * R * C, *dmerged = s + 3 * R * C, *dqkv = s + 4 * R * C;
  float *da = s + 7 * R * C; /* all inside g and dg, no longer needed; dh ends at 12 R C */
  block_dense_input_grad(dh, T_(BLK_W1), dn, R, C, F);
  if (!d->pre_norm) add_into(dn, dout, R * C); /* n's gradient: the residual's, then the layer's */
  int32_t rc = seemore_layer_norm_grad(dn, T_(BLK_X1), T_(BLK_G2), T_(BLK_MEAN2), T_(BLK_RSTD2), dx1,
                                       grad[BLK_G2 - 1], grad[BLK_B2 - 1], (int32_t)R, (int32_t)C);
  if (rc != 0) return rc;
  if (d->pre_norm) add_into(dx1, dout, R * C);
  /* the attention: x1 = x + dropout(merged Wp + bp) */
  if (has_dropout) seemore_dropout_grad(dx1, heap + o[BLK_MASK_PROJ], dproj, (int32_t)(R * C), d->keep);
  else memcpy(dproj, dx1, (size_t)(R * C) * sizeof(float));
  block_dense_weight_grad(T_(BLK_MERGED), dproj, grad[BLK_WP - 1], grad[BLK_BP - 1], R, C, C);
  block_dense_input_grad(dproj, T_(BLK_WP), dmerged, R, C, C);
  const uint8_t *mask_att = has_dropout ? heap + o[BLK_MASK_ATT] : NULL;
  rc = seemore_attention_grad(dmerged, T_(BLK_QKV), T_(BLK_PROBS), mask_att, dqkv, d->B, d->T, d->H,
                              (int32_t)(C / d->H), d->scale, d->keep);
  if (rc != 0) return rc;
  block_dense_weight_grad(T_(BLK_A), dqkv, grad[BLK_WQKV - 1], NULL, R, C, 3 * C);
  block_dense_input_grad(dqkv, T_(BLK_WQKV), da, R, C, 3 * C);
  rc = seemore_layer_norm_grad(da, T_(BLK_X), T_(BLK_G1), T_(BLK_MEAN1), T_(BLK_RSTD1), dx, grad[BLK_G1 - 1],
                               grad[BLK_B1 - 1], (int32_t)R, (int32_t)C);
  if (rc != 0) return rc;
  add_into(dx, dx1, R * C); /* dx = dx1 + dx: the residual's gradient, then LN1's */
#undef T_
  return 0;
}
