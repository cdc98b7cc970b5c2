/* Generation's decoder step. Needs pool.c, vector_math.c and norms.c; the packed weights' order comes
 * from lib/blas/layout.ts (DECODER_LAYER_TENSORS, DECODER_FINAL_TENSORS). */

#include "kernels.h"

/* Generation's decoder step: one new position through the whole decoder in one call, the same maths
 * as Block.forward in evaluation (no dropout) with a key/value cache. For each row r of x (B, C),
 * the input at position t (this adds its position embedding): per layer
 *   a = ln1(x); q|k|v = a Wqkv; k, v go into the cache at t; o = attention of q over 0..t
 *   h = x + o Wproj + bproj;  n = ln2(h);  x = (pre_norm ? h : n) + GELU(n W1 + b1) W2 + b2
 * then logits (B, V) = ln_f(x) Whead + bhead.
 *
 * weights, one array: each layer's tensors, then the final ones, in the order of layout.ts's tables
 * (DECODER_LAYER_TENSORS, DECODER_FINAL_TENSORS: X(name, floats) with C the width, V the vocabulary,
 * P the positions); matrices are [in, out], row-major. Rows 0..t of the position table are read.
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

/* One layer's weights, and the final ones, as pointers into the packed array. */
#define POINTER(name, size) const float *name;
typedef struct {
  DECODER_LAYER_TENSORS(POINTER)
} layer_weights;
typedef struct {
  DECODER_FINAL_TENSORS(POINTER)
} final_weights;
#undef POINTER

#define TAKE(name, size) out->name = w, w += (size);
#define PLUS_SIZE(name, size) +(size)
/* Points `out` at the layer that starts at w; returns where the next one starts. */
static const float *layer_weights_at(const float *w, int64_t C, layer_weights *out) {
  DECODER_LAYER_TENSORS(TAKE)
  return w;
}

static void final_weights_at(const float *w, int64_t C, int64_t V, int64_t P, final_weights *out) {
  DECODER_FINAL_TENSORS(TAKE)
}
#undef TAKE

typedef struct {
  const float *weights, *x;
  float *cache, *logits;
  int64_t B, C, H, layers, V, P, t, max_t;
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
  const int64_t layer_size = 0 DECODER_LAYER_TENSORS(PLUS_SIZE);
  final_weights fin;
  final_weights_at(w + a->layers * layer_size, C, a->V, a->P, &fin);
  const float *pos = fin.position_embedding + a->t * C;
  for (int64_t r = 0; r < rows; r++) {
    for (int64_t c = 0; c < C; c++) x[r * C + c] = a->x[(r0 + r) * C + c] + pos[c];
  }
  for (int64_t l = 0; l < a->layers; l++) {
    layer_weights L;
    w = layer_weights_at(w, C, &L);
    float *kc = a->cache + l * 2 * a->B * H * a->max_t * hs, *vc = kc + a->B * H * a->max_t * hs;
    layer_norm_rows(x, L.ln1_weight, L.ln1_bias, n, stats, rows, (int32_t)C, a->eps);
    dense_rows(n, L.attn_qkv, NULL, qkv, rows, C, 3 * C); /* the projections have no bias */
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
    dense_rows(o, L.attn_proj_weight, L.attn_proj_bias, hres, rows, C, C);
    for (int64_t e = 0; e < rows * C; e++) hres[e] += x[e];
    layer_norm_rows(hres, L.ln2_weight, L.ln2_bias, n, stats, rows, (int32_t)C, a->eps);
    dense_rows(n, L.ffn_fc1_weight, L.ffn_fc1_bias, f, rows, C, F);
    unary_args g = {f, NULL, f};
    gelu_range(&g, 0, rows * F);
    dense_rows(f, L.ffn_fc2_weight, L.ffn_fc2_bias, o, rows, F, C);
    const float *res = a->pre_norm ? hres : n;
    for (int64_t e = 0; e < rows * C; e++) x[e] = res[e] + o[e];
  }
  layer_norm_rows(x, fin.ln_f_weight, fin.ln_f_bias, n, stats, rows, (int32_t)C, a->eps);
  dense_rows(n, fin.lm_head_weight, fin.lm_head_bias, a->logits + r0 * a->V, rows, C, a->V);
  free(x);
}
#undef PLUS_SIZE

int32_t seemore_decoder_step(const float *weights, const float *x, float *cache, float *logits,
                             int32_t B, int32_t C, int32_t H, int32_t layers, int32_t V, int32_t P,
                             int32_t t, int32_t max_t, float scale, float eps, int32_t pre_norm) {
  decoder_step_args a = {weights, x, cache, logits, B, C, H, layers, V, P, t, max_t, scale, eps, pre_norm, 0};
  parallel_for(B, 8, decoder_step_range, &a);
  return a.failed ? -2 : 0;
}
