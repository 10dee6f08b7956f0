/**
 * Launch progress on the manager: what agents report (agent/lib/progress.ts reads it from
 * vLLM's log) is kept on the instance row, each finished phase becomes one `instance.phase`
 * event with its duration, and readers get an ETA from this model's earlier launches that
 * became ready (the median of each phase over the last few), or else the agent's own, from
 * the current phase's percentage.
 */
import { and, desc, eq, inArray } from "drizzle-orm";
import { type Db, schema } from "../../db/index.ts";
import type { InstanceRow, StoredProgress } from "../../db/schema/index.ts";
import { type InstanceProgress, type LaunchPhase, launchPhases } from "../../protocol/index.ts";
import type { EventInput } from "./events.ts";

/** The `events.kind` of a finished launch phase. */
export const phaseEventKind = "instance.phase";
/** How many earlier launches (that reached ready) an ETA draws on. */
const HISTORY_LAUNCHES = 5;
/** Phase events read per alias at most (8 phases × a margin of failed launches). */
const HISTORY_ROWS = 200;

/** The progress as the row keeps it: the report and when it arrived. */
export function storedProgress(progress: InstanceProgress, now: Date): StoredProgress {
  return { ...progress, reported_at: now.toISOString() };
}

/**
 * What of a report is worth a write: everything but the clocks, which a reader extrapolates
 * from `reported_at`.
 */
export function progressFingerprint(progress: InstanceProgress | null | undefined): string {
  if (!progress) return "";
  return JSON.stringify([
    progress.started_at,
    progress.phase,
    progress.percent,
    progress.detail,
    progress.kv_cache_tokens,
    progress.last_line,
    progress.phases?.length,
  ]);
}

/**
 * One event per phase the report shows finished that the row did not: the phase, its
 * duration, and the phase that followed. A new launch (another `started_at`) starts over.
 */
export function phaseEvents(
  instance: InstanceRow,
  modelName: string,
  report: InstanceProgress,
): EventInput[] {
  const before = instance.progress;
  const done = report.phases ?? [];
  const sameLaunch = before !== null && before.started_at === report.started_at;
  const known = sameLaunch ? (before.phases?.length ?? 0) : 0;
  const events: EventInput[] = [];
  for (let i = known; i < done.length; i++) {
    const phase = done[i];
    if (!phase) continue;
    const next = done[i + 1]?.phase ?? report.phase;
    events.push({
      kind: phaseEventKind,
      workerId: instance.workerId,
      alias: instance.alias,
      instanceId: instance.id,
      fromStatus: phase.phase,
      toStatus: next,
      message: `${phase.phase} took ${phase.duration_s} s`,
      detail: {
        phase: phase.phase,
        duration_s: phase.duration_s,
        next,
        model_name: modelName,
        started_at: report.started_at ?? null,
        ...(next === "ready" ? { elapsed_s: report.elapsed_s } : {}),
        ...(phase.phase === "profiling" && report.kv_cache_tokens != null
          ? { kv_cache_tokens: report.kv_cache_tokens }
          : {}),
      },
    });
  }
  return events;
}

/** One earlier launch of a model that became ready: seconds per phase. */
type Launch = { key: string; phases: Map<LaunchPhase, number> };

/** Earlier launches per alias, newest first. */
export type LaunchHistory = Map<string, Launch[]>;

/**
 * The launches of these models that became ready, from their phase events (newest first),
 * only those of the same `model_name` (an alias registered again for another model does not
 * count).
 */
export async function launchHistory(
  db: Db,
  models: { alias: string; modelName: string }[],
): Promise<LaunchHistory> {
  const history: LaunchHistory = new Map();
  const aliases = [...new Set(models.map((m) => m.alias))];
  if (aliases.length === 0) return history;
  const rows = await db
    .select({
      alias: schema.events.alias,
      instanceId: schema.events.instanceId,
      detail: schema.events.detail,
    })
    .from(schema.events)
    .where(and(inArray(schema.events.alias, aliases), eq(schema.events.kind, phaseEventKind)))
    .orderBy(desc(schema.events.ts), desc(schema.events.id))
    .limit(HISTORY_ROWS * aliases.length);
  const modelOf = new Map(models.map((m) => [m.alias, m.modelName]));
  const launches = new Map<string, Launch & { alias: string; ready: boolean }>();
  const order: string[] = [];
  for (const row of rows) {
    const detail = row.detail ?? {};
    if (row.alias === null || detail.model_name !== modelOf.get(row.alias)) continue;
    const phase = detail.phase as LaunchPhase;
    const seconds = Number(detail.duration_s);
    if (!launchPhases.includes(phase) || !Number.isFinite(seconds)) continue;
    const key = launchKey(row.instanceId, detail.started_at as string | null | undefined);
    let launch = launches.get(key);
    if (!launch) {
      launch = { key, alias: row.alias, phases: new Map(), ready: false };
      launches.set(key, launch);
      order.push(key);
    }
    launch.phases.set(phase, (launch.phases.get(phase) ?? 0) + seconds);
    if (detail.next === "ready") launch.ready = true;
  }
  for (const key of order) {
    const launch = launches.get(key);
    if (!launch?.ready) continue;
    const list = history.get(launch.alias) ?? [];
    if (list.length < HISTORY_LAUNCHES + 1) list.push({ key, phases: launch.phases });
    history.set(launch.alias, list);
  }
  return history;
}

function launchKey(instanceId: string | null, startedAt: string | null | undefined): string {
  return `${instanceId ?? "-"}@${startedAt ?? "-"}`;
}

const round = (seconds: number) => Math.round(seconds * 10) / 10;

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1
    ? (sorted[mid] ?? 0)
    : ((sorted[mid - 1] ?? 0) + (sorted[mid] ?? 0)) / 2;
}

/**
 * The progress as a reader sees it now: clocks moved on by the time since the report (while
 * the engine is starting), and the ETA from `history` when this model has earlier launches.
 * The current launch never counts as its own history.
 */
export function progressView(
  row: Pick<InstanceRow, "id" | "status" | "progress">,
  history: Launch[] | undefined,
  now: Date,
): InstanceProgress | null {
  const stored = row.progress;
  if (!stored || row.status === "pending") return null;
  const { reported_at: reportedAt, ...progress } = stored;
  const live = row.status === "starting" && progress.phase !== "ready";
  const since = live ? Math.max(0, (now.getTime() - Date.parse(reportedAt)) / 1000) : 0;
  const phaseElapsed = (progress.phase_elapsed_s ?? 0) + since;
  const view: InstanceProgress = {
    ...progress,
    elapsed_s: round(progress.elapsed_s + since),
    phase_elapsed_s: round(phaseElapsed),
    eta_s: progress.eta_s === null ? null : round(Math.max(0, progress.eta_s - since)),
  };
  if (!live) return view;
  const key = launchKey(row.id, progress.started_at);
  const earlier = (history ?? []).filter((launch) => launch.key !== key).slice(0, HISTORY_LAUNCHES);
  if (earlier.length === 0) return view;
  const expected = (phase: LaunchPhase) =>
    median(earlier.map((launch) => launch.phases.get(phase) ?? 0));
  const at = launchPhases.indexOf(progress.phase);
  // What is left of this phase by the earlier launches; a phase that already runs longer than
  // it did before is judged by the agent's estimate from its own percentage, when it has one.
  const byHistory = expected(progress.phase) - phaseElapsed;
  const current = byHistory > 0 ? byHistory : (view.eta_s ?? 0);
  let remaining = current;
  for (const phase of launchPhases.slice(at + 1)) {
    if (phase !== "ready") remaining += expected(phase);
  }
  return { ...view, eta_s: round(remaining), eta_basis: "history" };
}

/**
 * `progressView` for a set of rows, with the history of the models among them that are
 * starting read in one query (none when nothing is starting).
 */
export async function progressReader(
  db: Db,
  rows: { row: InstanceRow; modelName: string }[],
  now: Date,
): Promise<(row: InstanceRow) => InstanceProgress | null> {
  const starting = rows.filter((r) => r.row.status === "starting" && r.row.progress !== null);
  const history = await launchHistory(
    db,
    starting.map((r) => ({ alias: r.row.alias, modelName: r.modelName })),
  );
  return (row) => progressView(row, history.get(row.alias), now);
}
