// A backward pass that frees memory as it goes, installed in place of tfjs's engine.gradients (which
// tf.grad, tf.grads, tf.variableGrads and the optimizers all call).
//
// tfjs 4.22 keeps every tensor of a backward pass alive until the pass ends: each op's output
// gradient, the intermediates of custom gradients (they run outside any tidy), and every tensor the
// forward pass saved for the backward one. On the wasm backend the heap never shrinks, so that peak
// becomes the process's memory for good (≈ 180 MiB of the original config's step). This version
// computes exactly the same gradients with the same ops in the same order, but
//   - runs each tape node's gradient inside a tidy, so its intermediates go at once;
//   - drops an op's output gradient as soon as that op has been processed (each output belongs to
//     one op, so nothing later needs it), unless it is one of the requested gradients;
//   - disposes the tensors a node saved for its gradient right after using them.
// Gradients are reference-counted by tensor object, so a gradient function that hands back its input
// gradient unchanged (the same tensor for two ids) never loses it. Nested gradients (gradients of
// gradients, where the outer tape still needs the inner pass's tensors) use tfjs's own version.
// leanGradientsEach goes further: it hands each requested gradient over as soon as no node left reads
// its variable, so an optimizer can apply and free it there (the gradients never all exist at once).
//
//   installLeanGradients();   // lib/blas/kernels.ts does this with the fast CPU path
//   uninstallLeanGradients(); // back to tfjs's own

import * as tf from "@tensorflow/tfjs-core";

type GradientThunks = { [inputName: string]: () => tf.Tensor };

/** What tfjs's engine records per op while a gradient tape is on (engine internals, 4.x). */
interface TapeNode {
  id: number;
  kernelName: string;
  inputs: { [name: string]: tf.Tensor };
  outputs: tf.Tensor[];
  gradient?: (dys: (tf.Tensor | null)[]) => GradientThunks;
  saved?: tf.Tensor[];
}

/** The parts of tfjs's Engine this file uses. */
interface EngineInternals {
  state: { activeTape: TapeNode[] | null; gradientDepth: number };
  scopedRun<T>(start: () => void, end: () => void, f: () => T): T;
  startTape(): void;
  endTape(): void;
  tidy<T extends tf.TensorContainer>(nameOrFn: string | (() => T), fn?: () => T): T;
  gradients: GradientsFn;
}

type GradientsFn = (
  f: () => tf.Tensor,
  xs: tf.Tensor[],
  dy?: tf.Tensor,
  allowNoGradients?: boolean,
) => { value: tf.Tensor; grads: tf.Tensor[] };

let original: GradientsFn | null = null;

/** Makes every gradient computation in this process use the lean backward pass (idempotent). */
export function installLeanGradients(): void {
  const engine = tf.engine() as unknown as EngineInternals;
  if (original) return;
  original = engine.gradients;
  engine.gradients = function (this: EngineInternals, f, xs, dy, allowNoGradients = false) {
    // Inside another gradient's forward pass: keep tfjs's behaviour (the outer tape needs our tensors).
    if (this.state.gradientDepth > 0) return original!.call(this, f, xs, dy, allowNoGradients);
    return leanGradients(this, f, xs, dy, allowNoGradients);
  };
}

/** Puts tfjs's own engine.gradients back. */
export function uninstallLeanGradients(): void {
  if (!original) return;
  (tf.engine() as unknown as EngineInternals).gradients = original;
  original = null;
}

export function leanGradientsInstalled(): boolean {
  return original !== null;
}

function leanGradients(
  engine: EngineInternals,
  f: () => tf.Tensor,
  xs: tf.Tensor[],
  dy: tf.Tensor | undefined,
  allowNoGradients: boolean,
): { value: tf.Tensor; grads: tf.Tensor[] } {
  if (xs.length === 0) throw new Error("gradients() received an empty list of xs.");
  if (dy != null && dy.dtype !== "float32") {
    throw new Error(`dy must have 'float32' dtype, but has '${dy.dtype}'`);
  }
  return backward(engine, f, xs, dy ?? null, allowNoGradients, null);
}

/**
 * The lean backward pass of f (a scalar) with respect to xs that hands over each gradient as soon as
 * it is final: `onGradient(i, g)` runs right after the last node that reads xs[i] (no node processed
 * later reads it, so it may change xs[i] in place: an optimizer's step), and owns g (it must dispose
 * it). An x that the loss does not reach is not reported. Returns f's value. Not inside another
 * gradient's forward pass (nested gradients).
 */
export function leanGradientsEach(
  f: () => tf.Scalar,
  xs: tf.Variable[],
  onGradient: (i: number, g: tf.Tensor) => void,
): tf.Scalar {
  const engine = tf.engine() as unknown as EngineInternals;
  if (engine.state.gradientDepth > 0) {
    throw new Error("lib/blas/lean_gradients.ts: leanGradientsEach inside another gradient's forward pass");
  }
  if (xs.length === 0) throw new Error("leanGradientsEach() received an empty list of xs.");
  return backward(engine, f, xs, null, true, onGradient).value as tf.Scalar;
}

/**
 * Records f, then walks its tape backwards (backpropagate). With `onFinal`, each x's gradient goes to
 * it once final (and none are returned); else all of them are returned at the end.
 */
function backward(
  engine: EngineInternals,
  f: () => tf.Tensor,
  xs: tf.Tensor[],
  dy: tf.Tensor | null,
  allowNoGradients: boolean,
  onFinal: ((i: number, g: tf.Tensor) => void) | null,
): { value: tf.Tensor; grads: tf.Tensor[] } {
  const y = engine.scopedRun(
    () => engine.startTape(),
    () => engine.endTape(),
    () => engine.tidy("forward", f),
  );
  if (!(y instanceof tf.Tensor)) throw new Error("The result y returned by f() must be a tensor.");
  const tape = engine.state.activeTape ?? [];
  const filtered = nodesFromXToY(tape, xs, y);
  if (!allowNoGradients && filtered.length === 0 && xs.length > 0) {
    throw new Error(
      "Cannot compute gradient of y=f(x) with respect to x. Make sure that the f you passed encloses " +
        "all operations that lead from x to y.",
    );
  }
  return engine.tidy("backward", () => {
    const grads = new GradientMap(new Set(xs.map((x) => x.id)), dy);
    grads.set(y.id, dy ?? tf.ones(y.shape));
    const final = onFinal ? finalNodes(filtered, xs) : null;
    backpropagate(grads, filtered, (fn) => engine.tidy(fn), (node) => {
      for (const i of final?.get(node) ?? []) onFinal!(i, grads.take(xs[i].id));
    });
    const result = onFinal ? [] : xs.map((x) => grads.get(x.id)!);
    for (const node of tape) for (const t of node.saved ?? []) t.dispose();
    engine.state.activeTape = null;
    return { value: y, grads: result };
  });
}

/** For each node, the xs (by index) it is the last node of the backward walk to read. */
function finalNodes(tape: TapeNode[], xs: tf.Tensor[]): Map<TapeNode, number[]> {
  const index = new Map(xs.map((x, i) => [x.id, i]));
  const last = new Map<number, TapeNode>(); // x's index → its earliest reader in the tape
  for (const node of tape) {
    for (const t of Object.values(node.inputs)) {
      const i = index.get(t.id);
      if (i !== undefined && !last.has(i)) last.set(i, node);
    }
  }
  const out = new Map<TapeNode, number[]>();
  for (const [i, node] of last) out.set(node, [...(out.get(node) ?? []), i]);
  return out;
}

/** Gradients by tensor id, counting how many ids hold each tensor object. */
class GradientMap {
  private readonly byId = new Map<number, tf.Tensor>();
  private readonly holders = new Map<tf.Tensor, number>();

  /** keep: ids whose gradients are results; external: a tensor the caller owns (never disposed). */
  constructor(private readonly keep: Set<number>, private readonly external: tf.Tensor | null) {}

  get(id: number): tf.Tensor | undefined {
    return this.byId.get(id);
  }

  set(id: number, t: tf.Tensor): void {
    const old = this.byId.get(id);
    this.byId.set(id, t);
    this.holders.set(t, (this.holders.get(t) ?? 0) + 1);
    if (old) this.release(old);
  }

  /** Forgets the gradient of `id` (unless it is a result); frees it if no other id holds it. */
  drop(id: number): void {
    if (this.keep.has(id)) return;
    const t = this.byId.get(id);
    if (!t) return;
    this.byId.delete(id);
    this.release(t);
  }

  /**
   * Hands the gradient of `id` over to the caller, out of the pass's tidy: the tensor itself, or a
   * clone where another id (or the caller's dy) holds it too.
   */
  take(id: number): tf.Tensor {
    const t = this.byId.get(id)!;
    this.byId.delete(id);
    const n = this.holders.get(t) ?? 1;
    if (n > 1 || t === this.external) {
      this.holders.set(t, n - 1);
      return tf.keep(tf.clone(t));
    }
    this.holders.delete(t);
    return tf.keep(t);
  }

  /** Frees a tensor that was never stored (or is no longer held). */
  disposeIfUnheld(t: tf.Tensor): void {
    if (!this.holders.has(t) && t !== this.external) t.dispose();
  }

  private release(t: tf.Tensor): void {
    const n = (this.holders.get(t) ?? 1) - 1;
    if (n > 0) {
      this.holders.set(t, n);
      return;
    }
    this.holders.delete(t);
    if (t !== this.external) t.dispose();
  }
}

/** Walks the tape backwards: the same gradients, in the same order, as tfjs's backpropagateGradients. */
function backpropagate(
  grads: GradientMap,
  tape: TapeNode[],
  tidy: (fn: () => tf.Tensor[]) => tf.Tensor[],
  processed: (node: TapeNode) => void,
): void {
  for (let i = tape.length - 1; i >= 0; i--) {
    const node = tape[i];
    const dys = node.outputs.map((o) => grads.get(o.id) ?? null);
    if (node.gradient == null) {
      throw new Error(`Cannot compute gradient: gradient function not found for ${node.kernelName}.`);
    }
    const names = Object.keys(node.inputs);
    const dxs = tidy(() => {
      const thunks = node.gradient!(dys);
      return names.map((name) => {
        if (!(name in thunks)) {
          throw new Error(
            `Cannot backprop through input ${name}. Available gradients found: ${Object.keys(thunks)}.`,
          );
        }
        return thunks[name]();
      });
    });
    names.forEach((name, j) => {
      const dx = dxs[j], x = node.inputs[name];
      if (dx.dtype !== "float32") {
        throw new Error(
          `Error in gradient for op ${node.kernelName}. The gradient of input ${name} must have ` +
            `'float32' dtype, but has '${dx.dtype}'`,
        );
      }
      if (!tf.util.arraysEqual(dx.shape, x.shape)) {
        throw new Error(
          `Error in gradient for op ${node.kernelName}. The gradient of input '${name}' has shape ` +
            `'${dx.shape}', which does not match the shape of the input '${x.shape}'`,
        );
      }
      const current = grads.get(x.id);
      if (current == null) {
        grads.set(x.id, dx);
      } else {
        grads.set(x.id, tf.add(current, dx));
        grads.disposeIfUnheld(dx);
      }
    });
    for (const o of node.outputs) grads.drop(o.id);
    for (const t of node.saved ?? []) t.dispose();
    processed(node);
  }
}

/**
 * The tape nodes on a path from some x to y, with inputs that do not depend on any x left out
 * (tfjs's getFilteredNodesXToY, rewritten).
 */
function nodesFromXToY(tape: TapeNode[], xs: tf.Tensor[], y: tf.Tensor): TapeNode[] {
  const fromX = new Set<number>(xs.map((x) => x.id));
  const nodesFromX = new Set<number>();
  for (const node of tape) {
    if (Object.values(node.inputs).some((t) => t != null && fromX.has(t.id))) {
      for (const o of node.outputs) fromX.add(o.id);
      nodesFromX.add(node.id);
    }
  }
  const toY = new Set<number>([y.id]);
  const nodesToY = new Set<number>();
  for (let i = tape.length - 1; i >= 0; i--) {
    const node = tape[i];
    if (node.outputs.some((o) => toY.has(o.id))) {
      for (const t of Object.values(node.inputs)) if (t != null) toY.add(t.id);
      nodesToY.add(node.id);
    }
  }
  const out: TapeNode[] = [];
  for (const node of tape) {
    if (!nodesFromX.has(node.id) || !nodesToY.has(node.id)) continue;
    const inputs: TapeNode["inputs"] = {};
    for (const [name, t] of Object.entries(node.inputs)) if (t != null && fromX.has(t.id)) inputs[name] = t;
    out.push({ ...node, inputs });
  }
  return out;
}
