// The CSV files a training run writes beside its checkpoint: metrics.csv (losses by step) and, for
// seeMoE, router.csv (each layer's routing by step, one row per expert: a long format for charts).

import type { RouterStats } from "./model/routing.ts";

/** One evaluation's figures, as train() records them. */
export interface MetricRow {
  step: number; // optimizer steps done when measured
  train_loss: number; // loss of the batch just trained on (with word_loss > 0: plus the weighted word loss)
  val_loss: number | null; // mean over eval_iters validation batches (null when there is no val set)
  elapsed_s: number; // training time so far (evaluation excluded)
  router?: RouterStats[]; // seeMoE: each MoE layer's routing on the batch just trained on (router.csv)
}

export function metricsCsv(rows: MetricRow[]): string {
  const lines = rows.map((r) => [r.step, r.train_loss, r.val_loss ?? "", r.elapsed_s].join(","));
  return ["step,train_loss,val_loss,elapsed_s", ...lines].join("\n") + "\n";
}

/** One row per (step, layer, expert) of the router statistics in `rows`. */
export function routerStatsCsv(rows: { step: number; router?: RouterStats[] }[]): string {
  const lines = ["step,layer,expert,share,entropy,gate_entropy,balance,dropped"];
  for (const { step, router } of rows) {
    router?.forEach((s, layer) =>
      s.share.forEach((share, expert) =>
        lines.push([step, layer, expert, share, s.entropy, s.gateEntropy, s.balance, s.dropped].join(","))
      )
    );
  }
  return lines.join("\n") + "\n";
}
