import type { Subprocess } from "bun";
import type { Logger } from "../../kit/log.ts";
import type { InstanceReport, InstanceSpec, InstanceStatus } from "../../protocol/index.ts";
import { LineBuffer } from "./log-buffer.ts";

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
};

export type EngineOptions = EngineTimings & {
  spec: InstanceSpec;
  vllmBin: string;
  /** The environment the engine inherits, before CUDA_* are set. */
  baseEnv: Record<string, string>;
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
  #proc: Subprocess<"ignore", "pipe", "pipe"> | null = null;
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
    };
  }

  /** Stops the engine: SIGTERM to its process group, SIGKILL after the grace period. */
  stop(): Promise<void> {
    this.#stopping ??= this.#stop();
    return this.#stopping;
  }

  async #stop(): Promise<void> {
    this.#retiring = true;
    if (this.#restartTimer) clearTimeout(this.#restartTimer);
    this.#restartTimer = null;
    const proc = this.#proc;
    if (proc && proc.exitCode === null && proc.signalCode === null) {
      this.#setStatus("stopping");
      await terminateGroup(proc, this.#options.stopGraceMs);
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
    let proc: Subprocess<"ignore", "pipe", "pipe">;
    try {
      proc = Bun.spawn(argv, {
        env: engineEnv(baseEnv, spec.gpu_ids),
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
    this.#proc = proc;
    this.startedAt = new Date();
    this.#setStatus("starting");
    log.info("engine started", { alias: spec.alias, pid: proc.pid, port, model: spec.model_name });
    const echo = (line: string) => log.debug(line, { engine: spec.alias });
    const pumped = Promise.all([
      this.logs.pump(proc.stdout, echo),
      this.logs.pump(proc.stderr, echo),
    ]);
    void this.#awaitReady(proc, generation);
    void proc.exited.then(async (code) => {
      // Let the pipes drain so that the log tail includes the engine's last words.
      await Promise.race([pumped, Bun.sleep(500)]);
      this.#onExit(proc, generation, code);
    });
  }

  async #awaitReady(proc: Subprocess, generation: number): Promise<void> {
    const { startupTimeoutMs, healthPollMs } = this.#options;
    const deadline = Date.now() + startupTimeoutMs;
    const url = `http://127.0.0.1:${this.port}/health`;
    while (this.#isCurrent(proc, generation) && this.status === "starting") {
      if (Date.now() > deadline) {
        this.#onStartupTimeout(proc);
        return;
      }
      try {
        const response = await fetch(url, {
          signal: AbortSignal.timeout(Math.max(1000, healthPollMs)),
          proxy: false,
        } as RequestInit);
        await response.body?.cancel();
        if (response.status === 200 && this.#isCurrent(proc, generation)) {
          this.#onReady();
          return;
        }
      } catch {
        // Connection refused until the model is loaded: vLLM listens only when ready.
      }
      await Bun.sleep(healthPollMs);
    }
  }

  #isCurrent(proc: Subprocess, generation: number): boolean {
    return this.#proc === proc && this.#generation === generation && proc.exitCode === null;
  }

  #onReady(): void {
    this.#everReady = true;
    this.readyAt = new Date();
    this.#setStatus("ready");
    this.#options.log.info("engine ready", { alias: this.spec.alias, port: this.port });
  }

  #onStartupTimeout(proc: Subprocess): void {
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

  #onExit(proc: Subprocess, generation: number, code: number | null): void {
    if (this.#generation !== generation) return;
    // vLLM's children may outlive the API process: never leave them holding GPU memory.
    killGroup(proc.pid, "SIGKILL");
    if (this.#retiring) return;
    const how = proc.signalCode ? `was killed by ${proc.signalCode}` : `exited with code ${code}`;
    if (!this.#everReady) {
      this.lastError = `engine ${how} during startup${this.#tailText()}`;
      this.#options.log.warn("engine failed during startup", { alias: this.spec.alias, code });
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
async function terminateGroup(proc: Subprocess, graceMs: number): Promise<void> {
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
