/**
 * PGlite's WebAssembly and data files, imported as files so that `bun build --compile`
 * (`npm run build:manager`) embeds them in the executable; run from a checkout, the same
 * imports name the files in node_modules. PGlite would otherwise look for them beside its own
 * module, which a single executable does not have. Bun only (the `file` import attribute).
 */
import type { PGliteOptions } from "@electric-sql/pglite";
import initdbWasm from "../node_modules/@electric-sql/pglite/dist/initdb.wasm" with {
  type: "file",
};
import pgliteData from "../node_modules/@electric-sql/pglite/dist/pglite.data" with {
  type: "file",
};
import pgliteWasm from "../node_modules/@electric-sql/pglite/dist/pglite.wasm" with {
  type: "file",
};

export type PgliteFiles = Pick<PGliteOptions, "pgliteWasmModule" | "initdbWasmModule" | "fsBundle">;

/** Compiles the two modules and reads the data bundle (about 15 MB), once per start. */
export async function loadPgliteFiles(): Promise<PgliteFiles> {
  const [pgliteWasmModule, initdbWasmModule] = await Promise.all([
    WebAssembly.compile(await Bun.file(pgliteWasm).arrayBuffer()),
    WebAssembly.compile(await Bun.file(initdbWasm).arrayBuffer()),
  ]);
  return { pgliteWasmModule, initdbWasmModule, fsBundle: Bun.file(pgliteData) };
}
