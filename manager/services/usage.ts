import { inArray } from "drizzle-orm";
import { type Db, schema } from "../../db/index.ts";
import { describeError } from "../../kit/errors.ts";
import type { Logger } from "../../kit/log.ts";
import type { UsageRecord } from "../../protocol/index.ts";

/** Rows per INSERT: 10 parameters a row stays far below Postgres' 65,535-parameter limit. */
const CHUNK = 1000;

/** Writes usage records as `request_logs` rows, a chunk per statement. */
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
    await db.insert(schema.requestLogs).values(
      records.slice(start, start + CHUNK).map((r) => ({
        ts: new Date(r.ts),
        apiKeyId: r.api_key_id !== null && known.has(r.api_key_id) ? r.api_key_id : null,
        alias: r.alias,
        workerId: r.worker_id,
        status: r.status,
        latencyMs: r.latency_ms,
        ttftMs: r.ttft_ms,
        promptTokens: r.prompt_tokens,
        completionTokens: r.completion_tokens,
        stream: r.stream,
      })),
    );
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
