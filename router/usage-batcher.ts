import { type Logger, silentLogger } from "../kit/log.ts";
import type { UsageRecord } from "../protocol/index.ts";
import type { FetchLike, UsageSink } from "./app.ts";
import type { Metrics } from "./metrics.ts";

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
  timeoutMs?: number;
  fetch?: FetchLike;
  log?: Logger;
  metrics?: Metrics;
};

/**
 * Sends usage records to the manager in batches (`POST {MANAGER_URL}/v1/usage`): one POST
 * per second or per `maxBatch` records, never one per request. `record` only appends to an
 * array. While the manager is down the buffer is bounded (oldest dropped, counted in
 * `fleet_router_usage_dropped_total`) and retries back off, so an outage can neither block
 * requests nor grow memory without limit.
 */
export class UsageBatcher implements UsageSink {
  private buffer: UsageRecord[] = [];
  private flushing: Promise<void> | undefined;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private backoffMs = 0;
  private nextAttemptAt = 0;
  private running = false;
  private healthy = true;
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
      metrics.declare("fleet_router_usage_buffered", "gauge", "Usage records waiting to be sent");
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
      metrics.collect(() =>
        metrics.set("fleet_router_usage_buffered", undefined, this.buffer.length),
      );
    }
  }

  record(record: UsageRecord): void {
    this.buffer.push(record);
    if (this.buffer.length > this.maxBuffer) {
      const excess = this.buffer.length - this.maxBuffer;
      this.buffer.splice(0, excess);
      this.dropped += excess;
      this.options.metrics?.inc("fleet_router_usage_dropped_total", undefined, excess);
    }
    if (this.running && this.buffer.length >= this.maxBatch && Date.now() >= this.nextAttemptAt) {
      void this.flush();
    }
  }

  /** Records waiting to be sent. */
  pending(): number {
    return this.buffer.length;
  }

  /** Flushes on a timer until `close()` (Bun and Node). */
  start(): void {
    if (this.running) return;
    this.running = true;
    const tick = async () => {
      if (Date.now() >= this.nextAttemptAt) await this.flush();
      if (this.running) this.timer = setTimeout(tick, this.flushIntervalMs);
    };
    this.timer = setTimeout(tick, this.flushIntervalMs);
  }

  /** Sends everything buffered (in batches); one flush at a time. Never rejects. */
  flush(): Promise<void> {
    this.flushing ??= this.drain().finally(() => {
      this.flushing = undefined;
    });
    return this.flushing;
  }

  /** Waits `lingerMs` for more records to join, then flushes (workerd, under waitUntil). */
  async flushSoon(lingerMs = 200): Promise<void> {
    await new Promise((resolve) => setTimeout(resolve, lingerMs));
    await this.flush();
  }

  /** Stops the timer and makes a last attempt to send what is buffered. */
  async close(): Promise<void> {
    this.running = false;
    if (this.timer) clearTimeout(this.timer);
    this.nextAttemptAt = 0;
    await this.flush();
  }

  private async drain(): Promise<void> {
    while (this.buffer.length > 0) {
      const batch = this.buffer.splice(0, this.maxBatch);
      const ok = await this.send(batch);
      if (ok) continue;
      // Put it back in front (the oldest still drop first) and wait before retrying.
      this.buffer.unshift(...batch);
      if (this.buffer.length > this.maxBuffer) {
        const excess = this.buffer.length - this.maxBuffer;
        this.buffer.splice(0, excess);
        this.dropped += excess;
        this.options.metrics?.inc("fleet_router_usage_dropped_total", undefined, excess);
      }
      this.backoffMs = Math.min(Math.max(this.backoffMs * 2, 500), this.maxBackoffMs);
      this.nextAttemptAt = Date.now() + this.backoffMs * (0.5 + Math.random() / 2);
      return;
    }
  }

  private async send(records: UsageRecord[]): Promise<boolean> {
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
