import { sql } from "drizzle-orm";
import { bigint, check, integer, pgTable, uuid } from "drizzle-orm/pg-core";

/**
 * One row. `routes_version` is bumped by triggers (see the `add_route_version_triggers`
 * migration) whenever anything a router's snapshot holds changes: routes, worker status or
 * URLs, API keys. `epoch` is new with every database, so a version number seen before a
 * database reset is never mistaken for a current one.
 */
export const fleetState = pgTable(
  "fleet_state",
  {
    id: integer().primaryKey().default(1),
    epoch: uuid().notNull().defaultRandom(),
    routesVersion: bigint({ mode: "number" }).notNull().default(1),
  },
  (t) => [check("fleet_state_singleton_check", sql`${t.id} = 1`)],
);
