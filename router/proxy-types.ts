import type { Context } from "hono";
import type { MonotonicClock } from "../kit/clock.ts";
import type { Logger } from "../kit/log.ts";
import type { BoundSeries, Metrics } from "../kit/metrics.ts";
import type { RouteEntry } from "../protocol/index.ts";
import type { Balancer } from "./balancer.ts";
import type { OpenStreams } from "./open-streams.ts";
import type { ReplicaChecker } from "./replica-check.ts";
import type { FetchLike } from "./types.ts";
import type { Rejection, Usage } from "./usage-scan.ts";

/** What `forward` (proxy.ts), `attempt` (attempt.ts) and `relay` (relay.ts) share. */
export type ProxyConfig = {
  fetch: FetchLike;
  /** For requests with `"stream": true`. */
  streamFetch: FetchLike;
  firstByteMs: number;
  idleMs: number;
  maxAttempts: number;
  budgetMs: number;
  /**
   * Health checks of replicas whose requests wait `afterMs` for a first byte
   * (FIRST_BYTE_PROBE_MS); undefined: off.
   */
  check: { afterMs: number; checker: ReplicaChecker } | undefined;
  balancer: Balancer;
  /** The responses being relayed, which a shutdown ends cleanly. */
  streams: OpenStreams;
  metrics: Metrics;
  clock: MonotonicClock;
  log: Logger;
};

export type Outcome = {
  /** The status the client saw; 499 when the client went away first. */
  status: number;
  ttftMs: number | null;
  /** Token counts that passed `checkUsage`. */
  usage: Usage | undefined;
  /** Counts the replica sent that failed `checkUsage` (recorded as null). */
  rejected?: Rejection[];
  workerId: string | null;
};

export type ForwardRequest = {
  c: Context;
  alias: string;
  /** The alias's `fleet_router_in_flight` series. */
  inFlight: BoundSeries;
  path: string;
  candidates: readonly RouteEntry[];
  body: Uint8Array<ArrayBuffer> | string;
  stream: boolean;
  hideUsage: boolean;
  /** Prompts and choices the request asks for: with the route's context, its token bounds. */
  shape: { inputs: number; choices: number };
  /** The key of the model's routing policy (policy.ts); undefined: least loaded. */
  affinityKey: string | undefined;
  /** A conversation's first request (policy.ts `opensConversation`): placed by load alone. */
  opening: boolean;
  requestId: string;
  clientAddress: string | undefined;
  startedAt: number;
  /** Called once, when the request is fully accounted (answered, failed or abandoned). */
  onDone: (outcome: Outcome) => void;
};

/** Client closed request (nginx's convention); recorded, never sent. */
export const clientClosed = 499;
