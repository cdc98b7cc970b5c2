// The original PyTorch model in a child process (bench/original_step.py --serve), driven one command
// at a time so that its timings can alternate with ours and the two never run at once.
//
//   const orig = await OriginalProcess.start({ model: "seemore", size: "original", batch: 16, caption: 49 });
//   if (orig.ok) { const { ms } = await orig.process.ask("train"); await orig.process.close(); }
//   else console.log(orig.reason); // e.g. how to install torch, or that torch sees no CUDA GPU

import { fileURLToPath } from "node:url";

export const TORCH_INSTALL_HINT =
  "apt-get install python3-torch python3-torchvision python3-pandas python3-pil";

const SCRIPT = fileURLToPath(new URL("./original_step.py", import.meta.url));

export type TorchDevice = "auto" | "cpu" | "cuda";
export const TORCH_DEVICES: readonly TorchDevice[] = ["auto", "cpu", "cuda"];

export interface OriginalOptions {
  model: string;
  size: string;
  /** The batch the original times: batch images, captions of `caption` characters (as ours). */
  batch: number;
  caption: number;
  /** auto: the original's own choice (cuda when torch sees a GPU); default auto. */
  device?: TorchDevice;
  python?: string; // default $SEEMORE_PYTHON or /usr/bin/python3 (Debian's, which has python3-torch)
  reference?: string; // folder holding seemore.py / seeMoE.py / input.txt
}

/** What the child says once it is ready: its torch, device and the batch shapes it times. */
export interface OriginalReady {
  torch: string;
  defaultThreads: number;
  device: "cpu" | "cuda";
  /** torch.cuda.get_device_name() on CUDA, else null. */
  gpu: string | null;
  batch: number;
  caption: number;
}

export type StartResult = ({ ok: true; process: OriginalProcess } & OriginalReady) | {
  ok: false;
  reason: string;
};

/** One running original_step.py --serve. */
export class OriginalProcess {
  private buffered = "";
  private readonly decoder = new TextDecoder();
  private readonly encoder = new TextEncoder();

  private constructor(
    private readonly child: Deno.ChildProcess,
    private readonly reader: ReadableStreamDefaultReader<Uint8Array>,
    private readonly writer: WritableStreamDefaultWriter<Uint8Array>,
  ) {}

  /** Starts the child and waits for its "ready" line; never throws (ok:false says why). */
  static async start(opts: OriginalOptions): Promise<StartResult> {
    const python = opts.python ?? Deno.env.get("SEEMORE_PYTHON") ?? "/usr/bin/python3";
    const args = [SCRIPT, "--serve", "--model", opts.model, "--size", opts.size];
    args.push("--batch", String(opts.batch), "--caption", String(opts.caption));
    args.push("--device", opts.device ?? "auto");
    if (opts.reference) args.push("--reference", opts.reference);
    let child: Deno.ChildProcess;
    try {
      child = new Deno.Command(python, { args, stdin: "piped", stdout: "piped", stderr: "piped" }).spawn();
    } catch (err) {
      return {
        ok: false,
        reason: `cannot run ${python} (${(err as Error).message.split("\n")[0]}): ${TORCH_INSTALL_HINT}`,
      };
    }
    const stderr = collect(child.stderr);
    const proc = new OriginalProcess(child, child.stdout.getReader(), child.stdin.getWriter());
    const first = await proc.readLine();
    if (first === null) {
      const status = await child.status;
      const err = (await stderr).trim().split("\n").slice(-1)[0] ?? "";
      return { ok: false, reason: `the original did not start (exit ${status.code}): ${err}` };
    }
    const msg = JSON.parse(first);
    if (!msg.ready) {
      await proc.close();
      return { ok: false, reason: String(msg.error ?? first) };
    }
    return {
      ok: true,
      process: proc,
      torch: msg.torch,
      defaultThreads: msg.default_threads,
      device: msg.device,
      gpu: msg.gpu ?? null,
      batch: msg.batch,
      caption: msg.caption,
    };
  }

  /** Sends one command and returns its JSON answer. */
  async ask(command: string): Promise<Record<string, number>> {
    await this.writer.write(this.encoder.encode(command + "\n"));
    const line = await this.readLine();
    if (line === null) throw new Error(`bench/original.ts: the original exited during "${command}"`);
    const reply = JSON.parse(line);
    if (reply.error) throw new Error(`bench/original.ts: "${command}": ${reply.error}`);
    return reply;
  }

  async close(): Promise<void> {
    try {
      await this.writer.write(this.encoder.encode("quit\n"));
      await this.writer.close();
    } catch { /* already gone */ }
    this.reader.releaseLock();
    await this.child.stdout.cancel().catch(() => {});
    await this.child.status;
  }

  private async readLine(): Promise<string | null> {
    while (true) {
      const nl = this.buffered.indexOf("\n");
      if (nl >= 0) {
        const line = this.buffered.slice(0, nl);
        this.buffered = this.buffered.slice(nl + 1);
        if (line.trim()) return line;
        continue;
      }
      const { value, done } = await this.reader.read();
      if (done) return null;
      this.buffered += this.decoder.decode(value, { stream: true });
    }
  }
}

async function collect(stream: ReadableStream<Uint8Array>): Promise<string> {
  let text = "";
  const decoder = new TextDecoder();
  for await (const chunk of stream) text += decoder.decode(chunk, { stream: true });
  return text;
}
