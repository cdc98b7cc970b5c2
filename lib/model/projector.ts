// MultiModalProjector: turns visual features (width image_embed_dim) into "visual tokens" of the
// decoder's width n_embd, with a two-layer GELU MLP (Linear(D, 4D) → GELU → Linear(4D, C) → Dropout),
// saved as net.0 / net.2. Applied to (B, V, D) it gives (B, V, C).

import { TwoLayerNet } from "./mlp.ts";
import type { Initialiser } from "./ops.ts";

export class MultiModalProjector extends TwoLayerNet {
  constructor(
    readonly nEmbd: number,
    readonly imageEmbedDim: number,
    dropoutRate: number,
    init: Initialiser,
  ) {
    super(imageEmbedDim, 4 * imageEmbedDim, nEmbd, "gelu", dropoutRate, init);
  }
}
