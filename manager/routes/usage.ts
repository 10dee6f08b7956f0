import { createRoute, type OpenAPIHono } from "@hono/zod-openapi";
import { z } from "zod";
import { usageBatchSchema } from "../../protocol/index.ts";
import type { ManagerContext } from "../context.ts";
import { insertUsage } from "../services/usage.ts";
import { accessFor, errors, json, jsonBody, routeGroup } from "./define.ts";

/**
 * `POST /v1/usage` (a router credential or ADMIN_TOKEN): a standalone router's batch of
 * request records.
 */
export function usageRoutes(ctx: ManagerContext): OpenAPIHono {
  const access = accessFor(ctx);
  const app = routeGroup();
  app.openapi(
    createRoute({
      method: "post",
      path: "/",
      tags: ["Usage"],
      summary: "A standalone router's batch of usage records, stored as request_logs rows",
      ...access.router,
      request: { body: jsonBody(usageBatchSchema) },
      responses: {
        202: json(z.object({ accepted: z.number().int() }), "stored"),
        ...errors(400, 401, 413),
      },
    }),
    async (c) => c.json({ accepted: await insertUsage(ctx.db, c.req.valid("json").records) }, 202),
  );
  return app;
}
