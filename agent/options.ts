import type { Logger, LogLevel } from "../kit/log.ts";
import type { PortRange } from "./lib/ports.ts";

/** Everything but the identity has a default; durations are in milliseconds. */
export type WorkerServiceOptions = {
  /** Stable id of this host (default: the host name). */
  workerId?: string;
  /** Listen address (default 0.0.0.0, which requires `fleetToken`). */
  listenHost?: string;
  /** Listen port (default 6006; 0 picks a free one, see `port` after `run()`). */
  listenPort?: number;
  managerUrl?: string;
  /** `PUBLIC_URL`: how the outside world reaches this agent (port forwarding). */
  publicUrl?: string | null;
  /** The URL the manager dials (default derived from the listen address). */
  workerUrl?: string;
  /**
   * `FLEET_TOKEN`, the join token: the agent joins with it once and then uses the credentials
   * the manager issued (kept in `dataDir`). Without it the agent is open (loopback only).
   */
  fleetToken?: string;
  /**
   * `AGENT_DATA_DIR`: where the credentials file and the engine records live (default
   * `.fleet/agent`).
   */
  dataDir?: string;
  /** How long the previous agent credential still works after a rotation (default 120 s). */
  agentTokenGraceMs?: number;
  vllmBin?: string;
  nvidiaSmiBin?: string;
  enginePorts?: PortRange;
  startupTimeoutMs?: number;
  stopGraceMs?: number;
  restartBackoffMs?: number;
  restartBackoffMaxMs?: number;
  healthPollMs?: number;
  /**
   * `ENGINE_LOAD_POLL_MS`: how often each ready engine's `/metrics` is read for its load
   * (the `x-fleet-load` header and heartbeats); 0 = never (default 1000).
   */
  loadPollMs?: number;
  /**
   * How long an engine adopted from a previous agent may take to answer as itself before it
   * is stopped (default 60 s; one that was still loading gets the rest of its startup timeout).
   */
  adoptGraceMs?: number;
  /**
   * `AGENT_KEEP_ENGINES`: `stop()` leaves the engines running for the next agent to adopt
   * (an agent upgrade) instead of stopping them (default false).
   */
  keepEngines?: boolean;
  registerRetryMaxMs?: number;
  /** `shutdown()`: how long in-flight requests may take once draining (default 30 s). */
  drainTimeoutMs?: number;
  /** `shutdown()`: the drain ends once nothing has been in flight this long (default 2 s). */
  drainQuietMs?: number;
  /** `shutdown()`: after the drain, the bound on closing and stopping engines (default 30 s). */
  shutdownTimeoutMs?: number;
  /** The environment engines and nvidia-smi inherit (default: this process's). */
  engineEnv?: Record<string, string | undefined>;
  logLevel?: LogLevel;
  log?: Logger;
};
