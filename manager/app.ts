import { Hono } from "hono";
import { bodyLimit } from "hono/body-limit";
import { AppError, renderError } from "../kit/errors.ts";
import type { RouteSnapshot, UsageRecord } from "../protocol/index.ts";
import { createContext, type ManagerContext } from "./context.ts";
import type { ManagerDeps } from "./deps.ts";
import { docsPage, openApiDocument } from "./openapi.ts";
import { keysRoutes } from "./routes/keys.ts";
import { type FetchHandler, modelsRoutes } from "./routes/models.ts";
import { routesRoutes } from "./routes/routes.ts";
import { usageRoutes } from "./routes/usage.ts";
import { workersRoutes } from "./routes/workers.ts";
import { type TickResult, tick } from "./services/reconciler.ts";
import { UsageBuffer } from "./services/usage.ts";

export type { FetchHandler } from "./routes/models.ts";

/** What `createApp` hands back: the Hono app plus the pieces the entries drive. */
export type Manager = {
  app: Hono;
  context: ManagerContext;
  /** The in-process route snapshot: what a mounted router reads (`RouteSource`). */
  routes: { current(): RouteSnapshot | undefined };
  /** Batches usage into `request_logs` (`UsageSink`); never blocks the caller. */
  usage: { record(record: UsageRecord): void };
  /** One round of the background loops (liveness sweep, then reconciliation). */
  tick(): Promise<TickResult>;
  /** Unknown paths go to `handler` (the router), which answers the OpenAI surface. */
  mount(handler: FetchHandler): void;
  /** Loads the route snapshot and starts its version poll and the usage flush timer. */
  start(): Promise<void>;
  /** Stops the timers and flushes buffered usage. */
  close(): Promise<void>;
};

/** Builds the manager app from its dependencies; web-standard only (Bun, Node, workerd). */
export function createApp(deps: ManagerDeps): Manager {
  const ctx = createContext(deps);
  const usage = new UsageBuffer({ db: ctx.db, log: ctx.log });
  let router: FetchHandler | undefined;

  const app = new Hono();
  app.onError((error, c) =>
    renderError(error, {
      log: ctx.log,
      requestId: c.req.header("x-request-id") ?? crypto.randomUUID(),
      path: c.req.path,
    }),
  );
  app.notFound((c) => {
    if (router) return router.fetch(c.req.raw);
    throw new AppError("not_found", `no route for ${c.req.method} ${c.req.path}`);
  });

  const limit = bodyLimit({
    maxSize: 16 * 1024 * 1024,
    onError: () => {
      throw new AppError("payload_too_large", "request body is larger than 16 MiB");
    },
  });
  const mountAt = (path: string, sub: Hono) => {
    app.use(`${path}/*`, limit);
    app.route(path, sub);
  };
  mountAt("/v1/workers", workersRoutes(ctx));
  mountAt(
    "/v1/models",
    modelsRoutes(ctx, () => router),
  );
  mountAt("/v1/routes", routesRoutes(ctx));
  mountAt("/v1/keys", keysRoutes(ctx));
  mountAt("/v1/usage", usageRoutes(ctx));
  app.get("/openapi.json", (c) => c.json(openApiDocument()));
  app.get("/docs", (c) => c.html(docsPage()));
  app.get("/health", (c) => c.json({ status: "ok", database: ctx.fleetDb.kind }));

  return {
    app,
    context: ctx,
    routes: ctx.routes,
    usage,
    tick: () => tick(ctx),
    mount(handler) {
      router = handler;
    },
    async start() {
      await ctx.routes.refresh();
      ctx.routes.start();
      usage.start();
    },
    async close() {
      ctx.routes.stop();
      await usage.close();
    },
  };
}
