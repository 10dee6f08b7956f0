import { createHash } from "node:crypto";
import {
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { bunBin, repoRoot } from "./proc.ts";

export type Executables = {
  /** dist/fleet-manager as `npm run build:manager` writes it. */
  manager: string;
  /** dist/fleet-agent, with `fleet-agent.gz` beside it, as `npm run build:agent` writes them. */
  agent: string;
};

/** What goes into the executables: their hash names the cache entry. */
const sourceDirs = ["agent", "manager", "router", "kit", "protocol", "db", "runtime", "bin"];

/**
 * The agent and manager executables of the code as it is now, built once and kept in a cache
 * folder keyed by a hash of the sources (a build costs tens of seconds of CPU): every test run
 * of unchanged code reuses them. Set FLEET_EXECUTABLES_CACHE to move the cache.
 */
export async function executables(): Promise<Executables> {
  const root = process.env.FLEET_EXECUTABLES_CACHE ?? join(tmpdir(), "vllm-fleet-executables");
  const dir = join(root, sourceHash());
  const built = { manager: join(dir, "fleet-manager"), agent: join(dir, "fleet-agent") };
  if (existsSync(built.manager) && existsSync(built.agent) && existsSync(`${built.agent}.gz`)) {
    return built;
  }
  // Built aside and renamed into place, so two test files building at once never see half.
  const partial = `${dir}.partial-${process.pid}`;
  rmSync(partial, { recursive: true, force: true });
  mkdirSync(partial, { recursive: true });
  for (const [target, name] of [
    ["agent", "fleet-agent"],
    ["manager", "fleet-manager"],
  ] as const) {
    const proc = Bun.spawn([bunBin, "bin/build.ts", target, "--outfile", join(partial, name)], {
      cwd: repoRoot,
      stdout: "pipe",
      stderr: "pipe",
    });
    const [code, out, err] = await Promise.all([
      proc.exited,
      new Response(proc.stdout).text(),
      new Response(proc.stderr).text(),
    ]);
    if (code !== 0) throw new Error(`bun bin/build.ts ${target} failed (${code}):\n${out}${err}`);
    console.log(out.trim());
  }
  try {
    renameSync(partial, dir);
  } catch {
    rmSync(partial, { recursive: true, force: true }); // another run finished first
  }
  prune(root, dir);
  return built;
}

/** Entries kept besides the newest: about 280 MB each. */
const KEEP = 3;

/** Removes all but the newest few builds (and builds left half-done an hour ago or more). */
function prune(root: string, current: string): void {
  const entries = readdirSync(root)
    .map((name) => ({ path: join(root, name), mtimeMs: statSync(join(root, name)).mtimeMs }))
    .filter((entry) => entry.path !== current)
    .sort((a, b) => b.mtimeMs - a.mtimeMs);
  const stale = Date.now() - 3_600_000;
  for (const [index, entry] of entries.entries()) {
    const partial = entry.path.includes(".partial-");
    if (partial ? entry.mtimeMs < stale : index >= KEEP) {
      rmSync(entry.path, { recursive: true, force: true });
    }
  }
}

function sourceHash(): string {
  const hash = createHash("sha256");
  const walk = (dir: string) => {
    for (const entry of readdirSync(join(repoRoot, dir)).sort()) {
      const path = join(dir, entry);
      if (statSync(join(repoRoot, path)).isDirectory()) walk(path);
      else
        hash
          .update(path)
          .update("\0")
          .update(readFileSync(join(repoRoot, path)));
    }
  };
  for (const dir of sourceDirs) walk(dir);
  hash.update(readFileSync(join(repoRoot, "package.json"))).update(Bun.version);
  return hash.digest("hex").slice(0, 16);
}
