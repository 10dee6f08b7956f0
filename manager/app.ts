import { createRoute, type OpenAPIHono, type RouteConfig } from "@hono/zod-openapi";
import type { Context } from "hono";
import { bodyLimit } from "hono/body-limit";
import { z } from "zod";
import { readableBy } from "../kit/cors.ts";
import { AppError, quote, renderError } from "../kit/errors.ts";
import { loopbackHostsOnly } from "../kit/host-check.ts";
import type { Metrics } from "../kit/metrics.ts";
import { checkMetricsAccess } from "../kit/metrics-access.ts";
import { openAiModelListSchema } from "../protocol/index.ts";
import { inferenceRoutes, routerRoutes } from "../router/routes.ts";
import type { RouteSource } from "../router/types.ts";
import { isAuthorized, managerMetricsAccess } from "./auth.ts";
import { consoleRoutes } from "./console/routes.tsx";
import { createContext, type ManagerContext } from "./context.ts";
import type { ManagerDeps } from "./deps.ts";
import { type ApiDocument, docsRoutes } from "./docs.ts";
import { errors, json, routeGroup, securitySchemes } from "./routes/define.ts";
import { installRoutes } from "./routes/install.ts";
import { instancesRoutes } from "./routes/instances.ts";
import { keysRoutes } from "./routes/keys.ts";
import { listModels, modelsRoutes } from "./routes/models.ts";
import { routersRoutes } from "./routes/routers.ts";
import { routeLoadsRoutes, routesRoutes } from "./routes/routes.ts";
import { usageRoutes } from "./routes/usage.ts";
import { workersRoutes } from "./routes/workers.ts";
import { DatabaseHealth } from "./services/database-health.ts";
import { type TickResult, tick } from "./services/reconciler.ts";
import { UsageBuffer } from "./services/usage.ts";

/**
 * What answers the OpenAI surface on the manager's port: the router app (router/app.ts).
 * `env` is what the server handed the manager's own app (Bun's server, Node's incoming
 * request), passed on so the router can read the client's address for X-Forwarded-For.
 */
export type FetchHandler = { fetch(request: Request, env?: unknown): Response | Promise<Response> };

/** What `createApp` hands back: the Hono app plus the pieces the entries drive. */
export type Manager = {
  app: OpenAPIHono;
  context: ManagerContext;
  /** The in-process route snapshot: what a mounted router reads (`RouteSource`). */
  routes: RouteSource;
  /** Batches usage into `request_logs` (`UsageSink`); never blocks the caller. */
  usage: UsageBuffer;
  /**
   * The registry of the manager's `/metrics`: its own families (services/metrics.ts), the
   * usage writer's, and the mounted router's, which must be built with it.
   */
  metrics: Metrics;
  /** One round of the background loops (liveness sweep, then reconciliation; probes beside). */
  tick(): Promise<TickResult>;
  /** The router that answers the OpenAI routes (router/routes.ts), which are mounted by name. */
  mount(handler: FetchHandler): void;
  /** Loads the route snapshot and starts its version poll and the usage flush timer. */
  start(): Promise<void>;
  /** Stops the timers and flushes buffered usage. */
  close(): Promise<void>;
  /**
   * The entry bound its listener: the port (PORT=0 picks one) and, on a wildcard HOST, the
   * host's own addresses, which workers may then not advertise either.
   */
  listening(address: { port: number; localAddresses?: readonly string[] }): void;
};

/** The document's frame; its paths come from the route definitions. */
const documentConfig = {
  openapi: "3.0.3",
  info: {
    title: "vllm-fleet",
    version: "0.1.0",
    description:
      'The manager\'s API (workers, models, routes, API keys, router credentials, usage) and the OpenAI-compatible surface of the router mounted on the same port. Errors always have OpenAI\'s shape `{"error":{"message","type","param","code"}}`; bad input is 400 with the failing field\'s dotted path in `param`.',
  },
  tags: [
    { name: "OpenAI", description: "Answered by the mounted router (docs/router.md)" },
    { name: "Models" },
    { name: "Workers", description: "Agents register and heartbeat; operators list" },
    { name: "Routes", description: "The snapshot routers poll" },
    { name: "API keys" },
    {
      name: "Router credentials",
      description: "What standalone and edge routers present (ROUTER_TOKEN)",
    },
    { name: "Usage" },
    { name: "Operations" },
    { name: "Documentation" },
  ],
};

/** Builds the manager app from its dependencies; web-standard only (Bun, Node, workerd). */
export function createApp(deps: ManagerDeps): Manager {
  const ctx = createContext(deps);
  const metrics = ctx.metrics;
  ctx.instruments.readStateAtScrape(ctx.fleetDb, ctx.log);
  const usage = new UsageBuffer({
    db: ctx.db,
    log: ctx.log,
    metrics,
    spool: deps.usageSpool,
  });
  let router: FetchHandler | undefined;

  const app = routeGroup();
  app.onError((error, c) =>
    renderError(error, {
      log: ctx.log,
      requestId: c.req.header("x-request-id") ?? crypto.randomUUID(),
      path: c.req.path,
    }),
  );
  app.notFound((c) => {
    throw new AppError("not_found", `no route for ${quote(c.req.method)} ${quote(c.req.path)}`);
  });
  const { adminToken, fleetToken } = ctx.config;
  if (!adminToken || !fleetToken) {
    app.use(
      "*",
      loopbackHostsOnly(
        "manager",
        "Set ADMIN_TOKEN and FLEET_TOKEN to take requests under other names.",
      ),
    );
  }

  // The manager's API, one sub-app per resource.
  const limit = bodyLimit({
    maxSize: 16 * 1024 * 1024,
    onError: () => {
      throw new AppError("payload_too_large", "request body is larger than 16 MiB");
    },
  });
  const mountAt = (path: string, sub: OpenAPIHono) => {
    app.use(`${path}/*`, limit);
    app.route(path, sub);
  };
  mountAt("/v1/workers", workersRoutes(ctx));
  mountAt("/v1/models", modelsRoutes(ctx));
  mountAt("/v1/instances", instancesRoutes(ctx));
  mountAt("/v1/routes", routesRoutes(ctx));
  mountAt("/v1/route-loads", routeLoadsRoutes(ctx));
  mountAt("/v1/keys", keysRoutes(ctx));
  mountAt("/v1/routers", routersRoutes(ctx));
  mountAt("/v1/usage", usageRoutes(ctx, metrics));

  // The fleet console (docs/console.md): HTML pages for people, over the API below, called
  // in-process as the admin so its forms get the API's own validation and errors.
  app.route(
    "/",
    consoleRoutes(ctx, (method, path, body) => {
      const headers: Record<string, string> = {};
      if (ctx.config.adminToken) headers.authorization = `Bearer ${ctx.config.adminToken}`;
      if (body !== undefined) headers["content-type"] = "application/json";
      return Promise.resolve(
        app.request(path, {
          method,
          headers,
          ...(body === undefined ? {} : { body: JSON.stringify(body) }),
        }),
      );
    }),
  );

  // A GPU host's one line: the installer and the executable it downloads.
  app.route("/", installRoutes(ctx, deps.agentDownload));

  // The OpenAI surface and the router's own endpoints, answered by the mounted router.
  const toRouter = (c: Context) => {
    if (!router) throw new AppError("not_found", `no router is mounted for ${quote(c.req.path)}`);
    return router.fetch(c.req.raw, c.env);
  };
  // `/metrics` renders the one registry that the manager, its usage writer and the router it
  // mounts all count on; answered here, so it is there with or without a router.
  const metricsAccess = managerMetricsAccess(ctx.config);
  const { models: _servedModels, metrics: metricsRoute, ...forwarded } = routerRoutes;
  app.openAPIRegistry.registerPath({
    ...metricsRoute,
    summary:
      "Prometheus metrics: the manager's (fleet_manager_*) and its mounted router's (fleet_router_*); docs/operations.md, Metrics",
    description:
      "ADMIN_TOKEN or METRICS_TOKEN; open when neither is set (the manager then listens on loopback only).",
    security: [{ adminToken: [] }, { metricsToken: [] }],
  });
  app.get(metricsRoute.path, async (c) => {
    checkMetricsAccess(metricsAccess, c.req.header("authorization"));
    return new Response(await metrics.scrape(), {
      headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" },
    });
  });
  for (const route of Object.values(forwarded) as RouteConfig[]) {
    // Documented from the router's definition; its body is checked by the router's own
    // fast path, not by a second validator here.
    app.openAPIRegistry.registerPath(route);
    app.on(route.method.toUpperCase(), route.path, toRouter);
  }
  // Browsers ask before a cross-origin POST with JSON or a key: the router answers for the
  // OpenAI surface (CORS_ORIGINS, kit/cors.ts).
  for (const { path } of [...inferenceRoutes, routerRoutes.models]) {
    app.openAPIRegistry.registerPath({
      method: "options",
      path,
      tags: ["OpenAI"],
      summary: "CORS preflight: what a web page on another origin may send here",
      description:
        "Answered for the origins CORS_ORIGINS allows (every one by default, as vLLM): 204 with Access-Control-Allow-Origin, -Methods, -Headers (the ones asked for) and -Max-Age. Another origin gets 204 without them; with CORS_ORIGINS=none, 404.",
      responses: { 204: { description: "the permissions, or none for an origin not allowed" } },
    });
    app.options(path, toRouter);
  }

  // `GET /v1/models` is the manager's list for an admin and the router's for anyone else.
  app.openapi(
    createRoute({
      method: "get",
      path: "/v1/models",
      tags: ["OpenAI"],
      summary: "OpenAI model list: every registered model for an admin, served ones otherwise",
      description:
        "With ADMIN_TOKEN (or when the admin API is open) every registered model, ready or not, with `model_name`, `status`, `replicas`, `ready_replicas` and `max_model_len`. Any other caller is answered by the mounted router: the aliases with a ready replica, behind API keys as for inference.",
      security: [{ adminToken: [] }, { apiKey: [] }],
      responses: {
        200: json(openAiModelListSchema, "the model list"),
        ...errors(401, [503, "`unavailable`: the router has no route table yet"]),
      },
    }),
    async (c) => {
      if (isAuthorized(ctx.config, c.req.header("authorization"), "admin")) {
        const list = c.json(await listModels(ctx), 200);
        return readableBy(ctx.config.cors, c.req.header("origin"), list);
      }
      if (!router) {
        throw new AppError("unauthorized", "this endpoint needs Authorization: Bearer ADMIN_TOKEN");
      }
      return router.fetch(c.req.raw, c.env);
    },
  );

  // 200 whenever the process answers, the database down or not: the manager still serves
  // the OpenAI surface from its cached route snapshot (and standalone routers from theirs),
  // so an orchestrator's liveness check must not restart it over a database outage, which a
  // restart would not fix anyway. `status: "degraded"` is for people and alerts.
  const databaseHealth = new DatabaseHealth({ fleetDb: ctx.fleetDb, log: ctx.log });
  app.openapi(
    createRoute({
      method: "get",
      path: "/health",
      tags: ["Operations"],
      summary: "Manager liveness, and whether its database answers",
      description:
        "Always 200 while the process answers (a liveness check must not restart a manager over a database outage: inference keeps being served from the cached route snapshot). `status` is `degraded` while the database does not answer `select 1` within 2 s, with the reason; the answer is cached for 5 s.",
      security: [],
      responses: {
        200: json(
          z.object({
            status: z.enum(["ok", "degraded"]),
            database: z.enum(["postgres", "pglite"]),
            database_status: z.enum(["ok", "unreachable"]),
            reason: z.string().optional(),
            checked_at: z.string(),
            routes_version: z.string().nullable(),
          }),
          "alive; `degraded` when the database does not answer",
        ),
      },
    }),
    async (c) => {
      const check = await databaseHealth.check();
      return c.json(
        {
          status: check.status === "ok" ? ("ok" as const) : ("degraded" as const),
          database: ctx.fleetDb.kind,
          database_status: check.status,
          ...(check.reason ? { reason: `database: ${check.reason}` } : {}),
          checked_at: check.checked_at,
          routes_version: ctx.routes.current()?.version ?? null,
        },
        200,
      );
    },
  );

  for (const [name, scheme] of Object.entries(securitySchemes)) {
    app.openAPIRegistry.registerComponent("securitySchemes", name, scheme);
  }
  let document: ApiDocument | undefined;
  app.route(
    "/",
    docsRoutes(() => {
      document ??= app.getOpenAPIDocument(documentConfig);
      return document;
    }),
  );

  return {
    app,
    context: ctx,
    routes: ctx.routes,
    usage,
    metrics,
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
      await ctx.prober.close();
      ctx.routes.stop();
      await usage.close();
    },
    listening({ port, localAddresses = [] }) {
      ctx.listen = { host: ctx.config.host, port, localAddresses };
    },
  };
}
