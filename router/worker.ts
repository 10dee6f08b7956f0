/**
 * The router as a workerd / Cloudflare Workers module (`npm run build:worker` →
 * dist/worker.js; see docs/edge.md). Env comes from bindings: MANAGER_URL (var) and
 * ROUTER_TOKEN (secret, from `fleet routers create NAME`), plus any optional router variable. Timers do not outlive a request
 * on workerd, so the route table is revalidated lazily on requests and usage is flushed
 * under `ctx.waitUntil` after each response.
 */
import type { ExecutionContext } from "hono";
import { EnvError } from "../kit/env.ts";
import { createLogger } from "../kit/log.ts";
import { errorBody } from "../protocol/index.ts";
import { loadRouterEnv } from "./env.ts";
import { createStandaloneRouter } from "./standalone.ts";

type Bindings = Record<string, unknown>;
type Edge = ReturnType<typeof createStandaloneRouter>;

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
    if (error instanceof EnvError) return { error: error.message };
    throw error;
  }
  if (!source.MANAGER_URL) return { error: "invalid environment: MANAGER_URL must be set" };
  return createStandaloneRouter({
    env,
    log: createLogger({ service: "router-edge", level: env.LOG_LEVEL }),
    // An edge router is public by nature: keys are required unless explicitly turned off.
    requireApiKey: env.REQUIRE_API_KEY ?? true,
    clientAddress: (c) => c.req.header("cf-connecting-ip") ?? undefined,
    flushUnderWaitUntil: true,
  });
}

export default {
  async fetch(request: Request, bindings: Bindings, ctx: ExecutionContext): Promise<Response> {
    edge ??= build(bindings);
    if ("error" in edge) {
      console.error(edge.error);
      // The message names variables, never their values (kit/env.ts), so it may be shown.
      return Response.json(
        errorBody({
          status: 500,
          code: "bad_environment",
          message: `the router is misconfigured: ${edge.error}`,
        }),
        { status: 500 },
      );
    }
    if (!edge.routes.current()) await edge.routes.refresh();
    else if (edge.routes.isStale()) ctx.waitUntil(edge.routes.refresh());
    return edge.app.fetch(request, bindings, ctx);
  },
};
