import { readFileSync } from "node:fs";
import { type Subprocess, spawn } from "bun";

export const repoRoot = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
/** The Bun binary running the tests; child services run on the same one. */
export const bunBin = process.execPath;

export type Service = {
  proc: Subprocess<"ignore", "pipe", "pipe">;
  /** Everything the process has printed so far (stdout and stderr interleaved). */
  output(): string;
  /**
   * Resolves with the exit code once the process has exited and both of its output streams
   * are drained, so `output()` then holds everything it printed.
   */
  exited(): Promise<number>;
  /** Resolves when `pattern` appears in the output; rejects on exit or after `timeoutMs`. */
  waitFor(pattern: RegExp | string, timeoutMs?: number): Promise<void>;
  /** SIGTERM (or `signal`), then SIGKILL after `graceMs`; resolves with the exit code. */
  stop(signal?: NodeJS.Signals, graceMs?: number): Promise<number | null>;
};

const running = new Set<Service>();

/**
 * Starts a real process (`argv[0]` resolved from PATH) with output captured. Every process
 * started here is killed when the test run ends, even if a test forgets to stop it.
 */
export function startProcess(
  argv: string[],
  options: { env?: Record<string, string | undefined>; cwd?: string } = {},
): Service {
  const env: Record<string, string> = {};
  for (const [key, value] of Object.entries({ ...process.env, ...options.env })) {
    if (value !== undefined) env[key] = value;
  }
  const proc = spawn(argv, {
    cwd: options.cwd ?? repoRoot,
    env,
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
  });
  let text = "";
  const waiters = new Set<() => void>();
  const pump = async (stream: ReadableStream<Uint8Array>) => {
    const decoder = new TextDecoder();
    const reader = stream.getReader();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        text += decoder.decode(value, { stream: true });
        for (const wake of waiters) wake();
      }
    } catch {
      // The pipe broke: what was read so far is all there is.
    }
    text += decoder.decode();
  };
  const drained = Promise.all([pump(proc.stdout), pump(proc.stderr)]);
  const exited = Promise.all([proc.exited, drained]).then(([code]) => code);
  // `waitFor` gives up once the process is gone and its output drained; a grandchild that
  // inherited the pipes may hold them open, so it does not wait for that longer than 1 s.
  let finished = false;
  void proc.exited
    .then(() => Promise.race([drained, Bun.sleep(1000)]))
    .then(() => {
      finished = true;
      for (const wake of waiters) wake();
    });

  const service: Service = {
    proc,
    output: () => text,
    exited: () => exited,
    waitFor(pattern, timeoutMs = 15_000) {
      const matches = () =>
        typeof pattern === "string" ? text.includes(pattern) : pattern.test(text);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`timed out waiting for ${pattern} from ${argv.join(" ")}\n${text}`));
        }, timeoutMs);
        const check = () => {
          if (matches()) {
            clearTimeout(timer);
            waiters.delete(check);
            resolve();
          } else if (finished) {
            // Exited and drained: the pattern can no longer appear.
            clearTimeout(timer);
            waiters.delete(check);
            reject(
              new Error(`${argv.join(" ")} exited (${proc.exitCode}) before ${pattern}\n${text}`),
            );
          }
        };
        waiters.add(check);
        check();
      });
    },
    async stop(signal = "SIGTERM", graceMs = 5000) {
      running.delete(service);
      if (proc.exitCode !== null || proc.signalCode !== null) return proc.exitCode;
      proc.kill(signal);
      const timer = setTimeout(() => proc.kill("SIGKILL"), graceMs);
      const code = await proc.exited;
      clearTimeout(timer);
      return code;
    },
  };
  running.add(service);
  return service;
}

/** Stops every process this file started; call from `afterAll`. */
export async function stopAll(): Promise<void> {
  await Promise.all([...running].map((service) => service.stop()));
}

process.on("exit", () => {
  for (const service of running) service.proc.kill("SIGKILL");
});

/** Resident memory of a process, in MiB (Linux /proc). */
export function rssMiB(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const kib = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1]);
  return kib / 1024;
}
