import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { dbTargets, type OpenTestDb, openFreshDb } from "../../devkit/db.ts";
import { metric } from "../../devkit/metrics.ts";
import type { ManagerConfig } from "../../manager/env.ts";
import type { ModelInfo, OpenAiError } from "../../protocol/index.ts";
import {
  ADMIN,
  gpu,
  manualClock,
  registration,
  type StubAgent,
  stubAgentPool,
  type TestManager,
  testManager,
} from "./helpers.ts";

const agent = stubAgentPool();

const TIMEOUT_S = 20;
const METRICS = "metrics-token-for-tests";

for (const target of dbTargets) {
  describe(`manager /metrics (${target})`, () => {
    let db: OpenTestDb;
    let t: TestManager;
    let clock: ReturnType<typeof manualClock>;
    beforeAll(async () => {
      db = await openFreshDb(target);
    });
    afterEach(async () => {
      await t?.close();
    });
    afterAll(async () => {
      await db.destroy();
    });

    const start = async (config: Partial<ManagerConfig> = {}) => {
      clock = manualClock();
      t = await testManager({
        db,
        clock,
        config: { workerTimeoutS: TIMEOUT_S, rescheduleAfterS: 0, probeIntervalS: 0, ...config },
      });
    };
    const scrape = async (token: string | null = ADMIN) => {
      const response = await t.call("GET", "/metrics", { token });
      expect(response.status).toBe(200);
      return response.text();
    };
    const register = (a: StubAgent, id: string) => t.register(registration(id, a.url, [gpu(0)]), a);
    const beat = (a: StubAgent, id: string) =>
      t.heartbeat(id, { gpu_info: { gpus: [gpu(0)], warning: null }, instances: a.reports() });
    const info = async (alias: string) =>
      (await t.json<ModelInfo>("GET", `/v1/models/${alias}`)).body;

    test("workers, instances, heartbeats and reconcile actions follow the fleet", async () => {
      await start();
      const empty = await scrape();
      expect(metric(empty, "fleet_manager_workers", { status: "online" })).toBe(0);
      expect(metric(empty, "fleet_manager_instances")).toBeNaN();

      const [a, b] = [agent(), agent()];
      await register(a, "w1");
      await register(b, "w2");
      await t.json("POST", "/v1/models/register", {
        body: { alias: "moving", model_name: "m", gpu_memory_utilization: 0.5 },
      });
      const placed = (await info("moving")).instances[0];
      const [dead, alive] = placed?.worker_id === "w1" ? [a, b] : [b, a];
      const deadId = placed?.worker_id ?? "";
      const aliveId = deadId === "w1" ? "w2" : "w1";

      const launched = await scrape();
      expect(metric(launched, "fleet_manager_workers", { status: "online" })).toBe(2);
      expect(metric(launched, "fleet_manager_workers", { status: "offline" })).toBe(0);
      expect(metric(launched, "fleet_manager_instances", { alias: "moving" })).toBe(1);
      expect(
        metric(launched, "fleet_manager_instances", { alias: "moving", state: "starting" }),
      ).toBe(1);

      dead.markReady("moving");
      expect((await beat(dead, deadId)).status).toBe(200);
      expect((await beat(alive, aliveId)).status).toBe(200);
      const ready = await scrape();
      expect(metric(ready, "fleet_manager_instances", { alias: "moving", state: "ready" })).toBe(1);
      expect(metric(ready, "fleet_manager_instances", { state: "starting" })).toBeNaN();
      expect(
        metric(ready, "fleet_manager_heartbeat_duration_seconds_count", { outcome: "ok" }),
      ).toBe(2);
      expect(
        metric(ready, "fleet_manager_heartbeat_duration_seconds_bucket", {
          outcome: "ok",
          le: "+Inf",
        }),
      ).toBe(2);
      expect(metric(ready, "fleet_manager_reconcile_actions_total")).toBeNaN();

      // The dead worker falls silent: the sweep marks it offline and the instance moves.
      clock.advance((TIMEOUT_S + 1) * 1000);
      await beat(alive, aliveId);
      const tick = await t.manager.tick();
      expect(tick.offline).toEqual([deadId]);
      const moved = await scrape();
      expect(metric(moved, "fleet_manager_workers", { status: "online" })).toBe(1);
      expect(metric(moved, "fleet_manager_workers", { status: "offline" })).toBe(1);
      expect(
        metric(moved, "fleet_manager_reconcile_actions_total", { action: "mark_offline" }),
      ).toBe(1);
      expect(metric(moved, "fleet_manager_reconcile_actions_total", { action: "replace" })).toBe(1);
      expect(metric(moved, "fleet_manager_reconcile_duration_seconds_count")).toBe(1);
      expect(metric(moved, "fleet_manager_reconcile_holding_off")).toBe(0);
      // The lost row was replaced by a new one on the live worker.
      expect(metric(moved, "fleet_manager_instances", { alias: "moving" })).toBe(1);
      expect(metric(moved, "fleet_manager_instances", { state: "ready" })).toBeNaN();
      expect(metric(moved, "fleet_manager_heartbeat_duration_seconds_count")).toBe(3);

      await t.json("DELETE", "/v1/models/moving");
      const deleted = await scrape();
      expect(metric(deleted, "fleet_manager_instances")).toBeNaN();
    });

    test("worker paths: reachable, unreachable and no public URL, from the manager's probes", async () => {
      await start({ probeIntervalS: 60 });
      const [up, silent] = [agent(), agent()];
      up.answersAs = "up";
      await register(up, "up");
      // Its public URL is the same agent: both paths answer as it.
      await t.register(
        registration("public", up.url, [gpu(0)], { public_worker_url: `${up.url}/` }),
        { token: null },
      );
      await register(silent, "silent");
      await t.manager.context.prober.idle();
      const text = await scrape();
      expect(
        metric(text, "fleet_manager_worker_paths", { path: "internal", state: "reachable" }),
      ).toBe(1);
      // `public` answers as `up`, not as itself: both its paths are refused.
      expect(
        metric(text, "fleet_manager_worker_paths", { path: "internal", state: "unreachable" }),
      ).toBe(2);
      expect(metric(text, "fleet_manager_worker_paths", { path: "public", state: "none" })).toBe(2);
      expect(
        metric(text, "fleet_manager_worker_paths", { path: "public", state: "unreachable" }),
      ).toBe(1);
      expect(metric(text, "fleet_manager_workers_unreachable")).toBe(2);
      expect(
        metric(text, "fleet_manager_probes_total", { path: "internal", result: "reachable" }),
      ).toBe(1);
      expect(
        metric(text, "fleet_manager_probes_total", { path: "internal", result: "unreachable" }),
      ).toBe(2);
      expect(
        metric(text, "fleet_manager_probes_total", { path: "public", result: "unreachable" }),
      ).toBe(1);
    });

    test("a routed path that stops answering counts a withdrawal, and its return a restoration", async () => {
      await start({ probeIntervalS: 60 });
      const a = agent();
      a.answersAs = "flaky";
      await register(a, "flaky");
      await t.manager.context.prober.idle();
      const counts = async () => {
        const text = await scrape();
        return [
          metric(text, "fleet_manager_route_withdrawals_total"),
          metric(text, "fleet_manager_route_restorations_total"),
          metric(text, "fleet_manager_worker_paths", { path: "internal", state: "unreachable" }),
        ];
      };
      expect(await counts()).toEqual([0, 0, 0]);
      a.answersAs = null; // its /health stops naming it: the probes find the path gone
      expect(await t.manager.context.prober.probe("flaky")).toBe(true);
      expect(await counts()).toEqual([1, 0, 1]);
      a.answersAs = "flaky";
      expect(await t.manager.context.prober.probe("flaky")).toBe(true);
      expect(await counts()).toEqual([1, 1, 0]);
    });

    test("ADMIN_TOKEN or METRICS_TOKEN reads it; anyone else gets 401 in OpenAI's shape", async () => {
      await start({ metricsToken: METRICS });
      const refused = await t.json<OpenAiError>("GET", "/metrics", { token: null });
      expect(refused.status).toBe(401);
      expect(refused.body.error.code).toBe("unauthorized");
      expect(refused.body.error.message).toContain("METRICS_TOKEN");
      const wrong = await t.call("GET", "/metrics", { token: "not-the-token" });
      expect(wrong.status).toBe(401);
      expect(await scrape(ADMIN)).toContain("# TYPE fleet_manager_workers gauge");
      expect(await scrape(METRICS)).toContain("# TYPE fleet_manager_workers gauge");
      // The scrape-only token opens nothing else.
      expect((await t.call("GET", "/v1/workers", { token: METRICS })).status).toBe(401);
    });

    test("with no token set (loopback) it is open", async () => {
      await start({ adminToken: undefined, fleetToken: undefined });
      expect(await scrape(null)).toContain("fleet_manager_workers");
    });
  });
}
