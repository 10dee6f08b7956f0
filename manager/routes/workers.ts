import { asc, eq } from "drizzle-orm";
import { Hono } from "hono";
import { schema } from "../../db/index.ts";
import { AppError, parseWith, readJson } from "../../kit/errors.ts";
import {
  heartbeatSchema,
  type WorkerList,
  workerIdSchema,
  workerRegistrationSchema,
} from "../../protocol/index.ts";
import { requireScope } from "../auth.ts";
import type { ManagerContext } from "../context.ts";
import { workerInfo } from "../services/wire.ts";
import { heartbeat, registerWorker } from "../services/worker-reports.ts";

/** `/v1/workers`: agents register and heartbeat (FLEET_TOKEN); operators list (ADMIN_TOKEN). */
export function workersRoutes(ctx: ManagerContext): Hono {
  const fleet = requireScope(ctx.config, "fleet");
  const admin = requireScope(ctx.config, "admin");
  const app = new Hono();

  app.post("/register", fleet, async (c) => {
    const registration = parseWith(workerRegistrationSchema, await readJson(c.req.raw));
    return c.json(await registerWorker(ctx, registration), 200);
  });

  app.post("/:id/heartbeat", fleet, async (c) => {
    const id = parseWith(workerIdSchema, c.req.param("id"), "worker_id");
    const beat = parseWith(heartbeatSchema, await readJson(c.req.raw));
    return c.json(await heartbeat(ctx, id, beat), 200);
  });

  app.get("/", admin, async (c) => {
    const body: WorkerList = { workers: await listWorkers(ctx) };
    return c.json(body);
  });

  app.get("/:id", admin, async (c) => {
    const id = parseWith(workerIdSchema, c.req.param("id"), "worker_id");
    const [found] = await listWorkers(ctx, id);
    if (!found)
      throw new AppError("worker_not_found", `no worker with id ${id}`, { param: "worker_id" });
    return c.json(found);
  });

  return app;
}

async function listWorkers(ctx: ManagerContext, only?: string) {
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
  return workers.map((w) =>
    workerInfo(
      w,
      gpus.filter((g) => g.workerId === w.workerId),
      instances.filter((i) => i.row.workerId === w.workerId),
    ),
  );
}
