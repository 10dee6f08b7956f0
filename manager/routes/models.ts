import { createRoute, type OpenAPIHono } from "@hono/zod-openapi";
import { and, asc, eq } from "drizzle-orm";
import { z } from "zod";
import { schema } from "../../db/index.ts";
import { AppError } from "../../kit/errors.ts";
import {
  aliasSchema,
  logLinesQuerySchema,
  logLinesSchema,
  modelInfoSchema,
  modelRegistrationSchema,
  type OpenAiModelList,
  workerIdSchema,
} from "../../protocol/index.ts";
import type { ManagerContext } from "../context.ts";
import { agentAddressColumns } from "../services/agent-client.ts";
import { deleteModel, loadModelInfo, registerModel, routesCaughtUp } from "../services/models.ts";
import { modelStatus } from "../services/wire.ts";
import { accessFor, errors, json, jsonBody, routeGroup } from "./define.ts";

const aliasParams = z.object({ alias: aliasSchema });
const modelLogLinesSchema = logLinesSchema.extend({ worker_id: workerIdSchema });
const tags = ["Models"];

const modelDeletedSchema = z.object({
  id: z.string(),
  object: z.literal("model"),
  deleted: z.literal(true),
  stopped: z.array(
    z.object({ worker_id: z.string(), ok: z.boolean(), error: z.string().optional() }),
  ),
});

/**
 * `/v1/models/...` (ADMIN_TOKEN): registration and inspection. `GET /v1/models` itself is
 * also the OpenAI model list, so manager/app.ts answers it (`listModels` for an admin, the
 * mounted router for anyone else).
 */
export function modelsRoutes(ctx: ManagerContext): OpenAPIHono {
  const access = accessFor(ctx);
  const app = routeGroup();

  app.openapi(
    createRoute({
      method: "post",
      path: "/register",
      tags,
      summary: "Register a model: place its replicas on GPUs and launch them",
      description:
        "All or nothing: when fewer workers fit than `replicas`, nothing is written and the 409 says worker by worker why not (`error.reasons`). A launch an agent refuses is kept, marked failed and retried (status `failed` in the 201).",
      ...access.admin,
      request: { body: jsonBody(modelRegistrationSchema) },
      responses: {
        201: json(modelInfoSchema, "registered; its instances and routing records"),
        ...errors(400, 401, [409, "`alias_taken` or `no_capacity` (with `error.reasons`)"]),
      },
    }),
    async (c) => c.json(await registerModel(ctx, c.req.valid("json")), 201),
  );

  app.openapi(
    createRoute({
      method: "get",
      path: "/{alias}",
      tags,
      summary: "A model, its instances and routing records",
      ...access.admin,
      request: { params: aliasParams },
      responses: {
        200: json(modelInfoSchema, "the model"),
        ...errors(400, 401, [404, "`model_not_found`"]),
      },
    }),
    async (c) => {
      const { alias } = c.req.valid("param");
      const info = await loadModelInfo(ctx, alias);
      if (!info) {
        throw new AppError("model_not_found", `no model with alias ${alias}`, { param: "alias" });
      }
      return c.json(info, 200);
    },
  );

  app.openapi(
    createRoute({
      method: "get",
      path: "/{alias}/logs",
      tags,
      summary: "The engines' last log lines, fetched from the agents",
      description:
        "What `fleet logs ALIAS` and `register --wait` show. With several workers, each section starts with `==> worker_id <==`.",
      ...access.admin,
      request: {
        params: aliasParams,
        query: z.object({
          tail: z.coerce.number().int().min(1).max(10_000).default(100),
          worker_id: workerIdSchema.optional(),
        }),
      },
      responses: {
        200: {
          description: "plain text log lines",
          content: { "text/plain": { schema: z.string() } },
        },
        ...errors(400, 401, [404, "`model_not_found`: no instance of the alias (on that worker)"]),
      },
    }),
    async (c) => {
      const { alias } = c.req.valid("param");
      const query = c.req.valid("query");
      const placed = await ctx.db
        .select(agentAddressColumns)
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
          { param: "alias" },
        );
      }
      const sections = await Promise.all(
        placed.map(async (worker) => {
          const result = await ctx.agents.logs(worker, alias, query.tail);
          const text = result.ok ? result.value : `(logs unavailable: ${result.error})\n`;
          return placed.length === 1 ? text : `==> ${worker.workerId} <==\n${text}`;
        }),
      );
      return c.text(sections.join(""), 200);
    },
  );

  app.openapi(
    createRoute({
      method: "get",
      path: "/{alias}/logs/lines",
      tags,
      summary: "One engine's log from a line number on (what `fleet logs --follow` polls)",
      description:
        "Lines from `after` on (the engine's first line is 0), at most `limit`, the latest when there are more (`skipped` counts the rest). Call again with `after` = `next`; a new `stream` means a new engine replaced the old one (start over at 0). `worker_id` is needed when the alias runs on several workers.",
      ...access.admin,
      request: {
        params: aliasParams,
        query: logLinesQuerySchema.extend({ worker_id: workerIdSchema.optional() }),
      },
      responses: {
        200: json(modelLogLinesSchema, "the lines"),
        ...errors(
          [400, "`invalid_request`: several workers and no `worker_id`"],
          401,
          [404, "`model_not_found`: no such instance, or its engine is gone from the worker"],
          [502, "`upstream_error`: the agent could not be reached"],
        ),
      },
    }),
    async (c) => {
      const { alias } = c.req.valid("param");
      const { worker_id: workerId, after, limit } = c.req.valid("query");
      const placed = await ctx.db
        .select(agentAddressColumns)
        .from(schema.instances)
        .innerJoin(schema.workers, eq(schema.workers.workerId, schema.instances.workerId))
        .where(
          and(
            eq(schema.instances.alias, alias),
            workerId ? eq(schema.instances.workerId, workerId) : undefined,
          ),
        );
      const worker = placed[0];
      if (!worker) {
        throw new AppError(
          "model_not_found",
          `no instance of ${alias}${workerId ? ` on ${workerId}` : ""}`,
          { param: "alias" },
        );
      }
      if (placed.length > 1) {
        throw new AppError(
          "invalid_request",
          `${alias} runs on ${placed.length} workers (${placed.map((p) => p.workerId).join(", ")}): name one with worker_id`,
          { param: "worker_id" },
        );
      }
      const result = await ctx.agents.logLines(worker, alias, { after, limit });
      if (!result.ok) {
        if (result.status === 404) {
          throw new AppError(
            "model_not_found",
            `the engine of ${alias} is gone from ${worker.workerId}`,
            { param: "alias" },
          );
        }
        throw new AppError("upstream_error", result.error);
      }
      if (!result.value) {
        throw new AppError("upstream_error", `${worker.workerId} answered logs in another shape`);
      }
      return c.json({ worker_id: worker.workerId, ...result.value }, 200);
    },
  );

  app.openapi(
    createRoute({
      method: "delete",
      path: "/{alias}",
      tags,
      summary: "Delete a model: routes removed, engines stopped",
      ...access.admin,
      request: { params: aliasParams },
      responses: {
        200: json(modelDeletedSchema, "deleted; what each agent answered to the stop"),
        ...errors(400, 401, [404, "`model_not_found`"]),
      },
    }),
    async (c) => {
      const { alias } = c.req.valid("param");
      const { stopped } = await deleteModel(ctx, alias);
      return c.json({ id: alias, object: "model" as const, deleted: true as const, stopped }, 200);
    },
  );

  return app;
}

/** Every registered model in OpenAI's list shape, with its status: the admin's `GET /v1/models`. */
export async function listModels(ctx: ManagerContext): Promise<OpenAiModelList> {
  const [models, instances] = await Promise.all([
    ctx.db.select().from(schema.models).orderBy(asc(schema.models.alias)),
    ctx.db.select().from(schema.instances),
  ]);
  await routesCaughtUp(ctx, instances);
  return {
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
        max_model_len: m.maxModelLen,
      };
    }),
  };
}
