/**
 * The router as a workerd / Cloudflare Workers module (`npm run build:worker` →
 * dist/worker.js; see docs/edge.md). Env comes from bindings: MANAGER_URL (var) and
 * FLEET_TOKEN (secret), plus any optional router variable. Timers do not outlive a request
 * on workerd, so the route table is revalidated lazily on requests and usage is flushed
 * under `ctx.waitUntil` after each response.
 */
import type { ExecutionContext } from "hono";
import { errorBody } from "../protocol/index.ts";
import { createApp } from "./app.ts";
import { loadRouterEnv } from "./env.ts";
import { consoleLogger } from "./log.ts";
import { Metrics } from "./metrics.ts";
import { SnapshotPoller } from "./snapshot-poller.ts";
import { UsageBatcher } from "./usage-batcher.ts";

type Bindings = Record<string, unknown>;
type Edge = {
  app: ReturnType<typeof createApp>;
  routes: SnapshotPoller;
  usage: UsageBatcher;
};

// One router per isolate, built on the first request (bindings are only known then).
let edge: Edge | { error: string } | undefined;

function build(bindings: Bindings): Edge | { error: string } {
  const source: Record<string, string | undefined> = {};
  for (const [name, value] of Object.entries(bindings)) {
    if (typeof value === "string") source[name] = value;
  }
  let env: ReturnType<typeof loadRouterEnv>;
  try {
    env = loadRouterEnv(source);
  } catch (error) {
    return { error: error instanceof Error ? error.message : String(error) };
  }
  if (!source.MANAGER_URL) return { error: "invalid environment: MANAGER_URL must be set" };
  const log = consoleLogger("router-edge");
  const metrics = new Metrics();
  const routes = new SnapshotPoller({
    managerUrl: env.MANAGER_URL,
    fleetToken: env.FLEET_TOKEN,
    intervalMs: env.ROUTES_REFRESH_MS,
    log,
    metrics,
  });
  const usage = new UsageBatcher({
    managerUrl: env.MANAGER_URL,
    fleetToken: env.FLEET_TOKEN,
    maxBuffer: env.USAGE_BUFFER_MAX,
    log,
    metrics,
  });
  const app = createApp({
    routes,
    usage,
    fleetToken: env.FLEET_TOKEN,
    // An edge router is public by nature: keys are required unless explicitly turned off.
    requireApiKey: env.REQUIRE_API_KEY ?? true,
    log,
    metrics,
    maxBodyBytes: env.MAX_BODY_BYTES,
    timeouts: { firstByteMs: env.FIRST_BYTE_TIMEOUT_MS, idleMs: env.IDLE_TIMEOUT_MS },
    retry: { maxAttempts: env.RETRY_MAX_ATTEMPTS, budgetMs: env.RETRY_BUDGET_MS },
    ejection: {
      after: env.EJECT_AFTER_FAILURES,
      cooldownMs: env.EJECT_COOLDOWN_MS,
      maxCooldownMs: Math.max(60_000, env.EJECT_COOLDOWN_MS),
    },
    clientAddress: (c) => c.req.header("cf-connecting-ip") ?? undefined,
    waitUntil: (c, task) => c.executionCtx.waitUntil(task.then(() => usage.flushSoon())),
  });
  return { app, routes, usage };
}

export default {
  async fetch(request: Request, bindings: Bindings, ctx: ExecutionContext): Promise<Response> {
    edge ??= build(bindings);
    if ("error" in edge) {
      console.error(edge.error);
      return Response.json(
        errorBody({
          status: 500,
          code: "bad_environment",
          message: "the router is misconfigured; see its logs",
        }),
        { status: 500 },
      );
    }
    if (!edge.routes.current()) await edge.routes.refresh();
    else if (edge.routes.isStale()) ctx.waitUntil(edge.routes.refresh());
    return edge.app.fetch(request, bindings, ctx);
  },
};
