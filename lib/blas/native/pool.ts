// The kernels' thread pool (c/pool.c): how many threads the splitting kernels use.

import { I, I64, type Symbols } from "./common.ts";

export const POOL_SYMBOLS = {
  seemore_set_threads: { parameters: [I], result: I }, // n (0: only asks) -> threads in use
  seemore_jobs_shared: { parameters: [], result: I64 },
} as const;

export interface PoolKernels {
  /**
   * Threads the elementwise, layer-norm, Adam and attention kernels and the split products may use
   * (default 1; the helper threads start on first use, are kept, and work only on large tensors).
   * Returns the number now in use.
   */
  setThreads(n: number): number;
  /** The thread count setThreads last set. */
  threads(): number;
  /** Jobs that kernels splitting their work have shared with helper threads so far (tests: the split ran). */
  jobsShared(): number;
}

export function poolKernels(s: Symbols<typeof POOL_SYMBOLS>): PoolKernels {
  return {
    setThreads(n) {
      if (!Number.isInteger(n) || n < 1) {
        throw new Error(`lib/blas/native/pool.ts: threads must be >= 1, got ${n}`);
      }
      return s.seemore_set_threads(n);
    },
    threads: () => s.seemore_set_threads(0),
    jobsShared: () => Number(s.seemore_jobs_shared()),
  };
}
