// How Linear weights start (config `init`, lib/config.ts initOf). Every part is built with PyTorch's
// default init; "kaiming" then redraws each Linear weight as the original seeMoE's main does: after
// building the model it applies kaiming_normal_ to every nn.Linear weight (`model.apply(kaiming_init_weights)`).
// That init is why the original's MoE barely learns (README, "seeMoE").

import { hash32 } from "../random.ts";
import { Initialiser, type Module, readData } from "./module.ts";

/** A Linear weight in the state_dict: 2-D, named `.weight`, not an embedding table. */
const isLinearWeight = (name: string, shape: number[]) =>
  shape.length === 2 && name.endsWith(".weight") && !name.includes("embedding_table");

/**
 * The original's `model.apply(kaiming_init_weights)`: every nn.Linear weight (attention heads, projections,
 * MLPs, experts, routers, lm_head, the word head) is redrawn from N(0, 2 / fan_in); biases, LayerNorms, the
 * embedding tables, cls_token, pos_embedding and the patch conv keep their initialisation. Draws in
 * state_dict order, one parameter at a time.
 */
export function kaimingInitLinears(model: Module, seed: number): void {
  const init = new Initialiser(hash32(seed, 0x6b61696d, 0x6e67));
  model.editState((entries) => {
    let redrawn = false;
    for (const [name, t] of entries) {
      if (!isLinearWeight(name, t.shape)) continue;
      const sample = init.normal(t.shape, Math.sqrt(2 / t.shape[1])); // PyTorch layout [out, in]: fan_in = in
      entries.set(name, { shape: t.shape, data: readData(sample) });
      sample.dispose();
      redrawn = true;
    }
    return redrawn ? entries : undefined;
  });
}
