/* A whole transformer block, forward and backward, each one call. Needs every family before it in
 * kernels.c; the tensors' order comes from lib/blas/layout.ts (BLK_*). */

#include "kernels.h"

/* One transformer block (lib/model/block.ts) in one call each way, with seemore's GELU feed-forward or
 * (relu) the ReLU one of seeMoE's ViT when its dropout is off:
 * the kernels above, called in the order and with the arguments the op-by-op fast path uses, so the
 * numbers are the same and a block costs two calls into C instead of ~60 tfjs kernels. Rows R = B T:
 *   a = LN1(x);  qkv = a Wqkv;  m = attention(qkv);  x1 = x + dropout(m Wp + bp);
 *   n = LN2(x1);  h = n W1 + b1;  out = (pre_norm ? x1 : n) + (act(h) W2 + b2),  act GELU or ReLU
 * Tensors are passed as offsets into the wasm heap, offsets[BLK_*] in the order of layout.ts's
 * BLOCK_TENSORS (the forward pass writes out and the saved tensors; the backward pass reads them and
 * writes dx and the gradients, BLK_D*). The dropout noise comes as chunk states (as seemore_dropout
 * takes them): noise_att for the attention weights (B, H, T, T), noise_proj for the projection's output
 * (R, C); NULL without dropout (the masks are then not touched). */

/* The scratch region, in floats per element of (R, C) (F = 4 C): forward proj (R, C) and act's output
 * (R, F); backward act's output, its gradient and h's (R, F each). layout.ts sizes it. */
enum { SCRATCH_FORWARD = 1 + 4, SCRATCH_BACKWARD = 3 * 4 };
/* The attention half's (seemore_attention_half below), in the same units: a, qkv, m; then a, qkv, m,
 * dproj, dm, dqkv, da and two statistics per row (at most one more unit). */
enum { HALF_SCRATCH_FORWARD = 1 + 3 + 1, HALF_SCRATCH_BACKWARD = 1 + 3 + 1 + 1 + 1 + 3 + 1 + 1 };
_Static_assert(SCRATCH_FORWARD <= BLK_SCRATCH_FORWARD && SCRATCH_BACKWARD <= BLK_SCRATCH_BACKWARD,
               "lib/blas/layout.ts gives the block less scratch than block.c uses");
_Static_assert(HALF_SCRATCH_FORWARD <= BLK_SCRATCH_FORWARD && HALF_SCRATCH_BACKWARD <= BLK_SCRATCH_BACKWARD,
               "lib/blas/layout.ts gives the attention half less scratch than block.c uses");

typedef struct {
  int32_t B, T, C, H, pre_norm, causal, relu;
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
  if (d->relu) seemore_relu_grad(h, h, g, (int32_t)(R * F)); /* h where h > 0, else 0 */
  else seemore_gelu(h, g, (int32_t)(R * F));
  block_dense(g, T_(BLK_W2), T_(BLK_BF), out, R, F, C);
  add_into(out, d->pre_norm ? x1 : n, R * C);
  return 0;
}

int32_t seemore_block_grad(uint8_t *heap, const uint32_t *o, int32_t has_dropout, const block_dims *d) {
  if (!sgemm) return -1;
  int64_t R = (int64_t)d->B * d->T, C = d->C, F = 4 * C;
  float *dout = T_(BLK_DOUT), *dx = T_(BLK_DX);
  float *s = T_(BLK_SCRATCH), *g = s, *dg = s + R * F, *dh = s + 2 * R * F;
  /* the feed-forward: out = res + act(h) W2 + b2 */
  block_dense_input_grad(dout, T_(BLK_W2), dg, R, F, C);
  if (d->relu) {
    seemore_relu_grad(T_(BLK_H), T_(BLK_H), g, (int32_t)(R * F)); /* act(h) again */
    seemore_relu_grad(T_(BLK_H), dg, dh, (int32_t)(R * F));
  } else {
    seemore_gelu_with_grad(T_(BLK_H), dg, g, dh, (int32_t)(R * F));
  }
  block_dense_weight_grad(g, dout, T_(BLK_DW2), T_(BLK_DBF), R, F, C);
  block_dense_weight_grad(T_(BLK_N), dh, T_(BLK_DW1), T_(BLK_DBH), R, C, F);
  float *dn = s, *dx1 = s + R * C, *dproj = s + 2 * R * C, *dmerged = s + 3 * R * C, *dqkv = s + 4 * R * C;
  float *da = s + 7 * R * C; /* all inside g and dg, no longer needed; dh ends at 12 R C */
  block_dense_input_grad(dh, T_(BLK_W1), dn, R, C, F);
  if (!d->pre_norm) add_into(dn, dout, R * C); /* n's gradient: the residual's, then the layer's */
  int32_t rc = seemore_layer_norm_grad(dn, T_(BLK_X1), T_(BLK_G2), T_(BLK_MEAN2), T_(BLK_RSTD2), dx1,
                                       T_(BLK_DG2), T_(BLK_DB2), (int32_t)R, (int32_t)C);
  if (rc != 0) return rc;
  if (d->pre_norm) add_into(dx1, dout, R * C);
  /* the attention: x1 = x + dropout(merged Wp + bp) */
  if (has_dropout) seemore_dropout_grad(dx1, heap + o[BLK_MASK_PROJ], dproj, (int32_t)(R * C), d->keep);
  else memcpy(dproj, dx1, (size_t)(R * C) * sizeof(float));
  block_dense_weight_grad(T_(BLK_MERGED), dproj, T_(BLK_DWP), T_(BLK_DBP), R, C, C);
  block_dense_input_grad(dproj, T_(BLK_WP), dmerged, R, C, C);
  const uint8_t *mask_att = has_dropout ? heap + o[BLK_MASK_ATT] : NULL;
  rc = seemore_attention_grad(dmerged, T_(BLK_QKV), T_(BLK_PROBS), mask_att, dqkv, d->B, d->T, d->H,
                              (int32_t)(C / d->H), d->scale, d->causal, d->keep);
  if (rc != 0) return rc;
  block_dense_weight_grad(T_(BLK_A), dqkv, T_(BLK_DWQKV), NULL, R, C, 3 * C);
  block_dense_input_grad(dqkv, T_(BLK_WQKV), da, R, C, 3 * C);
  rc = seemore_layer_norm_grad(da, T_(BLK_X), T_(BLK_G1), T_(BLK_MEAN1), T_(BLK_RSTD1), dx, T_(BLK_DG1),
                               T_(BLK_DB1), (int32_t)R, (int32_t)C);
  if (rc != 0) return rc;
  add_into(dx, dx1, R * C); /* dx = dx1 + dx: the residual's gradient, then LN1's */
#undef T_
  return 0;
}

/* The block's first half alone (seeMoE's blocks, whose second half is the mixture of experts), with the
 * same calls as seemore_block makes, so the same numbers as the layers:
 *   a = LN1(x);  qkv = a Wqkv;  m = attention(qkv);  x1 = x + dropout(m Wp + bp),
 * written in x1's place (BLK_X1). It keeps only LN1's statistics and the dropout masks: a, qkv and m are
 * scratch (3 + 2 R C floats), and the gradient computes them again from x (the same calls: the same
 * bits). Same tensors as the whole block (BLOCK_TENSORS); the feed-forward's are not read. */
#define T_(i) heap_floats(heap, o[i])
int32_t seemore_attention_half(uint8_t *heap, const uint32_t *o, const double *noise_att,
                               const double *noise_proj, int32_t chunk, const block_dims *d) {
  if (!sgemm) return -1;
  int64_t R = (int64_t)d->B * d->T, C = d->C;
  float *x = T_(BLK_X), *x1 = T_(BLK_X1), *a = T_(BLK_SCRATCH), *qkv = a + R * C, *m = qkv + 3 * R * C;
  seemore_layer_norm(x, T_(BLK_G1), T_(BLK_B1), a, T_(BLK_MEAN1), T_(BLK_RSTD1), (int32_t)R, (int32_t)C,
                     d->eps);
  block_dense(a, T_(BLK_WQKV), NULL, qkv, R, C, 3 * C);
  int32_t rc = seemore_attention(qkv, noise_att, chunk, m, NULL, heap + o[BLK_MASK_ATT], d->B, d->T, d->H,
                                 (int32_t)(C / d->H), d->scale, d->causal, d->keep);
  if (rc != 0) return rc;
  if (noise_proj) {
    float *proj = a; /* a is no longer needed */
    block_dense(m, T_(BLK_WP), T_(BLK_BP), proj, R, C, C);
    seemore_dropout(proj, x1, heap + o[BLK_MASK_PROJ], (int32_t)(R * C), d->keep, noise_proj, chunk);
  } else {
    block_dense(m, T_(BLK_WP), T_(BLK_BP), x1, R, C, C); /* no dropout: straight into x1 */
  }
  add_into(x1, x, R * C); /* x1 = x + dropout(proj) */
  return 0;
}

/* Gradient of seemore_attention_half: from dout (x1's gradient) and x, LN1's statistics and the masks,
 * writes dx and the gradients of g1, b1, Wqkv, Wp and bp. The scratch: a, qkv and m recomputed, then
 * dproj, dm, dqkv, da, and LN1's statistics again (11 R C + 2 R floats). */
int32_t seemore_attention_half_grad(uint8_t *heap, const uint32_t *o, int32_t has_dropout,
                                    const block_dims *d) {
  if (!sgemm) return -1;
  int64_t R = (int64_t)d->B * d->T, C = d->C;
  float *x = T_(BLK_X), *dout = T_(BLK_DOUT), *dx = T_(BLK_DX);
  float *a = T_(BLK_SCRATCH), *qkv = a + R * C, *m = qkv + 3 * R * C, *dproj = m + R * C;
  float *dm = dproj + R * C, *dqkv = dm + R * C, *da = dqkv + 3 * R * C, *stats = da + R * C;
  const uint8_t *mask_att = has_dropout ? heap + o[BLK_MASK_ATT] : NULL;
  /* the forward pass again, up to m, the masks read instead of drawn */
  seemore_layer_norm(x, T_(BLK_G1), T_(BLK_B1), a, stats, stats + R, (int32_t)R, (int32_t)C, d->eps);
  block_dense(a, T_(BLK_WQKV), NULL, qkv, R, C, 3 * C);
  int32_t rc = attention_with_mask(qkv, mask_att, m, NULL, d->B, d->T, d->H, (int32_t)(C / d->H), d->scale,
                                   d->causal, d->keep);
  if (rc != 0) return rc;
  /* then the gradient, as seemore_block_grad's attention part */
  if (has_dropout) seemore_dropout_grad(dout, heap + o[BLK_MASK_PROJ], dproj, (int32_t)(R * C), d->keep);
  else memcpy(dproj, dout, (size_t)(R * C) * sizeof(float));
  block_dense_weight_grad(m, dproj, T_(BLK_DWP), T_(BLK_DBP), R, C, C);
  block_dense_input_grad(dproj, T_(BLK_WP), dm, R, C, C);
  rc = seemore_attention_grad(dm, qkv, NULL, mask_att, dqkv, d->B, d->T, d->H, (int32_t)(C / d->H), d->scale,
                              d->causal, d->keep);
  if (rc != 0) return rc;
  block_dense_weight_grad(a, dqkv, T_(BLK_DWQKV), NULL, R, C, 3 * C);
  block_dense_input_grad(dqkv, T_(BLK_WQKV), da, R, C, 3 * C);
  rc = seemore_layer_norm_grad(da, x, T_(BLK_G1), T_(BLK_MEAN1), T_(BLK_RSTD1), dx, T_(BLK_DG1), T_(BLK_DB1),
                               (int32_t)R, (int32_t)C);
  if (rc != 0) return rc;
  add_into(dx, dout, R * C); /* dx = dout + dx: the residual's gradient, then LN1's */
  return 0;
}
#undef T_
