import type { FleetDb } from "../db/index.ts";
import type { Clock } from "../kit/clock.ts";
import type { FetchLike } from "../kit/fetch.ts";
import type { Logger } from "../kit/log.ts";
import type { Spool } from "../kit/spool.ts";
import type { ManagerConfig } from "./env.ts";

/** What the manager needs from the outside world; entries pass real ones, tests their own. */
export type ManagerDeps = {
  db: FleetDb;
  config: ManagerConfig;
  clock?: Clock;
  fetch?: FetchLike;
  log?: Logger;
  /** Where usage waits while the database is down (the Bun and Node entries: on disk). */
  usageSpool?: Spool;
};
