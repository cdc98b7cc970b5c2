// Run by fallback_test.ts in a child process (without --allow-ffi, or without a C compiler):
// enables the kernels, then checks that matMul, transpose and the fused GELU still compute the right
// numbers. Prints one JSON line.

import * as tf from "@tensorflow/tfjs";
import "@tensorflow/tfjs-backend-wasm";
import { enableBlasKernels } from "../../lib/blas/kernels.ts";
import { gelu } from "../../lib/ops/activations.ts";

await tf.setBackend("wasm");
const stock = tf.getKernel("BatchMatMul", "wasm").kernelFunc;
const result = await enableBlasKernels();
const unchanged = tf.getKernel("BatchMatMul", "wasm").kernelFunc === stock;
const product = Array.from(tf.matMul(tf.tensor2d([[1, 2], [3, 4]]), tf.tensor2d([[5], [6]])).dataSync());
const transposed = Array.from(tf.transpose(tf.tensor2d([[1, 2, 3], [4, 5, 6]])).dataSync());
const geluAt1 = gelu(tf.scalar(1)).dataSync()[0];
console.log(JSON.stringify({ ...result, unchanged, product, transposed, geluAt1 }));
