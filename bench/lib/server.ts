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
import { freePort, waitForHttp } from "../../devkit/net.ts";
import { bunBin, repoRoot, type Service, startProcess } from "../../devkit/proc.ts";

// The process helpers the tests use; benchmarks start their servers the same way.
export { bunBin, freePort, repoRoot };

export type SpawnedServer = {
  proc: Service["proc"];
  pid: number;
  /** Everything it printed so far (stdout + stderr). */
  output(): string;
  /** Resident memory of the process now, in MiB (Linux /proc), or null. */
  rssMiB(): number | null;
  /** CPU time used so far in ms (Linux /proc), or null. */
  cpuMs(): number | null;
  /**
   * CPU time of its main thread alone (JavaScript runs there; Bun's HTTP client, the JIT and
   * the collector's helpers have threads of their own), in ms, or null.
   */
  mainThreadCpuMs(): number | null;
  /** SIGTERM, SIGKILL after 3 s; resolves when it is gone. */
  stop(): Promise<void>;
};

export function rssMiB(pid: number): number | null {
  try {
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const match = /VmRSS:\s+(\d+) kB/.exec(status);
    return match ? Number(match[1]) / 1024 : null;
  } catch {
    return null;
  }
}

/**
 * CPU time (user + system) the process has used so far, in ms (Linux /proc), or null; with
 * `thread`, that thread's alone (the main thread's id is the process's).
 */
export function cpuMs(pid: number, thread?: number): number | null {
  try {
    const path = thread === undefined ? `/proc/${pid}/stat` : `/proc/${pid}/task/${thread}/stat`;
    const stat = readFileSync(path, "utf8");
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
  const service: Service = startProcess(options.argv, { env: options.env, cwd: options.cwd });
  const { proc } = service;
  const server: SpawnedServer = {
    proc,
    pid: proc.pid,
    output: service.output,
    rssMiB: () => rssMiB(proc.pid),
    cpuMs: () => cpuMs(proc.pid),
    mainThreadCpuMs: () => cpuMs(proc.pid, proc.pid),
    stop: async () => {
      await service.stop("SIGTERM", 3000);
    },
  };
  try {
    await Promise.race([
      waitForHttp(options.readyUrl, { timeoutMs: options.timeoutMs ?? 15_000 }),
      proc.exited.then((code) => {
        throw new Error(`${options.argv.join(" ")} exited ${code}`);
      }),
    ]);
  } catch (error) {
    await server.stop();
    throw new Error(
      `${error instanceof Error ? error.message : String(error)}\n${service.output()}`,
    );
  }
  return server;
}
