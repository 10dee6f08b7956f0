/**
 * Launch progress from vLLM's own log: each line the engine prints is matched against the
 * lines vLLM writes while it starts (docs/agent.md, "Launch progress"; the lines themselves
 * are quoted in tests/agent/progress.test.ts). Matching is tolerant on purpose: the prefix
 * differs between versions (`INFO 11-30 16:20:01 [file.py:12]`, with or without
 * `(EngineCore_DP0 pid=N)`), and so does some wording; a line is matched anywhere in it.
 * Phases only move forward: a line of an earlier phase (vLLM compiles further shapes while
 * it captures graphs) leaves the phase where it is.
 */
import type { InstanceProgress, LaunchPhase } from "../../protocol/index.ts";
import { launchPhases } from "../../protocol/index.ts";

/** What one log line says about the launch. */
export type LineSignal = {
  phase: LaunchPhase;
  /** The phase's percentage, from a tqdm bar. */
  percent?: number;
  /** What the bar counts, e.g. `3/5 shards`. */
  detail?: string;
  /** Which bar: a phase may draw several one after the other (CUDA graphs: two modes). */
  bar?: string;
  kvCacheTokens?: number;
  /**
   * The line reports how long the phase took, so it began that long ago (`Loading weights
   * took 2.15 seconds` may be the first line of a phase that printed no bar).
   */
  tookS?: number;
};

type Rule = { pattern: RegExp; phase: LaunchPhase; read?: (m: RegExpExecArray) => LineSignal };

/** tqdm's `{percentage:3.0f}%` followed (after a bar or `Completed |`) by `n/total`. */
const bar = /(\d{1,3})%[^\d]*?(\d+)\/(\d+)/;

function barSignal(phase: LaunchPhase, line: string, unit: string, label?: string): LineSignal {
  const m = bar.exec(line);
  if (!m) return { phase };
  const percent = Math.min(100, Number(m[1]));
  const counted = `${m[2]}/${m[3]}${unit}`;
  return {
    phase,
    percent,
    detail: label ? `${label} ${counted}` : counted,
    bar: `${label ?? ""}/${m[3]}`,
  };
}

/** `… took 2.15 seconds`, `… and 20.3s`, `… in 12 secs`, `…: 61.2 s`. */
const seconds = /(\d+(?:\.\d+)?)\s*(?:seconds|secs|s)\b/g;

/** The last duration in the line (`Model loading took 15.2 GiB and 3.1 seconds` → 3.1). */
function tookSignal(phase: LaunchPhase, line: string): LineSignal {
  const last = [...line.matchAll(seconds)].at(-1);
  return last ? { phase, tookS: Number(last[1]) } : { phase };
}

/**
 * Checked in order; the first match wins. `Starting to load model` names no phase on
 * purpose: vLLM downloads the weights after it, so it cannot end the `downloading` phase.
 */
const rules: Rule[] = [
  // uvicorn, once the server listens: vLLM is serving.
  { pattern: /Application startup complete/, phase: "ready" },
  {
    pattern:
      /Starting vLLM (?:API )?server|Available routes are|Started server process|Waiting for application startup|init engine \(profile, create kv cache/,
    phase: "api_server",
  },
  {
    pattern: /Capturing CUDA graphs?(?: shapes)?(?: \(([^)]*)\))?/,
    phase: "capturing_graphs",
    read: (m) => barSignal("capturing_graphs", m.input.slice(m.index), "", m[1]),
  },
  {
    pattern: /Graph capturing finished|Capturing the model for CUDA graphs/,
    phase: "capturing_graphs",
    read: (m) => tookSignal("capturing_graphs", m.input),
  },
  {
    pattern: /KV cache size:\s*([\d,]+)\s*tokens/,
    phase: "profiling",
    read: (m) => {
      const tokens = Number((m[1] ?? "").replaceAll(",", ""));
      return {
        phase: "profiling",
        kvCacheTokens: tokens,
        detail: `KV cache ${tokens.toLocaleString("en-US")} tokens`,
      };
    },
  },
  {
    pattern:
      /Available KV cache memory|Maximum concurrency for|Memory profiling takes|# (?:GPU|cuda) blocks:/i,
    phase: "profiling",
  },
  {
    pattern: /torch\.compile takes/,
    phase: "compiling",
    read: (m) => tookSignal("compiling", m.input.slice(m.index)),
  },
  {
    pattern: /torch\.compile|Dynamo bytecode transform|Compiling a graph for|compiled graph/,
    phase: "compiling",
  },
  {
    pattern: /Loading (?:safetensors |pt |bin |npcache )?checkpoint shards/,
    phase: "loading_weights",
    read: (m) => barSignal("loading_weights", m.input.slice(m.index), " shards"),
  },
  {
    pattern: /Loading (?:model )?weights took|Model loading took/,
    phase: "loading_weights",
    read: (m) => tookSignal("loading_weights", m.input.slice(m.index)),
  },
  {
    pattern: /Fetching \d+ files/,
    phase: "downloading",
    read: (m) => barSignal("downloading", m.input.slice(m.index), " files"),
  },
  {
    pattern: /Time spent downloading weights/,
    phase: "downloading",
    read: (m) => tookSignal("downloading", m.input.slice(m.index)),
  },
  { pattern: /\bDownloading\b/, phase: "downloading" },
];

/** What `line` says about the launch, or null when it is not one of vLLM's startup lines. */
export function classifyLine(line: string): LineSignal | null {
  for (const rule of rules) {
    const m = rule.pattern.exec(line);
    if (!m) continue;
    return rule.read ? rule.read(m) : { phase: rule.phase };
  }
  return null;
}

/**
 * vLLM's prefixes, in any combination: `(EngineCore_DP0 pid=12) `, `INFO 11-30 16:20:01
 * [core.py:88] ` (≥ 0.6), `INFO 08-06 10:22:14 model_runner.py:1025] ` (older), and
 * uvicorn's `INFO:     `.
 */
const prefix =
  /^\s*(?:\([\w.-]+ pid=\d+\)\s*)?(?:(?:DEBUG|INFO|WARNING|ERROR|CRITICAL)(?::\s+|\s+\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?\s+(?:\[[^\]]*\]|[\w./-]+:\d+\])?\s*))?/;

/** A log line as a person wants to read it in a status line: the prefixes gone, trimmed. */
export function displayLine(line: string): string {
  return line.replace(prefix, "").trim();
}

const order = new Map(launchPhases.map((phase, index) => [phase, index]));
const maxLine = 240;
const round = (seconds: number) => Math.round(seconds * 10) / 10;

export type LaunchProgressOptions = {
  /** Milliseconds, monotonic or wall: only differences are used. */
  now?: () => number;
  /** Called when the phase moves (the agent sends an early heartbeat). */
  onPhase?: (phase: LaunchPhase) => void;
};

/** The progress of one engine process's launch, fed its log lines. */
export class LaunchProgress {
  readonly #now: () => number;
  readonly #onPhase: ((phase: LaunchPhase) => void) | undefined;
  #startedAt = 0;
  #startedIso: string | undefined;
  #phase: LaunchPhase = "starting";
  #phaseAt = 0;
  #percent: number | null = null;
  /** The bar the percentage is of, and when it began. */
  #bar: string | null = null;
  #barAt = 0;
  #detail: string | null = null;
  #kvCacheTokens: number | null = null;
  #lastLine: string | null = null;
  #done: { phase: LaunchPhase; duration_s: number }[] = [];
  #readyElapsed: number | null = null;

  constructor(options: LaunchProgressOptions = {}) {
    this.#now = options.now ?? (() => performance.now());
    this.#onPhase = options.onPhase;
    this.begin();
  }

  get phase(): LaunchPhase {
    return this.#phase;
  }

  /** A new process starts: everything is measured from now. */
  begin(startedAt: Date = new Date()): void {
    this.#startedAt = this.#now();
    this.#startedIso = startedAt.toISOString();
    this.#phase = "starting";
    this.#phaseAt = this.#startedAt;
    this.#percent = null;
    this.#bar = null;
    this.#detail = null;
    this.#kvCacheTokens = null;
    this.#lastLine = null;
    this.#done = [];
    this.#readyElapsed = null;
  }

  /** One line of the engine's output (stdout or stderr). */
  line(raw: string): void {
    const text = displayLine(raw);
    if (text === "") return;
    this.#lastLine = text.length > maxLine ? `${text.slice(0, maxLine - 1)}…` : text;
    const signal = classifyLine(text);
    if (!signal) return;
    if (signal.kvCacheTokens !== undefined) this.#kvCacheTokens = signal.kvCacheTokens;
    const ahead = (order.get(signal.phase) ?? 0) - (order.get(this.#phase) ?? 0);
    if (ahead < 0) return;
    if (ahead > 0) {
      const now = this.#now();
      const began = signal.tookS === undefined ? now : now - signal.tookS * 1000;
      this.#enter(signal.phase, Math.min(now, Math.max(this.#phaseAt, began)));
    }
    if (signal.bar !== undefined && signal.bar !== this.#bar) {
      this.#bar = signal.bar;
      this.#barAt = this.#now();
    }
    if (signal.percent !== undefined) this.#percent = signal.percent;
    if (signal.detail !== undefined) this.#detail = signal.detail;
  }

  /** The engine answered `/health`: ready, whatever its log said last. */
  ready(): void {
    if (this.#phase !== "ready") this.#enter("ready", this.#now());
  }

  snapshot(): InstanceProgress {
    const now = this.#now();
    const elapsed = this.#readyElapsed ?? (now - this.#startedAt) / 1000;
    const inPhase = this.#phase === "ready" ? 0 : (now - this.#phaseAt) / 1000;
    return {
      phase: this.#phase,
      percent: this.#phase === "ready" ? 100 : this.#percent,
      elapsed_s: round(elapsed),
      eta_s: this.#eta(now),
      last_line: this.#lastLine,
      eta_basis: this.#phase === "ready" || this.#eta(now) !== null ? "phase" : null,
      phase_elapsed_s: round(inPhase),
      detail: this.#detail,
      kv_cache_tokens: this.#kvCacheTokens,
      ...(this.#startedIso ? { started_at: this.#startedIso } : {}),
      phases: this.#done.map((d) => ({ ...d })),
    };
  }

  /**
   * From the phase's own percentage: the rest of its bar, at the pace the bar has gone so far
   * (a second bar in the phase starts its own count).
   */
  #eta(now: number): number | null {
    if (this.#phase === "ready") return 0;
    const p = this.#percent;
    if (p === null || p <= 0) return null;
    return round((((now - this.#barAt) / 1000) * (100 - p)) / p);
  }

  /** Moves to `phase`, which began at `at` (now, or earlier for a phase reported when done). */
  #enter(phase: LaunchPhase, at: number): void {
    this.#done.push({ phase: this.#phase, duration_s: round((at - this.#phaseAt) / 1000) });
    if (this.#done.length > 16) this.#done.shift();
    this.#phase = phase;
    this.#phaseAt = at;
    this.#percent = null;
    this.#bar = null;
    this.#detail = null;
    if (phase === "ready") this.#readyElapsed = (at - this.#startedAt) / 1000;
    this.#onPhase?.(phase);
  }
}
