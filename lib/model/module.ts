// The base of every model part, as torch.nn.Module: named children and parameters, from which the list
// of trainable variables and the original's state_dict (PyTorch names and layouts) are derived.
//
// A module's name in the state_dict ("decoder.blocks.3.attn") is also its identity for random draws:
// the dropout noise of a module comes from (seed, step, its name, the site), so every route through the
// ops — a fused kernel or the composite — draws the same noise wherever it runs.

import * as tf from "@tensorflow/tfjs";
import { dropout, type DropoutNoise } from "../ops/dropout.ts";
import { hash32, hashString } from "../random.ts";

/** A tensor in the original PyTorch layout, as stored in a checkpoint. */
export interface StateTensor {
  shape: number[];
  data: Float32Array;
}
export type StateDict = Map<string, StateTensor>;

/** How a parameter is stored in the state_dict: its entries under `key`, and its values back from them. */
export interface ParamLayout {
  save(key: string, data: Float32Array, shape: number[]): [string, StateTensor][];
  load(key: string, state: StateDict, shape: number[]): Float32Array;
}

/** Stored as it is, under its own name. */
export const AS_IS: ParamLayout = {
  save: (key, data, shape) => [[key, { shape, data }]],
  load: (key, state) => state.get(key)!.data,
};

/** What a forward pass needs besides its inputs: training or not, and the seed of its random draws. */
export class ForwardContext {
  /**
   * @param training dropout on (and, for seeMoE, router noise on)
   * @param seed     with `step` and a module's name, fixes every random draw of this pass
   */
  constructor(readonly training: boolean, readonly seed = 0, readonly step = 0) {}

  static eval(): ForwardContext {
    return new ForwardContext(false);
  }

  /** The same pass with its own random draws: for a second run of the same modules in one step. */
  branch(name: string): ForwardContext {
    return new ForwardContext(this.training, hash32(this.seed, hashString(name), 0x62), this.step);
  }
}

type Entry = { child: Module; name: string } | { param: tf.Variable; name: string; layout: ParamLayout };

export class Module {
  #parent: Module | null = null;
  #name = "";
  readonly #entries: Entry[] = [];

  /** This module's name in the state_dict: "" for the root, "decoder.blocks.3.attn" below it. */
  get path(): string {
    if (!this.#parent) return "";
    return this.#parent.path ? `${this.#parent.path}.${this.#name}` : this.#name;
  }

  /** Registers a child module under `name` (a dotted name such as "net.0" is fine). */
  protected add<T extends Module>(name: string, child: T): T {
    child.#parent = this;
    child.#name = name;
    this.#entries.push({ child, name });
    return child;
  }

  /** Registers each child of a list as `name.0`, `name.1`, … (nn.ModuleList). */
  protected addList<T extends Module>(name: string, children: T[]): T[] {
    children.forEach((c, i) => this.add(`${name}.${i}`, c));
    return children;
  }

  /** Registers a trainable parameter made from `initial` (which it takes over). */
  protected addParameter<R extends tf.Rank>(
    name: string,
    initial: tf.Tensor,
    layout = AS_IS,
  ): tf.Variable<R> {
    const param = tf.variable(initial, true, `${name}_${nextVariableId()}`) as tf.Variable<R>;
    initial.dispose();
    this.#entries.push({ param, name, layout });
    return param;
  }

  /** Trainable variables, in the order they were registered (parameters and children interleaved). */
  variables(): tf.Variable[] {
    return this.#entries.flatMap((e) => ("child" in e ? e.child.variables() : [e.param]));
  }

  /** A parameter by its dotted name below this module ("attn.proj.weight"), in its internal layout. */
  parameter(name: string): tf.Variable {
    for (const e of this.#entries) {
      if ("param" in e && e.name === name) return e.param;
      if ("child" in e && name.startsWith(`${e.name}.`)) {
        return e.child.parameter(name.slice(e.name.length + 1));
      }
    }
    throw new Error(`${this.path || "model"}: no parameter "${name}"`);
  }

  /** The state_dict of this module and everything below it, under their full names. */
  stateDict(): StateDict {
    const out: StateDict = new Map();
    this.#saveInto(out);
    return out;
  }

  #saveInto(out: StateDict): void {
    for (const e of this.#entries) {
      if ("child" in e) e.child.#saveInto(out);
      else {for (const [key, t] of e.layout.save(this.#fullName(e.name), readData(e.param), e.param.shape)) {
          out.set(key, t);
        }}
    }
  }

  /** Loads every parameter from `state` (names and shapes already checked: see expectedShapes). */
  loadStateDict(state: StateDict): void {
    for (const e of this.#entries) {
      if ("child" in e) e.child.loadStateDict(state);
      else assign(e.param, e.layout.load(this.#fullName(e.name), state, e.param.shape));
    }
  }

  /**
   * Rewrites the parameters one at a time, in state_dict order: `edit` gets one parameter's state_dict
   * entries (full names, PyTorch layouts) and returns what the parameter takes back (undefined: unchanged).
   */
  editState(edit: (entries: StateDict) => StateDict | undefined): void {
    for (const e of this.#entries) {
      if ("child" in e) {
        e.child.editState(edit);
        continue;
      }
      const key = this.#fullName(e.name);
      const entries = edit(new Map(e.layout.save(key, readData(e.param), e.param.shape)));
      if (entries) assign(e.param, e.layout.load(key, entries, e.param.shape));
    }
  }

  /** The names and shapes this module's state_dict has. */
  expectedShapes(): Map<string, number[]> {
    return new Map([...this.stateDict()].map(([k, v]) => [k, v.shape]));
  }

  /** Frees this module's parameters and whatever its children hold. */
  dispose(): void {
    for (const e of this.#entries) "child" in e ? e.child.dispose() : e.param.dispose();
  }

  #fullName(name: string): string {
    return this.path ? `${this.path}.${name}` : name;
  }

  /** The seed of this module's random draw at `site` in this pass: the same on every route. */
  noiseSeed(ctx: ForwardContext, site: string): number {
    return hash32(ctx.seed, ctx.step, hashString(`${this.path}#${site}`));
  }

  /** Dropout at `site` while training (rate > 0), else nothing: what a kernel is given. */
  dropoutNoise(ctx: ForwardContext, rate: number, site: string): DropoutNoise | undefined {
    return ctx.training && rate > 0 ? { rate, seed: this.noiseSeed(ctx, site) } : undefined;
  }

  /** Inverted dropout of x at `site`, only while training. */
  protected dropout(x: tf.Tensor, rate: number, ctx: ForwardContext, site: string): tf.Tensor {
    const noise = this.dropoutNoise(ctx, rate, site);
    return noise ? dropout(x, noise) : x;
  }
}

let variableCounter = 0;
function nextVariableId(): number {
  variableCounter += 1;
  return variableCounter;
}

/** Seeded initialisers for one model: each call gets its own seed derived from the model seed. */
export class Initialiser {
  private counter = 0;
  constructor(readonly seed: number) {}

  private next(): number {
    this.counter += 1;
    return hash32(this.seed, 0x5eed, this.counter);
  }
  /** U(-1/sqrt(fanIn), 1/sqrt(fanIn)), PyTorch's default for Linear weights and biases. */
  uniformFanIn(shape: number[], fanIn: number): tf.Tensor {
    const bound = 1 / Math.sqrt(fanIn);
    return tf.randomUniform(shape, -bound, bound, "float32", this.next());
  }
  normal(shape: number[], std = 1): tf.Tensor {
    return tf.randomNormal(shape, 0, std, "float32", this.next());
  }
  zeros(shape: number[]): tf.Tensor {
    return tf.zeros(shape);
  }
  ones(shape: number[]): tf.Tensor {
    return tf.ones(shape);
  }
}

/** Copies a 2-D row-major matrix into its transpose. */
export function transpose2d(data: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) out[c * rows + r] = data[r * cols + c];
  }
  return out;
}

/** A tensor's values as an owned Float32Array. */
export function readData(t: tf.Tensor): Float32Array {
  return new Float32Array(t.dataSync() as Float32Array);
}

/** Replaces a variable's values (shape must match). */
function assign(v: tf.Variable, data: Float32Array): void {
  tf.tidy(() => v.assign(tf.tensor(data, v.shape)));
}

/** The entries of `state` under `prefix` ("decoder.blocks.0"), with the prefix taken off their names. */
export function stateUnder(state: StateDict, prefix: string): StateDict {
  const start = `${prefix}.`;
  return new Map([...state].filter(([k]) => k.startsWith(start)).map(([k, t]) => [k.slice(start.length), t]));
}
