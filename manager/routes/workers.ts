import { createRoute, type OpenAPIHono } from "@hono/zod-openapi";
import { asc, eq } from "drizzle-orm";
import { schema } from "../../db/index.ts";
import { AppError } from "../../kit/errors.ts";
import {
  heartbeatReplySchema,
  heartbeatSchema,
  type WorkerInfo,
  workerDrainReplySchema,
  workerDrainSchema,
  workerIdParamsSchema,
  workerInfoSchema,
  workerListSchema,
  workerRegistrationReplySchema,
  workerRegistrationSchema,
  workerRemovalReplySchema,
  workerRotationReplySchema,
} from "../../protocol/index.ts";
import type { ManagerContext } from "../context.ts";
import { progressReader } from "../services/progress.ts";
import { workerInfo } from "../services/wire.ts";
import { removeWorker, requestRotation } from "../services/worker-admin.ts";
import { drainWorker, heartbeat, registerWorker } from "../services/worker-reports.ts";
import {
  heartbeatCallerOf,
  registrationCallerOf,
  requireHeartbeatCaller,
  requireRegistrationCaller,
} from "../worker-auth.ts";
import { accessFor, checkedBy, errors, json, jsonBody, routeGroup } from "./define.ts";

const tags = ["Workers"];

/**
 * `/v1/workers`: agents join with the join token and then register and heartbeat with their
 * own credential (manager/worker-auth.ts); operators list, rotate and remove (ADMIN_TOKEN).
 */
export function workersRoutes(ctx: ManagerContext): OpenAPIHono {
  const access = accessFor(ctx);
  const app = routeGroup();

  app.openapi(
    createRoute({
      method: "post",
      path: "/register",
      tags,
      summary:
        "Register a worker: join with the join token (the reply carries its credentials, once), or re-register with its own credential",
      ...checkedBy(
        [{ workerCredential: [] }, { joinToken: [] }, { adminToken: [] }],
        requireRegistrationCaller(ctx),
      ),
      request: { body: jsonBody(workerRegistrationSchema) },
      responses: {
        200: json(
          workerRegistrationReplySchema,
          "registered; heartbeat at the interval given. `credentials` only when it joined",
        ),
        ...errors(
          400,
          [401, "`unauthorized`: no token, an unknown one, or another worker's credential"],
          [
            409,
            "`conflict`: the join token for a worker_id that already holds a credential (remove the worker first to replace its host)",
          ],
        ),
      },
    }),
    async (c) => {
      const reply = await registerWorker(ctx, c.req.valid("json"), registrationCallerOf(c));
      // Which of its URLs answer: found in the background, the reply does not wait for it.
      ctx.prober.afterRegistration(reply.worker_id);
      return c.json(reply, 200);
    },
  );

  app.openapi(
    createRoute({
      method: "post",
      path: "/{worker_id}/heartbeat",
      tags,
      summary: "Heartbeat: GPU stats and instance states (the worker's own credential)",
      ...checkedBy([{ workerCredential: [] }], requireHeartbeatCaller(ctx)),
      request: { params: workerIdParamsSchema, body: jsonBody(heartbeatSchema) },
      responses: {
        200: json(
          heartbeatReplySchema,
          "applied; `credentials` when a rotation hands the agent a new pair",
        ),
        ...errors(
          400,
          [401, "`unauthorized`: not this worker's credential (the join token is not enough)"],
          [404, "`worker_not_found`: register again"],
        ),
      },
    }),
    async (c) => {
      const { worker_id } = c.req.valid("param");
      const started = performance.now();
      let outcome: "ok" | "error" = "error";
      try {
        const reply = await heartbeat(ctx, worker_id, c.req.valid("json"), heartbeatCallerOf(c));
        outcome = "ok";
        return c.json(reply, 200);
      } finally {
        ctx.instruments.heartbeat((performance.now() - started) / 1000, outcome);
      }
    },
  );

  app.openapi(
    createRoute({
      method: "post",
      path: "/{worker_id}/drain",
      tags,
      summary:
        "Drain: the agent is stopping (the worker's own credential). Its routes stop being served at once and it gets no new placements; its instances are replaced once it has gone silent",
      ...checkedBy([{ workerCredential: [] }], requireHeartbeatCaller(ctx)),
      request: { params: workerIdParamsSchema, body: jsonBody(workerDrainSchema) },
      responses: {
        200: json(
          workerDrainReplySchema,
          "draining; routers holding `routes_version` no longer route here",
        ),
        ...errors(
          400,
          [401, "`unauthorized`: not this worker's credential"],
          [404, "`worker_not_found`"],
        ),
      },
    }),
    async (c) => {
      const { worker_id } = c.req.valid("param");
      return c.json(
        await drainWorker(ctx, worker_id, c.req.valid("json"), heartbeatCallerOf(c)),
        200,
      );
    },
  );

  app.openapi(
    createRoute({
      method: "post",
      path: "/{worker_id}/rotate",
      tags,
      summary:
        "Rotate a worker's credentials: its next heartbeat reply carries a new pair, current once the agent uses it",
      ...access.admin,
      request: { params: workerIdParamsSchema },
      responses: {
        202: json(workerRotationReplySchema, "requested"),
        ...errors(
          401,
          [404, "`worker_not_found`"],
          [409, "`conflict`: the worker holds no credentials (open mode)"],
        ),
      },
    }),
    async (c) => c.json(await requestRotation(ctx, c.req.valid("param").worker_id), 202),
  );

  app.openapi(
    createRoute({
      method: "delete",
      path: "/{worker_id}",
      tags,
      summary:
        "Remove a worker: its instances are placed elsewhere at once, its routes go, its credentials stop working",
      ...access.admin,
      request: { params: workerIdParamsSchema },
      responses: {
        200: json(workerRemovalReplySchema, "removed"),
        ...errors(401, [404, "`worker_not_found`"]),
      },
    }),
    async (c) => c.json(await removeWorker(ctx, c.req.valid("param").worker_id), 200),
  );

  app.openapi(
    createRoute({
      method: "get",
      path: "/",
      tags,
      summary: "List workers with their GPUs and instances",
      ...access.admin,
      responses: { 200: json(workerListSchema, "every worker"), ...errors(401) },
    }),
    async (c) => c.json({ workers: await listWorkers(ctx) }, 200),
  );

  app.openapi(
    createRoute({
      method: "get",
      path: "/{worker_id}",
      tags,
      summary: "One worker with its GPUs and instances",
      ...access.admin,
      request: { params: workerIdParamsSchema },
      responses: {
        200: json(workerInfoSchema, "the worker"),
        ...errors(401, [404, "`worker_not_found`"]),
      },
    }),
    async (c) => {
      const { worker_id } = c.req.valid("param");
      const [found] = await listWorkers(ctx, worker_id);
      if (!found) {
        throw new AppError("worker_not_found", `no worker with id ${worker_id}`, {
          param: "worker_id",
        });
      }
      return c.json(found, 200);
    },
  );

  return app;
}

async function listWorkers(ctx: ManagerContext, only?: string): Promise<WorkerInfo[]> {
  const { db } = ctx;
  const [workers, gpus, instances] = await Promise.all([
    db
      .select()
      .from(schema.workers)
      .where(only ? eq(schema.workers.workerId, only) : undefined)
      .orderBy(asc(schema.workers.workerId)),
    db
      .select()
      .from(schema.gpus)
      .where(only ? eq(schema.gpus.workerId, only) : undefined),
    db
      .select({ row: schema.instances, modelName: schema.models.modelName })
      .from(schema.instances)
      .innerJoin(schema.models, eq(schema.models.alias, schema.instances.alias))
      .where(only ? eq(schema.instances.workerId, only) : undefined)
      .orderBy(asc(schema.instances.alias)),
  ]);
  const progress = await progressReader(db, instances, ctx.clock.now());
  return workers.map((w) =>
    workerInfo(
      w,
      gpus.filter((g) => g.workerId === w.workerId),
      instances.filter((i) => i.row.workerId === w.workerId),
      progress,
    ),
  );
}
