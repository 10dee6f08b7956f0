import type { Logger } from "../kit/log.ts";
import { Metrics } from "../kit/metrics.ts";
import type { MetricsAccess } from "../kit/metrics-access.ts";
import { isLoopbackHost } from "../kit/net.ts";
import type { Spool } from "../kit/spool.ts";
import { type AppDeps, createApp, type FetchLike } from "./app.ts";
import type { RouterEnv } from "./env.ts";
import { OpenStreams } from "./open-streams.ts";
import { SnapshotPoller } from "./snapshot-poller.ts";
import { UsageBatcher } from "./usage-batcher.ts";

/**
 * A standalone router's parts, shared by the Bun, Node and workerd entries: the poller for
 * routes, the batcher for usage and the app. Web-standard only; the entries add the server.
 */
export function createStandaloneRouter(options: {
  env: RouterEnv;
  log: Logger;
  fetch?: FetchLike;
  /** The client for streamed requests to agents (default: `fetch`). */
  streamFetch?: FetchLike;
  clientAddress?: AppDeps["clientAddress"];
  /** Bun: the server's per-connection idle timer (runtime/bun-serve.ts). */
  idleTimer?: AppDeps["idleTimer"];
  requireApiKey?: boolean;
  /**
   * workerd: timers do not outlive a request, so each response's usage is flushed under
   * the request's `executionCtx.waitUntil` instead of on the batcher's interval.
   */
  flushUnderWaitUntil?: boolean;
  /** Bun and Node: where usage waits on disk while the manager is down (USAGE_SPOOL_DIR). */
  usageSpool?: Spool;
}) {
  const { env, log } = options;
  if (env.FLEET_TOKEN) {
    // A router needs no fleet-wide secret, and a host that holds the join token can add workers.
    log.warn(
      "FLEET_TOKEN is not used by routers (each route carries its agent's own credential): remove it from this router's environment",
    );
  }
  const metrics = new Metrics();
  const streams = new OpenStreams();
  const routes = new SnapshotPoller({
    managerUrl: env.MANAGER_URL,
    routerToken: env.ROUTER_TOKEN,
    intervalMs: env.ROUTES_REFRESH_MS,
    fetch: options.fetch,
    log,
    metrics,
  });
  const usage = new UsageBatcher({
    managerUrl: env.MANAGER_URL,
    routerToken: env.ROUTER_TOKEN,
    flushIntervalMs: env.USAGE_FLUSH_MS,
    maxBuffer: env.USAGE_BUFFER_MAX,
    spool: options.usageSpool,
    fetch: options.fetch,
    log,
    metrics,
  });
  const requireApiKey = options.requireApiKey ?? env.REQUIRE_API_KEY ?? !isLoopbackHost(env.HOST);
  const app = createApp({
    routes,
    usage,
    requireApiKey,
    metricsAccess: routerMetricsAccess(env, requireApiKey),
    fetch: options.fetch,
    streamFetch: options.streamFetch,
    log,
    metrics,
    maxBodyBytes: env.MAX_BODY_BYTES,
    bodyTimeoutMs: env.BODY_TIMEOUT_S * 1000,
    maxBodyMemoryBytes: env.MAX_BODY_MEMORY_BYTES,
    idleTimer: options.idleTimer,
    timeouts: {
      firstByteMs: env.FIRST_BYTE_TIMEOUT_MS,
      idleMs: env.IDLE_TIMEOUT_MS,
      firstByteProbeMs: env.FIRST_BYTE_PROBE_MS,
      probeTimeoutMs: env.FIRST_BYTE_PROBE_TIMEOUT_MS,
    },
    retry: { maxAttempts: env.RETRY_MAX_ATTEMPTS, budgetMs: env.RETRY_BUDGET_MS },
    ejection: {
      after: env.EJECT_AFTER_FAILURES,
      cooldownMs: env.EJECT_COOLDOWN_MS,
      maxCooldownMs: Math.max(60_000, env.EJECT_COOLDOWN_MS),
    },
    clientAddress: options.clientAddress,
    cors: env.CORS_ORIGINS,
    streams,
    waitUntil: options.flushUnderWaitUntil
      ? (c, task) => c.executionCtx.waitUntil(task.then(() => usage.flushSoon()))
      : undefined,
  });
  return {
    app,
    routes,
    usage,
    metrics,
    /** Starts polling and batching; resolves after the first route fetch (success or not). */
    async start() {
      usage.start();
      await routes.start();
    },
    /**
     * Ends every response still being relayed: each event stream with an error event in
     * OpenAI's shape and `data: [DONE]`, any other body as a failure; their agents are told to
     * stop. The entries call it on SIGTERM/SIGINT at the shutdown deadline, before the
     * connections still open are closed (`endingStreamsFirst`). Returns how many there were.
     */
    endStreams(): number {
      return streams.endAll();
    },
    async stop() {
      routes.stop();
      await usage.close();
    },
  };
}

/**
 * A standalone router's `/metrics`: METRICS_TOKEN when set. Without it the page is open
 * while the router is (no ROUTER_TOKEN, API keys not required: a router on loopback beside
 * an open manager) and refused otherwise. Neither ROUTER_TOKEN (it reads every agent's
 * credential in the route snapshot) nor the manager's ADMIN_TOKEN (which a router never
 * holds) belongs in a scraper's configuration, so the router takes a token of its own.
 */
export function routerMetricsAccess(
  env: Pick<RouterEnv, "METRICS_TOKEN" | "ROUTER_TOKEN">,
  requireApiKey: boolean,
): MetricsAccess {
  if (env.METRICS_TOKEN) {
    return {
      open: false,
      tokens: [env.METRICS_TOKEN],
      hint: "/metrics needs Authorization: Bearer <METRICS_TOKEN>",
    };
  }
  if (!env.ROUTER_TOKEN && !requireApiKey) return { open: true };
  return {
    open: false,
    tokens: [],
    hint: "/metrics is closed: set METRICS_TOKEN on this router and scrape with Authorization: Bearer <METRICS_TOKEN>",
  };
}
