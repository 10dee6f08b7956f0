import { type Logger, silentLogger } from "../kit/log.ts";
import type { Metrics } from "../kit/metrics.ts";
import type { Spool } from "../kit/spool.ts";
import type { UsageRecord } from "../protocol/index.ts";
import type { FetchLike, UsageSink } from "./app.ts";

export type UsageBatcherOptions = {
  managerUrl: string;
  /** The router credential (`ROUTER_TOKEN`), sent to the manager as `Bearer`. */
  routerToken?: string;
  /** Records per POST (default 500; the manager accepts up to 5000). */
  maxBatch?: number;
  /** Flush at least this often while records wait (default 1 s). */
  flushIntervalMs?: number;
  /** Records kept while the manager is down; the oldest are dropped beyond (default 50,000). */
  maxBuffer?: number;
  /** Longest wait between retries while the manager is down (default 30 s). */
  maxBackoffMs?: number;
  /**
   * Where records wait while the manager is down (Bun and Node: on disk, runtime/file-spool.ts),
   * so that a restart of the router does not lose them. Without one they wait in memory.
   */
  spool?: Spool;
  /** workerd: attempts of one `flushSoon` while the manager does not answer (default 4). */
  flushAttempts?: number;
  timeoutMs?: number;
  fetch?: FetchLike;
  log?: Logger;
  metrics?: Metrics;
};

/**
 * Sends usage records to the manager in batches (`POST {MANAGER_URL}/v1/usage`): one POST
 * per second or per `maxBatch` records, never one per request. `record` only appends to an
 * array. While the manager is down retries back off, and records go to the spool (on disk,
 * bounded; sent from there, oldest first, once the manager answers, after a restart too) or,
 * without one, wait in a bounded buffer (oldest dropped, counted in
 * `fleet_router_usage_dropped_total`), so an outage can neither block requests nor grow
 * memory without limit.
 */
export class UsageBatcher implements UsageSink {
  private buffer: UsageRecord[] = [];
  private flushing: Promise<void> | undefined;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private backoffMs = 0;
  private nextAttemptAt = 0;
  private running = false;
  private healthy = true;
  private retrying: Promise<void> | undefined;
  private readonly url: string;
  private readonly maxBatch: number;
  private readonly flushIntervalMs: number;
  private readonly maxBuffer: number;
  private readonly maxBackoffMs: number;
  private readonly timeoutMs: number;
  private readonly fetchFn: FetchLike;
  private readonly log: Logger;
  dropped = 0;

  constructor(private readonly options: UsageBatcherOptions) {
    this.url = `${options.managerUrl.replace(/\/+$/, "")}/v1/usage`;
    this.maxBatch = Math.min(options.maxBatch ?? 500, 5000);
    this.flushIntervalMs = options.flushIntervalMs ?? 1000;
    this.maxBuffer = options.maxBuffer ?? 50_000;
    this.maxBackoffMs = options.maxBackoffMs ?? 30_000;
    this.timeoutMs = options.timeoutMs ?? 10_000;
    this.fetchFn = options.fetch ?? ((input, init) => fetch(input, init));
    this.log = options.log ?? silentLogger;
    const metrics = options.metrics;
    if (metrics) {
      metrics.declare(
        "fleet_router_usage_dropped_total",
        "counter",
        "Usage records dropped while the manager was unreachable",
      );
      metrics.declare(
        "fleet_router_usage_buffered",
        "gauge",
        "Usage records waiting to be sent, in memory",
      );
      metrics.declare(
        "fleet_router_usage_spooled",
        "gauge",
        "Usage records waiting to be sent, in the spool on disk",
      );
      metrics.declare(
        "fleet_router_usage_batches_total",
        "counter",
        "Usage batches sent, by result",
      );
      metrics.declare(
        "fleet_router_usage_records_rejected_total",
        "counter",
        "Usage records the manager set aside as invalid (kept in its usage_dead_letters)",
      );
      let spoolDropped = 0;
      metrics.collect(() => {
        metrics.set("fleet_router_usage_buffered", undefined, this.buffer.length);
        metrics.set("fleet_router_usage_spooled", undefined, options.spool?.size().records ?? 0);
        // The spool counts what it dropped itself (full); carried over into the counter.
        const now = options.spool?.dropped() ?? 0;
        if (now > spoolDropped) {
          metrics.inc("fleet_router_usage_dropped_total", undefined, now - spoolDropped);
          spoolDropped = now;
        }
      });
    }
  }

  record(record: UsageRecord): void {
    this.buffer.push(record);
    this.bound();
    if (this.running && this.buffer.length >= this.maxBatch && !this.flushing) {
      // Backing off, this only moves the records to the spool (no POST).
      void this.run(false);
    }
  }

  /** Records waiting to be sent, in memory and in the spool. */
  pending(): number {
    return this.buffer.length + (this.options.spool?.size().records ?? 0);
  }

  /** Flushes on a timer until `close()` (Bun and Node). */
  start(): void {
    if (this.running) return;
    this.running = true;
    const tick = async () => {
      await this.run(false);
      if (this.running) this.timer = setTimeout(tick, this.flushIntervalMs);
    };
    this.timer = setTimeout(tick, this.flushIntervalMs);
  }

  /** Sends everything waiting (in batches) now, backoff or not; one at a time. Never rejects. */
  flush(): Promise<void> {
    return this.run(true);
  }

  /** `force`: try the manager even while backing off (a flush asked for, not the timer's). */
  private run(force: boolean): Promise<void> {
    this.flushing ??= this.drain(force).finally(() => {
      this.flushing = undefined;
    });
    return this.flushing;
  }

  /**
   * workerd, under `waitUntil`: waits `lingerMs` for more records to join, then flushes; while
   * the manager does not answer it tries again, `flushAttempts` times in all with backoff
   * (0.5, 1, 2 s: under workerd's 30 s limit after the response). What is still unsent waits
   * in the isolate for the next request's flush. One such loop at a time per isolate.
   */
  flushSoon(lingerMs = 200): Promise<void> {
    this.retrying ??= this.flushWithRetries(lingerMs).finally(() => {
      this.retrying = undefined;
    });
    return this.retrying;
  }

  private async flushWithRetries(lingerMs: number): Promise<void> {
    await sleep(lingerMs);
    const attempts = this.options.flushAttempts ?? 4;
    for (let attempt = 1; ; attempt++) {
      await this.flush();
      if (this.healthy || this.buffer.length === 0 || attempt >= attempts) return;
      await sleep(500 * 2 ** (attempt - 1));
    }
  }

  /**
   * Stops the timer and makes a last attempt to send what waits; what the manager did not
   * take goes to the spool, for the next start.
   */
  async close(): Promise<void> {
    this.running = false;
    if (this.timer) clearTimeout(this.timer);
    await this.flushing;
    // While the manager is failing, straight to the spool: a manager that hangs must not
    // spend the shutdown deadline with the records still in memory.
    if (!this.healthy && this.options.spool) return this.spoolBuffer();
    this.nextAttemptAt = 0;
    await this.flush();
    await this.spoolBuffer();
  }

  private async drain(force: boolean): Promise<void> {
    const { spool } = this.options;
    if (!force && Date.now() < this.nextAttemptAt) {
      // Backing off: records still leave memory for the disk, where a restart cannot take them.
      await this.spoolBuffer();
      return;
    }
    if (spool) {
      for (let segment = await spool.oldest(); segment; segment = await spool.oldest()) {
        if (!(await this.sendAll(segment.records))) return this.backOff();
        await spool.remove(segment.id);
      }
    }
    while (this.buffer.length > 0) {
      const batch = this.buffer.splice(0, this.maxBatch);
      const ok = await this.send(batch);
      if (ok) continue;
      this.buffer.unshift(...batch);
      return this.backOff();
    }
  }

  /** A spooled segment, in POSTs of at most `maxBatch` (segments are written that size). */
  private async sendAll(records: unknown[]): Promise<boolean> {
    for (let start = 0; start < records.length; start += this.maxBatch) {
      if (!(await this.send(records.slice(start, start + this.maxBatch)))) return false;
    }
    return true;
  }

  /** The manager did not take a batch: wait before retrying; the waiting records go to disk. */
  private async backOff(): Promise<void> {
    this.backoffMs = Math.min(Math.max(this.backoffMs * 2, 500), this.maxBackoffMs);
    this.nextAttemptAt = Date.now() + this.backoffMs * (0.5 + Math.random() / 2);
    await this.spoolBuffer();
    this.bound();
  }

  /** Moves the buffer to the spool in segments of `maxBatch` (the spool keeps it bounded). */
  private async spoolBuffer(): Promise<void> {
    const { spool } = this.options;
    if (!spool) return;
    while (this.buffer.length > 0) {
      const batch = this.buffer.slice(0, this.maxBatch);
      try {
        await spool.append(batch);
      } catch (error) {
        this.log.error("usage spool write failed; records kept in memory", {
          error: error instanceof Error ? error.message : String(error),
        });
        return;
      }
      this.buffer.splice(0, batch.length);
    }
  }

  /** Without a spool (or when it fails), memory holds at most `maxBuffer`, oldest dropped. */
  private bound(): void {
    if (this.buffer.length <= this.maxBuffer) return;
    const excess = this.buffer.length - this.maxBuffer;
    this.buffer.splice(0, excess);
    this.dropped += excess;
    this.options.metrics?.inc("fleet_router_usage_dropped_total", undefined, excess);
  }

  private async send(records: readonly unknown[]): Promise<boolean> {
    const headers = new Headers({ "content-type": "application/json" });
    if (this.options.routerToken) {
      headers.set("authorization", `Bearer ${this.options.routerToken}`);
    }
    try {
      const response = await this.fetchFn(this.url, {
        method: "POST",
        headers,
        body: JSON.stringify({ records }),
        signal: AbortSignal.timeout(this.timeoutMs),
      });
      const text = await response.text().catch(() => "");
      if (response.ok) {
        this.options.metrics?.inc("fleet_router_usage_batches_total", { result: "ok" });
        const rejected = rejectedIn(text);
        if (rejected > 0) {
          // The manager kept them in usage_dead_letters with the reason; nothing to resend.
          this.options.metrics?.inc(
            "fleet_router_usage_records_rejected_total",
            undefined,
            rejected,
          );
        }
        this.backoffMs = 0;
        this.nextAttemptAt = 0;
        if (!this.healthy) this.log.info("usage delivery resumed", { url: this.url });
        this.healthy = true;
        return true;
      }
      if (response.status === 400 || response.status === 413 || response.status === 422) {
        // The manager will never accept this batch; retrying would wedge the queue.
        this.options.metrics?.inc("fleet_router_usage_batches_total", { result: "rejected" });
        this.dropped += records.length;
        this.options.metrics?.inc("fleet_router_usage_dropped_total", undefined, records.length);
        this.log.error("manager rejected a usage batch; dropped", {
          status: response.status,
          records: records.length,
          reason: text.slice(0, 300),
        });
        return true;
      }
      const reason = `HTTP ${response.status}: ${text.slice(0, 200)}`;
      if (response.status === 401 || response.status === 403) {
        return this.failed(`${reason} (ROUTER_TOKEN is wrong or revoked)`);
      }
      return this.failed(reason);
    } catch (error) {
      return this.failed(error instanceof Error ? error.message : String(error));
    }
  }

  private failed(reason: string): false {
    this.options.metrics?.inc("fleet_router_usage_batches_total", { result: "failed" });
    if (this.healthy) {
      this.log.warn("usage delivery failing; buffering", {
        url: this.url,
        reason,
        buffered: this.buffer.length,
      });
    }
    this.healthy = false;
    return false;
  }
}

/** `rejected` of the manager's answer (`{"accepted","rejected"}`), 0 when absent. */
function rejectedIn(text: string): number {
  try {
    const { rejected } = JSON.parse(text) as { rejected?: unknown };
    return typeof rejected === "number" && rejected > 0 ? rejected : 0;
  } catch {
    return 0;
  }
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
