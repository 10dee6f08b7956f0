import { createHash } from "node:crypto";
import { hostname } from "node:os";
import { resolve } from "node:path";
import type { Server } from "bun";
import { hostMissing } from "../kit/host-check.ts";
import { createLogger, type Logger } from "../kit/log.ts";
import { isLoopbackHost } from "../kit/net.ts";
import { bunServer, shutDown, within } from "../kit/shutdown.ts";
import { fleetVersion } from "../kit/version.ts";
import {
  baseUrlSchema,
  type GpuInfo,
  type Heartbeat,
  type InstanceReport,
  type WorkerRegistrationInput,
  workerIdSchema,
  workerUrlSchema,
} from "../protocol/index.ts";
import { createApp } from "./app.ts";
import { inheritedEnv } from "./env.ts";
import { EngineRecords } from "./lib/engine-records.ts";
import { discoverGpus } from "./lib/gpus.ts";
import { AgentIdentity } from "./lib/identity.ts";
import { LoadMonitor } from "./lib/load-monitor.ts";
import { ManagerClient } from "./lib/manager-client.ts";
import { agentMetrics } from "./lib/metrics.ts";
import { defaultWorkerUrl, localHosts, reachabilityWarning } from "./lib/net.ts";
import { PortLeaser } from "./lib/ports.ts";
import { Supervisor } from "./lib/supervisor.ts";
import type { WorkerServiceOptions } from "./options.ts";

export type { WorkerServiceOptions } from "./options.ts";

export const agentVersion = fleetVersion;

/**
 * Variables of the agent's own that an engine must never see; the engine markers are set
 * afresh for each engine (never inherited from whatever started the agent).
 */
const privateVariables = [
  "FLEET_TOKEN",
  "VLLM_BIN",
  "NVIDIA_SMI_BIN",
  "AGENT_KEEP_ENGINES",
  "FLEET_ENGINE_OWNER",
  "FLEET_ENGINE_ALIAS",
];

/**
 * The agent: serves the instance API and the `/proxy` path, supervises engines, and keeps
 * itself registered with the manager.
 *
 * ```ts
 * const agent = new WorkerService({ workerId, listenHost, listenPort, managerUrl, publicUrl });
 * await agent.run();
 * ```
 */
export class WorkerService {
  readonly workerId: string;
  readonly listenHost: string;
  readonly managerUrl: string;
  readonly publicUrl: string | null;
  readonly log: Logger;
  readonly supervisor: Supervisor;
  /** Each ready engine's load, read from its /metrics (ENGINE_LOAD_POLL_MS). */
  readonly loads: LoadMonitor;
  /** Its credentials and who may call it (agent/lib/identity.ts). */
  readonly identity: AgentIdentity;
  readonly #options: WorkerServiceOptions;
  readonly #env: Record<string, string>;
  readonly #fleetToken: string | undefined;
  #gpuInfo: GpuInfo = { gpus: [], warning: "not read yet" };
  #server: Server<undefined> | null = null;
  #manager: ManagerClient | null = null;
  #stopping: Promise<void> | null = null;
  #shuttingDown: Promise<number> | null = null;

  constructor(options: WorkerServiceOptions = {}) {
    this.#options = options;
    this.log = options.log ?? createLogger({ service: "agent", level: options.logLevel ?? "info" });
    this.workerId = workerIdSchema.parse(options.workerId ?? hostname());
    this.listenHost = options.listenHost ?? "0.0.0.0";
    this.managerUrl = baseUrlSchema.parse(options.managerUrl ?? "http://localhost:18000");
    this.publicUrl = options.publicUrl ? workerUrlSchema.parse(options.publicUrl) : null;
    this.#fleetToken = options.fleetToken || undefined;
    this.identity = new AgentIdentity({
      workerId: this.workerId,
      managerUrl: this.managerUrl,
      joinToken: this.#fleetToken,
      dataDir: options.dataDir ?? ".fleet/agent",
      graceMs: options.agentTokenGraceMs ?? 120_000,
      log: this.log,
    });
    if (this.identity.open && !isLoopbackHost(this.listenHost)) {
      throw new Error(
        `FLEET_TOKEN must be set when the agent listens on ${this.listenHost} (not loopback) and has not joined yet (no credentials in ${this.identity.store.path}): without it anyone who reaches the port could use the GPUs`,
      );
    }
    const env: Record<string, string> = {};
    for (const [key, value] of Object.entries(options.engineEnv ?? inheritedEnv())) {
      if (value !== undefined && !privateVariables.includes(key)) env[key] = value;
    }
    this.#env = env;
    const dataDir = options.dataDir ?? ".fleet/agent";
    this.supervisor = new Supervisor({
      vllmBin: options.vllmBin ?? "vllm",
      baseEnv: env,
      ports: new PortLeaser(options.enginePorts ?? { min: 8100, max: 8999 }),
      log: this.log,
      startupTimeoutMs: options.startupTimeoutMs ?? 20 * 60_000,
      stopGraceMs: options.stopGraceMs ?? 30_000,
      restartBackoffMs: options.restartBackoffMs ?? 1000,
      restartBackoffMaxMs: options.restartBackoffMaxMs ?? 60_000,
      healthPollMs: options.healthPollMs ?? 500,
      adoptGraceMs: options.adoptGraceMs ?? 60_000,
      onChange: () => this.#manager?.nudge(),
      records: { store: new EngineRecords(dataDir), owner: engineOwner(dataDir) },
    });
    this.loads = new LoadMonitor({
      intervalMs: options.loadPollMs ?? 1000,
      log: this.log,
      targets: () =>
        this.supervisor
          .reports()
          .flatMap((report) =>
            report.status === "ready" && report.port !== null
              ? [{ alias: report.alias, port: report.port }]
              : [],
          ),
    });
  }

  /** The port the agent listens on (known after `run()`). */
  get port(): number {
    return this.#server?.port ?? this.#options.listenPort ?? 6006;
  }

  /** Where this agent answers on loopback, e.g. for tests: `http://127.0.0.1:{port}`. */
  get url(): string {
    return defaultWorkerUrl(this.listenHost, this.port);
  }

  /** The internal URL the manager dials. */
  get workerUrl(): string {
    return this.#options.workerUrl
      ? workerUrlSchema.parse(this.#options.workerUrl)
      : defaultWorkerUrl(this.listenHost, this.port);
  }

  /**
   * Why a manager on another host could not dial this agent (no PUBLIC_URL, a loopback
   * worker URL), or undefined; `run()` logs it.
   */
  get unreachableWarning(): string | undefined {
    return reachabilityWarning({
      managerUrl: this.managerUrl,
      publicUrl: this.publicUrl,
      workerUrl: this.workerUrl,
      localHosts: localHosts(),
    });
  }

  get gpuInfo(): GpuInfo {
    return this.#gpuInfo;
  }

  /**
   * Adopts the engines a previous agent left running (agent/lib/adoption.ts), reads the GPUs,
   * starts listening and starts registering; resolves once listening.
   */
  async run(): Promise<void> {
    const adoption = await this.supervisor.adopt();
    if (adoption.adopted.length > 0 || adoption.dropped.length > 0 || adoption.stopping > 0) {
      this.log.info("engines of the previous agent", {
        adopted: adoption.adopted,
        dropped_records: adoption.dropped,
        stopping_unrecorded: adoption.stopping,
      });
    }
    await this.refreshGpus();
    if (this.#gpuInfo.warning) this.log.warn("GPU discovery", { warning: this.#gpuInfo.warning });
    this.log.info("GPUs found", { count: this.#gpuInfo.gpus.length });
    const app = createApp({
      workerId: this.workerId,
      supervisor: this.supervisor,
      loads: this.loads,
      identity: this.identity,
      gpus: { current: () => this.#gpuInfo, refresh: () => this.refreshGpus() },
      log: this.log,
      metrics: agentMetrics({
        engines: () => this.supervisor.reports(),
        loads: this.loads,
        gpus: () => this.#gpuInfo,
      }),
    });
    this.#server = Bun.serve({
      hostname: this.listenHost,
      port: this.#options.listenPort ?? 6006,
      fetch: (request, server) => hostMissing(request) ?? app.fetch(request, server),
      // Generation can keep a response silent for minutes (long prompts, queued requests).
      idleTimeout: 0,
      // Engine requests carry whole prompts and images; vLLM applies its own limits.
      maxRequestBodySize: 256 * 1024 * 1024,
    });
    if (this.identity.open) {
      this.log.warn(
        "FLEET_TOKEN is not set: the agent API is open to anyone on this host (loopback only)",
      );
    }
    this.log.info("agent listening", {
      listen: `${this.listenHost}:${this.port}`,
      worker_id: this.workerId,
      worker_url: this.workerUrl,
      public_url: this.publicUrl,
      version: agentVersion,
    });
    const unreachable = this.unreachableWarning;
    if (unreachable) this.log.warn(unreachable);
    this.#manager = new ManagerClient({
      managerUrl: this.managerUrl,
      workerId: this.workerId,
      identity: this.identity,
      log: this.log,
      retryMaxMs: this.#options.registerRetryMaxMs ?? 30_000,
      registration: () => this.#registration(),
      heartbeat: () => this.#heartbeat(),
    });
    this.#manager.start();
    this.loads.start();
  }

  /**
   * Stops at once, without a drain: engines (SIGTERM, then SIGKILL after the grace),
   * registration and the server. With `keepEngines` (default: the `keepEngines` option,
   * `AGENT_KEEP_ENGINES=1`) the engines keep running and their records stay, for the next
   * agent to adopt (an agent upgrade). SIGTERM takes `shutdown()` instead.
   */
  stop(options: { keepEngines?: boolean } = {}): Promise<void> {
    this.#stopping ??= this.#stop(options.keepEngines ?? this.keepsEngines);
    return this.#stopping;
  }

  /** Whether a plain `stop()` leaves the engines running (`AGENT_KEEP_ENGINES=1`). */
  get keepsEngines(): boolean {
    return this.#options.keepEngines ?? false;
  }

  async #stop(keepEngines: boolean): Promise<void> {
    const engines = this.supervisor.reports().length;
    this.log.info("agent stopping", { engines, keep_engines: keepEngines });
    const manager = this.#manager?.stop();
    await this.stopEngines({ keepEngines });
    await manager;
    await this.#server?.stop(true);
    this.log.info("agent stopped");
  }

  /**
   * The one place a stopping agent stops its engines (SIGTERM, then SIGKILL after the grace,
   * or after `graceMs` when a shutdown deadline leaves less), or, with `keepEngines`, leaves
   * them running for the next agent to adopt.
   */
  async stopEngines(options: { keepEngines: boolean; graceMs?: number }): Promise<void> {
    this.loads.stop();
    if (options.keepEngines) {
      const engines = this.supervisor.reports().length;
      this.supervisor.detachAll();
      this.log.info("engines left running for the next agent to adopt", { engines });
      return;
    }
    await this.supervisor.stopAll(options.graceMs);
  }

  /** Requests in flight on the agent's server, streams included (0 before `run()`). */
  get inFlight(): number {
    return this.#server?.pendingRequests ?? 0;
  }

  /**
   * SIGTERM and Ctrl-C (agent/main.ts): drain, then stop within SHUTDOWN_TIMEOUT_S.
   * 1. Registration stops and the manager is told (`POST /v1/workers/{id}/drain`): the
   *    worker's routes leave the snapshot at once and it gets no new placements.
   * 2. The agent keeps serving while requests are in flight (streams included), and while
   *    routers that have not yet seen the new snapshot may still send some: the drain ends
   *    once nothing has been in flight for DRAIN_QUIET_MS, or at DRAIN_TIMEOUT_S.
   * 3. Within SHUTDOWN_TIMEOUT_S: the server stops accepting and closes what is still open,
   *    the engines stop, and it resolves with the exit code.
   */
  shutdown(reason: string, options: { keepEngines?: boolean } = {}): Promise<number> {
    this.#shuttingDown ??= this.#shutdown(reason, options.keepEngines ?? this.keepsEngines);
    return this.#shuttingDown;
  }

  async #shutdown(reason: string, keepEngines: boolean): Promise<number> {
    const drainMs = this.#options.drainTimeoutMs ?? 30_000;
    const quietMs = this.#options.drainQuietMs ?? 2000;
    const started = Date.now();
    this.log.info("agent draining", {
      reason,
      keep_engines: keepEngines,
      in_flight: this.inFlight,
      drain_timeout_s: drainMs / 1000,
    });
    // Registration first: a heartbeat or registration racing the drain call must not be the
    // last word (the manager keeps a draining worker draining on heartbeats anyway).
    const registration = this.#manager?.stop() ?? Promise.resolve();
    await within(registration, Math.min(2000, drainMs));
    if (this.#manager) {
      const told = await this.#manager.drain(
        { reason, timeout_s: drainMs / 1000 },
        Math.max(1000, Math.min(5000, drainMs)),
      );
      if (told.ok) {
        this.log.info("manager told: routes to this worker withdrawn", {
          routes_unserved: told.reply.routes_unserved,
          routes_version: told.reply.routes_version,
        });
      } else {
        this.log.warn(
          "could not tell the manager this agent is draining; its routes go when it stops heartbeating",
          { why: told.why },
        );
      }
    }
    const drained = await this.#quiet({ deadline: started + drainMs, quietMs });
    const left = this.inFlight;
    if (drained) this.log.info("drained", { waited_ms: Date.now() - started });
    else {
      this.log.warn("drain timeout: closing the requests still in flight", {
        in_flight: left,
        drain_timeout_s: drainMs / 1000,
      });
    }
    const timeoutMs = this.#options.shutdownTimeoutMs ?? 30_000;
    const deadline = Date.now() + timeoutMs;
    const server = this.#server;
    return new Promise<number>((resolve) => {
      void shutDown({
        log: this.log,
        timeoutMs,
        // The drain was the in-flight requests' time: what is left now is cut at once.
        server: server
          ? { close: () => bunServer(server).closeAll(), closeAll: () => {} }
          : { close: async () => {}, closeAll: () => {} },
        after: [
          {
            name: "engines",
            // SIGKILL in time for the group to be reaped before the deadline.
            run: () => {
              const remaining = deadline - Date.now();
              const grace = Math.max(remaining / 2, remaining - 2500);
              return this.stopEngines({
                keepEngines,
                graceMs: Math.min(this.#options.stopGraceMs ?? 30_000, Math.max(0, grace)),
              });
            },
          },
          { name: "registration", run: () => registration },
        ],
        exit: (code) => {
          this.log.info("agent stopped", { code, took_ms: Date.now() - started });
          resolve(code);
        },
      });
    });
  }

  /** Resolves true once nothing has been in flight for `quietMs`, false at the deadline. */
  async #quiet(options: { deadline: number; quietMs: number }): Promise<boolean> {
    let quietSince = Date.now();
    for (;;) {
      const now = Date.now();
      if (this.inFlight > 0) quietSince = now;
      else if (now - quietSince >= options.quietMs) return true;
      if (now >= options.deadline) return false;
      await Bun.sleep(Math.min(50, Math.max(1, options.deadline - now)));
    }
  }

  async refreshGpus(): Promise<GpuInfo> {
    this.#gpuInfo = await discoverGpus({ bin: this.#options.nvidiaSmiBin, env: this.#env });
    return this.#gpuInfo;
  }

  /** The registration body as the manager would receive it now. */
  async #registration(): Promise<WorkerRegistrationInput> {
    const gpuInfo = await this.refreshGpus();
    return {
      worker_id: this.workerId,
      worker_url: this.workerUrl,
      public_worker_url: this.publicUrl,
      gpu_info: gpuInfo,
      instances: this.supervisor.reports(),
      agent_version: agentVersion,
    };
  }

  async #heartbeat(): Promise<Heartbeat> {
    const gpuInfo = await this.refreshGpus();
    return { gpu_info: gpuInfo, instances: this.#withLoad(this.supervisor.reports()) };
  }

  /** Reports with each ready engine's last load (the manager keeps it for the route snapshot). */
  #withLoad(reports: InstanceReport[]): InstanceReport[] {
    for (const report of reports) {
      const load = this.loads.get(report.alias);
      if (load) report.load = load;
    }
    return reports;
  }
}

/**
 * The marker of this agent's engines: a hash of its data directory's absolute path, so that
 * two agents on one host (two data directories) never take each other's engines for their own.
 */
export function engineOwner(dataDir: string): string {
  return createHash("sha256").update(resolve(dataDir)).digest("hex").slice(0, 16);
}
