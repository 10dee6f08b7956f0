import type { Logger } from "../../kit/log.ts";
import type { InstanceReport, InstanceSpec } from "../../protocol/index.ts";
import { checkRecord, findMarkedGroups, stopGroup } from "./adoption.ts";
import { Engine, type EngineTimings } from "./engine.ts";
import { type EngineRecord, type EngineRecords, ownerVariable } from "./engine-records.ts";
import type { PortLeaser } from "./ports.ts";
import { procAvailable } from "./procfs.ts";

export type SupervisorOptions = EngineTimings & {
  vllmBin: string;
  baseEnv: Record<string, string>;
  ports: PortLeaser;
  log: Logger;
  onChange?: () => void;
  /**
   * The engine records (AGENT_DATA_DIR/engines.json) and the marker every engine carries in
   * its environment; without them nothing is recorded or adopted.
   */
  records?: { store: EngineRecords; owner: string };
};

export type LaunchResult =
  | { kind: "created"; engine: Engine }
  | { kind: "existing"; engine: Engine }
  | { kind: "conflict"; engine: Engine; reason: string }
  | { kind: "port_unavailable"; port: number | null };

/** The engines on this host, by alias. */
export class Supervisor {
  readonly #engines = new Map<string, Engine>();
  readonly #options: SupervisorOptions;
  /** Engines found running without a record being stopped: launches wait for their GPUs. */
  #sweeping: Promise<void> = Promise.resolve();
  /**
   * Set while adopting (the file is rewritten once all records are checked, so a crash
   * meanwhile loses none) and once the agent leaves its engines running (they stay as they are).
   */
  #frozen = false;
  #saveFailed = false;

  constructor(options: SupervisorOptions) {
    this.#options = options;
  }

  /**
   * At startup: adopts every recorded engine that is still the process it was (same pid,
   * start time, process group and arguments) and answers on its port as itself; drops the
   * records that no longer match; and stops every process group carrying this agent's marker
   * that no record adopted (in the background; launches wait for it). Resolves once each
   * adopted engine has been checked once, so the first registration reports them.
   */
  async adopt(): Promise<{ adopted: string[]; dropped: string[]; stopping: number }> {
    const records = this.#options.records;
    const result = { adopted: [] as string[], dropped: [] as string[], stopping: 0 };
    if (!records) return result;
    const { log, ports } = this.#options;
    if (!procAvailable()) {
      log.warn("no /proc on this system: engines of a previous agent cannot be adopted");
      return result;
    }
    const loaded = records.store.load();
    for (const problem of loaded.problems) log.warn("engine records", { problem });
    const keep = new Set<number>();
    this.#frozen = true;
    try {
      const adopting: Promise<void>[] = [];
      for (const record of loaded.records) {
        const check = checkRecord(record);
        if (!check.ok || this.#engines.has(record.alias) || !ports.reserve(record.port)) {
          const why = check.ok ? `alias or port ${record.port} already in use` : check.why;
          log.info("engine record no longer matches; dropped", { alias: record.alias, why });
          result.dropped.push(record.alias);
          continue;
        }
        const engine = this.#newEngine(record.spec);
        this.#engines.set(record.alias, engine);
        keep.add(record.pgid);
        result.adopted.push(record.alias);
        adopting.push(engine.adopt(record));
      }
      await Promise.all(adopting);
    } finally {
      this.#frozen = false;
    }
    this.#save();
    const orphans = findMarkedGroups(records.owner, keep);
    result.stopping = orphans.length;
    this.#sweeping = Promise.all(
      orphans.map(async (group) => {
        log.warn("stopping an engine this agent launched but has no record of", {
          alias: group.alias,
          pgid: group.pgid,
          pids: group.pids,
        });
        await stopGroup(group.pgid, this.#options.stopGraceMs);
      }),
    ).then(() => {});
    return result;
  }

  /** Resolves once the engines found without a record at startup are gone. */
  swept(): Promise<void> {
    return this.#sweeping;
  }

  /**
   * Leaves every engine running and stops supervising them (an agent stopping for an
   * upgrade): the records stay for the next agent, which adopts them.
   */
  detachAll(): void {
    this.#save();
    this.#frozen = true;
    for (const engine of this.#engines.values()) engine.detach();
  }

  /** Rewrites the engine records from the engines that have a running process. */
  #save(): void {
    const records = this.#options.records;
    if (!records || this.#frozen) return;
    const live: EngineRecord[] = [];
    for (const engine of this.#engines.values()) {
      const record = engine.record();
      if (record) live.push(record);
    }
    try {
      records.store.save(live);
      this.#saveFailed = false;
    } catch (error) {
      // Engines keep running; only adoption after a restart depends on the file.
      if (!this.#saveFailed) {
        this.#options.log.warn("cannot write the engine records", {
          path: records.store.path,
          error: String(error),
        });
      }
      this.#saveFailed = true;
    }
  }

  #newEngine(spec: InstanceSpec): Engine {
    const { ports, onChange, records } = this.#options;
    return new Engine({
      ...this.#options,
      baseEnv: records
        ? { ...this.#options.baseEnv, [ownerVariable]: records.owner }
        : this.#options.baseEnv,
      spec,
      onChange: () => {
        this.#save();
        onChange?.();
      },
      // Each engine holds its own lease and gives it back exactly once, when it retires.
      onRetired: (retired) => {
        if (retired.port !== null) ports.release(retired.port);
      },
    });
  }

  get(alias: string): Engine | undefined {
    return this.#engines.get(alias);
  }

  reports(): InstanceReport[] {
    return [...this.#engines.values()].map((engine) => engine.report());
  }

  /**
   * Launches `spec` unless its alias already runs. The same spec again answers with the
   * running engine (a manager retrying, or adopting after its own restart); a different
   * spec for a live alias is a conflict. A failed or stopped alias is replaced.
   */
  async launch(spec: InstanceSpec): Promise<LaunchResult> {
    const current = this.#engines.get(spec.alias);
    if (current && (current.status === "starting" || current.status === "ready")) {
      if (sameSpec(current.spec, spec)) return { kind: "existing", engine: current };
      return {
        kind: "conflict",
        engine: current,
        reason: `instance ${spec.alias} is already ${current.status} with a different spec; delete it first`,
      };
    }
    if (current?.status === "stopping") {
      return { kind: "conflict", engine: current, reason: `instance ${spec.alias} is stopping` };
    }

    const { ports, log } = this.#options;
    const engine = this.#newEngine(spec);
    // Claim the alias before the first await so that a concurrent launch sees it.
    this.#engines.set(spec.alias, engine);
    // An engine found running without a record still holds its GPU memory and port.
    await this.#sweeping;
    const port = spec.port ?? null;
    const leased =
      port === null ? await ports.lease() : (await ports.leaseExact(port)) ? port : null;
    if (leased === null) {
      this.#engines.delete(spec.alias);
      if (current) this.#engines.set(spec.alias, current);
      log.warn("no engine port available", { alias: spec.alias, port });
      return { kind: "port_unavailable", port };
    }
    // A DELETE that arrived while the port was being leased wins: never start it then.
    if (!engine.start(leased)) ports.release(leased);
    return { kind: "created", engine };
  }

  /**
   * Restarts a ready engine in place (same spec, GPUs and port; `Engine.restart`). The reply
   * is its report as the restart begins (`stopping`, `restarts` counted), or why not.
   */
  restart(
    alias: string,
  ):
    | { kind: "restarting"; engine: Engine }
    | { kind: "not_found" }
    | { kind: "conflict"; reason: string } {
    const engine = this.#engines.get(alias);
    if (!engine) return { kind: "not_found" };
    const refused = engine.restart();
    if (refused !== null) return { kind: "conflict", reason: refused };
    return { kind: "restarting", engine };
  }

  /** Stops and forgets an instance; resolves with its final report. */
  async stop(alias: string, graceMs?: number): Promise<InstanceReport | null> {
    const engine = this.#engines.get(alias);
    if (!engine) return null;
    await engine.stop(graceMs);
    if (this.#engines.get(alias) === engine) this.#engines.delete(alias);
    this.#save();
    this.#options.onChange?.();
    return engine.report();
  }

  /** Stops every engine in parallel (agent shutdown), SIGKILL after `graceMs` if given. */
  async stopAll(graceMs?: number): Promise<void> {
    await Promise.all([...this.#engines.keys()].map((alias) => this.stop(alias, graceMs)));
  }
}

function sameSpec(a: InstanceSpec, b: InstanceSpec): boolean {
  // A spec without a port matches the same spec that names the port the agent leased.
  const strip = (spec: InstanceSpec) => JSON.stringify({ ...spec, port: undefined });
  return (
    strip(a) === strip(b) && (a.port === undefined || b.port === undefined || a.port === b.port)
  );
}
