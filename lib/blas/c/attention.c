/* Multi-head attention: forward, gradient, and generation's cached form. Needs pool.c, products.c,
 * vector_math.c (softmax) and dropout.c. */

#include "kernels.h"

/* Multi-head self-attention reading q, k and v in place from the fused projection
 * qkv (B, T, 3C) = [all heads' queries | keys | values], head h at columns h*hs of each part,
 * and writing the heads side by side into out (B, T, C) — no split, no transposes:
 *   S = scale * Q K^T (+ causal mask);  P = softmax(S);  out = (P * mult) V
 * probs (B, H, T, T) receives P (before dropout) when the caller keeps it (NULL: the gradient
 * recomputes it). With noise (dropout: the states of the chunks of draws for (B, H, T, T) in that
 * order, as seemore_dropout takes them), mult and mask are as in seemore_dropout; with NULL, mult = 1
 * and mask is not touched. Returns 0, or -1 without sgemm (seemore_bind_sgemm not called), -2 out of
 * memory. */

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

/* P = softmax(scale * Q K^T (+ causal mask)) of one head into probs (T, T): the forward pass's, and
 * the gradient's when it recomputes them (the same calls on the same values: the same bits). */
static void attention_probs(const attention_args *a, const float *q, const float *k, float *probs) {
  int64_t T = a->T, C3 = 3 * a->H * a->hs;
  sgemm(ROW_MAJOR, NO_TRANS, TRANS, (int)T, (int)T, (int)a->hs, a->scale, q, (int)C3, k, (int)C3, 0.0f,
        probs, (int)T);
  softmax_rows(probs, T, T, a->causal ? 0 : -1);
}

/* Heads bh0..bh1 (flat b * H + h) of the forward pass. */
static void attention_range(void *p, int64_t bh0, int64_t bh1) {
  attention_args *a = p;
  int64_t T = a->T, H = a->H, hs = a->hs, C = H * hs, C3 = 3 * C, TT = T * T;
  float inv_keep = 1.0f / a->keep; /* == floor(u + keep) / keep for a kept weight */
  /* scratch: the weights after dropout, and P when not kept */
  float *scratch = malloc((size_t)TT * 2 * sizeof(float));
  if (!scratch) {
    __atomic_store_n(&a->failed, 1, __ATOMIC_RELAXED);
    return;
  }
  float *dropped = scratch + TT;
  for (int64_t bh = bh0; bh < bh1; bh++) {
    int64_t b = bh / H, h = bh % H;
    const float *q = a->qkv + b * T * C3 + h * hs, *k = q + C, *v = q + 2 * C;
    float *probs = a->probs ? a->probs + bh * TT : scratch;
    attention_probs(a, q, k, probs);
    const float *weights = dropout_weights(probs, a->mask ? a->mask + bh * TT : NULL, inv_keep, dropped, TT);
    sgemm(ROW_MAJOR, NO_TRANS, NO_TRANS, (int)T, (int)hs, (int)T, 1.0f, weights, (int)T, v, (int)C3,
          0.0f, a->out + b * T * C + h * hs, (int)C);
  }
  free(scratch);
}

/* The forward pass with the dropout flags already drawn (mask NULL: no dropout): seemore_attention's
 * after its draws, and the attention half's gradient when it recomputes the heads (attention_half_grad). */
static int32_t attention_with_mask(const float *qkv, const uint8_t *mask, float *out, float *probs, int32_t B,
                                   int32_t T, int32_t H, int32_t hs, float scale, int32_t causal, float keep) {
  attention_args a = {qkv, NULL, NULL, mask, out, probs, NULL, T, H, hs, scale, keep, causal, 0};
  parallel_for((int64_t)B * H, ATTENTION_GRAIN, attention_range, &a);
  return a.failed ? -2 : 0;
}

int32_t seemore_attention(const float *qkv, const double *noise, int32_t chunk, float *out, float *probs,
                          uint8_t *mask, int32_t B, int32_t T, int32_t H, int32_t hs, float scale,
                          int32_t causal, float keep) {
  if (!sgemm) return -1;
  int64_t TT = (int64_t)T * T;
  /* the dropout flags first, in tf.dropout's order: noise holds the states of its chunks of draws */
  if (noise) draw_masks(noise, chunk, (int64_t)B * H * TT, keep, mask, NULL, NULL);
  return attention_with_mask(qkv, noise ? mask : NULL, out, probs, B, T, H, hs, scale, causal, keep);
}

/* Gradient of seemore_attention: from dout (B, T, C), the saved qkv, probs (NULL: recomputed from qkv)
 * and mask (NULL when there was no dropout), writes dqkv (B, T, 3C). With M = mult and W = P * M:
 *   dV = W^T dO;  dW = dO V^T;  dP = dW * M;  dS = P * (dP - rowsum(dP * P));
 *   dQ = scale * dS K;  dK = scale * dS^T Q. */
/* Heads bh0..bh1 of the backward pass (each writes only its own columns of dqkv). */
static void attention_grad_range(void *p, int64_t bh0, int64_t bh1) {
  attention_args *a = p;
  int64_t T = a->T, H = a->H, hs = a->hs, C = H * hs, C3 = 3 * C, TT = T * T;
  float inv_keep = 1.0f / a->keep;
  float *w = malloc((size_t)TT * 3 * sizeof(float));
  if (!w) {
    __atomic_store_n(&a->failed, 1, __ATOMIC_RELAXED);
    return;
  }
  float *dp = w + TT, *recomputed = dp + TT;
  for (int64_t bh = bh0; bh < bh1; bh++) {
    int64_t b = bh / H, h = bh % H;
    const float *q = a->qkv + b * T * C3 + h * hs, *k = q + C, *v = q + 2 * C;
    const float *d_o = a->dout + b * T * C + h * hs;
    float *dq = a->dqkv + b * T * C3 + h * hs, *dk = dq + C, *dv = dq + 2 * C;
    const float *probs = a->saved_probs ? a->saved_probs + bh * TT : recomputed;
    if (!a->saved_probs) attention_probs(a, q, k, recomputed);
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
                               int32_t hs, float scale, int32_t causal, float keep) {
  if (!sgemm) return -1;
  attention_args a = {qkv, dout, probs, mask, NULL, NULL, dqkv, T, H, hs, scale, keep, causal, 0};
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
