import { createRoute, type OpenAPIHono } from "@hono/zod-openapi";
import { z } from "zod";
import { AppError } from "../../kit/errors.ts";
import {
  aliasSchema,
  routeEntrySchema,
  routeLoadsSchema,
  routeSnapshotSchema,
} from "../../protocol/index.ts";
import type { ManagerContext } from "../context.ts";
import type { CachedSnapshot } from "../services/route-cache.ts";
import { accessFor, errors, json, routeGroup } from "./define.ts";

const tags = ["Routes"];
const etagHeader = z.object({
  etag: z.string().describe('the snapshot version, quoted: `"{version}"`'),
});

/**
 * `/v1/routes`: the snapshot routers poll (a router credential or ADMIN_TOKEN). Served from the
 * in-memory snapshot with `ETag: "{version}"`; a matching `If-None-Match` is a 304 whose only
 * database work is the credential's lookup (one unique-index read, so that a revocation
 * applies to the very next poll).
 */
/**
 * `/v1/route-loads`: each route's last engine load from heartbeats, apart from the snapshot
 * (its version moves only when routes do). Small and uncached: routers poll it on their own.
 */
export function routeLoadsRoutes(ctx: ManagerContext): OpenAPIHono {
  const access = accessFor(ctx);
  const app = routeGroup();
  app.openapi(
    createRoute({
      method: "get",
      path: "/",
      tags,
      summary: "Each route's last engine load (running, waiting, KV usage) from heartbeats",
      ...access.router,
      responses: {
        200: json(routeLoadsSchema, "loads reported within the last 30 s"),
        ...errors(401),
      },
    }),
    (c) =>
      c.json({ loads: ctx.loads.list(ctx.clock.now().getTime()) }, 200, {
        "cache-control": "no-store",
      }),
  );
  return app;
}

export function routesRoutes(ctx: ManagerContext): OpenAPIHono {
  const access = accessFor(ctx);
  const app = routeGroup();

  const snapshot = async (): Promise<CachedSnapshot> => {
    let entry = ctx.routes.entry();
    if (!entry) {
      await ctx.routes.refresh();
      entry = ctx.routes.entry();
    }
    if (!entry)
      throw new AppError("unavailable", "the route snapshot cannot be read from the database yet");
    return entry;
  };

  app.openapi(
    createRoute({
      method: "get",
      path: "/",
      tags,
      summary: "The route snapshot routers poll: routes, readiness and active API key hashes",
      ...access.router,
      request: {
        headers: z.object({
          "if-none-match": z.string().optional().describe("a previous ETag: 304 if unchanged"),
        }),
      },
      responses: {
        200: { ...json(routeSnapshotSchema, "the snapshot"), headers: etagHeader },
        304: { description: "unchanged since If-None-Match", headers: etagHeader },
        ...errors(401, 503),
      },
    }),
    async (c) => {
      const entry = await snapshot();
      const headers = { etag: entry.etag, "cache-control": "no-cache" };
      if (etagMatches(c.req.header("if-none-match"), entry.etag)) {
        return new Response(null, { status: 304, headers });
      }
      // The body was serialised once per version; sending it as is skips a JSON.stringify.
      return new Response(entry.body, {
        status: 200,
        headers: { ...headers, "content-type": "application/json; charset=UTF-8" },
      });
    },
  );

  app.openapi(
    createRoute({
      method: "get",
      path: "/{alias}",
      tags,
      summary: "The routes of one alias",
      ...access.router,
      request: { params: z.object({ alias: aliasSchema }) },
      responses: {
        200: {
          ...json(
            z.object({
              alias: z.string(),
              version: z.string(),
              routes: z.array(routeEntrySchema.omit({ agent_token: true })),
            }),
            "the alias's routes (without agent credentials: those are for routers only)",
          ),
          headers: etagHeader,
        },
        ...errors(400, 401, [404, "`model_not_found`: no routes for the alias"], 503),
      },
    }),
    async (c) => {
      const { alias } = c.req.valid("param");
      const entry = await snapshot();
      const routes = entry.snapshot.routes
        .filter((r) => r.alias === alias)
        .map(({ agent_token: _, ...route }) => route);
      if (routes.length === 0)
        throw new AppError("model_not_found", `no routes for alias ${alias}`, { param: "alias" });
      return c.json({ alias, version: entry.snapshot.version, routes }, 200, { etag: entry.etag });
    },
  );

  return app;
}

function etagMatches(header: string | undefined, etag: string): boolean {
  if (!header) return false;
  if (header.trim() === "*") return true;
  return header.split(",").some((tag) => tag.trim().replace(/^W\//, "") === etag);
}
