import { createRoute, type OpenAPIHono } from "@hono/zod-openapi";
import { bearerToken } from "../../kit/crypto.ts";
import { AppError, describeError } from "../../kit/errors.ts";
import type { Metrics } from "../../kit/metrics.ts";
import { usageBatchReplySchema, usageBatchSchema } from "../../protocol/index.ts";
import type { ManagerContext } from "../context.ts";
import { checkRecords, countWrite, writeUsage } from "../services/usage.ts";
import { accessFor, errors, json, jsonBody, routeGroup } from "./define.ts";

/**
 * `POST /v1/usage` (a router credential or ADMIN_TOKEN): a standalone router's batch of
 * request records. Each record is checked on its own: the valid ones are written, the rest
 * set aside in `usage_dead_letters` with the reason, and the answer counts both. A database
 * that cannot be reached answers 503 with nothing written, and the router sends the batch
 * again later.
 */
export function usageRoutes(ctx: ManagerContext, metrics?: Metrics): OpenAPIHono {
  const access = accessFor(ctx);
  const app = routeGroup();
  app.openapi(
    createRoute({
      method: "post",
      path: "/",
      tags: ["Usage"],
      summary: "A standalone router's batch of usage records, stored as request_logs rows",
      description:
        "Records are checked one by one: an invalid record (a float, a negative or impossible count, a missing field) is set aside in `usage_dead_letters` with the reason, and the others are written. `accepted` counts the rows written, `rejected` the records set aside.",
      ...access.router,
      request: { body: jsonBody(usageBatchSchema) },
      responses: {
        202: json(usageBatchReplySchema, "written; invalid records set aside"),
        ...errors(400, 401, 413, [
          503,
          "`unavailable`: the database cannot be reached; send again later",
        ]),
      },
    }),
    async (c) => {
      const source = await sourceOf(ctx, c.req.header("authorization"));
      let result: Awaited<ReturnType<typeof writeUsage>>;
      try {
        result = await writeUsage(ctx.db, checkRecords(c.req.valid("json").records), source);
      } catch (error) {
        ctx.log.warn("usage batch not written; the router will send it again", {
          source,
          error: describeError(error).slice(0, 200),
        });
        throw new AppError(
          "unavailable",
          "usage could not be written now; send the batch again later",
        );
      }
      countWrite(metrics, result, "router");
      return c.json({ accepted: result.written, rejected: result.invalid + result.refused }, 202);
    },
  );
  return app;
}

/** `router:<id>` for a router credential, else `admin`, or `open` with no token. */
async function sourceOf(ctx: ManagerContext, header: string | undefined): Promise<string> {
  const presented = bearerToken(header);
  if (presented === "") return "open";
  const check = await ctx.routerCredentials.check(presented);
  return check.ok ? `router:${check.id}` : "admin";
}
