import type { Db, FleetDb } from "../db/index.ts";
import { schema } from "../db/index.ts";
import { type Clock, systemClock } from "../kit/clock.ts";
import type { FetchLike } from "../kit/fetch.ts";
import { createLogger, type Logger } from "../kit/log.ts";
import type { ManagerDeps } from "./deps.ts";
import type { ManagerConfig } from "./env.ts";
import { AgentClient } from "./services/agent-client.ts";
import { RouteCache } from "./services/route-cache.ts";

/** What heartbeats remember per worker so that an unchanged report costs one UPDATE. */
export type HeartbeatMemo = { reports: string; gpus: string; checkedAt: number };

/** Shared state of one manager process: its deps plus small in-memory caches. */
export type ManagerContext = {
  fleetDb: FleetDb;
  db: Db;
  config: ManagerConfig;
  clock: Clock;
  fetch: FetchLike;
  log: Logger;
  agents: AgentClient;
  routes: RouteCache;
  /** Per worker: the last report fully applied (see registry.ts). */
  heartbeatMemo: Map<string, HeartbeatMemo>;
  /** Instance ids with a launch call in flight from this process. */
  launching: Set<string>;
  /** `${workerId}/${alias}` → when this process last asked the agent to stop it. */
  stopRequested: Map<string, number>;
  /** When this process started acting (the liveness sweep waits one timeout after it). */
  startedAt: number;
  /** Whether reconciliation is holding off rescheduling (most workers silent at once). */
  holdingOff: boolean;
};

export function createContext(deps: ManagerDeps): ManagerContext {
  const clock = deps.clock ?? systemClock;
  const log = deps.log ?? createLogger({ service: "manager" });
  const fetchImpl = deps.fetch ?? ((input, init) => fetch(input, init));
  return {
    fleetDb: deps.db,
    db: deps.db.db,
    config: deps.config,
    clock,
    fetch: fetchImpl,
    log,
    agents: new AgentClient({
      fetch: fetchImpl,
      token: deps.config.fleetToken,
      timeoutMs: deps.config.agentTimeoutS * 1000,
    }),
    routes: new RouteCache({ fleetDb: deps.db, log, pollMs: deps.config.routesPollMs }),
    heartbeatMemo: new Map(),
    launching: new Set(),
    stopRequested: new Map(),
    startedAt: clock.now().getTime(),
    holdingOff: false,
  };
}

export type EventInput = {
  kind: string;
  workerId?: string | null;
  alias?: string | null;
  instanceId?: string | null;
  fromStatus?: string | null;
  toStatus?: string | null;
  message?: string | null;
  detail?: Record<string, unknown> | null;
};

/** Appends events (state transitions only; callers never write one when nothing changed). */
export async function recordEvents(db: Db, ts: Date, events: EventInput[]): Promise<void> {
  if (events.length === 0) return;
  await db.insert(schema.events).values(
    events.map((e) => ({
      ts,
      kind: e.kind,
      workerId: e.workerId ?? null,
      alias: e.alias ?? null,
      instanceId: e.instanceId ?? null,
      fromStatus: e.fromStatus ?? null,
      toStatus: e.toStatus ?? null,
      message: e.message ?? null,
      detail: e.detail ?? null,
    })),
  );
}
