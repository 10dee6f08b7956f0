import { sql } from "drizzle-orm";
import {
  check,
  index,
  integer,
  jsonb,
  pgTable,
  primaryKey,
  text,
  timestamp,
} from "drizzle-orm/pg-core";
import { timestamps } from "./columns.ts";

export const workers = pgTable(
  "workers",
  {
    workerId: text().primaryKey(),
    /** The internal URL the manager dials. */
    workerUrl: text().notNull(),
    /** PUBLIC_URL: the port-forwarding URL routers use when set. */
    publicWorkerUrl: text(),
    status: text({ enum: ["online", "offline"] })
      .notNull()
      .default("online"),
    lastHeartbeat: timestamp({ withTimezone: true }).notNull().defaultNow(),
    registeredAt: timestamp({ withTimezone: true }).notNull().defaultNow(),
    agentVersion: text(),
    labels: jsonb().$type<Record<string, string>>().notNull().default({}),
    /** Why GPU discovery found nothing, as the agent reported it. */
    gpuWarning: text(),
    ...timestamps,
  },
  (t) => [
    check("workers_status_check", sql`${t.status} in ('online', 'offline')`),
    // The liveness sweep looks for online workers whose heartbeat is too old.
    index("workers_status_last_heartbeat_idx").on(t.status, t.lastHeartbeat),
  ],
);

export const gpus = pgTable(
  "gpus",
  {
    workerId: text()
      .notNull()
      .references(() => workers.workerId, { onDelete: "cascade" }),
    index: integer().notNull(),
    uuid: text(),
    name: text().notNull(),
    memoryTotalMib: integer().notNull(),
    memoryUsedMib: integer(),
    memoryFreeMib: integer(),
    utilizationPct: integer(),
    updatedAt: timestamp({ withTimezone: true }).notNull().defaultNow(),
  },
  (t) => [primaryKey({ columns: [t.workerId, t.index] })],
);

export type WorkerRow = typeof workers.$inferSelect;
export type GpuRow = typeof gpus.$inferSelect;
