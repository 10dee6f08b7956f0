import { boolean, index, integer, pgTable, text, uuid } from "drizzle-orm/pg-core";
import { timestamps } from "./columns.ts";
import { instances } from "./instances.ts";
import { models } from "./models.ts";
import { workers } from "./workers.ts";

/**
 * The original system's `ModelRouting` (alias, model_name, worker_id, worker_url, vllm_port,
 * created_at) plus the instance it serves and whether that instance is ready. `worker_url`
 * is the worker's public URL when it has one.
 */
export const routes = pgTable(
  "routes",
  {
    id: uuid().primaryKey().defaultRandom(),
    alias: text()
      .notNull()
      .references(() => models.alias, { onDelete: "cascade" }),
    modelName: text().notNull(),
    workerId: text()
      .notNull()
      .references(() => workers.workerId, { onDelete: "cascade" }),
    workerUrl: text().notNull(),
    vllmPort: integer(),
    instanceId: uuid()
      .notNull()
      .unique("routes_instance_id_unique")
      .references(() => instances.id, { onDelete: "cascade" }),
    ready: boolean().notNull().default(false),
    ...timestamps,
  },
  (t) => [index("routes_alias_idx").on(t.alias), index("routes_worker_id_idx").on(t.workerId)],
);

export type RouteRow = typeof routes.$inferSelect;
