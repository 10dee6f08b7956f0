import { bigserial, boolean, index, integer, pgTable, text, timestamp } from "drizzle-orm/pg-core";
import { apiKeys } from "./api-keys.ts";

/**
 * One row per OpenAI request the router answered. `alias` and `worker_id` are plain text,
 * not foreign keys: usage history outlives the models and workers it mentions. Token counts
 * and latencies hold what `usageRecordSchema` admits (protocol/usage.ts: at most 2^30 tokens,
 * 2^31-1 ms), so `integer` columns suffice.
 */
export const requestLogs = pgTable(
  "request_logs",
  {
    id: bigserial({ mode: "number" }).primaryKey(),
    ts: timestamp({ withTimezone: true }).notNull().defaultNow(),
    apiKeyId: text().references(() => apiKeys.id, { onDelete: "set null" }),
    alias: text().notNull(),
    workerId: text(),
    status: integer().notNull(),
    /** Null when the router's measurement was out of bounds (never in practice). */
    latencyMs: integer(),
    ttftMs: integer(),
    promptTokens: integer(),
    completionTokens: integer(),
    stream: boolean().notNull().default(false),
  },
  (t) => [
    index("request_logs_ts_idx").on(t.ts),
    index("request_logs_alias_ts_idx").on(t.alias, t.ts),
    index("request_logs_api_key_id_ts_idx").on(t.apiKeyId, t.ts),
  ],
);
