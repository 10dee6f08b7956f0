import { describe, expect, test } from "bun:test";
import type { InstanceRow, StoredProgress } from "../../db/schema/index.ts";
import { phaseEvents, progressView } from "../../manager/services/progress.ts";
import type { InstanceProgress, LaunchPhase } from "../../protocol/index.ts";

const now = new Date("2026-11-30T12:00:10.000Z");
const started = "2026-11-30T12:00:00.000Z";

function stored(progress: Partial<InstanceProgress>, reportedAt = now): StoredProgress {
  return {
    phase: "starting",
    percent: null,
    elapsed_s: 0,
    eta_s: null,
    last_line: null,
    phase_elapsed_s: 0,
    started_at: started,
    phases: [],
    ...progress,
    reported_at: reportedAt.toISOString(),
  };
}

function row(progress: StoredProgress | null, status: InstanceRow["status"] = "starting") {
  return { id: "i-1", status, progress, workerId: "w", alias: "m" } as InstanceRow;
}

/** An earlier launch that became ready, seconds per phase. */
function launch(key: string, phases: Partial<Record<LaunchPhase, number>>) {
  return { key, phases: new Map(Object.entries(phases)) as Map<LaunchPhase, number> };
}

describe("manager: launch progress", () => {
  test("one event per phase the report shows finished that the row did not", () => {
    const before = stored({
      phase: "loading_weights",
      phases: [{ phase: "starting", duration_s: 4 }],
    });
    const report: InstanceProgress = {
      ...before,
      phase: "profiling",
      kv_cache_tokens: 65_536,
      phases: [
        { phase: "starting", duration_s: 4 },
        { phase: "loading_weights", duration_s: 20 },
        { phase: "compiling", duration_s: 9.5 },
      ],
    };
    const events = phaseEvents(row(before), "org/m", report);
    expect(events.map((e) => [e.fromStatus, e.toStatus, e.detail?.duration_s])).toEqual([
      ["loading_weights", "compiling", 20],
      ["compiling", "profiling", 9.5],
    ]);
    expect(events[0]).toMatchObject({ kind: "instance.phase", alias: "m", instanceId: "i-1" });
    expect(events[0]?.detail).toMatchObject({ model_name: "org/m", started_at: started });
    // A restart (another started_at) is a new launch: its phases all count.
    const restarted = { ...report, started_at: "2026-11-30T12:05:00.000Z" };
    expect(phaseEvents(row(before), "org/m", restarted)).toHaveLength(3);
    // The same report again records nothing.
    expect(
      phaseEvents(row({ ...report, reported_at: now.toISOString() }), "org/m", report),
    ).toEqual([]);
  });

  test("the clocks move on from the report while the engine starts", () => {
    const view = progressView(
      row(
        stored(
          { phase: "compiling", elapsed_s: 30, phase_elapsed_s: 5, eta_s: 8 },
          new Date(now.getTime() - 3000),
        ),
      ),
      undefined,
      now,
    );
    expect(view).toMatchObject({ elapsed_s: 33, phase_elapsed_s: 8, eta_s: 5 });
    // Not while pending (a retry placed, no launch yet): nothing to show.
    expect(progressView(row(stored({}), "pending"), undefined, now)).toBeNull();
  });

  test("the ETA from earlier launches: the median per phase, a missing phase 0, this launch excluded", () => {
    const history = [
      launch("a", {
        starting: 10,
        downloading: 100,
        loading_weights: 20,
        compiling: 30,
        capturing_graphs: 40,
      }),
      launch("b", { starting: 12, loading_weights: 22, compiling: 6, capturing_graphs: 44 }),
      launch("c", { starting: 14, loading_weights: 24, compiling: 8, capturing_graphs: 48 }),
      // The current launch's own phases never count.
      launch(`i-1@${started}`, { starting: 1000, loading_weights: 1000 }),
    ];
    const view = progressView(
      row(stored({ phase: "loading_weights", percent: 50, elapsed_s: 20, phase_elapsed_s: 5 })),
      history,
      now,
    );
    // loading: 22 - 5 = 17 left; then compiling 8, profiling 0, graphs 44, api 0.
    expect(view).toMatchObject({ eta_basis: "history", eta_s: 17 + 8 + 44 });

    // A phase already longer than before falls back on the agent's estimate for it.
    const slow = progressView(
      row(stored({ phase: "loading_weights", percent: 90, phase_elapsed_s: 60, eta_s: 6.5 })),
      history,
      now,
    );
    expect(slow?.eta_s).toBe(6.5 + 8 + 44);
  });

  test("without earlier launches the ETA is the agent's, for the current phase", () => {
    const view = progressView(
      row(stored({ phase: "loading_weights", percent: 40, eta_s: 12, eta_basis: "phase" })),
      [launch(`i-1@${started}`, { starting: 3 })],
      now,
    );
    expect(view).toMatchObject({ eta_s: 12, eta_basis: "phase" });
  });
});
