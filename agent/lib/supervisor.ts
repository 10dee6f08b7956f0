import type { Logger } from "../../kit/log.ts";
import type { InstanceReport, InstanceSpec } from "../../protocol/index.ts";
import { Engine, type EngineTimings } from "./engine.ts";
import type { PortLeaser } from "./ports.ts";

export type SupervisorOptions = EngineTimings & {
  vllmBin: string;
  baseEnv: Record<string, string>;
  ports: PortLeaser;
  log: Logger;
  onChange?: () => void;
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

  constructor(options: SupervisorOptions) {
    this.#options = options;
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

    const { ports, log, onChange } = this.#options;
    const engine = new Engine({
      ...this.#options,
      spec,
      onChange: () => onChange?.(),
      // Each engine holds its own lease and gives it back exactly once, when it retires.
      onRetired: (retired) => {
        if (retired.port !== null) ports.release(retired.port);
      },
    });
    // Claim the alias before the first await so that a concurrent launch sees it.
    this.#engines.set(spec.alias, engine);
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

  /** Stops and forgets an instance; resolves with its final report. */
  async stop(alias: string): Promise<InstanceReport | null> {
    const engine = this.#engines.get(alias);
    if (!engine) return null;
    await engine.stop();
    if (this.#engines.get(alias) === engine) this.#engines.delete(alias);
    this.#options.onChange?.();
    return engine.report();
  }

  /** Stops every engine in parallel (agent shutdown). */
  async stopAll(): Promise<void> {
    await Promise.all([...this.#engines.keys()].map((alias) => this.stop(alias)));
  }
}

function sameSpec(a: InstanceSpec, b: InstanceSpec): boolean {
  // A spec without a port matches the same spec that names the port the agent leased.
  const strip = (spec: InstanceSpec) => JSON.stringify({ ...spec, port: undefined });
  return (
    strip(a) === strip(b) && (a.port === undefined || b.port === undefined || a.port === b.port)
  );
}
