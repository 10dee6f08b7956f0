import type { LogFields, Logger } from "./log.ts";

/**
 * Warnings that can repeat with every request or every retry (a worker that keeps sending
 * impossible numbers, a database that stays down) are written at most once per `intervalMs`
 * for each key; the next line that gets through says how many were held back (`suppressed`).
 */
export class LogLimiter {
  private readonly last = new Map<string, { at: number; suppressed: number }>();

  constructor(
    private readonly log: Logger,
    private readonly options: { intervalMs?: number; now?: () => number; maxKeys?: number } = {},
  ) {}

  warn(key: string, message: string, fields?: LogFields): void {
    this.write("warn", key, message, fields);
  }

  error(key: string, message: string, fields?: LogFields): void {
    this.write("error", key, message, fields);
  }

  private write(level: "warn" | "error", key: string, message: string, fields?: LogFields): void {
    const now = (this.options.now ?? Date.now)();
    const seen = this.last.get(key);
    if (seen && now - seen.at < (this.options.intervalMs ?? 60_000)) {
      seen.suppressed++;
      return;
    }
    // Keys are bounded by their callers (fields, worker ids); this keeps a bad caller bounded too.
    if (!seen && this.last.size >= (this.options.maxKeys ?? 1000)) this.last.clear();
    const suppressed = seen?.suppressed ?? 0;
    this.last.set(key, { at: now, suppressed: 0 });
    this.log[level](message, suppressed > 0 ? { ...fields, suppressed } : fields);
  }
}
