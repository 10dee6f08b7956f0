import { type Logger, silentLogger } from "../kit/log.ts";
import type { Metrics } from "../kit/metrics.ts";
import { type RouteSnapshot, routeLoadsSchema, routeSnapshotSchema } from "../protocol/index.ts";
import type { FetchLike, RouteSource } from "./app.ts";
import type { RouteLoadsView, RouteSourceHealth } from "./types.ts";

export type SnapshotPollerOptions = {
  managerUrl: string;
  /** The router credential (`ROUTER_TOKEN`), sent to the manager as `Bearer`. */
  routerToken?: string;
  /** How often to revalidate (default 1 s). */
  intervalMs?: number;
  /** Per-request timeout (default 5 s). */
  timeoutMs?: number;
  fetch?: FetchLike;
  log?: Logger;
  metrics?: Metrics;
};

/**
 * A standalone or edge router's view of the route table: `GET {MANAGER_URL}/v1/routes`
 * revalidated with `If-None-Match`, so an unchanged table costs a 304. When the manager is
 * unreachable the last snapshot keeps serving (stale beats down); /metrics shows its age.
 * On Bun and Node `start()` polls on a timer; on workerd, where timers do not outlive a
 * request, the entry calls `refresh()` lazily (`isStale()`) under `ctx.waitUntil`.
 */
export class SnapshotPoller implements RouteSource {
  private snapshot: RouteSnapshot | undefined;
  private inflight: Promise<void> | undefined;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private stopped = true;
  private lastAttemptAt = Number.NEGATIVE_INFINITY;
  private lastSuccessAt: number | undefined;
  /** What the last attempt found, so that each change is logged once, not every second. */
  private state: "ok" | "unreachable" | "refused" = "ok";
  private lastReason = "";
  private readonly url: string;
  private readonly loadsUrl: string;
  private loadsView: RouteLoadsView | undefined;
  /** false once the manager answered 404 (a manager before route loads): asked no more. */
  private loadsServed = true;
  private loadsInflight = false;
  private readonly intervalMs: number;
  private readonly timeoutMs: number;
  private readonly fetchFn: FetchLike;
  private readonly log: Logger;

  constructor(private readonly options: SnapshotPollerOptions) {
    this.url = `${options.managerUrl.replace(/\/+$/, "")}/v1/routes`;
    this.loadsUrl = `${options.managerUrl.replace(/\/+$/, "")}/v1/route-loads`;
    this.intervalMs = options.intervalMs ?? 1000;
    this.timeoutMs = options.timeoutMs ?? 5000;
    this.fetchFn = options.fetch ?? ((input, init) => fetch(input, init));
    this.log = options.log ?? silentLogger;
    const metrics = options.metrics;
    if (metrics) {
      metrics.declare(
        "fleet_router_routes_age_seconds",
        "gauge",
        "Seconds since the route table was last confirmed by the manager",
      );
      metrics.declare(
        "fleet_router_routes_refresh_failures_total",
        "counter",
        "Failed route table refreshes",
      );
      metrics.collect(() => {
        if (this.lastSuccessAt !== undefined) {
          metrics.set(
            "fleet_router_routes_age_seconds",
            undefined,
            (Date.now() - this.lastSuccessAt) / 1000,
          );
        }
      });
    }
  }

  current(): RouteSnapshot | undefined {
    return this.snapshot;
  }

  loads(): RouteLoadsView | undefined {
    return this.loadsView;
  }

  /**
   * After each revalidation: each route's last engine load from heartbeats, for replicas
   * this router has not heard from lately (answers' `x-fleet-load` headers are fresher).
   * Best effort: a failure keeps the last loads, which age out in the balancer.
   */
  private async fetchLoads(): Promise<void> {
    if (!this.loadsServed || this.loadsInflight) return;
    this.loadsInflight = true;
    try {
      const headers = new Headers({ accept: "application/json" });
      if (this.options.routerToken) {
        headers.set("authorization", `Bearer ${this.options.routerToken}`);
      }
      const response = await this.fetchFn(this.loadsUrl, {
        headers,
        signal: AbortSignal.timeout(this.timeoutMs),
      });
      if (response.status === 404) this.loadsServed = false;
      if (!response.ok) {
        await response.body?.cancel();
        return;
      }
      const parsed = routeLoadsSchema.safeParse(await response.json());
      if (parsed.success) this.loadsView = { loads: parsed.data.loads, receivedAt: Date.now() };
    } catch {
      // The snapshot's own poll reports the manager's reachability.
    } finally {
      this.loadsInflight = false;
    }
  }

  health(): RouteSourceHealth {
    const ageS = this.lastSuccessAt === undefined ? null : (Date.now() - this.lastSuccessAt) / 1000;
    if (this.state === "refused") {
      return {
        ageS,
        problem: `the manager refused this router's credential (ROUTER_TOKEN): ${this.lastReason}`,
      };
    }
    if (this.state === "unreachable")
      return { ageS, problem: `manager unreachable: ${this.lastReason}` };
    return { ageS };
  }

  /** True when the last refresh attempt is older than the interval. */
  isStale(): boolean {
    return Date.now() - this.lastAttemptAt >= this.intervalMs;
  }

  /** One revalidation; concurrent callers share it. Never rejects. */
  refresh(): Promise<void> {
    // The loads ride in the same promise, so that workerd's waitUntil covers them too.
    this.inflight ??= this.fetchOnce()
      .then(() => (this.state === "ok" ? this.fetchLoads() : undefined))
      .finally(() => {
        this.inflight = undefined;
      });
    return this.inflight;
  }

  /** Polls every interval until `stop()`; resolves after the first attempt. */
  start(): Promise<void> {
    this.stopped = false;
    const loop = async () => {
      await this.refresh();
      if (!this.stopped) this.timer = setTimeout(loop, this.intervalMs);
    };
    return loop();
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
  }

  private async fetchOnce(): Promise<void> {
    this.lastAttemptAt = Date.now();
    const headers = new Headers({ accept: "application/json" });
    if (this.options.routerToken) {
      headers.set("authorization", `Bearer ${this.options.routerToken}`);
    }
    if (this.snapshot) headers.set("if-none-match", `"${this.snapshot.version}"`);
    try {
      const response = await this.fetchFn(this.url, {
        headers,
        signal: AbortSignal.timeout(this.timeoutMs),
      });
      if (response.status === 304) {
        await response.body?.cancel();
        return this.succeeded();
      }
      if (!response.ok) {
        const text = await response.text().catch(() => "");
        const refused = response.status === 401 || response.status === 403;
        return this.failed(`HTTP ${response.status}: ${text.slice(0, 200)}`, refused);
      }
      const parsed = routeSnapshotSchema.safeParse(await response.json());
      if (!parsed.success) {
        return this.failed(`invalid snapshot: ${parsed.error.issues[0]?.message ?? "?"}`);
      }
      if (parsed.data.version !== this.snapshot?.version) {
        this.snapshot = parsed.data;
        this.log.info("route table updated", {
          version: parsed.data.version,
          routes: parsed.data.routes.length,
          ready: parsed.data.routes.filter((route) => route.ready).length,
        });
      }
      this.succeeded();
    } catch (error) {
      this.failed(error instanceof Error ? error.message : String(error));
    }
  }

  private succeeded(): void {
    this.lastSuccessAt = Date.now();
    if (this.state !== "ok") this.log.info("manager reachable again", { url: this.url });
    this.state = "ok";
  }

  private failed(reason: string, refused = false): void {
    this.options.metrics?.inc("fleet_router_routes_refresh_failures_total");
    const state = refused ? "refused" : "unreachable";
    // Log transitions, not every second of an outage.
    if (this.state !== state) {
      const serving = this.snapshot ? "serving the last route table" : "no route table yet";
      const fields = { url: this.url, reason, version: this.snapshot?.version ?? null };
      if (refused) {
        // Wrong or revoked ROUTER_TOKEN: no retry will fix it, an operator has to.
        this.log.error(
          `the manager refused this router's credential (ROUTER_TOKEN is wrong or revoked; create one with: fleet routers create NAME); ${serving}`,
          fields,
        );
      } else {
        this.log.warn(`manager unreachable; ${serving}`, fields);
      }
    }
    this.state = state;
    this.lastReason = reason.slice(0, 200);
  }
}
