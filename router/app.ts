import { type Context, Hono } from "hono";
import { isoTimestamps, type MonotonicClock, monotonicClock } from "../kit/clock.ts";
import { type Cors, readableBy } from "../kit/cors.ts";
import { AppError, errorResponse, quote, renderError } from "../kit/errors.ts";
import { describeError, type Logger, silentLogger } from "../kit/log.ts";
import { LogLimiter } from "../kit/log-limit.ts";
import { Metrics } from "../kit/metrics.ts";
import { checkMetricsAccess, type MetricsAccess } from "../kit/metrics-access.ts";
import { maxLatencyMs } from "../protocol/index.ts";
import { authenticate } from "./auth.ts";
import { Balancer } from "./balancer.ts";
import {
  BodyBudget,
  type BodyLimits,
  BodyRefused,
  clientAskedForUsage,
  parseInferenceBody,
  readBody,
  requestShape,
  withIncludeUsage,
} from "./body.ts";
import { routerInstruments } from "./instruments.ts";
import { OpenStreams } from "./open-streams.ts";
import { affinityKey, opensConversation } from "./policy.ts";
import { forward, type ProxyConfig } from "./proxy.ts";
import { ReplicaChecker } from "./replica-check.ts";
import {
  type InferencePath,
  includeUsagePaths,
  inferenceRoutes,
  routerRoutes,
  streamingPaths,
} from "./routes.ts";
import type {
  ClientIdleTimer,
  FetchLike,
  RouteLoadsView,
  RouteSource,
  UsageSink,
} from "./types.ts";
import type { CheckedField, Rejection } from "./usage-scan.ts";
import { type RouteView, viewSource } from "./view.ts";

export type { ClientIdleTimer, FetchLike, RouteSource, UsageSink };

export type AppDeps = {
  routes: RouteSource;
  usage: UsageSink;
  /** Require an API key even when no key exists (a router listening beyond loopback). */
  requireApiKey?: boolean;
  fetch?: FetchLike;
  /** The client for requests with `"stream": true` (default: `fetch`). */
  streamFetch?: FetchLike;
  /** Monotonic milliseconds for latencies and deadlines (performance.now by default). */
  clock?: MonotonicClock;
  log?: Logger;
  /** Shared registry so a poller/batcher in the same process export on the same /metrics. */
  metrics?: Metrics;
  /**
   * Who may read `/metrics` (default: anyone). The manager checks its own callers before it
   * hands a request to the router it mounts, so that one is built open.
   */
  metricsAccess?: MetricsAccess;
  /** Default 32 MiB; larger bodies get 413. */
  maxBodyBytes?: number;
  /** An inference body must arrive within this once its handler runs, else 408 (default 60 s). */
  bodyTimeoutMs?: number;
  /** Bodies being received, all requests together; past it 503 + Retry-After (default 128 MiB). */
  maxBodyMemoryBytes?: number;
  /**
   * The client connection's idle timer, where the runtime's server has one that would cut a
   * quiet response (Bun.serve): held while an inference request is served, released when
   * its response has ended. Node and workerd pass none.
   */
  idleTimer?: ClientIdleTimer;
  timeouts?: {
    /** Until the first body byte of the agent's response (vLLM queues; default 10 min). */
    firstByteMs?: number;
    /** Between body chunks once the response started (default 5 min). */
    idleMs?: number;
    /**
     * A request waiting this long for its first byte has its replica health-checked, and
     * again every as long while it waits (default 3 s; 0 = off).
     */
    firstByteProbeMs?: number;
    /** The health check's timeout: no answer in time ejects the replica (default 2 s). */
    probeTimeoutMs?: number;
  };
  retry?: {
    /** Attempts per request, each on a different replica (default 3). */
    maxAttempts?: number;
    /** No new attempt starts later than this after the request arrived (default 30 s). */
    budgetMs?: number;
  };
  ejection?: {
    /** Consecutive transport failures before a replica is ejected (default 3). */
    after?: number;
    /** First cool-down; doubles on each failed probe up to `maxCooldownMs` (5 s / 60 s). */
    cooldownMs?: number;
    maxCooldownMs?: number;
  };
  /**
   * Which web pages may read the OpenAI surface's answers (CORS_ORIGINS, kit/cors.ts): the
   * entries pass every origin by default, as vLLM does; absent, no cross-origin access.
   */
  cors?: Cors;
  /** The client's address for X-Forwarded-For (runtime-specific; entries supply it). */
  clientAddress?: (c: Context) => string | undefined;
  /**
   * Called with a promise that settles once the request is fully accounted (stream ended,
   * usage recorded). workerd passes `ctx.waitUntil` so usage is flushed after the response.
   */
  waitUntil?: (c: Context, task: Promise<void>) => void;
  /**
   * The responses being relayed, for the entry to end cleanly when it shuts down
   * (`streams.endAll()`: an error event and [DONE] on each event stream). Default: a registry
   * of the app's own that nothing ends.
   */
  streams?: OpenStreams;
};

const MiB = 1024 * 1024;

/**
 * The router app: the OpenAI surface (router/routes.ts) over a route source and a usage
 * sink. Each step is named below; a request's path is `inferenceHandler`.
 */
export function createApp(deps: AppDeps): Hono {
  const log = deps.log ?? silentLogger;
  const clock = deps.clock ?? monotonicClock;
  const metrics = deps.metrics ?? new Metrics();
  const balancer = createBalancer(deps, { metrics, log, clock });
  const instruments = routerInstruments(metrics, balancer);
  const currentView = viewSource(deps.routes, (snapshot) => balancer.retain(snapshot.routes));
  /** The manager's route loads last handed to the balancer (a new object per fetch). */
  let seededLoads: RouteLoadsView | undefined;
  const seedLoads = (view: RouteView) => {
    const loads = deps.routes.loads?.();
    if (!loads || loads === seededLoads) return;
    seededLoads = loads;
    balancer.seed(view.snapshot.routes, loads.loads, Date.now() - loads.receivedAt);
  };
  const requireApiKey = deps.requireApiKey ?? false;

  const { cors } = deps;
  /** A response a web page at the request's origin may read, when CORS_ORIGINS lets it. */
  const originOf = (c: Context) => (cors ? c.req.header("origin") : undefined);
  const readable = (c: Context, response: Response) => readableBy(cors, originOf(c), response);

  const app = new Hono();
  app.onError((error, c) => readable(c, renderError(error, { log, path: c.req.path })));
  app.notFound((c) => readable(c, errorResponse("not_found", "no such endpoint on this gateway")));

  app.get(routerRoutes.models.path, async (c) => {
    const view = currentView();
    if (!view) throw notLoaded();
    await authenticate(view.keys, requireApiKey, c.req.raw.headers);
    return readable(
      c,
      new Response(view.modelsBody, { headers: { "content-type": "application/json" } }),
    );
  });
  const metricsAccess = deps.metricsAccess ?? { open: true };
  app.get(routerRoutes.metrics.path, async (c) => {
    checkMetricsAccess(metricsAccess, c.req.header("authorization"));
    return new Response(await metrics.scrape(), {
      headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" },
    });
  });
  app.get(routerRoutes.healthz.path, () => {
    const snapshot = deps.routes.current();
    const source = deps.routes.health?.();
    // 200 while a table is loaded, however old: the router serves from it, so neither a
    // liveness nor a readiness check should take it away over its manager's outage.
    // `degraded` (with the reason and the table's age) is for people and alerts.
    const status = !snapshot ? "no_routes" : source?.problem ? "degraded" : "ok";
    return Response.json(
      {
        status,
        routes_version: snapshot?.version ?? null,
        ...(source
          ? { routes_age_s: source.ageS === null ? null : Math.round(source.ageS * 10) / 10 }
          : {}),
        ...(source?.problem ? { reason: source.problem } : {}),
      },
      { status: snapshot ? 200 : 503 },
    );
  });

  const inference = inferenceHandler({
    deps,
    proxy: proxyConfig(deps, { balancer, metrics, log, clock }),
    instruments,
    // Each inference request first hands the balancer any loads newly fetched.
    currentView: () => {
      const view = currentView();
      if (view) seedLoads(view);
      return view;
    },
    requireApiKey,
  });
  for (const { path } of inferenceRoutes) {
    app.post(path, (c) => {
      const answer = inference(c, path);
      // Only a browser's request carries Origin: every other one takes the promise as is.
      const origin = originOf(c);
      return origin ? answer.then((response) => readableBy(cors, origin, response)) : answer;
    });
  }
  if (cors) {
    for (const path of [...inferenceRoutes.map((route) => route.path), routerRoutes.models.path]) {
      app.options(path, (c) => cors.preflight(c.req.raw));
    }
  }
  return app;
}

/**
 * One inference request: authenticate, read and check the body, pick the alias's replicas,
 * forward, and account the outcome (metrics, usage record) once the response has ended.
 * Errors before the proxy answers are rendered here so they carry the request id.
 */
function inferenceHandler(parts: {
  deps: AppDeps;
  proxy: ProxyConfig;
  instruments: ReturnType<typeof routerInstruments>;
  currentView: () => RouteView | undefined;
  requireApiKey: boolean;
}): (c: Context, path: InferencePath) => Promise<Response> {
  const { deps, proxy, instruments, currentView, requireApiKey } = parts;
  const { clock, log, metrics } = proxy;
  const bodyLimits: BodyLimits = {
    maxBytes: deps.maxBodyBytes ?? 32 * MiB,
    timeoutMs: deps.bodyTimeoutMs ?? 60_000,
    budget: new BodyBudget(deps.maxBodyMemoryBytes ?? 128 * MiB),
  };
  metrics.declare(
    "fleet_router_body_bytes",
    "gauge",
    "Bytes of request bodies being received (MAX_BODY_MEMORY_BYTES caps it)",
  );
  metrics.collect(() => metrics.set("fleet_router_body_bytes", undefined, bodyLimits.budget.held));
  metrics.declare(
    "fleet_router_body_refusals_total",
    "counter",
    "Request bodies refused: too large (size), too slow (timeout), no memory left (memory), broken off by the client (incomplete)",
  );
  const idleTimer = deps.idleTimer;
  const rejectValues = usageRejections(proxy.metrics, log);
  const isoTime = isoTimestamps();

  const handle = async (
    c: Context,
    path: InferencePath,
    request: { startedAt: number; startedWall: number; id: string },
  ): Promise<Response> => {
    const view = currentView();
    if (!view) throw notLoaded();
    const known = authenticate(view.keys, requireApiKey, c.req.raw.headers);
    const apiKeyId = known instanceof Promise ? await known : known;
    const raw = await readBody(c.req.raw, bodyLimits);
    const { json, body } = parseInferenceBody(raw);
    const alias = body.model;
    const group = view.aliases.get(alias);
    if (!group) {
      throw new AppError("model_not_found", `The model \`${quote(alias)}\` does not exist.`, {
        param: "model",
      });
    }
    const stream = body.stream === true && streamingPaths.has(path);
    const hideUsage =
      stream && includeUsagePaths.has(path) && !clientAskedForUsage(body.stream_options);
    const series = instruments.seriesFor(alias);
    const settle = holdOpen(c, deps.waitUntil);

    // Awaited, not returned: an async function that returns a promise settles its own a few
    // turns of the microtask queue later (measured: 6% of the router's JavaScript per request).
    return await forward(proxy, {
      c,
      alias,
      inFlight: series.inFlight,
      path,
      candidates: group.ready,
      body: hideUsage ? withIncludeUsage(raw, json) : raw,
      stream,
      hideUsage,
      shape: requestShape(json, path),
      affinityKey: affinityKey(
        group.routing,
        c.req.header("x-session-id") || body.user || undefined,
        json,
        path,
      ),
      opening: group.routing === "prefix_affinity" && opensConversation(json, path),
      requestId: request.id,
      clientAddress: deps.clientAddress?.(c),
      startedAt: request.startedAt,
      onDone: (outcome) => {
        const latencyMs = Math.max(0, clock.now() - request.startedAt);
        series.count(outcome.status);
        series.duration.observe(latencyMs / 1000);
        if (outcome.ttftMs !== null) series.ttft.observe(outcome.ttftMs / 1000);
        series.tokens(
          apiKeyId,
          outcome.usage?.promptTokens ?? null,
          outcome.usage?.completionTokens ?? null,
        );
        // The outcome's own list (made for this request), the latencies' rejections added.
        const rejected = outcome.rejected ?? [];
        try {
          deps.usage.record({
            ts: isoTime(request.startedWall),
            api_key_id: apiKeyId,
            alias,
            worker_id: outcome.workerId,
            status: outcome.status,
            latency_ms: checkedMs("latency_ms", latencyMs, rejected),
            ttft_ms: checkedMs("ttft_ms", outcome.ttftMs, rejected),
            prompt_tokens: outcome.usage?.promptTokens ?? null,
            completion_tokens: outcome.usage?.completionTokens ?? null,
            stream,
          });
          if (rejected.length > 0) rejectValues(rejected, { alias, workerId: outcome.workerId });
        } catch (error) {
          log.error("usage sink failed", { error: String(error) });
        }
        idleTimer?.release(c.req.raw);
        settle?.();
      },
    });
  };

  return (c, path) => {
    const request = { startedAt: clock.now(), startedWall: Date.now(), id: requestId(c) };
    // The body is read under its own deadline and the response under the upstream timeouts:
    // the runtime's idle timer must not cut a completion that queues or pauses between tokens.
    idleTimer?.hold(c.req.raw);
    // A catch handler on the handler's promise rather than an async wrapper around it: one
    // promise per request fewer to settle.
    return handle(c, path, request).catch((error: unknown) => {
      idleTimer?.release(c.req.raw);
      if (error instanceof BodyRefused) {
        metrics.inc("fleet_router_body_refusals_total", { reason: error.reason });
        // Debug only: a client that trips these can do so once per request, and the counter
        // already tells operators it happens.
        if (error.reason !== "size") {
          log.debug("request body refused", {
            request_id: request.id,
            reason: error.reason,
            body_bytes_held: bodyLimits.budget.held,
            ...(error.cause === undefined ? {} : { cause: describeError(error.cause) }),
          });
        }
      }
      return renderError(error, { log, requestId: request.id, path });
    });
  };
}

/**
 * A latency as a record carries it: whole milliseconds within what the column holds. The
 * router measures these itself, so a bad one means a broken clock; it is still never passed on.
 */
function checkedMs(
  field: CheckedField,
  value: number | null,
  rejected: Rejection[],
): number | null {
  if (value === null) return null;
  const ms = Math.round(value);
  if (Number.isFinite(ms) && ms >= 0 && ms <= maxLatencyMs) return ms;
  rejected.push({ field, value });
  return null;
}

/**
 * Counts values a record could not carry (`fleet_router_usage_values_rejected_total{field}`)
 * and says which worker sent them, at most once a minute per worker and field.
 */
function usageRejections(metrics: Metrics, log: Logger) {
  metrics.declare(
    "fleet_router_usage_values_rejected_total",
    "counter",
    "Token counts and latencies recorded as null because they were not whole numbers within bounds, by field",
  );
  const limiter = new LogLimiter(log);
  return (rejected: Rejection[], context: { alias: string; workerId: string | null }) => {
    for (const { field, value } of rejected) {
      metrics.inc("fleet_router_usage_values_rejected_total", { field });
      limiter.warn(`${field}:${context.workerId}`, "usage value out of bounds; recorded as null", {
        field,
        value: String(typeof value === "object" ? JSON.stringify(value) : value).slice(0, 40),
        alias: context.alias,
        worker_id: context.workerId,
      });
    }
  };
}

/** The client's `x-request-id` when it is well-formed, else a new one. */
function requestId(c: Context): string {
  const incoming = c.req.header("x-request-id");
  return incoming && /^[\w.:-]{1,128}$/.test(incoming) ? incoming : crypto.randomUUID();
}

/**
 * On workerd (`waitUntil` given) the runtime is asked to stay alive until the request is
 * fully accounted; the returned function says it is.
 */
function holdOpen(c: Context, waitUntil: AppDeps["waitUntil"]): (() => void) | undefined {
  if (!waitUntil) return undefined;
  let settle: (() => void) | undefined;
  waitUntil(
    c,
    new Promise<void>((resolve) => {
      settle = resolve;
    }),
  );
  return settle;
}

function createBalancer(
  deps: AppDeps,
  { metrics, log, clock }: { metrics: Metrics; log: Logger; clock: MonotonicClock },
): Balancer {
  return new Balancer({
    ejectAfter: deps.ejection?.after ?? 3,
    cooldownMs: deps.ejection?.cooldownMs ?? 5000,
    maxCooldownMs: deps.ejection?.maxCooldownMs ?? 60_000,
    now: () => clock.now(),
    onEject: (route, cooldownMs) => {
      metrics.inc("fleet_router_ejections_total", {
        alias: route.alias,
        worker_id: route.worker_id,
      });
      log.warn("replica ejected", {
        alias: route.alias,
        worker_id: route.worker_id,
        worker_url: route.worker_url,
        cooldown_ms: cooldownMs,
      });
    },
  });
}

function proxyConfig(
  deps: AppDeps,
  parts: { balancer: Balancer; metrics: Metrics; log: Logger; clock: MonotonicClock },
): ProxyConfig {
  const upstreamFetch: FetchLike = deps.fetch ?? ((input, init) => fetch(input, init));
  return {
    fetch: upstreamFetch,
    streamFetch: deps.streamFetch ?? upstreamFetch,
    firstByteMs: deps.timeouts?.firstByteMs ?? 600_000,
    idleMs: deps.timeouts?.idleMs ?? 300_000,
    maxAttempts: Math.max(1, deps.retry?.maxAttempts ?? 3),
    budgetMs: deps.retry?.budgetMs ?? 30_000,
    check: replicaCheck(deps, upstreamFetch, parts),
    streams: deps.streams ?? new OpenStreams(),
    ...parts,
  };
}

/** The health checks of replicas that keep a request waiting for its first byte. */
function replicaCheck(
  deps: AppDeps,
  upstreamFetch: FetchLike,
  { metrics, log, clock }: { metrics: Metrics; log: Logger; clock: MonotonicClock },
): ProxyConfig["check"] {
  const afterMs = deps.timeouts?.firstByteProbeMs ?? 3000;
  if (afterMs <= 0) return undefined;
  const checker = new ReplicaChecker({
    fetch: upstreamFetch,
    timeoutMs: deps.timeouts?.probeTimeoutMs ?? 2000,
    // Reused for up to a second: however many requests wait, about one check per second
    // reaches each agent.
    freshMs: Math.min(1000, afterMs),
    now: () => clock.now(),
    onVerdict: (route, verdict) => {
      metrics.inc("fleet_router_replica_checks_total", {
        worker_id: route.worker_id,
        result: verdict.alive ? "alive" : "unresponsive",
      });
      if (!verdict.alive) {
        log.warn("replica unresponsive", {
          worker_id: route.worker_id,
          worker_url: route.worker_url,
          cause: verdict.cause,
        });
      }
    },
  });
  return { afterMs, checker };
}

function notLoaded(): AppError {
  return new AppError("unavailable", "the route table has not been loaded yet; retry shortly", {
    headers: { "retry-after": "1" },
  });
}
