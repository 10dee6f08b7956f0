import { inArray, sql } from "drizzle-orm";
import { type Db, schema } from "../../db/index.ts";
import { describeError } from "../../kit/errors.ts";
import type { Logger } from "../../kit/log.ts";
import type { UsageRecord } from "../../protocol/index.ts";

/** Rows per INSERT: one JSON parameter each, a few hundred KiB. */
const CHUNK = 2000;

/**
 * Writes usage records as `request_logs` rows. Each chunk is one statement with one
 * parameter, a JSON array that `json_to_recordset` expands: building and binding ten
 * parameters per row cost the manager's thread ~15x more CPU on Postgres and ~2x more on
 * the embedded database (docs/benchmarks.md), and the router mounted in the manager shares
 * that thread.
 */
export async function insertUsage(db: Db, records: UsageRecord[]): Promise<number> {
  if (records.length === 0) return 0;
  // Routers may hold a key id the database no longer has (a snapshot from before a reset):
  // keep the row, drop the reference, rather than lose the whole batch to a foreign key.
  const keyIds = [
    ...new Set(records.map((r) => r.api_key_id).filter((id): id is string => id !== null)),
  ];
  const known = new Set(
    keyIds.length === 0
      ? []
      : (
          await db
            .select({ id: schema.apiKeys.id })
            .from(schema.apiKeys)
            .where(inArray(schema.apiKeys.id, keyIds))
        ).map((k) => k.id),
  );
  for (let start = 0; start < records.length; start += CHUNK) {
    const rows = records
      .slice(start, start + CHUNK)
      .map((r) =>
        r.api_key_id !== null && !known.has(r.api_key_id) ? { ...r, api_key_id: null } : r,
      );
    await db.execute(sql`
      insert into request_logs
        (ts, api_key_id, alias, worker_id, status, latency_ms, ttft_ms,
         prompt_tokens, completion_tokens, stream)
      select ts, api_key_id, alias, worker_id, status, latency_ms, ttft_ms,
             prompt_tokens, completion_tokens, coalesce(stream, false)
      from json_to_recordset(${JSON.stringify(rows)}::json) as r(
        ts timestamptz, api_key_id text, alias text, worker_id text, status integer,
        latency_ms integer, ttft_ms integer, prompt_tokens integer, completion_tokens integer,
        stream boolean)`);
  }
  return records.length;
}

/**
 * The router's `UsageSink` inside the manager: `record()` only appends to memory; a flush
 * writes the batch when it reaches `maxBatch` records or every `flushMs`, and on `close()`.
 * If the database is unreachable, records wait (up to `maxBuffered`, oldest dropped first).
 */
export class UsageBuffer {
  private pending: UsageRecord[] = [];
  private flushing: Promise<void> | undefined;
  private timer: ReturnType<typeof setInterval> | undefined;
  /** Records dropped because the buffer was full (the database was down too long). */
  dropped = 0;

  constructor(
    private readonly options: {
      db: Db;
      log: Logger;
      maxBatch?: number;
      flushMs?: number;
      maxBuffered?: number;
    },
  ) {}

  record(record: UsageRecord): void {
    this.pending.push(record);
    const max = this.options.maxBuffered ?? 100_000;
    if (this.pending.length > max) {
      const excess = this.pending.length - max;
      this.pending.splice(0, excess);
      this.dropped += excess;
    }
    if (this.pending.length >= (this.options.maxBatch ?? 500) && !this.flushing) void this.flush();
  }

  start(): void {
    if (this.timer) return;
    this.timer = setInterval(() => void this.flush(), this.options.flushMs ?? 1000);
    (this.timer as { unref?: () => void }).unref?.();
  }

  /** Writes what is buffered; concurrent calls share one flush. */
  flush(): Promise<void> {
    if (this.flushing) return this.flushing;
    if (this.pending.length === 0) return Promise.resolve();
    const batch = this.pending;
    this.pending = [];
    this.flushing = insertUsage(this.options.db, batch)
      .then(() => undefined)
      .catch((error) => {
        this.options.log.warn("usage flush failed; will retry", {
          records: batch.length,
          error: describeError(error),
        });
        this.pending = batch.concat(this.pending);
      })
      .finally(() => {
        this.flushing = undefined;
      });
    return this.flushing;
  }

  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    await this.flushing;
    await this.flush();
  }
}
