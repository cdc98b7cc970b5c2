/* seeMoE's experts in one call each way (each expert's rows gathered from the tokens on the way), and
 * the combine after them. Needs pool.c, products.c, memory.c, vector_math.c and dropout.c. */

#include "kernels.h"

/* seeMoE's experts in one call: expert e is Linear(C, F) -> ReLU -> Linear(F, C) -> dropout, run on
 * its own group of rows — counts[e] rows, the groups one after another, M rows in all — where row r is
 * token rows[r] mod N of x (N, C) (rows[r] is a slot j N + n: token n's j-th choice). Its parameters
 * live in `heap` at the byte offsets offsets[4e .. 4e+3]: w1 [C, F], b1 [F], w2 [F, C], b2 [C].
 * Forward: h = ReLU(x_e w1 + b1), written to h (M, F) when the caller keeps it, else to scratch;
 * y (M, C) = (h w2 + b2) * mult, with mult and mask as seemore_dropout from expert e's noise state
 * states[4e .. 4e+3] (states NULL: no dropout, mask untouched). Experts are spread over the kernel
 * threads, each product on one thread (product(): oneDNN's, or OpenBLAS's set to one thread first).
 * Returns 0, -1 without sgemm, -2 out of memory. */
typedef struct {
  uint8_t *heap;
  const uint32_t *offsets, *grad_offsets;
  const int64_t *starts; /* first row of each group; starts[E] = M */
  const int32_t *order;  /* experts by falling row count: the largest start first, so threads end together */
  const int32_t *rows;   /* each expert row's slot: token rows[r] mod N */
  const float *x, *h_in, *dy;
  float *h, *y, *dxr;
  uint8_t *mask;
  const uint8_t *mask_in;
  const double *states;
  float keep;
  int64_t N, C, F;
  int32_t failed;
} experts_args;

/* Rows r0..r0+n of the experts' input, gathered from the tokens into xs (n, C). */
static void gather_rows(const experts_args *a, int64_t r0, int64_t n, float *xs) {
  for (int64_t r = 0; r < n; r++) {
    memcpy(xs + r * a->C, a->x + (int64_t)(a->rows[r0 + r] % a->N) * a->C, (size_t)a->C * sizeof(float));
  }
}

/* h (n, F) = ReLU(xs w1 + b1): the forward's hidden layer, and the gradient's when it recomputes it
 * (the same calls on the same values: the same bits). */
static void expert_hidden(const float *xs, const float *w1, const float *b1, float *h, int64_t n, int64_t C,
                          int64_t F) {
  fill_bias(h, b1, n, F);
  product(0, 0, (int)n, (int)F, (int)C, 1.0f, xs, (int)C, w1, (int)F, 1.0f, h, (int)F);
  unary_args relu = {h, h, h}; /* h where h > 0, else 0: ReLU in place */
  relu_grad_range(&relu, 0, n * F);
}

static void experts_range(void *p, int64_t i0, int64_t i1) {
  experts_args *a = p;
  int64_t C = a->C, F = a->F;
  for (int64_t i = i0; i < i1; i++) {
    int64_t e = a->order[i], r0 = a->starts[e], n = a->starts[e + 1] - r0;
    if (n == 0) continue;
    float *xs = malloc((size_t)(n * (C + (a->h ? 0 : F))) * sizeof(float));
    if (!xs) {
      __atomic_store_n(&a->failed, 1, __ATOMIC_RELAXED);
      continue;
    }
    const uint32_t *o = a->offsets + 4 * e;
    float *h = a->h ? a->h + r0 * F : xs + n * C, *y = a->y + r0 * C;
    gather_rows(a, r0, n, xs);
    expert_hidden(xs, heap_floats(a->heap, o[0]), heap_floats(a->heap, o[1]), h, n, C, F);
    fill_bias(y, heap_floats(a->heap, o[3]), n, C);
    product(0, 0, (int)n, (int)C, (int)F, 1.0f, h, (int)F, heap_floats(a->heap, o[2]),
            (int)C, 1.0f, y, (int)C);
    if (a->states) { /* expert e's dropout, in place: one chunk of draws from its own noise state */
      draws_args d = {a->states + 4 * e, n * C, n * C, keep_threshold(a->keep), a->mask + r0 * C, y, y,
                      1.0f / a->keep};
      draws_range(&d, 0, 1);
    }
    free(xs);
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
                        const float *x, const int32_t *rows, int32_t N, float *h, float *y, uint8_t *mask,
                        const double *states, float keep, int32_t C, int32_t F) {
  experts_args a = {.heap = heap, .offsets = offsets, .rows = rows, .x = x, .h = h, .y = y, .mask = mask,
                    .states = states, .keep = keep, .N = N, .C = C, .F = F};
  return run_experts(&a, counts, E, experts_range);
}

/* Gradient of seemore_experts: from dy (M, C), the tokens x (N, C), the forward's h (NULL: recomputed
 * from x) and mask (NULL: no dropout), writes dx (N, C) and each expert's dw1, db1, dw2, db2 at
 * grad_offsets[4e .. 4e+3] in heap (zeros for an expert without rows). With x_e the expert's gathered
 * rows and d = dy * mult:  dw2 = h^T d;  db2 = colsum(d);  dz = (d w2^T) where h > 0;  dw1 = x_e^T dz;
 * db1 = colsum(dz);  dx_e = dz w1^T, and dx[n] = the sum of token n's rows of dx_e, in row order. */
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
    /* scratch: the gathered rows (n, C), d (n, C), dz (n, F), and h (n, F) when recomputed */
    float *xs = malloc((size_t)(n * (2 * C + F + (a->h_in ? 0 : F))) * sizeof(float));
    if (!xs) {
      __atomic_store_n(&a->failed, 1, __ATOMIC_RELAXED);
      continue;
    }
    float *d = xs + n * C, *dz = d + n * C, *h = dz + n * F;
    const float *dy = a->dy + r0 * C;
    gather_rows(a, r0, n, xs);
    if (a->h_in) h = (float *)a->h_in + r0 * F;
    else expert_hidden(xs, heap_floats(a->heap, o[0]), heap_floats(a->heap, o[1]), h, n, C, F);
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
    product(1, 0, (int)C, (int)F, (int)n, 1.0f, xs, (int)C, dz, (int)F, 0.0f, dw1, (int)F);
    column_sums_into(db1, dz, n, F);
    product(0, 1, (int)n, (int)C, (int)F, 1.0f, dz, (int)F, heap_floats(a->heap, o[0]),
            (int)F, 0.0f, a->dxr + r0 * C, (int)C);
    free(xs);
  }
}

int32_t seemore_experts_grad(uint8_t *heap, const uint32_t *offsets, const uint32_t *grad_offsets,
                             const int32_t *counts, int32_t E, const float *x, const int32_t *rows, int32_t N,
                             const float *h, const float *dy, const uint8_t *mask, float keep, float *dx,
                             int32_t C, int32_t F) {
  int64_t M = 0;
  for (int32_t e = 0; e < E; e++) M += counts[e];
  float *dxr = malloc((size_t)((M > 0 ? M : 1) * C) * sizeof(float)); /* each expert row's dx */
  if (!dxr) return -2;
  experts_args a = {.heap = heap, .offsets = offsets, .grad_offsets = grad_offsets, .rows = rows, .x = x,
                    .h_in = h, .dy = dy, .dxr = dxr, .mask_in = mask, .keep = keep, .N = N, .C = C, .F = F};
  int32_t rc = run_experts(&a, counts, E, experts_grad_range);
  if (rc == 0) { /* each token's rows summed back, in row order */
    memset(dx, 0, (size_t)((int64_t)N * C) * sizeof(float));
    for (int64_t r = 0; r < M; r++) {
      float *dt = dx + (int64_t)(rows[r] % N) * C;
      const float *g = dxr + r * C;
      for (int64_t c = 0; c < C; c++) dt[c] += g[c];
    }
  }
  free(dxr);
  return rc;
}

/* ---------------------------------------------------------------------------------------------
 * seeMoE's combine after the experts. A slot s = j N + n is token n's j-th choice (k choices).
 * Combine: out[n] = sum over j of gates[n, e] * merged[row] for slot s = j N + n with e = expert[s]
 * and row = row_of_slot[s] (no term when row < 0: the slot was dropped); its gradient
 * dmerged[row] = gates[n, e] * dout[n] and dgates[n, e] = dout[n] . merged[row] (0 elsewhere). */

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
