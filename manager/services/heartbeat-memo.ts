/**
 * What heartbeats remember per worker so that an unchanged report costs one UPDATE: a
 * fingerprint of the GPU facts and of the engine reports last applied to the instance rows.
 * Owned by the heartbeat path (worker-reports.ts); the lifecycle makes it forget a worker
 * whose rows something else changed.
 */
import type { GpuInfo, InstanceReport } from "../../protocol/index.ts";
import { progressFingerprint } from "./progress.ts";

/** A full comparison of reports with the database at least this often, even if unchanged. */
const FULL_CHECK_MS = 30_000;

type Entry = { reports: string; gpus: string; progress: string; checkedAt: number };

export class HeartbeatMemo {
  private readonly entries = new Map<string, Entry>();

  /** Whether the GPU rows must be rewritten (new facts, or nothing remembered). */
  gpusChanged(workerId: string, info: GpuInfo): boolean {
    return this.entries.get(workerId)?.gpus !== gpusFingerprint(info);
  }

  /**
   * Whether the reports must be compared with the rows: nothing remembered, the last full
   * check is older than 30 s (a bound on what another manager replica's writes can leave
   * unseen), or the reports differ from the last ones applied.
   */
  reportsDue(workerId: string, reports: InstanceReport[], now: Date): boolean {
    const entry = this.entries.get(workerId);
    return (
      !entry ||
      now.getTime() - entry.checkedAt > FULL_CHECK_MS ||
      entry.reports !== reportsFingerprint(reports)
    );
  }

  /** The reports were applied to the rows (a full check) and the GPUs written. */
  applied(workerId: string, gpus: GpuInfo, reports: InstanceReport[], now: Date): void {
    this.entries.set(workerId, {
      reports: reportsFingerprint(reports),
      gpus: gpusFingerprint(gpus),
      progress: allProgress(reports),
      checkedAt: now.getTime(),
    });
  }

  /**
   * Whether a launch's progress moved (a percentage, the last log line) since it was last
   * written; a new phase is a report change instead (`reportsDue`), which records its event.
   */
  progressDue(workerId: string, reports: InstanceReport[]): boolean {
    const entry = this.entries.get(workerId);
    return entry !== undefined && entry.progress !== allProgress(reports);
  }

  /** The progress of the reports was written. */
  progressWritten(workerId: string, reports: InstanceReport[]): void {
    const entry = this.entries.get(workerId);
    if (entry) entry.progress = allProgress(reports);
  }

  /** Only the GPUs were written; the reports stand as last applied. */
  gpusWritten(workerId: string, gpus: GpuInfo): void {
    const entry = this.entries.get(workerId);
    if (entry) entry.gpus = gpusFingerprint(gpus);
  }

  /** The worker's rows changed other than by its report: compare in full next time. */
  forget(workerId: string): void {
    this.entries.delete(workerId);
  }

  /** Forget every worker (the database was changed behind the manager's back). */
  clear(): void {
    this.entries.clear();
  }
}

/** GPU facts placement uses; free memory in 256 MiB steps so jitter does not cause writes. */
function gpusFingerprint(info: GpuInfo): string {
  return JSON.stringify([
    info.warning,
    info.gpus.map((g) => [
      g.index,
      g.uuid,
      g.name,
      g.memory_total_mib,
      g.memory_free_mib === null ? null : Math.round(g.memory_free_mib / 256),
      g.utilization_pct === null ? null : Math.round(g.utilization_pct / 10),
    ]),
  ]);
}

function reportsFingerprint(reports: InstanceReport[]): string {
  return JSON.stringify(
    reports.map((r) => [
      r.alias,
      r.model_name,
      r.status,
      r.port,
      r.pid,
      r.restarts,
      r.last_error,
      r.gpu_ids,
      // The spec too: an engine relaunched with other arguments must be compared at once.
      r.spec,
      // A new phase (or launch) is recorded as an event at once; a percentage is not.
      r.progress?.started_at,
      r.progress?.phase,
      r.progress?.phases?.length,
    ]),
  );
}

function allProgress(reports: InstanceReport[]): string {
  return JSON.stringify(reports.map((r) => [r.alias, progressFingerprint(r.progress)]));
}
