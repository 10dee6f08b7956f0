import type { Db, FleetDb } from "../db/index.ts";
import { type Clock, systemClock } from "../kit/clock.ts";
import type { FetchLike } from "../kit/fetch.ts";
import { createLogger, type Logger } from "../kit/log.ts";
import { Metrics } from "../kit/metrics.ts";
import type { ManagerDeps } from "./deps.ts";
import type { ManagerConfig } from "./env.ts";
import { AgentClient } from "./services/agent-client.ts";
import { HeartbeatMemo } from "./services/heartbeat-memo.ts";
import { Launcher } from "./services/launcher.ts";
import { Lifecycle } from "./services/lifecycle.ts";
import { ManagerMetrics } from "./services/metrics.ts";
import { Prober } from "./services/probes.ts";
import { RouteCache } from "./services/route-cache.ts";
import { RouteLoads } from "./services/route-loads.ts";
import { RouterCredentials } from "./services/router-credentials.ts";
import type { ListenAddress } from "./services/worker-urls.ts";
import { CredentialMemo } from "./worker-auth.ts";

/**
 * One manager process: its deps and the services that keep state in memory. Each service
 * owns its state: the lifecycle writes instance state, the launcher knows its calls in
 * flight, the heartbeat memo what the last reports were.
 */
export type ManagerContext = {
  fleetDb: FleetDb;
  db: Db;
  config: ManagerConfig;
  clock: Clock;
  fetch: FetchLike;
  log: Logger;
  /** The registry of `/metrics`, shared with the mounted router and the usage writer. */
  metrics: Metrics;
  /** The manager's own families on it (services/metrics.ts). */
  instruments: ManagerMetrics;
  agents: AgentClient;
  routes: RouteCache;
  /** Router credentials, and the checks that passed while the route version holds. */
  routerCredentials: RouterCredentials;
  /** The one writer of instance state (and the routes that mirror it). */
  lifecycle: Lifecycle;
  /** Launch and stop calls to agents. */
  launcher: Launcher;
  /** Probes of workers' internal and public URLs (the management path). */
  prober: Prober;
  /** Per worker: the last report fully applied (see worker-reports.ts). */
  heartbeats: HeartbeatMemo;
  /** Each route's last engine load from heartbeats (served apart from the snapshot). */
  loads: RouteLoads;
  /** Hashes of presented tokens and the credential last verified per worker (worker-auth.ts). */
  credentials: CredentialMemo;
  /** When this process started acting (the liveness sweep waits one timeout after it). */
  startedAt: number;
  /** Whether reconciliation is holding off rescheduling (most workers silent at once). */
  holdingOff: boolean;
  /**
   * Where this manager listens, which no worker may advertise: the configured address until
   * the entry reports the bound port (`Manager.listening`).
   */
  listen: ListenAddress;
};

export function createContext(deps: ManagerDeps): ManagerContext {
  const clock = deps.clock ?? systemClock;
  const log = deps.log ?? createLogger({ service: "manager" });
  const fetchImpl = deps.fetch ?? ((input, init) => fetch(input, init));
  const db = deps.db.db;
  const metrics = deps.metrics ?? new Metrics();
  const instruments = new ManagerMetrics(metrics);
  const agents = new AgentClient({
    fetch: fetchImpl,
    timeoutMs: deps.config.agentTimeoutS * 1000,
  });
  const routes = new RouteCache({ fleetDb: deps.db, log, pollMs: deps.config.routesPollMs });
  const heartbeats = new HeartbeatMemo();
  const lifecycle = new Lifecycle({
    db,
    routes,
    onWorkerChanged: (workerId) => heartbeats.forget(workerId),
    log,
  });
  return {
    fleetDb: deps.db,
    db,
    config: deps.config,
    clock,
    fetch: fetchImpl,
    log,
    metrics,
    instruments,
    agents,
    routes,
    routerCredentials: new RouterCredentials({
      db,
      clock,
      version: () => routes.entry()?.snapshot.version,
      refresh: () => routes.refresh(),
    }),
    lifecycle,
    launcher: new Launcher({ db, agents, lifecycle, clock, log }),
    prober: new Prober({
      db,
      clock,
      fetch: fetchImpl,
      log,
      config: deps.config,
      lifecycle,
      instruments,
    }),
    heartbeats,
    loads: new RouteLoads(),
    credentials: new CredentialMemo(),
    startedAt: clock.now().getTime(),
    holdingOff: false,
    listen: { host: deps.config.host, port: deps.config.port, localAddresses: [] },
  };
}
