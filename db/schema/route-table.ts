import { boolean, integer, pgView, text, timestamp } from "drizzle-orm/pg-core";

/**
 * `route_table`: the view operators point dashboards at. Defined in SQL by the
 * `create_route_table_view` migration (drizzle-kit does not manage it); declared here so
 * the code can read it with types.
 */
export const routeTable = pgView("route_table", {
  alias: text().notNull(),
  modelName: text().notNull(),
  workerId: text().notNull(),
  url: text().notNull(),
  isPublic: boolean().notNull(),
  workerUrl: text().notNull(),
  publicWorkerUrl: text(),
  vllmPort: integer(),
  instanceId: text().notNull(),
  instanceStatus: text().notNull(),
  ready: boolean().notNull(),
  workerStatus: text().notNull(),
  lastHeartbeat: timestamp({ withTimezone: true }).notNull(),
  serving: boolean().notNull(),
  createdAt: timestamp({ withTimezone: true }).notNull(),
}).existing();
