// When OpenBLAS cannot be used, enableBlasKernels must say why (with the install command) and leave
// the stock wasm kernels working. These tests run whether or not OpenBLAS is installed.

import * as tf from "@tensorflow/tfjs";
import { blasKernelsEnabled, disableBlasKernels, enableBlasKernels } from "../../lib/blas/kernels.ts";
import { assertClose, assertEquals, BLAS_OK, seeded, SKIP_NOTE, valuesOn } from "./helpers.ts";

const NAMES = ["BatchMatMul", "_FusedMatMul", "Transpose", "Identity", "Unpack"];

function assertHint(reason: string | undefined): void {
  assertEquals(typeof reason, "string", "reason");
  assertEquals(reason!.includes("apt-get install libopenblas0-pthread"), true, `install hint in '${reason}'`);
  assertEquals(reason!.includes("\n"), false, "one-line reason");
}

Deno.test("a missing OpenBLAS leaves the stock wasm kernels in place and working", async () => {
  disableBlasKernels();
  const stock = NAMES.map((n) => tf.getKernel(n, "wasm").kernelFunc);
  const result = await enableBlasKernels({ libraryPath: "/nonexistent/libopenblas.so.0" });
  assertEquals(result.ok, false, "ok");
  assertHint(result.reason);
  assertEquals(result.kernels.length, 0, "kernels");
  assertEquals(blasKernelsEnabled(), false, "enabled");
  NAMES.forEach((n, i) =>
    assertEquals(tf.getKernel(n, "wasm").kernelFunc === stock[i], true, `${n} untouched`)
  );
  const run = () => {
    const a = tf.tensor(seeded(35, 40), [5, 7]), b = tf.tensor(seeded(21, 41), [7, 3]);
    return [tf.matMul(a, b), tf.transpose(a), tf.clone(b), ...tf.unstack(a)];
  };
  assertClose(await valuesOn("wasm", run), await valuesOn("cpu", run), 1e-4, "stock kernels");
});

Deno.test("enableBlasKernels refuses on a backend other than wasm", async () => {
  disableBlasKernels();
  await tf.setBackend("cpu");
  try {
    const result = await enableBlasKernels();
    assertEquals(result.ok, false, "ok on cpu");
    assertEquals(result.reason!.includes('tf.setBackend("wasm")'), true, "reason names the fix");
  } finally {
    await tf.setBackend("wasm");
  }
});

/** Runs fallback_child.ts with the given permissions and environment; returns its JSON line. */
async function runChild(permissions: string[], env: Record<string, string> = {}) {
  const child = new URL("./fallback_child.ts", import.meta.url);
  const config = new URL("../../deno.json", import.meta.url);
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", ...permissions, "--config", config.pathname, child.pathname],
    env,
    stdout: "piped",
    stderr: "piped",
  }).output();
  assertEquals(out.success, true, `child exit (${new TextDecoder().decode(out.stderr).slice(0, 300)})`);
  return JSON.parse(new TextDecoder().decode(out.stdout).trim().split("\n").pop()!);
}

const GELU_1 = 0.8413447460685429; // 1 · Φ(1)

Deno.test("without --allow-ffi: ok:false with the reason, stock kernels still compute", async () => {
  const result = await runChild(["--allow-read", "--allow-env"]);
  assertEquals(result.ok, false, "ok");
  assertHint(result.reason);
  assertEquals(result.reason.includes("--allow-ffi"), true, "names --allow-ffi");
  assertEquals(result.unchanged, true, "stock BatchMatMul kept");
  assertEquals(JSON.stringify(result.product), "[17,39]", "stock matMul result");
});

Deno.test({
  name: `without a C compiler: OpenBLAS kernels on, JS kernels and tfjs-op GELU instead of C${SKIP_NOTE}`,
  ignore: !BLAS_OK,
  async fn() {
    const cache = await Deno.makeTempDir({ prefix: "seemore-nocc-" });
    try {
      const result = await runChild(["--allow-all"], { CC: "/nonexistent/cc", SEEMORE_CACHE_DIR: cache });
      assertEquals(result.ok, true, "ok");
      assertEquals(String(result.native).includes("C compiler"), true, `native note '${result.native}'`);
      assertEquals(result.kernels.includes("SeemoreGelu"), false, "no fused kernels");
      assertEquals(result.gemm, "products on OpenBLAS (oneDNN needs the C kernels)", "gemm note");
      assertEquals(JSON.stringify(result.product), "[17,39]", "matMul");
      assertEquals(JSON.stringify(result.transposed), "[1,4,2,5,3,6]", "transpose");
      assertEquals(Math.abs(result.geluAt1 - GELU_1) < 1e-5, true, `gelu(1) = ${result.geluAt1}`);
      assertEquals([...Deno.readDirSync(cache)].length, 0, "nothing half-written in the cache");
    } finally {
      await Deno.remove(cache, { recursive: true });
    }
  },
});

Deno.test({
  name: `SEEMORE_ONEDNN=off, or a path that does not open, keeps the products on OpenBLAS${SKIP_NOTE}`,
  ignore: !BLAS_OK,
  async fn() {
    for (
      const [value, note] of [
        ["off", "products on OpenBLAS (oneDNN turned off by SEEMORE_ONEDNN)"],
        [
          "/nonexistent/libdnnl.so.2",
          "products on OpenBLAS (/nonexistent/libdnnl.so.2 does not open; " +
          "apt-get install libdnnl2 for oneDNN's faster products)",
        ],
      ]
    ) {
      const result = await runChild(["--allow-all"], { SEEMORE_ONEDNN: value });
      assertEquals(result.ok, true, `${value}: ok`);
      // without a C compiler the note says that instead (tested above); CI has one
      if (!result.kernels.includes("SeemoreGelu") && Deno.env.get("SEEMORE_REQUIRE_NATIVE") !== "1") continue;
      assertEquals(result.gemm, note, `SEEMORE_ONEDNN=${value}`);
      assertEquals(JSON.stringify(result.product), "[17,39]", `${value}: matMul`);
    }
  },
});
