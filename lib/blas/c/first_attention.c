/* Attention of the first position only (the ViT's CLS row), forward and gradient. Needs pool.c,
 * products.c, vector_math.c, dropout.c and attention.c. */

#include "kernels.h"

/* Attention of the first position only (the ViT's last block when only CLS is kept): its query
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
