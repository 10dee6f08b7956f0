/**
 * Bounded shutdown, shared by the entries of the manager, the routers and the agent: on
 * SIGTERM (or Ctrl-C) a service stops accepting, lets what is in flight finish until its
 * deadline (SHUTDOWN_TIMEOUT_S), then closes every connection still open (streams, idle
 * keep-alives), runs its last steps (flush usage, close the database) in what time is left,
 * and exits. A timer set at the signal exits at the deadline whatever is still pending, so no
 * step that hangs (a database that does not answer, a stream that never ends) can keep the
 * process alive. A second signal exits at once.
 */
import { describeError } from "./errors.ts";
import type { Logger } from "./log.ts";

/** A listening server as a shutdown sees it; `bunServer` and `nodeServer` adapt the runtimes'. */
export type ClosingServer = {
  /** Stops accepting; resolves once every request in flight (streams included) has finished. */
  close(): Promise<void>;
  /** Ends every connection still open: requests in flight, streams, idle keep-alives. */
  closeAll(): Promise<void> | void;
};

/** A last step after the server has closed; it gets what is left of the deadline. */
export type ShutdownStep = { name: string; run: () => unknown };

export type ShutdownOptions = {
  log: Logger;
  /** From the signal to the exit (SHUTDOWN_TIMEOUT_S). */
  timeoutMs: number;
  server: ClosingServer;
  /** Run in order after the server, each bounded by the deadline. */
  after?: ShutdownStep[];
  /** How the process ends (`process.exit`); tests pass their own. */
  exit: (code: number) => void;
  /** When the deadline started (default now): the agent's starts after its drain. */
  startedAt?: number;
};

/** Of the deadline, how much is kept for the steps after the server: a quarter, at most 5 s. */
export function stepsReserveMs(timeoutMs: number): number {
  return Math.min(5000, timeoutMs / 4);
}

/**
 * Stops the server within the deadline, runs the last steps and exits: 0 when everything
 * finished in time, also when open connections had to be closed at the deadline (that is the
 * contract, not a failure); 1 when a last step failed or the deadline cut it short.
 */
export async function shutDown(options: ShutdownOptions): Promise<void> {
  const { log, timeoutMs, server, exit } = options;
  const deadline = (options.startedAt ?? Date.now()) + timeoutMs;
  const backstop = setTimeout(() => {
    log.error("shutdown deadline reached with steps still running: exiting", {
      shutdown_timeout_s: timeoutMs / 1000,
    });
    exit(1);
  }, deadline - Date.now());
  let code = 0;
  const closed = server.close().then(
    () => true,
    () => true,
  );
  const drained = await within(closed, deadline - stepsReserveMs(timeoutMs) - Date.now());
  if (!drained) {
    log.warn("shutdown deadline: closing the connections still open", {
      shutdown_timeout_s: timeoutMs / 1000,
    });
    try {
      await server.closeAll();
    } catch (error) {
      log.warn("closing connections failed", { error: describeError(error) });
    }
  }
  for (const step of options.after ?? []) {
    try {
      const done = await within(Promise.resolve(step.run()), deadline - Date.now());
      if (!done) {
        log.warn(`shutdown: ${step.name} did not finish before the deadline`);
        code = 1;
        break;
      }
    } catch (error) {
      log.warn(`shutdown: ${step.name} failed`, { error: describeError(error) });
      code = 1;
    }
  }
  clearTimeout(backstop);
  exit(code);
}

/** Resolves true when `promise` settles within `ms`, false otherwise (never rejects). */
export function within(promise: Promise<unknown>, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), Math.max(0, ms));
    promise.then(
      () => {
        clearTimeout(timer);
        resolve(true);
      },
      () => {
        clearTimeout(timer);
        resolve(true);
      },
    );
  });
}

/**
 * Calls `begin` on the first SIGTERM or SIGINT (or one of `signals`); a second one exits at
 * once (130), for an operator who does not want to wait.
 */
export function onShutdownSignals(
  begin: (signal: string) => void,
  options: { log: Logger; exit: (code: number) => void; signals?: NodeJS.Signals[] },
): void {
  let signals = 0;
  const handle = (signal: string) => {
    if (++signals > 1) {
      options.log.warn("second signal: exiting now", { signal });
      options.exit(130);
      return;
    }
    begin(signal);
  };
  for (const signal of options.signals ?? ["SIGTERM", "SIGINT"]) {
    process.on(signal, () => handle(signal));
  }
}

/** Bun's `Server`: `stop(false)` stops accepting and waits for requests; `stop(true)` cuts. */
export function bunServer(server: { stop(closeActiveConnections?: boolean): Promise<void> }) {
  return {
    close: () => server.stop(false),
    closeAll: () => server.stop(true),
  } satisfies ClosingServer;
}

/**
 * Node's `http.Server` (what `@hono/node-server` returns): `close()` stops accepting and
 * closes idle connections; keep-alive connections that go idle while it waits are closed
 * as they do, and at the deadline every connection is.
 */
export function nodeServer(server: {
  close(callback?: (error?: Error) => void): unknown;
  closeIdleConnections(): void;
  closeAllConnections(): void;
}) {
  return {
    close: () =>
      new Promise<void>((resolve) => {
        const sweep = setInterval(() => server.closeIdleConnections(), 100);
        server.close(() => {
          clearInterval(sweep);
          resolve();
        });
        server.closeIdleConnections();
      }),
    closeAll: () => server.closeAllConnections(),
  } satisfies ClosingServer;
}
