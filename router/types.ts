import type { RouteLoad, RouteSnapshot, UsageRecord } from "../protocol/index.ts";

/** Where the router reads routes: synchronous and cached (an in-process table or a poller). */
export type RouteSource = {
  current(): RouteSnapshot | undefined;
  /**
   * How fresh the table is, for /healthz: seconds since its source (the manager, or the
   * manager's database) last confirmed it, and what is wrong with that source now, if
   * anything. Sources that cannot tell leave it out.
   */
  health?(): RouteSourceHealth;
  /**
   * Each route's last engine load from the manager (`GET /v1/route-loads`), a new object
   * per fetch; `receivedAt` is `Date.now()` when it arrived. Sources without it leave it out.
   */
  loads?(): RouteLoadsView | undefined;
};
export type RouteLoadsView = { loads: RouteLoad[]; receivedAt: number };
export type RouteSourceHealth = { ageS: number | null; problem?: string };
/** Where finished requests go; `record` must never block the request. */
export type UsageSink = { record(record: UsageRecord): void };
export type { ClientIdleTimer } from "../kit/client-limits.ts";
export type { FetchLike } from "../kit/fetch.ts";
