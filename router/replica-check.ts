import type { RouteEntry } from "../protocol/index.ts";
import { transportCause } from "./attempt.ts";
import type { FetchLike } from "./types.ts";

/** What a health check found: the agent answered as it should over the route's URL, or why not. */
export type Verdict = { alive: boolean; cause: string };

export type ReplicaCheckOptions = {
  /** The router's upstream client: the check takes the same path as the requests. */
  fetch: FetchLike;
  /** No answer (status and body) within this is a dead verdict. */
  timeoutMs: number;
  /** A settled verdict is reused this long, so that waiting requests cost at most ~1 check/s. */
  freshMs: number;
  now: () => number;
  /** Each check's verdict, once (metrics, logs). */
  onVerdict?: (route: RouteEntry, verdict: Verdict) => void;
};

type Check = { promise: Promise<Verdict>; settledAt: number | undefined };

/** `/health` is a few dozen bytes; anything larger is not the agent. */
const maxAnswerBytes = 4096;
/** Settled checks kept before stale ones are swept (one per worker URL in use). */
const sweepAbove = 256;

/**
 * Active checks of replicas whose requests wait for a first byte (attempt.ts): one
 * `GET {worker_url}/health` with the route's agent credential, never following redirects,
 * over the same client and URL as the requests, so a port mapping that accepts connections
 * and never answers fails it. One check per worker URL is in flight at a time: every request
 * waiting there shares it, and a verdict is reused for `freshMs`.
 */
export class ReplicaChecker {
  private readonly checks = new Map<string, Check>();

  constructor(private readonly options: ReplicaCheckOptions) {}

  check(route: RouteEntry): Promise<Verdict> {
    const now = this.options.now();
    const known = this.checks.get(route.worker_url);
    if (known && (known.settledAt === undefined || now - known.settledAt < this.options.freshMs)) {
      return known.promise;
    }
    if (this.checks.size >= sweepAbove) this.sweep(now);
    const check: Check = { promise: this.run(route), settledAt: undefined };
    check.promise = check.promise.then((verdict) => {
      check.settledAt = this.options.now();
      try {
        this.options.onVerdict?.(route, verdict);
      } catch {
        // Metrics and logs never change a verdict.
      }
      return verdict;
    });
    this.checks.set(route.worker_url, check);
    return check.promise;
  }

  /** Checks in flight now (for tests and metrics). */
  inFlight(): number {
    let count = 0;
    for (const check of this.checks.values()) if (check.settledAt === undefined) count++;
    return count;
  }

  private sweep(now: number): void {
    for (const [url, check] of this.checks) {
      if (check.settledAt !== undefined && now - check.settledAt >= this.options.freshMs) {
        this.checks.delete(url);
      }
    }
  }

  private async run(route: RouteEntry): Promise<Verdict> {
    const { timeoutMs } = this.options;
    const headers: Record<string, string> = { accept: "application/json" };
    if (route.agent_token) headers.authorization = `Bearer ${route.agent_token}`;
    // A timer and a controller rather than AbortSignal.timeout: the same on every runtime,
    // and cleared as soon as the answer is in.
    const controller = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort(new Error("health check timeout"));
    }, timeoutMs);
    try {
      const response = await this.options.fetch(`${route.worker_url}/health`, {
        method: "GET",
        headers,
        signal: controller.signal,
        redirect: "manual",
      });
      const text = await readCapped(response);
      return judge(response.status, text, route);
    } catch (error) {
      const cause = timedOut
        ? `GET /health did not answer within ${timeoutMs} ms`
        : `GET /health failed: ${transportCause(error)}`;
      return { alive: false, cause };
    } finally {
      clearTimeout(timer);
    }
  }
}

function judge(status: number, text: string | undefined, route: RouteEntry): Verdict {
  if (status >= 300 && status < 400) {
    return { alive: false, cause: `GET /health answered a redirect (${status}), never followed` };
  }
  if (status !== 200) return { alive: false, cause: `GET /health answered HTTP ${status}` };
  if (text === undefined) {
    return { alive: false, cause: `GET /health answered more than ${maxAnswerBytes} bytes` };
  }
  // The agent confirms the credential it was shown: a mapping that reaches another host (or
  // a stranger) does not pass for this worker's agent. Open mode has nothing to confirm.
  if (!route.agent_token) return { alive: true, cause: "answered GET /health" };
  if (parseObject(text)?.authenticated !== true) {
    return {
      alive: false,
      cause: `GET /health did not confirm worker ${route.worker_id}'s agent credential`,
    };
  }
  return { alive: true, cause: "answered GET /health" };
}

/** The body as text, or undefined when it is longer than `maxAnswerBytes`. */
async function readCapped(response: Response): Promise<string | undefined> {
  if (!response.body) return "";
  const reader = response.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > maxAnswerBytes) {
      await reader.cancel().catch(() => {});
      return undefined;
    }
    chunks.push(value);
  }
  const decoder = new TextDecoder();
  return chunks.map((chunk) => decoder.decode(chunk, { stream: true })).join("") + decoder.decode();
}

function parseObject(text: string): Record<string, unknown> | undefined {
  try {
    const value: unknown = JSON.parse(text);
    return typeof value === "object" && value !== null
      ? (value as Record<string, unknown>)
      : undefined;
  } catch {
    return undefined;
  }
}
