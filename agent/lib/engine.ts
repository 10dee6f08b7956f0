import type { Subprocess } from "bun";
import type { Logger } from "../../kit/log.ts";
import type { InstanceReport, InstanceSpec, InstanceStatus } from "../../protocol/index.ts";
import { aliasVariable, type EngineRecord } from "./engine-records.ts";
import { LineBuffer } from "./log-buffer.ts";
import type { PortLeaser } from "./ports.ts";
import { bootId, groupHoldsSocket, listeningInodes, readStat } from "./procfs.ts";
import { LaunchProgress } from "./progress.ts";

/** How an engine is supervised; every duration in milliseconds. */
export type EngineTimings = {
  /** Longest wait for the first `GET /health` → 200 (vLLM loads for 10+ minutes). */
  startupTimeoutMs: number;
  /** SIGTERM to the process group, then SIGKILL after this long. */
  stopGraceMs: number;
  /** First restart delay after a crash; doubles per consecutive crash... */
  restartBackoffMs: number;
  /** ...up to this cap. */
  restartBackoffMaxMs: number;
  /** Readiness polling interval while starting. */
  healthPollMs: number;
  /**
   * How long an adopted engine that had been ready may take to answer again before it is
   * stopped (one still loading gets the rest of its startup timeout, at least this).
   */
  adoptGraceMs: number;
};

export type EngineOptions = EngineTimings & {
  spec: InstanceSpec;
  vllmBin: string;
  /** The environment the engine inherits, before CUDA_* are set. */
  baseEnv: Record<string, string>;
  /** Where a launch whose port answers as another process gets its next port. */
  ports: Pick<PortLeaser, "lease" | "release">;
  log: Logger;
  /** Called on every status change (the agent sends an early heartbeat). */
  onChange: () => void;
  /** Called once the engine will never run again (stopped or failed): frees its port. */
  onRetired: (engine: Engine) => void;
};

/** Lines of log quoted in `last_error`. */
const errorTailLines = 20;
/** A crash this long after the engine became ready starts the backoff from scratch. */
const backoffResetMs = 10 * 60_000;
/** Ports tried in one launch whose port turned out to answer as another process. */
const maxPortMoves = 3;

/**
 * The process behind an engine: a child this agent spawned, or one a previous agent spawned
 * and this one adopted (not its child: it learns of the exit by watching /proc).
 */
type EngineProcess = {
  readonly pid: number;
  /** Launched by a previous agent. */
  readonly adopted: boolean;
  /** Resolves with how it ended ("exited with code 1") once the process is gone. */
  readonly exited: Promise<string>;
  running(): boolean;
  /** Stops watching an adopted process (the agent is leaving it running). */
  release(): void;
};

function childProcess(proc: Subprocess, drained: Promise<unknown>): EngineProcess {
  return {
    pid: proc.pid,
    adopted: false,
    exited: proc.exited.then(async (code) => {
      // Let the pipes drain so that the log tail includes the engine's last words.
      await Promise.race([drained, Bun.sleep(500)]);
      return proc.signalCode ? `was killed by ${proc.signalCode}` : `exited with code ${code}`;
    }),
    running: () => proc.exitCode === null && proc.signalCode === null,
    release: () => {},
  };
}

function adoptedProcess(pid: number, startTime: string, pollMs: number): EngineProcess {
  let running = true;
  let resolve: (how: string) => void = () => {};
  const exited = new Promise<string>((done) => {
    resolve = done;
  });
  const timer = setInterval(() => {
    const stat = readStat(pid);
    if (stat && stat.startTime === startTime && stat.state !== "Z") return;
    running = false;
    clearInterval(timer);
    resolve("exited (adopted: its exit status went to the agent that launched it)");
  }, pollMs);
  return {
    pid,
    adopted: true,
    exited,
    running: () => running,
    release: () => clearInterval(timer),
  };
}

let cachedBootId: string | null | undefined;
function currentBootId(): string | null {
  cachedBootId ??= bootId() ?? null;
  return cachedBootId;
}

/** `VLLM_BIN serve MODEL --host 127.0.0.1 --port P --served-model-name ALIAS [options] [extra]`. */
export function engineArgv(vllmBin: string, spec: InstanceSpec, port: number): string[] {
  const argv = [vllmBin, "serve", spec.model_name, "--host", "127.0.0.1", "--port", String(port)];
  argv.push("--served-model-name", spec.alias);
  if (spec.max_model_len !== undefined) argv.push("--max-model-len", String(spec.max_model_len));
  if (spec.gpu_memory_utilization !== undefined) {
    argv.push("--gpu-memory-utilization", String(spec.gpu_memory_utilization));
  }
  if (spec.tensor_parallel_size !== undefined) {
    argv.push("--tensor-parallel-size", String(spec.tensor_parallel_size));
  }
  if (spec.dtype !== undefined) argv.push("--dtype", spec.dtype);
  argv.push(...spec.extra_args);
  return argv;
}

/**
 * The engine's environment: the agent's own, with `CUDA_VISIBLE_DEVICES` set to the
 * integer GPU ids (UUIDs crash vLLM) in PCI bus order, so that they match nvidia-smi.
 * With no GPU ids the variable is inherited unchanged.
 */
export function engineEnv(base: Record<string, string>, gpuIds: number[]): Record<string, string> {
  const env: Record<string, string> = { ...base, CUDA_DEVICE_ORDER: "PCI_BUS_ID" };
  if (gpuIds.length > 0) env.CUDA_VISIBLE_DEVICES = gpuIds.join(",");
  // Python block-buffers a piped stdout; unbuffered output keeps the log tail current.
  env.PYTHONUNBUFFERED ??= "1";
  return env;
}

/**
 * One supervised `vllm serve` process: launched in its own process group, polled until
 * `/health` answers 200, restarted with capped exponential backoff if it dies after it was
 * ready, stopped with SIGTERM to the group then SIGKILL.
 */
export class Engine {
  readonly spec: InstanceSpec;
  readonly logs = new LineBuffer();
  /** The current launch's phase, read from the engine's log (agent/lib/progress.ts). */
  readonly progress: LaunchProgress;
  /** Whether this agent read the current launch's log (not so for an adopted engine). */
  #progressKnown = false;
  status: InstanceStatus = "starting";
  port: number | null = null;
  restarts = 0;
  lastError: string | null = null;
  startedAt: Date | null = null;
  readyAt: Date | null = null;
  updatedAt = new Date();
  /** The log tail of the first crash, pinned so that later restarts cannot rotate it out. */
  firstFailure: { atLine: number; text: string } | null = null;

  readonly #options: EngineOptions;
  #proc: EngineProcess | null = null;
  /** The running process's argv and start time (/proc), for the engine records. */
  #argv: string[] | null = null;
  #startTime: string | null = null;
  #portMoves = 0;
  #adoptedAt: number | null = null;
  #everReady = false;
  #retiring = false;
  #consecutiveCrashes = 0;
  #restartTimer: ReturnType<typeof setTimeout> | null = null;
  #stopping: Promise<void> | null = null;
  #generation = 0;
  #retired = false;

  constructor(options: EngineOptions) {
    this.#options = options;
    this.spec = options.spec;
    // A phase change is worth an early heartbeat, as a status change is.
    this.progress = new LaunchProgress({ onPhase: () => options.onChange() });
  }

  get pid(): number | null {
    return this.#proc?.pid ?? null;
  }

  /** Launches the engine on `port` (leased by the caller); false if it was stopped meanwhile. */
  start(port: number): boolean {
    if (this.#retiring) return false;
    this.port = port;
    this.#launch();
    return true;
  }

  /**
   * Takes over an engine a previous agent launched, whose record matched the live process
   * (agent/lib/adoption.ts). Resolves after the first check of its port: ready when it
   * answers as itself, else `starting` until it does; one that does not answer within the
   * grace (or, still loading, its startup timeout) is stopped, its whole group.
   */
  async adopt(record: EngineRecord): Promise<void> {
    const { adoptGraceMs, startupTimeoutMs, healthPollMs, log } = this.#options;
    this.port = record.port;
    this.#argv = record.argv;
    this.#startTime = record.start_time;
    this.startedAt = new Date(record.started_at);
    // Its log went to the previous agent: this one cannot tell how far its launch came.
    this.#progressKnown = false;
    this.readyAt = record.ready_at ? new Date(record.ready_at) : null;
    this.restarts = record.restarts;
    this.#everReady = record.ready_at !== null;
    const proc = adoptedProcess(record.pid, record.start_time, Math.max(50, healthPollMs));
    this.#adoptedAt = Date.now();
    this.#proc = proc;
    const generation = ++this.#generation;
    this.logs.push(
      `[agent] adopted pid ${record.pid} on port ${record.port} after an agent restart; what it printed before and prints from now on went to the previous agent and is not shown here`,
    );
    log.info("engine adopted", { alias: this.spec.alias, pid: record.pid, port: record.port });
    void proc.exited.then((how) => this.#onExit(proc, generation, how));
    const loadingUntil = this.startedAt.getTime() + startupTimeoutMs;
    const deadline = this.#everReady
      ? Date.now() + adoptGraceMs
      : Math.max(Date.now() + adoptGraceMs, loadingUntil);
    this.#setStatus("starting");
    const first = await this.#probe(proc.pid);
    if (!this.#isCurrent(proc, generation)) return;
    if (first === "ready") {
      this.#onReady();
      return;
    }
    void this.#awaitReady(proc, generation, deadline);
  }

  /**
   * Leaves the engine running and stops watching it (an agent stopping for an upgrade: the
   * next agent adopts it from the records, which are left as they are).
   */
  detach(): void {
    this.#retiring = true;
    this.#generation++;
    if (this.#restartTimer) clearTimeout(this.#restartTimer);
    this.#restartTimer = null;
    this.#proc?.release();
  }

  /** What a restarted agent needs to adopt this engine, or null when no process runs. */
  record(): EngineRecord | null {
    const proc = this.#proc;
    if (!proc?.running() || this.port === null || !this.#startTime || !this.#argv) return null;
    return {
      alias: this.spec.alias,
      pid: proc.pid,
      pgid: proc.pid,
      start_time: this.#startTime,
      boot_id: currentBootId(),
      port: this.port,
      argv: this.#argv,
      spec: this.spec,
      started_at: (this.startedAt ?? new Date()).toISOString(),
      ready_at: this.#everReady && this.readyAt ? this.readyAt.toISOString() : null,
      restarts: this.restarts,
    };
  }

  /** Fails the instance before any process ran (no port, bad executable). */
  failBeforeStart(message: string): void {
    this.lastError = message;
    this.#setStatus("failed");
    this.#retire();
  }

  report(): InstanceReport {
    return {
      alias: this.spec.alias,
      model_name: this.spec.model_name,
      status: this.status,
      port: this.port,
      gpu_ids: this.spec.gpu_ids,
      pid: this.pid,
      restarts: this.restarts,
      last_error: this.lastError,
      started_at: this.startedAt?.toISOString() ?? null,
      ready_at: this.readyAt?.toISOString() ?? null,
      updated_at: this.updatedAt.toISOString(),
      spec: this.spec,
      ...(this.#progressKnown ? { progress: this.progress.snapshot() } : {}),
    };
  }

  /**
   * Stops the engine: SIGTERM to its process group, SIGKILL after the grace period
   * (ENGINE_STOP_GRACE_S, or `graceMs` when a shutdown deadline leaves less).
   */
  stop(graceMs = this.#options.stopGraceMs): Promise<void> {
    this.#stopping ??= this.#stop(graceMs);
    return this.#stopping;
  }

  /**
   * An operator's restart (`POST /v1/instances/{alias}/restart`): stops the running process,
   * its whole group as `stop` does, then launches it again with the same spec on the same
   * port. The engine stays (its port lease, log, counters), so the agent reports it all along:
   * `stopping`, then `starting` with a new launch's progress, then `ready`. It counts in
   * `restarts`, as a crash restart does, but not toward the crash backoff. Only a ready engine
   * restarts: the answer is why not otherwise (null once the restart has begun). A `stop`
   * during the restart wins: nothing is launched again.
   */
  restart(): string | null {
    const alias = this.spec.alias;
    const proc = this.#proc;
    if (this.#retiring || this.#stopping) return `instance ${alias} is stopping`;
    if (this.status !== "ready" || !proc || this.port === null) {
      return `instance ${alias} is ${this.status}: only a ready engine can be restarted`;
    }
    // From here on the old process's exit and readiness checks are not this engine's news.
    this.#generation++;
    this.restarts++;
    this.logs.push(
      `[agent] restart requested: stopping pid ${proc.pid}, then launching again on port ${this.port}`,
    );
    this.#options.log.info("engine restart requested", { alias, pid: proc.pid, port: this.port });
    this.#setStatus("stopping");
    void (async () => {
      await terminateGroup(proc, this.#options.stopGraceMs);
      if (this.#retiring || this.#proc !== proc) return;
      this.#proc = null;
      this.#launch();
    })();
    return null;
  }

  async #stop(graceMs: number): Promise<void> {
    this.#retiring = true;
    if (this.#restartTimer) clearTimeout(this.#restartTimer);
    this.#restartTimer = null;
    const proc = this.#proc;
    if (proc?.running()) {
      this.#setStatus("stopping");
      await terminateGroup(proc, graceMs);
    } else if (proc) {
      killGroup(proc.pid, "SIGKILL");
    }
    this.#proc = null;
    this.#setStatus("stopped");
    this.#options.log.info("engine stopped", { alias: this.spec.alias });
    this.#retire();
  }

  #launch(): void {
    const port = this.port;
    if (port === null) return;
    const { spec, vllmBin, baseEnv, log } = this.#options;
    const argv = engineArgv(vllmBin, spec, port);
    const generation = ++this.#generation;
    let child: Subprocess<"ignore", "pipe", "pipe">;
    try {
      child = Bun.spawn(argv, {
        env: { ...engineEnv(baseEnv, spec.gpu_ids), [aliasVariable]: spec.alias },
        stdin: "ignore",
        stdout: "pipe",
        stderr: "pipe",
        // setsid(): the engine leads its own process group, so that stopping it reaches the
        // EngineCore and worker processes vLLM forks, and a Ctrl-C on the agent's terminal
        // does not hit the engines before the agent can stop them in order.
        detached: true,
      });
    } catch (error) {
      const message = `could not start ${vllmBin}: ${error instanceof Error ? error.message : String(error)}`;
      this.logs.push(message);
      if (this.#everReady) {
        this.#onCrash(message);
      } else {
        this.failBeforeStart(message);
      }
      return;
    }
    const echo = (line: string) => {
      if (this.#generation === generation) this.progress.line(line);
      log.debug(line, { engine: spec.alias });
    };
    const pumped = Promise.all([
      this.logs.pump(child.stdout, echo),
      this.logs.pump(child.stderr, echo),
    ]);
    const proc = childProcess(child, pumped);
    this.#proc = proc;
    this.#argv = argv;
    // Set at fork, unchanged by exec: with the pid it names this process for as long as it lives.
    this.#startTime = readStat(proc.pid)?.startTime ?? null;
    this.startedAt = new Date();
    this.progress.begin(this.startedAt);
    this.#progressKnown = true;
    this.#setStatus("starting");
    log.info("engine started", { alias: spec.alias, pid: proc.pid, port, model: spec.model_name });
    void this.#awaitReady(proc, generation, Date.now() + this.#options.startupTimeoutMs);
    void proc.exited.then((how) => this.#onExit(proc, generation, how));
  }

  async #awaitReady(proc: EngineProcess, generation: number, deadline: number): Promise<void> {
    const { healthPollMs } = this.#options;
    const adopted = proc.adopted;
    while (this.#isCurrent(proc, generation) && this.status === "starting") {
      if (Date.now() > deadline) {
        if (adopted) this.#onAdoptTimeout(proc);
        else this.#onStartupTimeout(proc);
        return;
      }
      const result = await this.#probe(proc.pid);
      if (!this.#isCurrent(proc, generation)) return;
      if (result === "ready") {
        this.#onReady();
        return;
      }
      if (typeof result === "object" && !adopted && this.spec.port === undefined) {
        await this.#movePort(proc, result.foreign);
        return;
      }
      await Bun.sleep(healthPollMs);
    }
  }

  /**
   * Whether the engine answers on its port as itself: `/health` is 200, the listening socket
   * belongs to a process of the engine's group (read from /proc where there is one), and it
   * serves the alias as its model name. "down" while nothing answers (vLLM listens only once
   * loaded); `foreign` when something else answers there.
   */
  async #probe(pgid: number): Promise<"ready" | "down" | { foreign: string }> {
    const port = this.port;
    if (port === null) return "down";
    const base = `http://127.0.0.1:${port}`;
    const timeout = Math.max(1000, this.#options.healthPollMs);
    const get = async (path: string) =>
      fetch(`${base}${path}`, {
        signal: AbortSignal.timeout(timeout),
        proxy: false,
      } as RequestInit);
    try {
      const health = await get("/health");
      await health.body?.cancel();
      if (health.status !== 200) return "down";
    } catch {
      // Connection refused until the model is loaded: vLLM listens only when ready.
      return "down";
    }
    const inodes = listeningInodes(port);
    const ownSocket = inodes === undefined ? undefined : groupHoldsSocket(pgid, inodes);
    if (ownSocket === false) {
      return {
        foreign: `port ${port} answers, but no process of the engine (pid ${pgid}) listens on it`,
      };
    }
    let served: string[];
    try {
      const models = await get("/v1/models");
      // An engine started with --api-key closes /v1: the socket check above has to do.
      if (models.status === 401 || models.status === 403) {
        await models.body?.cancel();
        return ownSocket ? "ready" : "down";
      }
      const body = (await models.json()) as { data?: { id?: unknown }[] };
      served = (body.data ?? []).map((model) => String(model.id));
    } catch {
      return "down";
    }
    if (served.includes(this.spec.alias)) return "ready";
    if (ownSocket) return "down";
    return {
      foreign: `port ${port} serves ${served.length > 0 ? served.join(", ") : "no model"}, not ${this.spec.alias}`,
    };
  }

  /**
   * Something other than the engine answers on its port (an orphan, another agent's engine,
   * any process that took the port after the bind test): the engine would never get it, and
   * the port must not look ready. Stop this launch and start it again on another port.
   */
  async #movePort(proc: EngineProcess, why: string): Promise<void> {
    const { ports, log } = this.#options;
    const old = this.port;
    this.#generation++;
    this.#proc = null;
    killGroup(proc.pid, "SIGKILL");
    this.#portMoves++;
    log.warn("engine port taken by another process; launching on another port", {
      alias: this.spec.alias,
      port: old,
      why,
    });
    this.logs.push(`[agent] ${why}; launching on another port`);
    const next = this.#portMoves <= maxPortMoves ? await ports.lease() : null;
    if (old !== null) ports.release(old);
    this.port = null;
    if (this.#retiring) {
      if (next !== null) ports.release(next);
      return;
    }
    if (next === null) {
      this.lastError = `${why}; ${this.#portMoves > maxPortMoves ? `gave up after ${maxPortMoves} other ports` : "no other free port in the range"}`;
      this.#setStatus("failed");
      this.#retire();
      return;
    }
    this.port = next;
    this.#launch();
  }

  #isCurrent(proc: EngineProcess, generation: number): boolean {
    return this.#proc === proc && this.#generation === generation && proc.running();
  }

  #onReady(): void {
    // An adopted engine that had been ready keeps its time: the crash backoff counts from it.
    if (!(this.#proc?.adopted && this.#everReady && this.readyAt)) this.readyAt = new Date();
    this.#everReady = true;
    this.#portMoves = 0;
    this.progress.ready();
    this.#setStatus("ready");
    this.#options.log.info("engine ready", { alias: this.spec.alias, port: this.port });
  }

  #onAdoptTimeout(proc: EngineProcess): void {
    const seconds = Math.round((Date.now() - (this.#adoptedAt ?? Date.now())) / 1000);
    const message = `adopted engine (pid ${proc.pid}) did not answer as itself on port ${this.port} within ${seconds}s; its process group was stopped`;
    this.#options.log.warn("adopted engine did not answer; stopping it", {
      alias: this.spec.alias,
      pid: proc.pid,
      port: this.port,
    });
    this.lastError = message;
    this.logs.push(`[agent] ${message}`);
    this.#retiring = true;
    this.#setStatus("failed");
    void terminateGroup(proc, this.#options.stopGraceMs).then(() => this.#retire());
  }

  #onStartupTimeout(proc: EngineProcess): void {
    const seconds = Math.round(this.#options.startupTimeoutMs / 1000);
    const message = `engine not ready after ${seconds}s (startup timeout)${this.#tailText()}`;
    this.#options.log.warn("engine startup timed out", { alias: this.spec.alias, seconds });
    if (this.#everReady) {
      // A restart that hangs counts as another crash: kill it and back off.
      this.lastError = message;
      killGroup(proc.pid, "SIGKILL");
      return;
    }
    this.lastError = message;
    this.#retiring = true;
    this.#setStatus("failed");
    void terminateGroup(proc, this.#options.stopGraceMs).then(() => this.#retire());
  }

  #onExit(proc: EngineProcess, generation: number, how: string): void {
    if (this.#generation !== generation) return;
    // vLLM's children may outlive the API process: never leave them holding GPU memory.
    killGroup(proc.pid, "SIGKILL");
    if (this.#retiring) return;
    if (!this.#everReady) {
      // Another process took the port between the bind test and the engine's bind.
      const taken = this.#portTakenByAnother(proc.pid);
      if (taken && !proc.adopted && this.spec.port === undefined) {
        void this.#movePort(proc, taken);
        return;
      }
      this.lastError = `engine ${how} during startup${this.#tailText()}`;
      this.#options.log.warn("engine failed during startup", { alias: this.spec.alias, how });
      this.#proc = null;
      this.#setStatus("failed");
      this.#retire();
      return;
    }
    this.#onCrash(`engine ${how}${this.#tailText()}`);
  }

  #onCrash(message: string): void {
    const { restartBackoffMs, restartBackoffMaxMs, log } = this.#options;
    if (this.readyAt && Date.now() - this.readyAt.getTime() > backoffResetMs) {
      this.#consecutiveCrashes = 0;
    }
    const delay = Math.min(restartBackoffMaxMs, restartBackoffMs * 2 ** this.#consecutiveCrashes);
    this.#consecutiveCrashes++;
    this.restarts++;
    this.lastError = message;
    this.firstFailure ??= { atLine: this.logs.total, text: this.logs.tail(50).join("\n") };
    this.logs.push(`[agent] ${message.split("\n")[0]}; restart ${this.restarts} in ${delay} ms`);
    log.warn("engine crashed; restarting", {
      alias: this.spec.alias,
      restarts: this.restarts,
      delay_ms: delay,
    });
    this.#proc = null;
    this.#setStatus("starting");
    this.#restartTimer = setTimeout(() => {
      this.#restartTimer = null;
      if (!this.#retiring) this.#launch();
    }, delay);
  }

  /** Why the engine's port is another process's now, or undefined. */
  #portTakenByAnother(pgid: number): string | undefined {
    if (this.port === null) return undefined;
    const inodes = listeningInodes(this.port);
    if (!inodes || inodes.size === 0 || groupHoldsSocket(pgid, inodes)) return undefined;
    return `port ${this.port} is held by another process`;
  }

  #tailText(): string {
    const tail = this.logs.tail(errorTailLines);
    return tail.length > 0 ? `; last log lines:\n${tail.join("\n")}` : "";
  }

  #setStatus(status: InstanceStatus): void {
    this.status = status;
    this.updatedAt = new Date();
    this.#options.onChange();
  }

  #retire(): void {
    if (this.#retired) return;
    this.#retired = true;
    this.#retiring = true;
    this.#options.onRetired(this);
  }
}

/** Signals a process group; a group that is already gone is not an error. */
export function killGroup(pid: number, signal: NodeJS.Signals | 0): boolean {
  try {
    process.kill(-pid, signal);
    return true;
  } catch {
    return false;
  }
}

/** SIGTERM to the group, SIGKILL after `graceMs`, then waits until the group is gone. */
async function terminateGroup(proc: EngineProcess, graceMs: number): Promise<void> {
  killGroup(proc.pid, "SIGTERM");
  const exitedInTime = await Promise.race([
    proc.exited.then(() => true),
    Bun.sleep(graceMs).then(() => false),
  ]);
  if (!exitedInTime || killGroup(proc.pid, 0)) {
    // Either the leader ignored SIGTERM or it left children behind in its group.
    if (exitedInTime) await waitGroupGone(proc.pid, Math.min(graceMs, 2000));
    killGroup(proc.pid, "SIGKILL");
  }
  await proc.exited;
  await waitGroupGone(proc.pid, 2000);
}

async function waitGroupGone(pid: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (killGroup(pid, 0) && Date.now() < deadline) await Bun.sleep(20);
}
