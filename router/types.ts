import type { RouteSnapshot, UsageRecord } from "../protocol/index.ts";

/** Where the router reads routes: synchronous and cached (an in-process table or a poller). */
export type RouteSource = { current(): RouteSnapshot | undefined };
/** Where finished requests go; `record` must never block the request. */
export type UsageSink = { record(record: UsageRecord): void };
export type { FetchLike } from "../kit/fetch.ts";
