import type { Logger } from "../../kit/log.ts";
import { type EngineLoad, formatLoadHeader, parseVllmMetrics } from "../../protocol/load.ts";

type Target = { alias: string; port: number };

type Entry = {
  port: number;
  load: EngineLoad;
  /** `formatLoadHeader(load)`, built once per read rather than once per response. */
  header: string;
  queries: number | null;
  hits: number | null;
  failures: number;
};

export type LoadMonitorOptions = {
  /** Ready engines now: alias and the loopback port of each. */
  targets: () => Target[];
  /** `ENGINE_LOAD_POLL_MS`; 0 turns the monitor off. */
  intervalMs: number;
  log: Logger;
};

/**
 * Reads each ready engine's `/metrics` on 127.0.0.1 once per interval (one read per engine
 * at a time, each bounded by the interval), and keeps its load for the proxy's
 * `x-fleet-load` header and the heartbeat. Routers never scrape engines: a vLLM scraped
 * hard has been seen to stop answering, and the agent is the one process next to it.
 */
export class LoadMonitor {
  readonly #entries = new Map<string, Entry>();
  readonly #busy = new Set<string>();
  #timer: ReturnType<typeof setInterval> | null = null;

  constructor(private readonly options: LoadMonitorOptions) {}

  start(): void {
    if (this.options.intervalMs <= 0 || this.#timer) return;
    this.#timer = setInterval(() => void this.poll(), this.options.intervalMs);
    void this.poll();
  }

  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
  }

  get(alias: string): EngineLoad | undefined {
    return this.#entries.get(alias)?.load;
  }

  header(alias: string): string | undefined {
    return this.#entries.get(alias)?.header;
  }

  /**
   * Every engine's last reading: its load and vLLM's prefix-cache counters as read (null
   * when the engine does not export them), for the agent's `/metrics`.
   */
  readings(): { alias: string; load: EngineLoad; queries: number | null; hits: number | null }[] {
    return [...this.#entries].map(([alias, entry]) => ({
      alias,
      load: entry.load,
      queries: entry.queries,
      hits: entry.hits,
    }));
  }

  /** One read of every ready engine (also what the timer runs). */
  async poll(): Promise<void> {
    const targets = this.options.targets();
    const live = new Set(targets.map((target) => target.alias));
    for (const alias of this.#entries.keys()) if (!live.has(alias)) this.#entries.delete(alias);
    await Promise.all(targets.map((target) => this.#read(target)));
  }

  async #read(target: Target): Promise<void> {
    if (this.#busy.has(target.alias)) return;
    this.#busy.add(target.alias);
    try {
      const response = await fetch(`http://127.0.0.1:${target.port}/metrics`, {
        signal: AbortSignal.timeout(Math.max(200, this.options.intervalMs)),
      });
      const text = await response.text();
      const sample = response.ok ? parseVllmMetrics(text) : null;
      if (!sample) throw new Error(`no vLLM metrics (HTTP ${response.status})`);
      const previous = this.#entries.get(target.alias);
      const samePort = previous?.port === target.port;
      let hit = samePort ? (previous?.load.hit ?? null) : null;
      const { prefixQueries: queries, prefixHits: hits } = sample;
      if (queries !== null && hits !== null) {
        const base = samePort && previous ? previous : null;
        const dq = queries - (base?.queries ?? 0);
        const dh = hits - (base?.hits ?? 0);
        // A counter that went down is a restarted engine: its totals are the new window.
        if (dq > 0 && dh >= 0) hit = Math.min(1, dh / dq);
        else if (dq < 0 && queries > 0) hit = Math.min(1, hits / queries);
      }
      const load: EngineLoad = {
        running: sample.running,
        waiting: sample.waiting,
        kv: sample.kv,
        hit,
      };
      this.#entries.set(target.alias, {
        port: target.port,
        load,
        header: formatLoadHeader(load),
        queries,
        hits,
        failures: 0,
      });
    } catch (error) {
      const previous = this.#entries.get(target.alias);
      if (previous) {
        previous.failures++;
        // Stale load is worse than none after a few missed reads: routers fall back to
        // their own in-flight counts.
        if (previous.failures >= 3) this.#entries.delete(target.alias);
      }
      this.options.log.debug("engine metrics read failed", {
        alias: target.alias,
        reason: error instanceof Error ? error.message : String(error),
      });
    } finally {
      this.#busy.delete(target.alias);
    }
  }
}
