// MultiModalProjector: turns visual features (width image_embed_dim) into "visual tokens" of the
// decoder's width n_embd with a two-layer GELU MLP, Linear(D, 4D) → GELU → Linear(4D, C) → Dropout,
// saved as net.0 / net.2. Applied to (B, V, D) it gives (B, V, C).

import { TwoLayerMLP } from "./mlp.ts";
import type { Initialiser } from "./module.ts";

export class MultiModalProjector extends TwoLayerMLP {
  constructor(nEmbd: number, imageEmbedDim: number, dropout: number, init: Initialiser) {
    const cfg = {
      nIn: imageEmbedDim,
      nHidden: 4 * imageEmbedDim,
      nOut: nEmbd,
      dropout,
      prefix: "net" as const,
    };
    super({ ...cfg, activation: "gelu" }, init);
  }
}
