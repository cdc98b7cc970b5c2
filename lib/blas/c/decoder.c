/* Generation's decoder steps: seemore's and seeMoE's. Needs pool.c, vector_math.c and norms.c; the
 * order of the weights comes from lib/blas/layout.ts (its decoder step tables). */

#include "kernels.h"

/* One new position through the whole decoder in one call, the same maths as the blocks' forward in
 * evaluation (no dropout) with a key/value cache. For each row r of x (B, C), the input at position t
 * (this adds its position embedding): per layer
 *   a = ln1(x); q|k|v = a Wqkv; k, v go into the cache at t; o = attention of q over 0..t
 *   h = x + o Wproj + bproj;  n = ln2(h);  x = (pre_norm ? h : n) + f(n)
 * with f seemore's feed-forward, GELU(n W1 + b1) W2 + b2, or seeMoE's mixture (mixture_rows below);
 * then logits (B, V) = ln_f(x) Whead + bhead.
 *
 * The weights are read in place: tensor i of the step lies at byte offsets[i] of `heap`, in the order
 * of layout.ts's tables (per layer DECODER_ATTENTION_TENSORS, then DECODER_FFN_TENSORS, or
 * MOE_ROUTER_TENSORS and E times MOE_EXPERT_TENSORS; then DECODER_FINAL_TENSORS); matrices are
 * [in, out], row-major. Rows 0..t of the position table are read.
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

/* dense_rows for inputs that are mostly zero (ReLU's outputs): a zero input adds nothing, and a row of
 * W that no row needs is not read. */
SIMD_CLONES static void sparse_dense_rows(const float *x, const float *w, const float *bias, float *y,
                                          int64_t rows, int64_t k, int64_t n) {
  for (int64_t r = 0; r < rows; r++) memcpy(y + r * n, bias, (size_t)n * sizeof(float));
  for (int64_t i = 0; i < k; i++) {
    const float *wi = w + i * n;
    for (int64_t r = 0; r < rows; r++) {
      float xi = x[r * k + i];
      if (xi == 0.0f) continue;
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

/* Each table's tensors, as pointers into the heap. */
#define POINTER(name, size) const float *name;
typedef struct {
  DECODER_ATTENTION_TENSORS(POINTER)
} attention_weights;
typedef struct {
  DECODER_FFN_TENSORS(POINTER)
} ffn_weights;
typedef struct {
  MOE_ROUTER_TENSORS(POINTER)
} router_weights;
typedef struct {
  MOE_EXPERT_TENSORS(POINTER)
} expert_weights;
typedef struct {
  DECODER_FINAL_TENSORS(POINTER)
} final_weights;
#undef POINTER

/* Points each field of `out` at its tensor, taking the next offsets in order; returns the ones after. */
#define TAKE(name, size) out->name = heap_floats(heap, *offsets++);
static const uint32_t *take_attention(uint8_t *heap, const uint32_t *offsets, attention_weights *out) {
  DECODER_ATTENTION_TENSORS(TAKE)
  return offsets;
}
static const uint32_t *take_ffn(uint8_t *heap, const uint32_t *offsets, ffn_weights *out) {
  DECODER_FFN_TENSORS(TAKE)
  return offsets;
}
static const uint32_t *take_router(uint8_t *heap, const uint32_t *offsets, router_weights *out) {
  MOE_ROUTER_TENSORS(TAKE)
  return offsets;
}
static const uint32_t *take_expert(uint8_t *heap, const uint32_t *offsets, expert_weights *out) {
  MOE_EXPERT_TENSORS(TAKE)
  return offsets;
}
static void take_final(uint8_t *heap, const uint32_t *offsets, final_weights *out) {
  DECODER_FINAL_TENSORS(TAKE)
}
#undef TAKE

/* Tensors per expert and per layer (the tables' fields counted). */
#define COUNT(name, size) +1
#define EXPERT_COUNT (0 MOE_EXPERT_TENSORS(COUNT))
#define DENSE_LAYER_COUNT (0 DECODER_ATTENTION_TENSORS(COUNT) DECODER_FFN_TENSORS(COUNT))
#define MOE_LAYER_COUNT(E) (0 DECODER_ATTENTION_TENSORS(COUNT) MOE_ROUTER_TENSORS(COUNT) + (E) * EXPERT_COUNT)

typedef struct {
  uint8_t *heap;
  const uint32_t *offsets;
  const float *x;
  float *cache, *logits;
  int64_t B, C, H, layers, E, k, V, P, t, max_t; /* E = 0: seemore's feed-forward */
  float scale, eps;
  int32_t pre_norm, failed;
} decoder_step_args;

/* One chunk's scratch: the stream and the attention half's buffers, and seeMoE's. */
typedef struct {
  float *x, *n, *o, *qkv, *f, *scores, *stats;
  /* seeMoE: the router's logits (rows, E), gates (rows, k); each expert's rows one after another, as
   * inputs then outputs (rows * k, C) and hidden (rows * k, 4C); the outputs by row and choice (rows, k, C) */
  float *router, *gates, *picked_x, *hidden, *outs;
  int32_t *chosen, *picked; /* seeMoE: the experts (rows, k); row * k + choice of each picked row */
  int64_t *starts;          /* seeMoE: each expert's first picked row (E + 1) */
} step_scratch;

static void *step_scratch_alloc(const decoder_step_args *a, int64_t rows, step_scratch *s) {
  int64_t C = a->C, F = 4 * C, T = a->t + 1, E = a->E, k = a->k;
  int64_t floats = rows * (3 * C + 3 * C + F) + T + 2 * rows + rows * (E + k + k * C + k * F + k * C);
  size_t bytes = (size_t)floats * sizeof(float) + (size_t)(E + 1) * sizeof(int64_t) +
                 (size_t)(2 * rows * k) * sizeof(int32_t);
  int64_t *m = malloc(bytes); /* the int64s first: aligned */
  if (!m) return NULL;
  s->starts = m, s->x = (float *)(void *)(s->starts + E + 1);
  s->n = s->x + rows * C, s->o = s->n + rows * C, s->qkv = s->o + rows * C;
  s->f = s->qkv + rows * 3 * C, s->scores = s->f + rows * F, s->stats = s->scores + T;
  s->router = s->stats + 2 * rows, s->gates = s->router + rows * E, s->picked_x = s->gates + rows * k;
  s->hidden = s->picked_x + rows * k * C, s->outs = s->hidden + rows * k * F;
  s->chosen = (int32_t *)(void *)(s->outs + rows * k * C), s->picked = s->chosen + rows * k;
  return m;
}

/* Layer l's attention half for rows r0..r0+rows of the batch: from x (rows, C) writes the position's
 * keys and values into the cache and returns h = x + attention (in s->qkv's place), with n = ln2(h). */
static float *attention_half(const decoder_step_args *a, const attention_weights *L, int64_t l, int64_t r0,
                             int64_t rows, step_scratch *s) {
  int64_t C = a->C, H = a->H, hs = C / H, T = a->t + 1;
  float *kc = a->cache + l * 2 * a->B * H * a->max_t * hs, *vc = kc + a->B * H * a->max_t * hs;
  layer_norm_rows(s->x, L->ln1_weight, L->ln1_bias, s->n, s->stats, rows, (int32_t)C, a->eps);
  dense_rows(s->n, L->attn_qkv, NULL, s->qkv, rows, C, 3 * C); /* the projections have no bias */
  for (int64_t r = 0; r < rows; r++) {
    const float *q = s->qkv + r * 3 * C;
    for (int64_t h = 0; h < H; h++) {
      int64_t head = ((r0 + r) * H + h) * a->max_t * hs;
      float *kh = kc + head, *vh = vc + head, *out = s->o + r * C + h * hs;
      memcpy(kh + a->t * hs, q + C + h * hs, (size_t)hs * sizeof(float));
      memcpy(vh + a->t * hs, q + 2 * C + h * hs, (size_t)hs * sizeof(float));
      for (int64_t j = 0; j < T; j++) {
        float dot = 0.0f;
        for (int64_t d = 0; d < hs; d++) dot += q[h * hs + d] * kh[j * hs + d];
        s->scores[j] = a->scale * dot;
      }
      softmax_rows(s->scores, 1, T, -1);
      for (int64_t d = 0; d < hs; d++) out[d] = 0.0f;
      for (int64_t j = 0; j < T; j++) {
        for (int64_t d = 0; d < hs; d++) out[d] += s->scores[j] * vh[j * hs + d];
      }
    }
  }
  float *hres = s->qkv; /* reuse: h = x + o Wproj + bproj, (rows, C) */
  dense_rows(s->o, L->attn_proj_weight, L->attn_proj_bias, hres, rows, C, C);
  for (int64_t e = 0; e < rows * C; e++) hres[e] += s->x[e];
  layer_norm_rows(hres, L->ln2_weight, L->ln2_bias, s->n, s->stats, rows, (int32_t)C, a->eps);
  return hres;
}

/* seemore's feed-forward: s->o (rows, C) = GELU(n W1 + b1) W2 + b2. */
static void feed_forward_rows(const ffn_weights *W, int64_t rows, int64_t C, step_scratch *s) {
  int64_t F = 4 * C;
  dense_rows(s->n, W->ffn_fc1_weight, W->ffn_fc1_bias, s->f, rows, C, F);
  unary_args g = {s->f, NULL, s->f};
  gelu_range(&g, 0, rows * F);
  dense_rows(s->f, W->ffn_fc2_weight, W->ffn_fc2_bias, s->o, rows, F, C);
}

/* Column indices of the k largest of `values` (cols of them), in order; ties go to the lower index, as
 * lib/model/routing.ts's topKIndices chooses. */
static void top_k(const float *values, int64_t cols, int64_t k, int32_t *out) {
  for (int64_t j = 0; j < k; j++) {
    int64_t best = -1;
    for (int64_t c = 0; c < cols; c++) {
      int taken = 0;
      for (int64_t i = 0; i < j; i++) taken |= out[i] == c;
      if (!taken && (best < 0 || values[c] > values[best])) best = c;
    }
    out[j] = (int32_t)best;
  }
}

/* Multiply-adds from which mixture_rows runs its experts side by side on the pool's threads: one row's
 * two experts at width 128 (2 * 2 * 128 * 512) already pay, as each streams its weights from memory. */
#define EXPERTS_SPLIT_MACS (1 << 17)

/* The experts of one mixture_rows call, for parallel_for: active[i] is the i-th expert with rows. */
typedef struct {
  const decoder_step_args *a;
  const uint32_t *experts;
  const int32_t *active;
  step_scratch *s;
} experts_job;

/* Experts active[i0..i1]: each runs ReLU(x W1 + b1) W2 + b2 on its picked rows, its outputs put by row
 * and choice. */
static void step_experts_range(void *p, int64_t i0, int64_t i1) {
  experts_job *job = p;
  step_scratch *s = job->s;
  int64_t C = job->a->C, F = 4 * C;
  for (int64_t i = i0; i < i1; i++) {
    int64_t e = job->active[i], start = s->starts[e], count = s->starts[e + 1] - start;
    expert_weights W;
    take_expert(job->a->heap, job->experts + e * EXPERT_COUNT, &W);
    float *x = s->picked_x + start * C, *h = s->hidden + start * F;
    dense_rows(x, W.fc1_weight, W.fc1_bias, h, count, C, F);
    unary_args relu = {h, h, h}; /* ReLU in place: h where h > 0, else 0 */
    relu_grad_range(&relu, 0, count * F);
    sparse_dense_rows(h, W.fc2_weight, W.fc2_bias, x, count, F, C); /* the outputs over the inputs */
    for (int64_t r = 0; r < count; r++) {
      memcpy(s->outs + (int64_t)s->picked[start + r] * C, x + r * C, (size_t)C * sizeof(float));
    }
  }
}

/* seeMoE's mixture, as SparseMoE.forward in evaluation: s->o (rows, C) from n (rows, C). The router's
 * logits n Wr + br choose each row's k experts (top_k), weighted by the softmax over those k logits
 * (the others' weights are exactly 0, as in the op's softmax with -1e9 added elsewhere); each expert,
 * ReLU(n W1 + b1) W2 + b2, runs once on the rows that chose it (the experts side by side on the kernel
 * threads, given rows enough); each row's outputs are summed in the order of its choices (as the combine op sums them).
 * `experts`: the offsets of expert 0's tensors. */
static void mixture_rows(const decoder_step_args *a, const router_weights *R, const uint32_t *experts,
                         int64_t rows, step_scratch *s) {
  int64_t C = a->C, E = a->E, k = a->k;
  dense_rows(s->n, R->router_weight, R->router_bias, s->router, rows, C, E);
  for (int64_t r = 0; r < rows; r++) {
    const float *logits = s->router + r * E;
    int32_t *chosen = s->chosen + r * k;
    top_k(logits, E, k, chosen);
    float top = logits[chosen[0]], total = 0.0f;
    for (int64_t e = 0; e < E; e++) { /* summed in the experts' order, as softmax over all E sums */
      for (int64_t j = 0; j < k; j++) {
        if (chosen[j] == e) total += expf(logits[e] - top);
      }
    }
    for (int64_t j = 0; j < k; j++) s->gates[r * k + j] = expf(logits[chosen[j]] - top) / total;
  }
  /* Each expert's rows, grouped: starts from the counts, then the rows in order. */
  memset(s->starts, 0, (size_t)(E + 1) * sizeof(int64_t));
  for (int64_t i = 0; i < rows * k; i++) s->starts[s->chosen[i] + 1]++;
  int32_t active[E > 0 ? E : 1];
  int64_t n_active = 0;
  for (int64_t e = 0; e < E; e++) {
    if (s->starts[e + 1] > 0) active[n_active++] = (int32_t)e;
    s->starts[e + 1] += s->starts[e];
  }
  int64_t fill[E > 0 ? E : 1];
  for (int64_t e = 0; e < E; e++) fill[e] = s->starts[e];
  for (int64_t i = 0; i < rows * k; i++) {
    int64_t at = fill[s->chosen[i]]++;
    memcpy(s->picked_x + at * C, s->n + (i / k) * C, (size_t)C * sizeof(float));
    s->picked[at] = (int32_t)i;
  }
  experts_job job = {a, experts, active, s};
  /* Side by side only with work enough to pay for handing an expert to a helper thread. */
  if (rows * k * 2 * C * 4 * C >= EXPERTS_SPLIT_MACS) parallel_for(n_active, 1, step_experts_range, &job);
  else step_experts_range(&job, 0, n_active);
  for (int64_t r = 0; r < rows; r++) {
    float *o = s->o + r * C;
    memset(o, 0, (size_t)C * sizeof(float));
    for (int64_t j = 0; j < k; j++) {
      float g = s->gates[r * k + j];
      const float *y = s->outs + (r * k + j) * C;
      for (int64_t c = 0; c < C; c++) o[c] += g * y[c];
    }
  }
}

static void decoder_step_range(void *p, int64_t r0, int64_t r1) {
  decoder_step_args *a = p;
  int64_t rows = r1 - r0, C = a->C;
  step_scratch s;
  void *memory = step_scratch_alloc(a, rows, &s);
  if (!memory) {
    __atomic_store_n(&a->failed, 1, __ATOMIC_RELAXED);
    return;
  }
  int64_t per_layer = a->E > 0 ? MOE_LAYER_COUNT(a->E) : DENSE_LAYER_COUNT;
  final_weights fin;
  take_final(a->heap, a->offsets + a->layers * per_layer, &fin);
  const float *pos = fin.position_embedding + a->t * C;
  for (int64_t r = 0; r < rows; r++) {
    for (int64_t c = 0; c < C; c++) s.x[r * C + c] = a->x[(r0 + r) * C + c] + pos[c];
  }
  const uint32_t *o = a->offsets;
  for (int64_t l = 0; l < a->layers; l++) {
    attention_weights L;
    o = take_attention(a->heap, o, &L);
    float *h = attention_half(a, &L, l, r0, rows, &s);
    if (a->E > 0) {
      router_weights R;
      o = take_router(a->heap, o, &R);
      mixture_rows(a, &R, o, rows, &s);
      o += a->E * EXPERT_COUNT;
    } else {
      ffn_weights W;
      o = take_ffn(a->heap, o, &W);
      feed_forward_rows(&W, rows, C, &s);
    }
    const float *res = a->pre_norm ? h : s.n;
    for (int64_t e = 0; e < rows * C; e++) s.x[e] = res[e] + s.o[e];
  }
  layer_norm_rows(s.x, fin.ln_f_weight, fin.ln_f_bias, s.n, s.stats, rows, (int32_t)C, a->eps);
  dense_rows(s.n, fin.lm_head_weight, fin.lm_head_bias, a->logits + r0 * a->V, rows, C, a->V);
  free(memory);
}

static int32_t run_decoder_step(decoder_step_args *a) {
  parallel_for(a->B, 8, decoder_step_range, a);
  return a->failed ? -2 : 0;
}

int32_t seemore_decoder_step(uint8_t *heap, const uint32_t *offsets, const float *x, float *cache,
                             float *logits, int32_t B, int32_t C, int32_t H, int32_t layers, int32_t V,
                             int32_t P, int32_t t, int32_t max_t, float scale, float eps, int32_t pre_norm) {
  decoder_step_args a = {heap, offsets, x, cache, logits, B, C, H, layers, 0, 0, V, P, t, max_t, scale, eps,
                         pre_norm, 0};
  return run_decoder_step(&a);
}

/* seeMoE's decoder step: as seemore_decoder_step, with E experts per layer and k of them per row. */
int32_t seemore_moe_decoder_step(uint8_t *heap, const uint32_t *offsets, const float *x, float *cache,
                                 float *logits, int32_t B, int32_t C, int32_t H, int32_t layers, int32_t E,
                                 int32_t k, int32_t V, int32_t P, int32_t t, int32_t max_t, float scale,
                                 float eps, int32_t pre_norm) {
  decoder_step_args a = {heap, offsets, x, cache, logits, B, C, H, layers, E, k, V, P, t, max_t, scale, eps,
                         pre_norm, 0};
  return run_decoder_step(&a);
}
