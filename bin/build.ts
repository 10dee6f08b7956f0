#!/usr/bin/env bun
/**
 * `npm run build:agent` / `build:manager` / `build:fleet`: single executables with
 * `bun build --compile`, for this platform or `--target bun-linux-arm64` (any target Bun
 * names; Bun fetches that runtime once, or takes `--executable-path` to one at hand).
 *
 *   bun bin/build.ts agent|manager|fleet [--target T] [--outfile PATH] [--executable-path P]
 *
 * Prints each executable's size and its gzipped size. The agent is also written gzipped
 * beside itself (`dist/fleet-agent.gz`), as the manager serves it to `install.sh`.
 */
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { basename, dirname, resolve } from "node:path";
import { parseArgs } from "node:util";
import { gzipSync } from "node:zlib";

const root = resolve(import.meta.dirname, "..");

type Target = {
  entry: string;
  outfile: string;
  /** Files embedded under their relative path; readable through node:fs at run time. */
  assets?: string[];
  gzip?: boolean;
};

const targets: Record<string, Target> = {
  agent: { entry: "agent/main.ts", outfile: "dist/fleet-agent", gzip: true },
  // db/migrations lands at the bundle's root as `migrations`, which is where db/client.ts
  // looks (beside itself); PGlite's files come in through runtime/pglite-files.ts's imports.
  manager: { entry: "manager/main.ts", outfile: "dist/fleet-manager", assets: ["db/migrations"] },
  fleet: { entry: "bin/fleet.ts", outfile: "dist/fleet" },
};

const { values, positionals } = parseArgs({
  args: Bun.argv.slice(2),
  allowPositionals: true,
  options: {
    target: { type: "string" },
    outfile: { type: "string" },
    "executable-path": { type: "string" },
  },
});

const names = positionals.length > 0 ? positionals : ["agent", "manager", "fleet"];
for (const name of names) {
  const target = targets[name];
  if (!target) {
    console.error(`build: unknown target ${name} (agent, manager or fleet)`);
    process.exit(2);
  }
  const outfile = resolve(root, values.outfile ?? target.outfile);
  await build(target, outfile);
}

async function build(target: Target, outfile: string): Promise<void> {
  mkdirSync(dirname(outfile), { recursive: true });
  const started = performance.now();
  // Written beside and renamed over: a manager serving the old file never reads half a new one.
  const partial = `${outfile}.partial`;
  const argv = [
    process.execPath,
    "build",
    "--compile",
    "--minify",
    // A host's .env or bunfig.toml must not change what the executable does.
    "--no-compile-autoload-dotenv",
    "--no-compile-autoload-bunfig",
    ...(values.target ? [`--target=${values.target}`] : []),
    ...(values["executable-path"]
      ? [`--compile-executable-path=${values["executable-path"]}`]
      : []),
    ...(target.assets ?? []).map((asset) => `--asset=${asset}`),
    target.entry,
    "--outfile",
    partial,
  ];
  const proc = Bun.spawn(argv, { cwd: root, stdout: "inherit", stderr: "inherit" });
  if ((await proc.exited) !== 0) {
    console.error(`build: ${target.entry} failed`);
    process.exit(1);
  }
  renameSync(partial, outfile);
  const bytes = readFileSync(outfile);
  const gzipped = gzipSync(bytes, { level: 6 });
  const seconds = ((performance.now() - started) / 1000).toFixed(1);
  console.log(
    `${outfile}: ${mib(bytes.length)} MiB, ${mb(gzipped.length)} MB gzipped (${seconds} s)`,
  );
  if (target.gzip) {
    writeFileSync(`${partial}.gz`, gzipped);
    renameSync(`${partial}.gz`, `${outfile}.gz`);
    const sha256 = createHash("sha256").update(gzipped).digest("hex");
    console.log(
      `${outfile}.gz: sha256 ${sha256}, served by the manager at /downloads/${basename(outfile)}`,
    );
  }
}

function mib(bytes: number): string {
  return (bytes / 1024 / 1024).toFixed(1);
}

function mb(bytes: number): string {
  return (bytes / 1_000_000).toFixed(1);
}
