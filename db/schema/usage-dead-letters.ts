import { bigserial, index, jsonb, pgTable, text, timestamp } from "drizzle-orm/pg-core";

/**
 * Usage records the manager set aside instead of writing to `request_logs`: ones that failed
 * validation, and ones the database refused (found by splitting the batch until the record
 * was alone). `record` is the record as it arrived (NUL characters replaced, over 16 KiB
 * truncated); docs/operations.md says how to read and replay them.
 */
export const usageDeadLetters = pgTable(
  "usage_dead_letters",
  {
    id: bigserial({ mode: "number" }).primaryKey(),
    receivedAt: timestamp({ withTimezone: true }).notNull().defaultNow(),
    /** Who sent it: `router:<id>` (a router credential), `admin`, `open` or `manager` (mounted router). */
    source: text().notNull(),
    /** Why: the field and what was wrong with it, or the database's error (SQLSTATE and message). */
    reason: text().notNull(),
    record: jsonb().notNull(),
  },
  (t) => [index("usage_dead_letters_received_at_idx").on(t.receivedAt)],
);
