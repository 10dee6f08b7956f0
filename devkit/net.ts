import { createServer } from "node:net";

/** A TCP port that was free a moment ago on `host`; tests never use fixed ports. */
export async function freePort(host = "127.0.0.1"): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once("error", reject);
    server.listen(0, host, () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/** Polls `url` until it answers with `status` (default any 2xx) or `timeoutMs` passes. */
export async function waitForHttp(
  url: string,
  options: { timeoutMs?: number; status?: number; headers?: Record<string, string> } = {},
): Promise<void> {
  const deadline = Date.now() + (options.timeoutMs ?? 15_000);
  let last = "no answer";
  while (Date.now() < deadline) {
    try {
      const response = await fetch(url, {
        headers: options.headers ?? {},
        signal: AbortSignal.timeout(1000),
      });
      await response.body?.cancel();
      if (options.status ? response.status === options.status : response.ok) return;
      last = `HTTP ${response.status}`;
    } catch (error) {
      last = error instanceof Error ? error.message : String(error);
    }
    await Bun.sleep(50);
  }
  throw new Error(`${url} not up after ${options.timeoutMs ?? 15_000} ms (${last})`);
}

/** Polls `check` until it returns a truthy value, or throws after `timeoutMs`. */
export async function eventually<T>(
  check: () => Promise<T | undefined | null | false> | T | undefined | null | false,
  options: { timeoutMs?: number; intervalMs?: number; what?: string } = {},
): Promise<T> {
  const deadline = Date.now() + (options.timeoutMs ?? 15_000);
  let lastError: unknown;
  while (Date.now() < deadline) {
    try {
      const value = await check();
      if (value) return value;
    } catch (error) {
      lastError = error;
    }
    await Bun.sleep(options.intervalMs ?? 50);
  }
  const why = lastError instanceof Error ? `: ${lastError.message}` : "";
  throw new Error(`timed out waiting for ${options.what ?? "condition"}${why}`);
}

/**
 * A browser's CORS preflight for a cross-origin POST with JSON and a key, from `origin`
 * (what a web page's `fetch` sends before the request itself).
 */
export function corsPreflight(url: string, origin: string): Promise<Response> {
  return fetch(url, {
    method: "OPTIONS",
    headers: {
      origin,
      "access-control-request-method": "POST",
      "access-control-request-headers": "authorization, content-type",
    },
  });
}
