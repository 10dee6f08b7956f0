import { type Context, Hono } from "hono";
import { z } from "zod";
import { type MonotonicClock, monotonicClock } from "../kit/clock.ts";
import { sha256Hex } from "../kit/crypto.ts";
import { AppError, errorResponse, renderError } from "../kit/errors.ts";
import { type Logger, silentLogger } from "../kit/log.ts";
import type { RouteEntry, RouteSnapshot } from "../protocol/index.ts";
import { Balancer } from "./balancer.ts";
import { type BoundHistogram, type BoundSeries, Metrics } from "./metrics.ts";
import { forward, type ProxyConfig } from "./proxy.ts";

import type { FetchLike, RouteSource, UsageSink } from "./types.ts";

export type { FetchLike, RouteSource, UsageSink };

export type AppDeps = {
  routes: RouteSource;
  usage: UsageSink;
  /** Sent to agents as `Authorization: Bearer …`; never the client's key. */
  fleetToken?: string;
  /** Require an API key even when no key exists (a router listening beyond loopback). */
  requireApiKey?: boolean;
  fetch?: FetchLike;
  /** Monotonic milliseconds for latencies and deadlines (performance.now by default). */
  clock?: MonotonicClock;
  log?: Logger;
  /** Shared registry so a poller/batcher in the same process export on the same /metrics. */
  metrics?: Metrics;
  /** Default 32 MiB; larger bodies get 413. */
  maxBodyBytes?: number;
  timeouts?: {
    /** Until the first body byte of the agent's response (vLLM queues; default 10 min). */
    firstByteMs?: number;
    /** Between body chunks once the response started (default 5 min). */
    idleMs?: number;
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
  /** The client's address for X-Forwarded-For (runtime-specific; entries supply it). */
  clientAddress?: (c: Context) => string | undefined;
  /**
   * Called with a promise that settles once the request is fully accounted (stream ended,
   * usage recorded). workerd passes `ctx.waitUntil` so usage is flushed after the response.
   */
  waitUntil?: (c: Context, task: Promise<void>) => void;
};

const MiB = 1024 * 1024;

/** The fields the router reads from an OpenAI request body; everything else passes through. */
const inferenceBodySchema = z.looseObject({
  model: z
    .string({ error: "`model` is required and must be a string" })
    .min(1, "`model` must not be empty"),
  stream: z.boolean().nullish(),
  user: z.string().nullish(),
  stream_options: z.looseObject({ include_usage: z.boolean().nullish() }).nullish(),
});

export type RouteView = {
  snapshot: RouteSnapshot;
  aliases: Map<string, { ready: RouteEntry[]; createdAt: number }>;
  /** key_hash → key id */
  keys: Map<string, string>;
  /** presented key → key id (or null when wrong); reset with each snapshot, bounded. */
  keyCache: Map<string, string | null>;
  modelsBody: string;
};

function buildView(snapshot: RouteSnapshot): RouteView {
  const aliases = new Map<string, { ready: RouteEntry[]; createdAt: number }>();
  for (const route of snapshot.routes) {
    let entry = aliases.get(route.alias);
    if (!entry) {
      entry = { ready: [], createdAt: Number.POSITIVE_INFINITY };
      aliases.set(route.alias, entry);
    }
    if (route.ready) entry.ready.push(route);
    entry.createdAt = Math.min(entry.createdAt, Date.parse(route.created_at) || 0);
  }
  const data = [...aliases.entries()]
    .filter(([, entry]) => entry.ready.length > 0)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([alias, entry]) => ({
      id: alias,
      object: "model",
      created: Math.floor(entry.createdAt / 1000),
      owned_by: "vllm-fleet",
      root: entry.ready[0]?.model_name ?? alias,
      parent: null,
    }));
  return {
    snapshot,
    aliases,
    keys: new Map(snapshot.api_keys.map((key) => [key.key_hash, key.id])),
    keyCache: new Map(),
    modelsBody: JSON.stringify({ object: "list", data }),
  };
}

const encoder = new TextEncoder();
// One per module: every inference request decodes its body once on the hot path.
const decoder = new TextDecoder();
const keyCacheLimit = 1024;

async function readBody(request: Request, limit: number): Promise<Uint8Array<ArrayBuffer>> {
  const tooLarge = () =>
    new AppError("payload_too_large", `request body exceeds the limit of ${limit} bytes`);
  const declared = request.headers.get("content-length");
  if (declared !== null && Number(declared) > limit) {
    // Tell the runtime the body will not be read, so it can close the connection cleanly
    // (workerd otherwise resets it under the client's next request on the same socket).
    await request.body?.cancel().catch(() => {});
    throw tooLarge();
  }
  // With a declared length, read it whole without touching `request.body`: on Bun, making
  // the body a stream first sends arrayBuffer() through the stream machinery.
  if (declared !== null) return new Uint8Array(await request.arrayBuffer());
  if (!request.body) return new Uint8Array(0);
  const reader = request.body.getReader();
  const chunks: Uint8Array<ArrayBuffer>[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > limit) {
      await reader.cancel().catch(() => {});
      throw tooLarge();
    }
    chunks.push(value);
  }
  if (chunks.length === 1 && chunks[0]) return chunks[0];
  const body = new Uint8Array(size);
  let offset = 0;
  for (const chunk of chunks) {
    body.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return body;
}

/**
 * Streams that did not ask for usage get `stream_options.include_usage: true` upstream so
 * the router can account tokens; the usage chunk is then hidden from them. When the body
 * has no `stream_options` the field is spliced in front of the original bytes (no
 * re-serialisation, so numbers and key order stay exactly as the client sent them).
 */
function withIncludeUsage(
  body: Uint8Array<ArrayBuffer>,
  parsed: Record<string, unknown>,
): Uint8Array<ArrayBuffer> | string {
  if (parsed.stream_options === undefined) {
    const open = body.indexOf(0x7b);
    if (open !== -1) {
      const insert = encoder.encode('"stream_options":{"include_usage":true},');
      const hasMembers = body.slice(open + 1).some((byte) => byte > 0x20 && byte !== 0x7d);
      const spliced = hasMembers
        ? insert
        : encoder.encode('"stream_options":{"include_usage":true}');
      const out = new Uint8Array(body.byteLength + spliced.byteLength);
      out.set(body.subarray(0, open + 1), 0);
      out.set(spliced, open + 1);
      out.set(body.subarray(open + 1), open + 1 + spliced.byteLength);
      return out;
    }
  }
  const options =
    typeof parsed.stream_options === "object" && parsed.stream_options !== null
      ? parsed.stream_options
      : {};
  return JSON.stringify({ ...parsed, stream_options: { ...options, include_usage: true } });
}

/** vLLM semantics: `stream_options` present means usage unless include_usage is false. */
function clientAskedForUsage(streamOptions: unknown): boolean {
  if (typeof streamOptions !== "object" || streamOptions === null) return false;
  return (streamOptions as { include_usage?: unknown }).include_usage !== false;
}

const inferencePaths = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"] as const;

export function createApp(deps: AppDeps): Hono {
  const log = deps.log ?? silentLogger;
  const clock = deps.clock ?? monotonicClock;
  const metrics = deps.metrics ?? new Metrics();
  const maxBodyBytes = deps.maxBodyBytes ?? 32 * MiB;
  const balancer = new Balancer({
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
  const proxyConfig: ProxyConfig = {
    fetch: deps.fetch ?? ((input, init) => fetch(input, init)),
    fleetToken: deps.fleetToken,
    firstByteMs: deps.timeouts?.firstByteMs ?? 600_000,
    idleMs: deps.timeouts?.idleMs ?? 300_000,
    maxAttempts: Math.max(1, deps.retry?.maxAttempts ?? 3),
    budgetMs: deps.retry?.budgetMs ?? 30_000,
    balancer,
    metrics,
    clock,
    log,
  };

  metrics.declare("fleet_router_requests_total", "counter", "Requests by alias and final status");
  metrics.declare(
    "fleet_router_request_duration_seconds",
    "histogram",
    "Time from request arrival to the end of the response body",
  );
  metrics.declare(
    "fleet_router_ttft_seconds",
    "histogram",
    "Time from request arrival to the first body byte from the agent",
  );
  metrics.declare("fleet_router_in_flight", "gauge", "Requests being proxied, by alias");
  metrics.declare("fleet_router_retries_total", "counter", "Attempts retried on another replica");
  metrics.declare("fleet_router_ejections_total", "counter", "Replicas ejected after failures");
  metrics.declare("fleet_router_ejected_replicas", "gauge", "Replicas currently ejected");
  metrics.collect(() =>
    metrics.set("fleet_router_ejected_replicas", undefined, balancer.ejectedCount()),
  );

  // Per-alias series, bound once: a request's metrics cost a few additions, no formatting.
  type AliasSeries = {
    inFlight: BoundSeries;
    duration: BoundHistogram;
    ttft: BoundHistogram;
    byStatus: Map<number, BoundSeries>;
  };
  const aliasSeries = new Map<string, AliasSeries>();
  const seriesFor = (alias: string): AliasSeries => {
    let series = aliasSeries.get(alias);
    if (!series) {
      const labels = { alias };
      series = {
        inFlight: metrics.series("fleet_router_in_flight", labels, "gauge"),
        duration: metrics.histogramSeries("fleet_router_request_duration_seconds", labels),
        ttft: metrics.histogramSeries("fleet_router_ttft_seconds", labels),
        byStatus: new Map(),
      };
      aliasSeries.set(alias, series);
    }
    return series;
  };
  const countRequest = (series: AliasSeries, alias: string, status: number) => {
    let counter = series.byStatus.get(status);
    if (!counter) {
      counter = metrics.series("fleet_router_requests_total", { alias, status: String(status) });
      series.byStatus.set(status, counter);
    }
    counter.add(1);
  };

  let view: RouteView | undefined;
  const currentView = (): RouteView | undefined => {
    const snapshot = deps.routes.current();
    if (!snapshot) return undefined;
    if (view?.snapshot !== snapshot) {
      view = buildView(snapshot);
      balancer.retain(snapshot.routes);
    }
    return view;
  };

  const authenticate = async (c: Context, routeView: RouteView): Promise<string | null> => {
    if (routeView.keys.size === 0 && !deps.requireApiKey) return null;
    const header = c.req.header("authorization");
    const presented = header?.startsWith("Bearer ") ? header.slice(7).trim() : "";
    if (!presented) {
      throw new AppError(
        "invalid_api_key",
        "You didn't provide an API key. Send it as `Authorization: Bearer <key>`.",
      );
    }
    let id = routeView.keyCache.get(presented);
    if (id === undefined) {
      id = routeView.keys.get(await sha256Hex(presented)) ?? null;
      if (routeView.keyCache.size >= keyCacheLimit) routeView.keyCache.clear();
      routeView.keyCache.set(presented, id);
    }
    if (id === null) throw new AppError("invalid_api_key", "Incorrect API key provided.");
    return id;
  };

  const app = new Hono();

  app.onError((error, c) => renderError(error, { log, path: c.req.path }));

  app.notFound(() => errorResponse("not_found", "no such endpoint on this gateway"));

  app.get("/v1/models", async (c) => {
    const routeView = currentView();
    if (!routeView) throw notLoaded();
    await authenticate(c, routeView);
    return new Response(routeView.modelsBody, {
      headers: { "content-type": "application/json" },
    });
  });

  app.get(
    "/metrics",
    () =>
      new Response(metrics.render(), {
        headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" },
      }),
  );

  app.get("/healthz", () => {
    const snapshot = deps.routes.current();
    return Response.json(
      { status: snapshot ? "ok" : "no_routes", routes_version: snapshot?.version ?? null },
      { status: snapshot ? 200 : 503 },
    );
  });

  const proxyInference = async (
    c: Context,
    path: (typeof inferencePaths)[number],
    requestId: string,
    startedAt: number,
    startedWall: number,
  ): Promise<Response> => {
    const routeView = currentView();
    if (!routeView) throw notLoaded();
    const apiKeyId = await authenticate(c, routeView);
    const raw = await readBody(c.req.raw, maxBodyBytes);

    let json: unknown;
    try {
      json = JSON.parse(decoder.decode(raw));
    } catch {
      throw new AppError("invalid_json", "the request body is not valid JSON");
    }
    const parsed = inferenceBodySchema.safeParse(json);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      const param = issue?.path.join(".") || null;
      throw new AppError(
        "invalid_request",
        typeof json === "object" && json !== null && !Array.isArray(json)
          ? `${param ?? "body"}: ${issue?.message ?? "invalid"}`
          : "the request body must be a JSON object",
        { param },
      );
    }
    const body = parsed.data;
    const alias = body.model;
    const group = routeView.aliases.get(alias);
    if (!group) {
      throw new AppError("model_not_found", `The model \`${alias}\` does not exist.`, {
        param: "model",
      });
    }
    const stream = body.stream === true && path !== "/v1/embeddings";
    const askedForUsage = clientAskedForUsage(body.stream_options);
    const upstreamBody =
      stream && !askedForUsage ? withIncludeUsage(raw, json as Record<string, unknown>) : raw;
    const sessionKey = c.req.header("x-session-id") || body.user || undefined;
    const series = seriesFor(alias);

    let settle: (() => void) | undefined;
    if (deps.waitUntil) {
      const settled = new Promise<void>((resolve) => {
        settle = resolve;
      });
      deps.waitUntil(c, settled);
    }

    return forward(proxyConfig, {
      c,
      alias,
      inFlight: series.inFlight,
      path,
      candidates: group.ready,
      body: upstreamBody,
      stream,
      hideUsage: stream && !askedForUsage,
      sessionKey,
      requestId,
      clientAddress: deps.clientAddress?.(c),
      startedAt,
      onDone: (outcome) => {
        const latencyMs = Math.max(0, clock.now() - startedAt);
        countRequest(series, alias, outcome.status);
        series.duration.observe(latencyMs / 1000);
        if (outcome.ttftMs !== null) series.ttft.observe(outcome.ttftMs / 1000);
        try {
          deps.usage.record({
            ts: new Date(startedWall).toISOString(),
            api_key_id: apiKeyId,
            alias,
            worker_id: outcome.workerId,
            status: outcome.status,
            latency_ms: Math.round(latencyMs),
            ttft_ms: outcome.ttftMs === null ? null : Math.round(outcome.ttftMs),
            prompt_tokens: outcome.usage?.promptTokens ?? null,
            completion_tokens: outcome.usage?.completionTokens ?? null,
            stream,
          });
        } catch (error) {
          log.error("usage sink failed", { error: String(error) });
        }
        settle?.();
      },
    });
  };

  for (const path of inferencePaths) {
    app.post(path, async (c) => {
      const startedAt = clock.now();
      const startedWall = Date.now();
      const incomingId = c.req.header("x-request-id");
      const requestId =
        incomingId && /^[\w.:-]{1,128}$/.test(incomingId) ? incomingId : crypto.randomUUID();
      try {
        return await proxyInference(c, path, requestId, startedAt, startedWall);
      } catch (error) {
        // Errors before the proxy answers carry the request id like everything else.
        return renderError(error, { log, requestId, path });
      }
    });
  }

  return app;
}

function notLoaded(): AppError {
  return new AppError("unavailable", "the route table has not been loaded yet; retry shortly", {
    headers: { "retry-after": "1" },
  });
}
