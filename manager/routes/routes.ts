import { Hono } from "hono";
import { AppError, parseWith } from "../../kit/errors.ts";
import { aliasSchema } from "../../protocol/index.ts";
import { requireScope } from "../auth.ts";
import type { ManagerContext } from "../context.ts";
import type { CachedSnapshot } from "../services/route-cache.ts";

/**
 * `/v1/routes`: the snapshot routers poll (FLEET_TOKEN or ADMIN_TOKEN). Served from the
 * in-memory snapshot with `ETag: "{version}"`; a matching `If-None-Match` is a 304 with no
 * database work at all.
 */
export function routesRoutes(ctx: ManagerContext): Hono {
  const fleet = requireScope(ctx.config, "fleet");
  const app = new Hono();

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

  app.get("/", fleet, async (c) => {
    const entry = await snapshot();
    const headers = { etag: entry.etag, "cache-control": "no-cache" };
    if (etagMatches(c.req.header("if-none-match"), entry.etag)) {
      return new Response(null, { status: 304, headers });
    }
    return new Response(entry.body, {
      status: 200,
      headers: { ...headers, "content-type": "application/json; charset=UTF-8" },
    });
  });

  app.get("/:alias", fleet, async (c) => {
    const alias = parseWith(aliasSchema, c.req.param("alias"), "alias");
    const entry = await snapshot();
    const routes = entry.snapshot.routes.filter((r) => r.alias === alias);
    if (routes.length === 0)
      throw new AppError("model_not_found", `no routes for alias ${alias}`, { param: "alias" });
    return c.json({ alias, version: entry.snapshot.version, routes }, 200, { etag: entry.etag });
  });

  return app;
}

function etagMatches(header: string | undefined, etag: string): boolean {
  if (!header) return false;
  if (header.trim() === "*") return true;
  return header.split(",").some((tag) => tag.trim().replace(/^W\//, "") === etag);
}
