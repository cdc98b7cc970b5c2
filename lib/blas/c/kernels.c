/* Small CPU kernels for tfjs's wasm backend, called through Deno FFI (lib/blas/native.ts compiles and
 * opens them). This file is the one translation unit: it includes the family files in an order where
 * each uses only what the files before it define, so their static helpers inline across families.
 * Callers check all sizes; these functions trust their arguments. */

#include "kernels.h"

int32_t seemore_abi_version(void) { return SEEMORE_ABI_VERSION; }

#include "pool.c"            /* the helper threads: parallel_for */
#include "products.c"        /* OpenBLAS's and oneDNN's sgemm, products cut into slices */
#include "memory.c"          /* transpose, gather, im2col, bias rows, sums */
#include "vector_math.c"     /* erf, exp, GELU, ReLU's gradient, softmax */
#include "norms.c"           /* layer norm */
#include "adam.c"            /* Adam */
#include "dropout.c"         /* tf.randomUniform's noise and dropout */
#include "attention.c"       /* multi-head attention, and its cached form for generation */
#include "first_attention.c" /* attention of the first position only (the ViT's CLS row) */
#include "experts.c"         /* seeMoE's experts and their routing */
#include "decoder.c"         /* generation's decoder step */
#include "block.c"           /* a whole transformer block */
