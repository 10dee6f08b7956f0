import { and, asc, eq } from "drizzle-orm";
import { Hono } from "hono";
import { z } from "zod";
import { schema } from "../../db/index.ts";
import { AppError, parseWith, readJson } from "../../kit/errors.ts";
import {
  aliasSchema,
  modelRegistrationSchema,
  type OpenAiModelList,
  workerIdSchema,
} from "../../protocol/index.ts";
import { isAuthorized, requireScope } from "../auth.ts";
import type { ManagerContext } from "../context.ts";
import { deleteModel, loadModelInfo, registerModel } from "../services/models.ts";
import { modelStatus } from "../services/wire.ts";

const logsQuerySchema = z.object({
  tail: z.coerce.number().int().min(1).max(10_000).default(100),
  worker_id: workerIdSchema.optional(),
});

export type FetchHandler = { fetch(request: Request): Response | Promise<Response> };

/**
 * `/v1/models`: registration and inspection (ADMIN_TOKEN). `GET /v1/models` is also the
 * OpenAI model list, which the router answers too: on the manager's port an admin (or
 * anyone, when the admin API is open) gets the manager's list, with every registered model
 * and its status; any other caller is handed to the mounted router, which checks API keys
 * and lists the models that are being served.
 */
export function modelsRoutes(ctx: ManagerContext, router: () => FetchHandler | undefined): Hono {
  const admin = requireScope(ctx.config, "admin");
  const app = new Hono();

  app.post("/register", admin, async (c) => {
    const input = parseWith(modelRegistrationSchema, await readJson(c.req.raw));
    return c.json(await registerModel(ctx, input), 201);
  });

  app.get("/", async (c) => {
    if (!isAuthorized(ctx.config, c.req.header("authorization"), "admin")) {
      const mounted = router();
      if (mounted) return mounted.fetch(c.req.raw);
      throw new AppError("unauthorized", "this endpoint needs Authorization: Bearer ADMIN_TOKEN");
    }
    const [models, instances] = await Promise.all([
      ctx.db.select().from(schema.models).orderBy(asc(schema.models.alias)),
      ctx.db.select().from(schema.instances),
    ]);
    const body: OpenAiModelList = {
      object: "list",
      data: models.map((m) => {
        const mine = instances.filter((i) => i.alias === m.alias);
        return {
          id: m.alias,
          object: "model" as const,
          created: Math.floor(m.createdAt.getTime() / 1000),
          owned_by: "vllm-fleet",
          root: m.modelName,
          model_name: m.modelName,
          status: modelStatus(m, mine),
          replicas: m.replicas,
          ready_replicas: mine.filter((i) => i.status === "ready").length,
        };
      }),
    };
    return c.json(body);
  });

  app.get("/:alias", admin, async (c) => {
    const alias = parseWith(aliasSchema, c.req.param("alias"), "alias");
    const info = await loadModelInfo(ctx.db, alias);
    if (!info)
      throw new AppError("model_not_found", `no model with alias ${alias}`, { param: "alias" });
    return c.json(info);
  });

  /**
   * The engine's last log lines from each worker running the alias (or only `worker_id`),
   * fetched from the agents; what `fleet logs ALIAS` and `register --wait` show.
   */
  app.get("/:alias/logs", admin, async (c) => {
    const alias = parseWith(aliasSchema, c.req.param("alias"), "alias");
    const query = parseWith(logsQuerySchema, c.req.query());
    const placed = await ctx.db
      .select({ workerId: schema.instances.workerId, workerUrl: schema.workers.workerUrl })
      .from(schema.instances)
      .innerJoin(schema.workers, eq(schema.workers.workerId, schema.instances.workerId))
      .where(
        and(
          eq(schema.instances.alias, alias),
          query.worker_id ? eq(schema.instances.workerId, query.worker_id) : undefined,
        ),
      )
      .orderBy(asc(schema.instances.workerId));
    if (placed.length === 0) {
      throw new AppError(
        "model_not_found",
        `no instance of ${alias}${query.worker_id ? ` on ${query.worker_id}` : ""}`,
        {
          param: "alias",
        },
      );
    }
    const sections = await Promise.all(
      placed.map(async ({ workerId, workerUrl }) => {
        const result = await ctx.agents.logs(workerUrl, alias, query.tail);
        const text = result.ok ? result.value : `(logs unavailable: ${result.error})\n`;
        return placed.length === 1 ? text : `==> ${workerId} <==\n${text}`;
      }),
    );
    return c.text(sections.join(""));
  });

  app.delete("/:alias", admin, async (c) => {
    const alias = parseWith(aliasSchema, c.req.param("alias"), "alias");
    const { stopped } = await deleteModel(ctx, alias);
    return c.json({ id: alias, object: "model", deleted: true, stopped });
  });

  return app;
}
