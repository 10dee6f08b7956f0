import { sql } from "drizzle-orm";
import {
  check,
  doublePrecision,
  index,
  integer,
  jsonb,
  pgTable,
  text,
  timestamp,
  unique,
  uuid,
} from "drizzle-orm/pg-core";
import type { InstanceProgress } from "../../protocol/instances.ts";
import { instanceRecordStatuses } from "../../protocol/models.ts";
import { timestamps } from "./columns.ts";
import { models } from "./models.ts";
import { workers } from "./workers.ts";

/** The statuses an instance row may have: the protocol's list, so the wire and the check agree. */
export const instanceStatuses = instanceRecordStatuses;

/** Actual state: one engine of a model on one worker, as placed and as the agent reports it. */
export const instances = pgTable(
  "instances",
  {
    id: uuid().primaryKey().defaultRandom(),
    alias: text()
      .notNull()
      .references(() => models.alias, { onDelete: "cascade" }),
    workerId: text()
      .notNull()
      .references(() => workers.workerId, { onDelete: "cascade" }),
    gpuIds: integer().array().notNull().default(sql`'{}'::integer[]`),
    /** The claim on each of its GPUs: placement keeps a GPU's claims summed at most 1. */
    gpuMemoryUtilization: doublePrecision().notNull(),
    port: integer(),
    pid: integer(),
    status: text({ enum: instanceStatuses }).notNull().default("pending"),
    restarts: integer().notNull().default(0),
    /**
     * Failures recorded since the instance was placed (launch refused, engine failed or
     * vanished, retry blocked): the exponent of its retry backoff. Written by the lifecycle.
     */
    failures: integer().notNull().default(0),
    lastError: text(),
    readyAt: timestamp({ withTimezone: true }),
    /**
     * The launch progress the agent last reported (manager/services/progress.ts), with the
     * time the manager received it (`reported_at`), so a reader can tell how old it is.
     */
    progress: jsonb().$type<StoredProgress>(),
    ...timestamps,
  },
  (t) => [
    // An agent serves an alias once (its proxy path is /proxy/{alias}), so two replicas of
    // one model never share a worker; the constraint makes concurrent placements harmless.
    unique("instances_alias_worker_id_unique").on(t.alias, t.workerId),
    check(
      "instances_status_check",
      sql`${t.status} in (${sql.raw(instanceStatuses.map((s) => `'${s}'`).join(", "))})`,
    ),
    check(
      "instances_gpu_memory_utilization_check",
      sql`${t.gpuMemoryUtilization} > 0 and ${t.gpuMemoryUtilization} <= 1`,
    ),
    // Placement sums claims per worker; heartbeats update by (worker_id, alias).
    index("instances_worker_id_idx").on(t.workerId),
  ],
);

/** What the `progress` column holds: the agent's report and when the manager received it. */
export type StoredProgress = InstanceProgress & { reported_at: string };

export type InstanceRow = typeof instances.$inferSelect;
