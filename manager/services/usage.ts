import { inArray, sql } from "drizzle-orm";
import { type Db, schema } from "../../db/index.ts";
import { storable, storableText } from "../../db/storable.ts";
import { describeError } from "../../kit/errors.ts";
import type { Logger } from "../../kit/log.ts";
import { LogLimiter } from "../../kit/log-limit.ts";
import type { Metrics } from "../../kit/metrics.ts";
import type { Spool } from "../../kit/spool.ts";
import { type UsageRecord, usageRecordSchema } from "../../protocol/index.ts";

/** Rows per INSERT: one JSON parameter each, a few hundred KiB. */
const CHUNK = 2000;
/** The longest `reason` kept with a dead letter. */
const maxReason = 300;
/** The most of one record's JSON kept in a dead letter. */
const maxDeadLetterChars = 16 * 1024;

/** A record set aside instead of written, and why. */
export type DeadLetter = { record: unknown; reason: string };
/** What one write did: rows written, records set aside as invalid or refused by the database. */
export type UsageWrite = { written: number; invalid: number; refused: number };

/**
 * Checks each record on its own (`usageRecordSchema`): one with a float, a negative or an
 * impossible count, or a missing field is set aside with the reason; the others go on.
 */
export function checkRecords(records: readonly unknown[]): {
  valid: UsageRecord[];
  invalid: DeadLetter[];
} {
  const valid: UsageRecord[] = [];
  const invalid: DeadLetter[] = [];
  for (const record of records) {
    const parsed = usageRecordSchema.safeParse(record);
    if (parsed.success) {
      valid.push(parsed.data);
      continue;
    }
    const reason = parsed.error.issues
      .slice(0, 3)
      .map((issue) => `${issue.path.join(".") || "record"}: ${issue.message}`)
      .join("; ");
    invalid.push({ record, reason: `invalid: ${reason}`.slice(0, maxReason) });
  }
  return { valid, invalid };
}

/**
 * Writes checked records as `request_logs` rows and sets the rest aside in
 * `usage_dead_letters`, in one transaction: a database that fails midway (unreachable,
 * restarted) leaves nothing written, so the caller may retry the whole batch without
 * duplicating rows. Each chunk is one statement with one parameter, a JSON array that
 * `json_to_recordset` expands: building and binding ten parameters per row cost the
 * manager's thread ~15x more CPU on Postgres and ~2x more on the embedded database
 * (docs/benchmarks.md), and the router mounted in the manager shares that thread.
 *
 * A chunk the database refuses for its data (SQLSTATE class 22 or 23: a NUL in a string, a
 * date that does not exist) is split in halves under savepoints until the record it refuses
 * is alone; that record is set aside with the database's reason and the others are written.
 * Any other error (connection, disk, permissions) is the database's, not a record's: it is
 * thrown, and the records wait for the next attempt.
 */
export async function writeUsage(
  db: Db,
  batch: { valid: readonly UsageRecord[]; invalid: readonly DeadLetter[] },
  source: string,
): Promise<UsageWrite> {
  if (batch.valid.length === 0 && batch.invalid.length === 0) {
    return { written: 0, invalid: 0, refused: 0 };
  }
  return db.transaction(async (tx) => {
    const rows = await withKnownKeys(tx, batch.valid);
    const refused: DeadLetter[] = [];
    for (let start = 0; start < rows.length; start += CHUNK) {
      await insertIsolating(tx, rows.slice(start, start + CHUNK), refused);
    }
    await setAside(tx, [...batch.invalid, ...refused], source);
    return {
      written: rows.length - refused.length,
      invalid: batch.invalid.length,
      refused: refused.length,
    };
  });
}

/**
 * Routers may hold a key id the database no longer has (a snapshot from before a reset):
 * keep the row, drop the reference, rather than lose it to a foreign key.
 */
async function withKnownKeys(db: Db, records: readonly UsageRecord[]): Promise<UsageRecord[]> {
  const keyIds = [
    ...new Set(records.map((r) => r.api_key_id).filter((id): id is string => id !== null)),
  ];
  if (keyIds.length === 0) return [...records];
  const known = new Set(
    (
      await db
        .select({ id: schema.apiKeys.id })
        .from(schema.apiKeys)
        .where(inArray(schema.apiKeys.id, keyIds))
    ).map((k) => k.id),
  );
  return records.map((r) =>
    r.api_key_id !== null && !known.has(r.api_key_id) ? { ...r, api_key_id: null } : r,
  );
}

async function insertIsolating(db: Db, rows: UsageRecord[], refused: DeadLetter[]): Promise<void> {
  try {
    // A savepoint: a refused statement must not abort the whole transaction.
    await db.transaction((savepoint) => insertRows(savepoint, rows));
  } catch (error) {
    const state = sqlState(error);
    if (!state || !/^2[23]/.test(state)) throw error;
    if (rows.length === 1) {
      refused.push({
        record: rows[0],
        reason: `refused by the database: ${state} ${databaseMessage(error)}`.slice(0, maxReason),
      });
      return;
    }
    const half = Math.ceil(rows.length / 2);
    await insertIsolating(db, rows.slice(0, half), refused);
    await insertIsolating(db, rows.slice(half), refused);
  }
}

async function insertRows(db: Db, rows: UsageRecord[]): Promise<void> {
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

async function setAside(db: Db, letters: readonly DeadLetter[], source: string): Promise<void> {
  if (letters.length === 0) return;
  await db.insert(schema.usageDeadLetters).values(
    letters.map((letter) => ({
      source,
      reason: letter.reason,
      record: sql`${deadLetterJson(letter.record)}::jsonb`,
    })),
  );
}

/**
 * A record as `jsonb` takes it: NUL characters and UTF-16 surrogates without their pair
 * (which jsonb refuses, and which may be why the record was refused) become U+FFFD
 * (db/storable.ts), and a record over 16 KiB is kept as the start of its text.
 */
export function deadLetterJson(record: unknown): string {
  const text = JSON.stringify(storable(record)) ?? "null";
  if (text.length <= maxDeadLetterChars) return text;
  // A cut may part a surrogate pair: the half left is replaced like any other.
  return JSON.stringify({ truncated: storableText(text.slice(0, maxDeadLetterChars)) });
}

/** The SQLSTATE of a driver error (postgres.js and PGlite set `code`; Drizzle wraps them). */
function sqlState(error: unknown): string | undefined {
  for (let at: unknown = error, depth = 0; at && depth < 4; depth++) {
    const code = (at as { code?: unknown }).code;
    if (typeof code === "string" && /^[0-9A-Z]{5}$/.test(code)) return code;
    at = (at as { cause?: unknown }).cause;
  }
  return undefined;
}

/** The database's own message, never the statement (Drizzle's wrapper quotes the SQL). */
function databaseMessage(error: unknown): string {
  const cause = (error as { cause?: unknown }).cause;
  return cause instanceof Error ? cause.message : describeError(error).slice(0, 120);
}

export type UsageBufferOptions = {
  db: Db;
  log: Logger;
  metrics?: Metrics;
  /** Where records wait while the database is down (the manager's data directory). */
  spool?: Spool;
  /** Who the records come from, in dead letters (default `manager`: the mounted router). */
  source?: string;
  maxBatch?: number;
  flushMs?: number;
  /** Without a spool: records kept in memory while the database is down (oldest dropped). */
  maxBuffered?: number;
  /** Longest wait between attempts while the database is down (default 30 s). */
  maxBackoffMs?: number;
};

/**
 * The router's `UsageSink` inside the manager: `record()` only appends to memory; a flush
 * writes the batch when it reaches `maxBatch` records or every `flushMs`, and on `close()`.
 * While the database is down each batch goes to the spool (on disk, bounded) and is written
 * from there, oldest first, once the database answers again, including after a restart; with
 * no spool records wait in memory (up to `maxBuffered`, oldest dropped first). Attempts back
 * off to `maxBackoffMs`, and the warning is written at most once a minute.
 */
export class UsageBuffer {
  private pending: UsageRecord[] = [];
  private flushing: Promise<void> | undefined;
  private timer: ReturnType<typeof setInterval> | undefined;
  private backoffMs = 0;
  private nextAttemptAt = 0;
  private healthy = true;
  private readonly limiter: LogLimiter;
  /** Records dropped because the memory buffer was full (no spool). */
  dropped = 0;

  constructor(private readonly options: UsageBufferOptions) {
    this.limiter = new LogLimiter(options.log);
    const metrics = options.metrics;
    if (metrics) {
      metrics.declare(
        "fleet_manager_usage_records_written_total",
        "counter",
        "Usage records written to request_logs",
      );
      metrics.declare(
        "fleet_manager_usage_dead_letters_total",
        "counter",
        "Usage records set aside in usage_dead_letters, by reason (invalid, refused) and source (manager, router)",
      );
      metrics.declare(
        "fleet_manager_usage_pending",
        "gauge",
        "Usage records waiting for the database, by where (memory, spool)",
      );
      metrics.declare(
        "fleet_manager_usage_dropped_total",
        "counter",
        "Usage records dropped: the spool (or, without one, the memory buffer) was full",
      );
      metrics.collect(() => {
        metrics.set("fleet_manager_usage_pending", { where: "memory" }, this.pending.length);
        const spooled = options.spool?.size().records ?? 0;
        metrics.set("fleet_manager_usage_pending", { where: "spool" }, spooled);
        metrics.set(
          "fleet_manager_usage_dropped_total",
          undefined,
          this.dropped + (options.spool?.dropped() ?? 0),
        );
      });
    }
  }

  record(record: UsageRecord): void {
    this.pending.push(record);
    this.bound();
    if (this.pending.length >= (this.options.maxBatch ?? 500) && !this.flushing) void this.flush();
  }

  /** Records waiting in memory and in the spool. */
  waiting(): number {
    return this.pending.length + (this.options.spool?.size().records ?? 0);
  }

  start(): void {
    if (this.timer) return;
    this.timer = setInterval(() => void this.flush(), this.options.flushMs ?? 1000);
    (this.timer as { unref?: () => void }).unref?.();
  }

  /** Writes what waits (spool first, oldest first); concurrent calls share one flush. */
  flush(): Promise<void> {
    this.flushing ??= this.drain().finally(() => {
      this.flushing = undefined;
    });
    return this.flushing;
  }

  /**
   * Stops the timer, makes a last attempt, and spools what the database did not take. While
   * the database is failing, straight to the spool: a database that hangs must not spend the
   * shutdown deadline with the records still in memory.
   */
  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    await this.flushing;
    if (!this.healthy && this.options.spool) return this.spoolPending();
    this.nextAttemptAt = 0;
    await this.flush();
    if (this.pending.length > 0 && this.options.spool) await this.spoolPending();
  }

  private async drain(): Promise<void> {
    const { spool } = this.options;
    if (Date.now() < this.nextAttemptAt) {
      // Backing off: records still leave memory for the disk, where a crash cannot take them.
      if (spool) await this.spoolPending();
      return;
    }
    try {
      for (let segment = await spool?.oldest(); spool && segment; segment = await spool.oldest()) {
        await this.write(segment.records);
        await spool.remove(segment.id);
      }
      while (this.pending.length > 0) {
        const batch = this.pending.splice(0, CHUNK);
        await this.write(batch).catch((error) => {
          this.pending = batch.concat(this.pending);
          throw error;
        });
      }
      if (!this.healthy) this.options.log.info("usage writes resumed");
      this.healthy = true;
      this.backoffMs = 0;
    } catch (error) {
      this.healthy = false;
      this.backoffMs = Math.min(
        Math.max(this.backoffMs * 2, this.options.flushMs ?? 1000),
        this.options.maxBackoffMs ?? 30_000,
      );
      this.nextAttemptAt = Date.now() + this.backoffMs;
      this.limiter.warn("flush", "usage write failed; records wait for the database", {
        error: describeError(error).slice(0, 200),
        waiting: this.waiting(),
        retry_in_ms: this.backoffMs,
      });
      if (spool) await this.spoolPending();
    }
  }

  private async write(records: readonly unknown[]): Promise<void> {
    const source = this.options.source ?? "manager";
    const result = await writeUsage(this.options.db, checkRecords(records), source);
    countWrite(this.options.metrics, result, "manager");
    if (result.invalid + result.refused > 0) {
      this.limiter.warn("dead-letters", "usage records set aside in usage_dead_letters", {
        invalid: result.invalid,
        refused: result.refused,
        source,
      });
    }
  }

  private async spoolPending(): Promise<void> {
    const spool = this.options.spool;
    if (!spool || this.pending.length === 0) return;
    const batch = this.pending;
    this.pending = [];
    try {
      await spool.append(batch);
    } catch (error) {
      // The disk failed too: keep them in memory, bounded, as without a spool.
      this.pending = batch.concat(this.pending);
      this.bound();
      this.limiter.error("spool", "usage spool write failed; records kept in memory", {
        error: describeError(error).slice(0, 200),
      });
    }
  }

  private bound(): void {
    const max = this.options.maxBuffered ?? 100_000;
    if (this.pending.length <= max) return;
    const excess = this.pending.length - max;
    this.pending.splice(0, excess);
    this.dropped += excess;
  }
}

/** Counts one write on the manager's /metrics. */
export function countWrite(
  metrics: Metrics | undefined,
  result: UsageWrite,
  source: "manager" | "router",
): void {
  if (!metrics) return;
  metrics.inc("fleet_manager_usage_records_written_total", undefined, result.written);
  if (result.invalid > 0) {
    metrics.inc(
      "fleet_manager_usage_dead_letters_total",
      { reason: "invalid", source },
      result.invalid,
    );
  }
  if (result.refused > 0) {
    metrics.inc(
      "fleet_manager_usage_dead_letters_total",
      { reason: "refused", source },
      result.refused,
    );
  }
}
