// The dropout noise's generator: seedrandom's Alea as tf.randomUniform seeds it, and its jumps ahead, so
// that the C kernels (c/dropout.c) draw chunks of the one sequence of draws on several threads.

/**
 * The state {c, s0, s1, s2} of seedrandom's Alea generator seeded with String(seed), as
 * tf.randomUniform seeds it (seedrandom 3.0.5's Alea and Mash, rewritten). c/dropout.c draws from it.
 */
export function aleaState(seed: number): Float64Array {
  if (!Number.isFinite(seed)) {
    throw new Error(`lib/blas/native/alea.ts: dropout seed ${seed} is not a number`);
  }
  const mash = makeMash();
  const key = String(seed);
  const state = Float64Array.of(1, mash(" "), mash(" "), mash(" "));
  for (let i = 1; i <= 3; i++) {
    state[i] -= mash(key);
    if (state[i] < 0) state[i] += 1;
  }
  return state;
}

/**
 * Draws per chunk of dropout noise: each chunk starts from its own generator state (aleaStates), so
 * the C kernels draw the chunks on several threads and still give the one sequence of draws.
 */
export const DRAW_CHUNK = 1 << 16;

// Alea's step is a multiply-with-carry of lag 3 (c/dropout.c: S' = (A·S0 + c) mod 2^32, c' = its carry).
// With V = A·(S0 + S1·2^32 + S2·2^64) + c, one step maps V to V·2^-32 modulo M = A·2^96 − 1 (the
// lag-r multiply-with-carry's modulus a·b^r − 1), and 2^-32 ≡ A·2^64 there since A·2^96 ≡ 1; so n
// steps multiply V by (A·2^64)^n mod M. 0 ≤ c < A holds throughout (c starts at 1), so V gives back
// c = V mod A and the S's from V div A.
const ALEA_A = 2091639n;
const ALEA_M = ALEA_A * (1n << 96n) - 1n;
const jumpFactors = new Map<number, bigint>(); // n → (A·2^64)^n mod M

function powMod(base: bigint, exp: number, mod: bigint): bigint {
  let result = 1n, b = base % mod, e = exp;
  while (e > 0) {
    if (e % 2 === 1) result = (result * b) % mod;
    b = (b * b) % mod;
    e = Math.floor(e / 2);
  }
  return result;
}

/** The Alea state {c, s0, s1, s2} advanced by `draws` draws (what tf.randomUniform would reach). */
export function aleaJump(state: Float64Array, draws: number): Float64Array {
  let factor = jumpFactors.get(draws);
  if (factor === undefined) {
    factor = powMod(ALEA_A << 64n, draws, ALEA_M);
    jumpFactors.set(draws, factor);
  }
  const word = (s: number) => BigInt(s * 2 ** 32); // s is a multiple of 2^-32: exact
  const v = ALEA_A * (word(state[1]) + (word(state[2]) << 32n) + (word(state[3]) << 64n)) + BigInt(state[0]);
  const next = (v * factor) % ALEA_M;
  const x = next / ALEA_A, mask = (1n << 32n) - 1n;
  const fraction = (w: bigint) => Number(w & mask) / 2 ** 32;
  return Float64Array.of(Number(next % ALEA_A), fraction(x), fraction(x >> 32n), fraction(x >> 64n));
}

/** The states at which each DRAW_CHUNK-long chunk of `n` draws from seed's noise starts, one after another. */
export function aleaStates(seed: number, n: number, chunk = DRAW_CHUNK): Float64Array {
  const chunks = Math.max(1, Math.ceil(n / chunk)); // at least the seeded state, even for no draws
  const states = new Float64Array(4 * chunks);
  let state = aleaState(seed);
  for (let i = 0; i < chunks; i++) {
    states.set(state, 4 * i);
    if (i + 1 < chunks) state = aleaJump(state, chunk);
  }
  return states;
}

/** Alea's string hash: each call folds `data` into the running value n and returns n / 2^32. */
function makeMash(): (data: string) => number {
  let n = 0xefc8249d;
  return (data: string) => {
    for (let i = 0; i < data.length; i++) {
      n += data.charCodeAt(i);
      let h = 0.02519603282416938 * n;
      n = h >>> 0;
      h -= n;
      h *= n;
      n = h >>> 0;
      h -= n;
      n += h * 0x100000000;
    }
    return (n >>> 0) * 2.3283064365386963e-10;
  };
}
