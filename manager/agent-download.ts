import { createHash } from "node:crypto";
import { readFile, stat } from "node:fs/promises";
import { basename, dirname, join, resolve } from "node:path";
import { promisify } from "node:util";
import { gzip } from "node:zlib";
import type { Logger } from "../kit/log.ts";
import type { AgentArtifact, AgentDownload } from "./deps.ts";

const gzipAsync = promisify(gzip);

/**
 * Where the agent executable is when `AGENT_BINARY` is unset: beside a single-executable
 * manager (`dist/fleet-manager` next to `dist/fleet-agent`), else the checkout's `dist/`.
 */
export function defaultAgentBinary(): string {
  const self = process.execPath;
  if (basename(self).startsWith("fleet-manager")) return join(dirname(self), "fleet-agent");
  return resolve("dist/fleet-agent");
}

/**
 * The agent executable at `path`, served gzipped: `{path}.gz` as the build wrote it when it is
 * at least as new as the executable, else the executable gzipped here once. Read again when
 * either file changes (a rebuild while the manager runs serves the new one).
 */
export function fileAgentDownload(path: string, log: Logger): AgentDownload {
  let cached: { key: string; artifact: Promise<AgentArtifact> } | undefined;
  return {
    location: path,
    async current() {
      const [binary, gz] = await Promise.all([statOf(path), statOf(`${path}.gz`)]);
      const useGz = gz !== undefined && (binary === undefined || gz.mtimeMs >= binary.mtimeMs);
      const source = useGz ? gz : binary;
      if (source === undefined) return undefined;
      const key = `${useGz ? "gz" : "raw"}:${source.mtimeMs}:${source.size}`;
      if (cached?.key !== key) {
        const artifact = (async () => {
          const bytes = await readFile(useGz ? `${path}.gz` : path);
          const gzipped = useGz ? bytes : await gzipAsync(bytes, { level: 6 });
          const sha256 = createHash("sha256").update(gzipped).digest("hex");
          log.info("agent executable ready to serve", {
            path: useGz ? `${path}.gz` : path,
            bytes: gzipped.length,
            sha256,
          });
          return { gzip: new Uint8Array(gzipped), sha256 };
        })();
        cached = { key, artifact };
        // A failed read is not kept: the next request tries again.
        artifact.catch(() => {
          if (cached?.key === key) cached = undefined;
        });
      }
      return cached.artifact;
    },
  };
}

async function statOf(path: string): Promise<{ mtimeMs: number; size: number } | undefined> {
  try {
    const info = await stat(path);
    return info.isFile() ? { mtimeMs: info.mtimeMs, size: info.size } : undefined;
  } catch {
    return undefined;
  }
}
