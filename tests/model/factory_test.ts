// Building models from configs.

import assert from "node:assert/strict";
import { buildModel } from "../../lib/model/factory.ts";
import { tinyConfig, useBackend } from "../helpers.ts";

await useBackend();

Deno.test("the conv stem builds for a width that is not a multiple of 4 (the fuzz test's minimal case)", () => {
  // image_embed_dim 34 once asked for 8.5 channels, and tfjs refused with a message naming no key
  const model = buildModel(
    tinyConfig({ image_embed_dim: 34, n_head: 2, n_embd: 32, patch_stem: "conv", patch_size: 8 }),
  );
  assert.deepEqual(model.expectedShapes().get("vision_encoder.patch_embedding.conv1.weight"), [8, 3, 3, 3]);
  assert.deepEqual(model.expectedShapes().get("vision_encoder.patch_embedding.conv2.weight"), [17, 8, 3, 3]);
  model.dispose();
});
