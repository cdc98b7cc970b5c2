// Finding a WebGPU adapter (Deno's navigator.gpu) and telling a real GPU from a software one.
//
// A leaf like lib/blas/: no tfjs here. lib/backend.ts asks probeAdapter() whether WebGPU is worth
// starting, and only then imports @tensorflow/tfjs-backend-webgpu.
//
// Software adapters (Mesa's llvmpipe/lavapipe, SwiftShader, WARP) run shaders on the CPU: they are good
// for checking the WebGPU path in CI, far slower than the wasm + OpenBLAS path for training.

/** What an adapter says about itself (GPUAdapterInfo's fields we report). */
export interface AdapterSummary {
  description: string;
  vendor: string;
  architecture: string;
  device: string;
  /** True for an adapter that runs on the CPU (isFallbackAdapter, or a known software driver's name). */
  software: boolean;
}

export type AdapterProbe =
  | { ok: true; adapter: AdapterSummary }
  | { ok: false; reason: string };

const SOFTWARE_NAMES = /llvmpipe|lavapipe|softpipe|swiftshader|microsoft basic render|\bwarp\b/i;

/** True when the adapter runs on the CPU. */
export function isSoftwareAdapter(info: Partial<GPUAdapterInfo> & { isFallbackAdapter?: boolean }): boolean {
  const names = [info.description, info.vendor, info.architecture, info.device].join(" ");
  return info.isFallbackAdapter === true || SOFTWARE_NAMES.test(names);
}

/** The adapter's description, or its vendor and architecture when the driver gives no description. */
export function adapterName(a: AdapterSummary): string {
  return a.description || [a.vendor, a.architecture, a.device].filter(Boolean).join(" ") || "unnamed adapter";
}

/**
 * Whether this machine shows a GPU device node, so that probing WebGPU in auto-selection can pay off.
 * Probing costs 0.1–0.5 s (Vulkan loads every installed driver, llvmpipe included), which a CPU-only
 * start-up should not pay. On Linux a GPU has /dev/nvidia0 or /dev/dri/renderD*; elsewhere, assume yes.
 */
export function gpuDevicePresent(): boolean {
  if (Deno.build.os !== "linux") return true;
  try {
    Deno.statSync("/dev/nvidia0");
    return true;
  } catch { /* no NVIDIA device */ }
  try {
    for (const e of Deno.readDirSync("/dev/dri")) if (e.name.startsWith("renderD")) return true;
  } catch { /* no DRM devices */ }
  return false;
}

/**
 * Mesa's drivers print "XDG_RUNTIME_DIR is invalid or not set" when it is missing (containers, CI).
 * Point it at a private folder under the temp dir before the first adapter request.
 */
function ensureRuntimeDir(): void {
  if (Deno.build.os !== "linux" || Deno.env.get("XDG_RUNTIME_DIR")) return;
  const tmp = Deno.env.get("TMPDIR") ?? "/tmp";
  const dir = `${tmp}/seemore-xdg-${Deno.uid() ?? "user"}`;
  try {
    Deno.mkdirSync(dir, { recursive: true, mode: 0o700 });
    Deno.env.set("XDG_RUNTIME_DIR", dir);
  } catch { /* only a warning is at stake */ }
}

/** Requests the high-performance adapter tfjs-backend-webgpu will use, and describes it. */
export async function probeAdapter(): Promise<AdapterProbe> {
  const gpu = (globalThis.navigator as Navigator & { gpu?: GPU }).gpu;
  if (!gpu) return { ok: false, reason: "this Deno has no navigator.gpu" };
  ensureRuntimeDir();
  let adapter: GPUAdapter | null;
  try {
    adapter = await gpu.requestAdapter({ powerPreference: "high-performance" });
  } catch (e) {
    return {
      ok: false,
      reason: `navigator.gpu.requestAdapter() failed: ${(e as Error).message.split("\n")[0]}`,
    };
  }
  if (!adapter) {
    return { ok: false, reason: "no WebGPU adapter (no Vulkan, Metal or DX12 driver found)" };
  }
  const info = adapter.info as GPUAdapterInfo & { isFallbackAdapter?: boolean };
  return {
    ok: true,
    adapter: {
      description: info.description ?? "",
      vendor: info.vendor ?? "",
      architecture: info.architecture ?? "",
      device: info.device ?? "",
      software: isSoftwareAdapter(info),
    },
  };
}
