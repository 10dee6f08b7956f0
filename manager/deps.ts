import type { FleetDb } from "../db/index.ts";
import type { Clock } from "../kit/clock.ts";
import type { FetchLike } from "../kit/fetch.ts";
import type { Logger } from "../kit/log.ts";
import type { Metrics } from "../kit/metrics.ts";
import type { Spool } from "../kit/spool.ts";
import type { ManagerConfig } from "./env.ts";

/** What the manager needs from the outside world; entries pass real ones, tests their own. */
export type ManagerDeps = {
  db: FleetDb;
  config: ManagerConfig;
  clock?: Clock;
  fetch?: FetchLike;
  log?: Logger;
  /** The registry of `/metrics` (default: a new one; the mounted router must share it). */
  metrics?: Metrics;
  /** Where usage waits while the database is down (the Bun and Node entries: on disk). */
  usageSpool?: Spool;
  /** The agent executable `/install.sh` installs (the entries: a file; absent: none to serve). */
  agentDownload?: AgentDownload;
};

/** The agent executable the manager hands out at `/downloads/fleet-agent`. */
export type AgentDownload = {
  /** The gzipped executable and its SHA-256, or undefined when there is none to serve. */
  current(): Promise<AgentArtifact | undefined>;
  /** Where it is looked for, named in the answer when there is none. */
  location: string;
};

export type AgentArtifact = {
  /** The executable, gzipped: the bytes served and hashed. */
  gzip: Uint8Array<ArrayBuffer>;
  /** SHA-256 of `gzip`, lowercase hex, as `sha256sum` prints it. */
  sha256: string;
};
