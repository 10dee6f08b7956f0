import { bigserial, index, jsonb, pgTable, text, timestamp } from "drizzle-orm/pg-core";

/** State transitions (worker online/offline, instance status, placements), append-only. */
export const events = pgTable(
  "events",
  {
    id: bigserial({ mode: "number" }).primaryKey(),
    ts: timestamp({ withTimezone: true }).notNull().defaultNow(),
    /** e.g. `worker.offline`, `instance.ready`, `model.registered`. */
    kind: text().notNull(),
    workerId: text(),
    alias: text(),
    instanceId: text(),
    fromStatus: text(),
    toStatus: text(),
    message: text(),
    detail: jsonb().$type<Record<string, unknown>>(),
  },
  (t) => [
    index("events_ts_idx").on(t.ts),
    index("events_worker_id_ts_idx").on(t.workerId, t.ts),
    index("events_alias_ts_idx").on(t.alias, t.ts),
  ],
);
