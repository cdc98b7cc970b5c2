/* Dropout and its noise: tf.randomUniform's draws, bit for bit, in chunks that run on any thread.
 * Needs pool.c. */

#include "kernels.h"

/* ---------------------------------------------------------------------------------------------
 * tf.randomUniform's noise, bit for bit: tfjs draws it from seedrandom's Alea generator and stores
 * each value as a float. Alea computes t = 2091639 s0 + c 2^-32 in doubles, where every s is a
 * multiple of 2^-32 and t < 2^53 / 2^32, so those doubles are exact: with S = s 2^32 the same step
 * is the integer multiply-with-carry T = 2091639 S0 + c, c' = T >> 32, S' = T mod 2^32 — the same
 * numbers, faster (the carry chain is an integer multiply-add instead of a float round trip).
 * state = {c, s0, s1, s2} as native/alea.ts seeds it (exactly as seedrandom does). */

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
 * draws (native/alea.ts jumps ahead to it), so chunks run on any thread and the draws are still the one
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
