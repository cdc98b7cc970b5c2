/* What every family file of the C kernels shares: the system headers, the layout header's guard, and the
 * heap helper. kernels.c includes the family files into one translation unit, in an order where each
 * file uses only what the files before it define, so static helpers inline across families as they
 * did in one file. */

#ifndef SEEMORE_KERNELS_H
#define SEEMORE_KERNELS_H

/* BLK_*, DECODER_*_TENSORS and SEEMORE_ABI_VERSION come from the header that native.ts generates from
 * lib/blas/layout.ts and passes with -include: the tensors' order is written only there. */
#ifndef SEEMORE_ABI_VERSION
#error "build the kernels through lib/blas/native.ts: it passes the layout header (lib/blas/layout.ts)"
#endif

#define _GNU_SOURCE /* dlopen's RTLD_NOLOAD */
#include <dlfcn.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "vector.h"

/* A float tensor at a byte offset of the wasm heap (its regions are checked by native.ts). */
static float *heap_floats(uint8_t *heap, uint32_t offset) { return (float *)(void *)(heap + offset); }

#endif
