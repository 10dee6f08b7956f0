import { sql } from "drizzle-orm";
import { check, doublePrecision, integer, jsonb, pgTable, text } from "drizzle-orm/pg-core";
import { dtypes } from "../../protocol/common.ts";
import { routingPolicies } from "../../protocol/routes.ts";
import { timestamps } from "./columns.ts";

/** Desired state: what operators asked to serve. */
export const models = pgTable(
  "models",
  {
    alias: text().primaryKey(),
    modelName: text().notNull(),
    maxModelLen: integer(),
    gpuMemoryUtilization: doublePrecision().notNull().default(0.9),
    tensorParallelSize: integer().notNull().default(1),
    replicas: integer().notNull().default(1),
    dtype: text({ enum: dtypes }),
    /**
     * Pin: the model may run only on this worker (and these GPUs). Not a foreign key: a pin
     * is a wish that outlives the worker's row (a host re-registers under the same id).
     */
    workerId: text(),
    gpuIds: integer().array(),
    extraArgs: jsonb().$type<string[]>().notNull().default([]),
    placement: text({ enum: ["binpack", "spread"] })
      .notNull()
      .default("binpack"),
    /** How routers choose among its replicas (protocol/routes.ts routingPolicies). */
    routing: text({ enum: routingPolicies }).notNull().default("prefix_affinity"),
    ...timestamps,
  },
  (t) => [
    check(
      "models_gpu_memory_utilization_check",
      sql`${t.gpuMemoryUtilization} > 0 and ${t.gpuMemoryUtilization} <= 1`,
    ),
    check("models_tensor_parallel_size_check", sql`${t.tensorParallelSize} >= 1`),
    check("models_replicas_check", sql`${t.replicas} >= 1`),
    check("models_placement_check", sql`${t.placement} in ('binpack', 'spread')`),
    check(
      "models_routing_check",
      sql`${t.routing} in ('least_loaded', 'prefix_affinity', 'session', 'round_robin')`,
    ),
  ],
);

export type ModelRow = typeof models.$inferSelect;
