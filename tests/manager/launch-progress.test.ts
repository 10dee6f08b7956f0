import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { and, asc, eq } from "drizzle-orm";
import { schema } from "../../db/index.ts";
import { dbTargets } from "../../devkit/db.ts";
import { type RunningAgent, startAgent } from "../../devkit/fleet.ts";
import { eventually } from "../../devkit/net.ts";
import { stopAll } from "../../devkit/proc.ts";
import {
  type InstanceProgress,
  launchPhases,
  type ModelInfo,
  type WorkerInfo,
} from "../../protocol/index.ts";
import { FLEET, type TestManager, testManager } from "./helpers.ts";

setDefaultTimeout(90_000);
afterAll(stopAll);

type Sample = { status: string; progress: InstanceProgress };

/**
 * A manager in this process (served on loopback, so that a real agent reaches it) and an
 * agent process whose simulated engines start in 2.5 s, paced phase by phase like vLLM.
 */
for (const target of dbTargets) {
  describe(`manager: launch progress (${target})`, () => {
    let fleet: TestManager;
    let server: ReturnType<typeof Bun.serve>;
    let agent: RunningAgent;
    /** How long the first launch's phases took together, from its events. */
    let firstLaunchS = 0;

    beforeAll(async () => {
      fleet = await testManager({ target, config: { heartbeatIntervalS: 0.3 } });
      server = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: fleet.manager.app.fetch });
      agent = await startAgent({
        managerUrl: `http://127.0.0.1:${server.port}`,
        workerId: `progress-${target}`,
        env: {
          FLEET_TOKEN: FLEET,
          SIM_STARTUP_DELAY_MS: "2500",
          SIM_STARTUP_PHASES: "loading_weights=40,capturing_graphs=30",
          SIM_STARTUP_SHARDS: "6",
        },
      });
      await eventually(async () => {
        const { body } = await fleet.json<{ workers: { status: string }[] }>("GET", "/v1/workers");
        return body.workers.some((w) => w.status === "online");
      });
    });

    afterAll(async () => {
      await agent?.stop();
      await server?.stop(true);
      await fleet?.close();
    });

    /** Registers `paced`, follows `GET /v1/models/paced` until ready, keeps what it saw. */
    async function launch(): Promise<Sample[]> {
      const registered = await fleet.json("POST", "/v1/models/register", {
        body: { alias: "paced", model_name: "/models/paced-8b" },
      });
      expect(registered.status).toBe(201);
      const samples: Sample[] = [];
      await eventually(
        async () => {
          const { body } = await fleet.json<ModelInfo>("GET", "/v1/models/paced");
          const instance = body.instances[0];
          if (instance?.progress)
            samples.push({ status: instance.status, progress: instance.progress });
          if (instance?.status === "failed") throw new Error(instance.last_error ?? "failed");
          return body.status === "ready" ? body : null;
        },
        { timeoutMs: 60_000, intervalMs: 50, what: "paced ready" },
      );
      return samples;
    }

    test("the phases appear in order in GET /v1/models/{alias} and as one event each", async () => {
      const samples = await launch();
      const seen = [...new Set(samples.map((s) => s.progress.phase))];
      expect(seen).toEqual(launchPhases.filter((p) => seen.includes(p)));
      expect(seen).toContain("loading_weights");
      expect(seen).toContain("capturing_graphs");
      expect(seen.at(-1)).toBe("ready");
      // No earlier launch: the ETA is never the history's.
      expect(samples.some((s) => s.progress.eta_basis === "history")).toBe(false);

      const events = await fleet.db.db
        .select()
        .from(schema.events)
        .where(and(eq(schema.events.alias, "paced"), eq(schema.events.kind, "instance.phase")))
        .orderBy(asc(schema.events.id));
      const phases = events.map((e) => e.fromStatus);
      // Every phase once, in order, each with its duration, the last one followed by ready.
      expect(phases).toEqual([
        "starting",
        "loading_weights",
        "compiling",
        "profiling",
        "capturing_graphs",
        "api_server",
      ]);
      expect(events.at(-1)?.toStatus).toBe("ready");
      const durations = events.map((e) => Number(e.detail?.duration_s));
      expect(durations.every((d) => d >= 0)).toBe(true);
      firstLaunchS = durations.reduce((a, b) => a + b, 0);
      expect(firstLaunchS).toBeGreaterThanOrEqual(2.4);
      expect(
        Number(events.find((e) => e.fromStatus === "loading_weights")?.detail?.duration_s),
      ).toBeGreaterThan(0.5);
      expect(events.find((e) => e.fromStatus === "profiling")?.detail?.kv_cache_tokens).toBe(
        65_536,
      );

      // The worker views show the same progress on their instances.
      const worker = await fleet.json<WorkerInfo>("GET", `/v1/workers/progress-${target}`);
      expect(worker.body.instances[0]?.progress).toMatchObject({
        phase: "ready",
        percent: 100,
        kv_cache_tokens: 65_536,
      });
    });

    test("the second launch of the same model has an ETA from the first", async () => {
      expect((await fleet.call("DELETE", "/v1/models/paced")).status).toBe(200);
      const samples = await launch();
      const starting = samples.filter(
        (s) => s.status === "starting" && s.progress.phase !== "ready",
      );
      const withHistory = starting.filter((s) => s.progress.eta_basis === "history");
      expect(withHistory.length).toBeGreaterThan(0);
      // An ETA from the first launch stays within its length, and falls.
      for (const s of withHistory) {
        expect(s.progress.eta_s).not.toBeNull();
        expect(s.progress.eta_s ?? 99).toBeLessThanOrEqual(firstLaunchS + 0.2);
      }
      const first = withHistory[0]?.progress;
      const last = withHistory.at(-1)?.progress;
      expect(last?.eta_s ?? 99).toBeLessThanOrEqual(first?.eta_s ?? 0);
      expect(first?.eta_s ?? 0).toBeGreaterThan(0);
    });
  });
}
