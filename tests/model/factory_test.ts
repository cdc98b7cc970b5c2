// Building models from configs: parameterCount (which refuses giant configs before anything is allocated)
// counts exactly what the built model holds, over random small configs of both model types.

import fc from "fast-check";
import assert from "node:assert/strict";
import { configProblem, parameterCount } from "../../lib/config.ts";
import { buildModel } from "../../lib/model/factory.ts";
import { tinyConfig, useBackend } from "../helpers.ts";

await useBackend();

Deno.test("parameterCount is the number of values the built model holds", () => {
  const config = fc.record({
    model_type: fc.constantFrom("seemore" as const, "seemoe" as const),
    n_head: fc.integer({ min: 1, max: 3 }),
    headWidth: fc.integer({ min: 1, max: 6 }), // n_embd = n_head · headWidth
    imageHeadWidth: fc.integer({ min: 1, max: 14 }),
    n_layer: fc.integer({ min: 0, max: 2 }),
    num_blks: fc.integer({ min: 0, max: 2 }),
    patches: fc.integer({ min: 1, max: 3 }), // per side
    patch_size: fc.constantFrom(4, 8),
    patch_stem: fc.constantFrom("linear" as const, "conv" as const),
    block_positions: fc.integer({ min: 1, max: 20 }),
    vocab_size: fc.integer({ min: 2, max: 9 }),
    num_experts: fc.integer({ min: 1, max: 3 }),
    image_words: fc.array(fc.constantFrom("red", "blue", "star"), { maxLength: 3 }),
  }).map(({ headWidth, imageHeadWidth, patches, ...c }) =>
    tinyConfig({
      ...c,
      n_embd: c.n_head * headWidth,
      image_embed_dim: c.n_head * imageHeadWidth, // up to 42: odd conv stem widths too
      img_size: patches * c.patch_size,
      top_k: 1,
    })
  );
  fc.assert(
    fc.property(config, (c) => {
      assert.equal(configProblem(c), undefined);
      const model = buildModel(c, 1);
      const held = model.variables().reduce((n, v) => n + v.size, 0);
      model.dispose();
      assert.equal(parameterCount(c), held);
    }),
    { numRuns: 60, seed: 7 },
  );
});

Deno.test("the conv stem builds for a width that is not a multiple of 4 (the fuzz test's minimal case)", () => {
  // image_embed_dim 34 once asked for 8.5 channels, and tfjs refused with a message naming no key
  const model = buildModel(
    tinyConfig({ image_embed_dim: 34, n_head: 2, n_embd: 32, patch_stem: "conv", patch_size: 8 }),
  );
  assert.deepEqual(model.expectedShapes().get("vision_encoder.patch_embedding.conv1.weight"), [8, 3, 3, 3]);
  assert.deepEqual(model.expectedShapes().get("vision_encoder.patch_embedding.conv2.weight"), [17, 8, 3, 3]);
  model.dispose();
});
