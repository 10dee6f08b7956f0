import { sql } from "drizzle-orm";
import type { FleetDb } from "../../db/index.ts";
import { describeError, quote } from "../../kit/errors.ts";
import type { Logger } from "../../kit/log.ts";

export type DatabaseCheck = {
  status: "ok" | "unreachable";
  /** Why it is unreachable: the driver's error, or no answer within the timeout. */
  reason?: string;
  /** When the answer was found (ISO); cached answers keep theirs. */
  checked_at: string;
};

/**
 * Whether the database answers, for `GET /health`: `select 1` with a short timeout, the
 * answer cached briefly, so that health checks (an orchestrator's, a load balancer's, a
 * person's curl in a loop) cost the database at most one query per `cacheMs` whatever their
 * rate. While a query the timeout gave up on is still pending, no second one is sent: a
 * black-holed database gets one query at a time, not one per check.
 */
export class DatabaseHealth {
  private cached: { check: DatabaseCheck; at: number } | undefined;
  private checking: Promise<DatabaseCheck> | undefined;
  /** The query the timeout gave up on, still running in the driver. */
  private stuck: Promise<unknown> | undefined;

  constructor(
    private readonly options: {
      fleetDb: FleetDb;
      log: Logger;
      /** Longest wait for `select 1` (default 2 s). */
      timeoutMs?: number;
      /** How long an answer is reused (default 5 s). */
      cacheMs?: number;
      now?: () => number;
    },
  ) {}

  check(): Promise<DatabaseCheck> {
    const now = this.options.now?.() ?? Date.now();
    if (this.cached && now - this.cached.at < (this.options.cacheMs ?? 5000)) {
      return Promise.resolve(this.cached.check);
    }
    this.checking ??= this.probe().then((check) => {
      const previous = this.cached?.check.status ?? "ok";
      this.cached = { check, at: this.options.now?.() ?? Date.now() };
      this.checking = undefined;
      // Changes are logged, not every check of an outage.
      if (check.status !== previous) {
        if (check.status === "ok") this.options.log.info("database reachable again");
        else this.options.log.warn("database unreachable", { reason: check.reason });
      }
      return check;
    });
    return this.checking;
  }

  private async probe(): Promise<DatabaseCheck> {
    const checkedAt = () => new Date().toISOString();
    const timeoutMs = this.options.timeoutMs ?? 2000;
    if (this.stuck) {
      return {
        status: "unreachable",
        reason: `the last check has had no answer for over ${timeoutMs} ms`,
        checked_at: checkedAt(),
      };
    }
    const query = this.options.fleetDb.query(sql`select 1 as ok`);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<"timeout">((resolve) => {
      timer = setTimeout(resolve, timeoutMs, "timeout");
    });
    try {
      const outcome = await Promise.race([query, timeout]);
      if (outcome === "timeout") {
        this.stuck = query
          .catch(() => {})
          .finally(() => {
            this.stuck = undefined;
          });
        return {
          status: "unreachable",
          reason: `no answer to select 1 within ${timeoutMs} ms`,
          checked_at: checkedAt(),
        };
      }
      return { status: "ok", checked_at: checkedAt() };
    } catch (error) {
      // /health is open to anyone: it says what kind of failure (the driver's error code,
      // such as ECONNREFUSED or 28P01) rather than the server's address or user; the log
      // has the whole message.
      const code = (error as { code?: unknown }).code;
      if (this.cached?.check.status !== "unreachable") {
        this.options.log.warn("database check failed", { error: describeError(error) });
      }
      return {
        status: "unreachable",
        reason:
          typeof code === "string" && /^[\w.-]{1,40}$/.test(code)
            ? `${code} (the manager's log has the details)`
            : quote(describeError(error), 200),
        checked_at: checkedAt(),
      };
    } finally {
      clearTimeout(timer);
    }
  }
}
