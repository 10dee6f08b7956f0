/**
 * How `fleet models register --wait` and `fleet models wait` show a launch: on a terminal,
 * one live line per instance (phase, percent bar, elapsed, ETA, the engine's last log line),
 * redrawn in place; elsewhere (a pipe, a CI log), one plain line each time an instance moves
 * to another status or phase.
 */
import type { InstanceRecord, LaunchPhase, ModelInfo } from "../protocol/index.ts";

export type Terminal = {
  write(text: string): void;
  /** Columns of the terminal, when it is one. */
  columns(): number | undefined;
  isTTY: boolean;
};

const phaseNames: Record<LaunchPhase, string> = {
  starting: "starting",
  downloading: "downloading",
  loading_weights: "loading weights",
  compiling: "compiling",
  profiling: "profiling",
  capturing_graphs: "capturing graphs",
  api_server: "starting API server",
  ready: "ready",
};

const statusNames: Record<InstanceRecord["status"], string> = {
  pending: "launching",
  starting: "loading",
  ready: "ready",
  failed: "failed",
  stopping: "stopping",
  stopped: "stopped",
  lost: "lost (worker offline)",
};

/** `75` → `1:15`, `3725` → `1:02:05`. */
export function duration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  const pad = (n: number) => String(n).padStart(2, "0");
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return h > 0 ? `${h}:${pad(m)}:${pad(s % 60)}` : `${m}:${pad(s % 60)}`;
}

function bar(percent: number | null, width = 16): string {
  if (percent === null) return `[${" ".repeat(width)}]`;
  const filled = Math.round((Math.min(100, Math.max(0, percent)) / 100) * width);
  return `[${"█".repeat(filled)}${"·".repeat(width - filled)}]`;
}

function eta(progress: NonNullable<InstanceRecord["progress"]>): string {
  // An ETA from the phase's own percentage covers that phase only: say so.
  const what = progress.eta_basis === "phase" ? "phase ETA" : "ETA";
  return progress.eta_s === null ? "ETA ?" : `${what} ${duration(progress.eta_s)}`;
}

/** The state words of an instance: its status, or its launch phase while it starts. */
function stateOf(instance: InstanceRecord): string {
  const progress = instance.progress;
  if (instance.status === "starting" && progress) return phaseNames[progress.phase];
  return statusNames[instance.status];
}

/** One instance on a terminal line (the caller cuts it to the width). */
export function liveLine(instance: InstanceRecord): string {
  const who = instance.worker_id;
  const progress = instance.progress;
  if (instance.status !== "starting" || !progress) {
    const port = instance.port ? ` (port ${instance.port})` : "";
    const took =
      instance.status === "ready" && progress ? ` in ${duration(progress.elapsed_s)}` : "";
    return `${who}  ${stateOf(instance)}${port}${took}`;
  }
  const percent =
    progress.percent === null ? "    " : `${String(Math.round(progress.percent)).padStart(3)}%`;
  const parts = [
    who,
    phaseNames[progress.phase].padEnd(19),
    `${bar(progress.percent)} ${percent}`,
    duration(progress.elapsed_s).padStart(5),
    eta(progress),
  ];
  if (progress.last_line) parts.push(`│ ${progress.last_line}`);
  return parts.join("  ");
}

/** One instance as a plain line, printed when it changes state. */
export function plainLine(instance: InstanceRecord): string {
  const progress = instance.progress;
  const port = instance.port ? ` (port ${instance.port})` : "";
  if (instance.status !== "starting" || !progress) {
    const took =
      instance.status === "ready" && progress ? ` after ${duration(progress.elapsed_s)}` : "";
    return `${instance.worker_id}: ${statusNames[instance.status]}${port}${took}`;
  }
  const facts = [`elapsed ${duration(progress.elapsed_s)}`];
  if (progress.eta_s !== null) facts.push(eta(progress));
  const detail = progress.detail ? ` ${progress.detail}` : "";
  const percent = progress.percent === null ? "" : ` ${Math.round(progress.percent)}%`;
  return `${instance.worker_id}: ${phaseNames[progress.phase]}${percent}${detail}${port} (${facts.join(", ")})`;
}

/** Cuts `text` to `width` columns (one column per code point: the bar and ASCII). */
function fit(text: string, width: number | undefined): string {
  if (!width) return text;
  const chars = [...text];
  return chars.length <= width ? text : `${chars.slice(0, Math.max(0, width - 1)).join("")}…`;
}

/** Shows a model's instances as it launches; `update` with each poll of the model. */
export class LaunchView {
  readonly #out: Terminal;
  /** Lines drawn last time (a terminal redraws over them). */
  #drawn = 0;
  readonly #seen = new Map<string, string>();

  constructor(out: Terminal) {
    this.#out = out;
  }

  update(model: ModelInfo): void {
    if (this.#out.isTTY) this.#redraw(model.instances);
    else this.#print(model.instances);
  }

  /** Stops drawing in place (before anything else is printed). */
  finish(): void {
    this.#drawn = 0;
  }

  #redraw(instances: InstanceRecord[]): void {
    const width = this.#out.columns();
    let text = this.#drawn > 0 ? `\x1b[${this.#drawn}F` : "";
    for (const instance of instances) {
      text += `\x1b[2K${fit(liveLine(instance), width ? width - 1 : undefined)}\n`;
    }
    // Fewer instances than last time (one was removed): clear what is left below.
    for (let i = instances.length; i < this.#drawn; i++) text += "\x1b[2K\n";
    this.#out.write(text);
    this.#drawn = Math.max(instances.length, this.#drawn);
  }

  #print(instances: InstanceRecord[]): void {
    for (const instance of instances) {
      const key = `${instance.status}/${instance.progress?.phase ?? ""}/${instance.port ?? ""}`;
      if (this.#seen.get(instance.id) === key) continue;
      this.#seen.set(instance.id, key);
      this.#out.write(`${plainLine(instance)}\n`);
    }
  }
}
