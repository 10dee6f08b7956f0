/**
 * Spawns a server under test in its own process and waits for it, for benchmarks.
 *
 *   const sim = await spawnServer({
 *     argv: [bun, "agent/sim/main.ts", "serve", "m", "--port", String(port)],
 *     readyUrl: `http://127.0.0.1:${port}/health`,
 *   });
 *   ...
 *   await sim.stop();
 */

import { readFileSync } from "node:fs";
import { createServer } from "node:net";
import { type Subprocess, spawn } from "bun";

export const repoRoot = new URL("../..", import.meta.url).pathname.replace(/\/$/, "");
/** The Bun running the benchmark; servers run on the same one. */
export const bunBin = process.execPath;

export type SpawnedServer = {
  proc: Subprocess<"ignore", "pipe", "pipe">;
  pid: number;
  /** Everything it printed so far (stdout + stderr). */
  output(): string;
  /** Resident memory of the process now, in MiB (Linux /proc), or null. */
  rssMiB(): number | null;
  /** CPU time used so far in ms (Linux /proc), or null. */
  cpuMs(): number | null;
  /** SIGTERM, SIGKILL after 3 s; resolves when it is gone. */
  stop(): Promise<void>;
};

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

export function rssMiB(pid: number): number | null {
  try {
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const match = /VmRSS:\s+(\d+) kB/.exec(status);
    return match ? Number(match[1]) / 1024 : null;
  } catch {
    return null;
  }
}

/** CPU time (user + system) the process has used so far, in ms (Linux /proc), or null. */
export function cpuMs(pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    // utime and stime are fields 14 and 15 of stat (11 and 12 after the command name).
    const ticks = Number(fields[11]) + Number(fields[12]);
    return (ticks * 1000) / 100;
  } catch {
    return null;
  }
}

export async function spawnServer(options: {
  argv: string[];
  env?: Record<string, string>;
  /** Polled until it answers 2xx. */
  readyUrl: string;
  timeoutMs?: number;
  cwd?: string;
}): Promise<SpawnedServer> {
  const proc = spawn(options.argv, {
    cwd: options.cwd ?? repoRoot,
    env: { ...process.env, ...options.env },
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
  });
  let text = "";
  const pump = async (stream: ReadableStream<Uint8Array>) => {
    const decoder = new TextDecoder();
    const reader = stream.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      text += decoder.decode(value, { stream: true });
    }
  };
  void pump(proc.stdout);
  void pump(proc.stderr);
  const server: SpawnedServer = {
    proc,
    pid: proc.pid,
    output: () => text,
    rssMiB: () => rssMiB(proc.pid),
    cpuMs: () => cpuMs(proc.pid),
    async stop() {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      proc.kill("SIGTERM");
      const timer = setTimeout(() => proc.kill("SIGKILL"), 3000);
      await proc.exited;
      clearTimeout(timer);
    },
  };
  const deadline = Date.now() + (options.timeoutMs ?? 15_000);
  while (Date.now() < deadline) {
    if (proc.exitCode !== null)
      throw new Error(`${options.argv.join(" ")} exited ${proc.exitCode}\n${text}`);
    try {
      const response = await fetch(options.readyUrl, { signal: AbortSignal.timeout(1000) });
      await response.body?.cancel();
      if (response.ok) return server;
    } catch {
      // not listening yet
    }
    await Bun.sleep(50);
  }
  await server.stop();
  throw new Error(`${options.readyUrl} not ready after ${options.timeoutMs ?? 15_000} ms\n${text}`);
}
