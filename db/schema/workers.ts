import { sql } from "drizzle-orm";
import {
  boolean,
  check,
  index,
  integer,
  jsonb,
  pgTable,
  primaryKey,
  text,
  timestamp,
  unique,
} from "drizzle-orm/pg-core";
import { workerStatuses } from "../../protocol/workers.ts";
import { timestamps } from "./columns.ts";

export const workers = pgTable(
  "workers",
  {
    workerId: text().primaryKey(),
    /** The internal URL the manager dials. */
    workerUrl: text().notNull(),
    /** PUBLIC_URL: the port-forwarding URL routers use when set. */
    publicWorkerUrl: text(),
    /** `draining`: its agent is stopping; no new placements and no routes (docs/agent.md "Drain"). */
    status: text({ enum: workerStatuses }).notNull().default("online"),
    lastHeartbeat: timestamp({ withTimezone: true }).notNull().defaultNow(),
    registeredAt: timestamp({ withTimezone: true }).notNull().defaultNow(),
    agentVersion: text(),
    labels: jsonb().$type<Record<string, string>>().notNull().default({}),
    /** Why GPU discovery found nothing, as the agent reported it. */
    gpuWarning: text(),
    /**
     * SHA-256 (hex) of the worker's own credential, issued when it joined with the join
     * token: its heartbeats and re-registrations must present it. Null in open mode.
     */
    credentialHash: text(),
    /**
     * The credential the manager and routers present to this agent alone (instance API,
     * `/proxy`). Kept in clear: the manager hands it to routers in the route snapshot.
     */
    agentToken: text(),
    /** A rotation handed to the agent and not yet confirmed by it (see docs/security.md). */
    pendingCredentialHash: text(),
    pendingAgentToken: text(),
    /** An operator asked for new credentials; the next heartbeat reply carries them. */
    rotateRequestedAt: timestamp({ withTimezone: true }),
    /** Whether the manager's last probe of `worker_url` (internal) got the agent's answer. */
    internalReachable: boolean(),
    internalRttMs: integer(),
    internalProbeError: text(),
    /** The same for `public_worker_url` (null when the worker has none). */
    publicReachable: boolean(),
    publicRttMs: integer(),
    publicProbeError: text(),
    probedAt: timestamp({ withTimezone: true }),
    ...timestamps,
  },
  (t) => [
    check(
      "workers_status_check",
      sql`${t.status} in (${sql.raw(workerStatuses.map((s) => `'${s}'`).join(", "))})`,
    ),
    // The liveness sweep looks for online workers whose heartbeat is too old.
    index("workers_status_last_heartbeat_idx").on(t.status, t.lastHeartbeat),
    unique("workers_credential_hash_unique").on(t.credentialHash),
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
