/* Adam, into fresh arrays or in place on the wasm heap for many parameters at once. Needs pool.c. */

#include "kernels.h"

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
