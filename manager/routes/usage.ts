import { Hono } from "hono";
import { parseWith, readJson } from "../../kit/errors.ts";
import { usageBatchSchema } from "../../protocol/index.ts";
import { requireScope } from "../auth.ts";
import type { ManagerContext } from "../context.ts";
import { insertUsage } from "../services/usage.ts";

/** `POST /v1/usage` (FLEET_TOKEN or ADMIN_TOKEN): a router's batch of request records. */
export function usageRoutes(ctx: ManagerContext): Hono {
  const app = new Hono();
  app.post("/", requireScope(ctx.config, "fleet"), async (c) => {
    const batch = parseWith(usageBatchSchema, await readJson(c.req.raw));
    const accepted = await insertUsage(ctx.db, batch.records);
    return c.json({ accepted }, 202);
  });
  return app;
}
