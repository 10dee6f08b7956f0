import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { sql } from "drizzle-orm";
import { dbTargets, type OpenTestDb, openFreshDb } from "../../devkit/db.ts";
import { eventually } from "../../devkit/net.ts";
import type { ManagerConfig } from "../../manager/env.ts";
import type { ModelInfo, RouteSnapshot } from "../../protocol/index.ts";
import {
  FLEET,
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

for (const target of dbTargets) {
  describe(`manager reconciliation (${target})`, () => {
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
        config: {
          workerTimeoutS: TIMEOUT_S,
          rescheduleAfterS: 0,
          launchRetryBaseS: 5,
          launchRetryMaxS: 40,
          ...config,
        },
      });
    };
    const register = (a: StubAgent, id: string, gpus = [gpu(0)]) =>
      t.register(registration(id, a.url, gpus), a);
    const beat = (a: StubAgent, id: string) =>
      t.heartbeat(id, { gpu_info: { gpus: [gpu(0)], warning: null }, instances: a.reports() });
    const info = async (alias: string) =>
      (await t.json<ModelInfo>("GET", `/v1/models/${alias}`)).body;
    const events = async (kind: string) =>
      (
        await db.query<{ n: number }>(
          sql`select count(*)::int as n from events where kind = ${kind}`,
        )
      )[0]?.n ?? 0;

    test("a refused launch leaves a failed instance with the agent's error, retried with backoff", async () => {
      await start();
      const a = agent();
      await register(a, "w1");
      a.refuse = { status: 400, message: "CUDA_VISIBLE_DEVICES 0 is busy" };
      const created = await t.json<ModelInfo>("POST", "/v1/models/register", {
        body: { alias: "flaky", model_name: "m" },
      });
      expect(created.status).toBe(201);
      expect(created.body.status).toBe("failed");
      expect(created.body.instances[0]?.status).toBe("failed");
      expect(created.body.instances[0]?.last_error).toContain("launch on worker w1 failed");
      expect(created.body.instances[0]?.last_error).toContain("CUDA_VISIBLE_DEVICES 0 is busy");
      expect(await events("instance.launch_failed")).toBe(1);
      // Consistent: the route exists and is not served.
      const routes = await t.json<RouteSnapshot>("GET", "/v1/routes");
      expect(routes.body.routes.map((r) => [r.alias, r.ready])).toEqual([["flaky", false]]);

      // Within the first backoff (5 s) nothing is retried.
      await t.manager.tick();
      expect(a.launches).toHaveLength(1);
      clock.advance(6_000);
      await t.manager.tick();
      expect(a.launches).toHaveLength(2);
      expect(await events("instance.launch_failed")).toBe(2);
      // Second failure: the next wait is 10 s.
      clock.advance(6_000);
      await t.manager.tick();
      expect(a.launches).toHaveLength(2);
      a.refuse = null;
      clock.advance(5_000);
      const tick = await t.manager.tick();
      expect(tick.launched).toHaveLength(1);
      expect(a.launches).toHaveLength(3);
      expect((await info("flaky")).instances[0]?.status).toBe("starting");
    });

    test("the retry backoff forgets earlier failures once the instance has been ready for LAUNCH_RETRY_RESET_S", async () => {
      await start({ launchRetryResetS: 60 });
      const a = agent();
      await register(a, "w1");
      const later = async (ms: number) => {
        clock.advance(ms);
        await beat(a, "w1");
        await t.manager.tick();
      };
      a.refuse = { status: 400, message: "CUDA_VISIBLE_DEVICES 0 is busy" };
      await t.json("POST", "/v1/models/register", { body: { alias: "bad-hour", model_name: "m" } });
      // Three failures (a bad hour): the next wait would be 5 × 2² = 20 s, then 40 s.
      await later(6_000);
      await later(11_000);
      expect(a.launches).toHaveLength(3);
      a.refuse = null;
      await later(11_000);
      await later(10_000);
      expect(a.launches).toHaveLength(4);
      a.markReady("bad-hour");
      await beat(a, "w1");
      expect((await info("bad-hour")).instances[0]?.status).toBe("ready");
      // Ready for longer than the reset period.
      for (let i = 0; i < 4; i++) await later(16_000);
      // The engine vanishes: one recent failure, so the first delay (5 s), not 40 s.
      a.instances.clear();
      clock.advance(21_000);
      await beat(a, "w1");
      expect((await info("bad-hour")).instances[0]?.status).toBe("failed");
      await later(6_000);
      expect(a.launches).toHaveLength(5);
    });

    test("a failure soon after readiness keeps the backoff it had", async () => {
      await start({ launchRetryResetS: 600 });
      const a = agent();
      await register(a, "w1");
      const later = async (ms: number) => {
        clock.advance(ms);
        await beat(a, "w1");
        await t.manager.tick();
      };
      a.refuse = { status: 400, message: "busy" };
      await t.json("POST", "/v1/models/register", { body: { alias: "shaky", model_name: "m" } });
      await later(6_000);
      await later(11_000);
      a.refuse = null;
      await later(11_000);
      await later(10_000);
      expect(a.launches).toHaveLength(4);
      a.markReady("shaky");
      await later(16_000);
      a.instances.clear();
      clock.advance(21_000);
      await beat(a, "w1");
      expect((await info("shaky")).instances[0]?.status).toBe("failed");
      // Four failures now: 5 × 2³ = 40 s before the next try.
      await later(16_000);
      await later(16_000);
      expect(a.launches).toHaveLength(4);
      await later(9_000);
      expect(a.launches).toHaveLength(5);
    });

    test("an unreachable agent is named in the error", async () => {
      await start({ agentTimeoutS: 1 });
      const a = agent();
      await register(a, "gone");
      a.stop();
      const created = await t.json<ModelInfo>("POST", "/v1/models/register", {
        body: { alias: "x", model_name: "m" },
      });
      expect(created.body.instances[0]?.last_error).toMatch(
        /launch on worker gone failed: agent at http:\/\/127\.0\.0\.1:\d+ unreachable/,
      );
    });

    test("a silent worker goes offline, its instances are lost and replaced on a worker that fits", async () => {
      await start();
      const a = agent();
      const b = agent();
      await register(a, "w1");
      await register(b, "w2");
      await t.json("POST", "/v1/models/register", {
        body: {
          alias: "moving",
          model_name: "m",
          worker_id: undefined,
          gpu_memory_utilization: 0.5,
        },
      });
      const placed = (await info("moving")).instances[0];
      const [dead, alive] = placed?.worker_id === "w1" ? [a, b] : [b, a];
      const deadId = placed?.worker_id ?? "";
      const aliveId = deadId === "w1" ? "w2" : "w1";
      dead.markReady("moving");
      await beat(dead, deadId);
      expect((await info("moving")).status).toBe("ready");

      // The manager just started: nobody is marked offline during the first timeout.
      clock.advance((TIMEOUT_S + 1) * 1000);
      await beat(alive, aliveId);
      const tick = await t.manager.tick();
      expect(tick.offline).toEqual([deadId]);
      const lostRoutes = await t.json<RouteSnapshot>("GET", "/v1/routes");
      // Rescheduled in the same tick (RESCHEDULE_AFTER_S 0): the new route is on the live worker.
      expect(lostRoutes.body.routes.map((r) => [r.worker_id, r.ready])).toEqual([[aliveId, false]]);
      expect(alive.launches.map((l) => l.alias)).toEqual(["moving"]);
      expect(await events("worker.offline")).toBe(1);
      expect(await events("instance.lost")).toBe(1);
      expect(await events("instance.rescheduled")).toBe(1);

      // The dead worker comes back still running the engine: nobody wants it, so it is stopped.
      await beat(dead, deadId);
      await eventually(() => dead.stops.includes("moving"), { what: "unwanted engine stopped" });
      const workers = await t.json<{ workers: { worker_id: string; status: string }[] }>(
        "GET",
        "/v1/workers",
      );
      expect(workers.body.workers.map((w) => w.status)).toEqual(["online", "online"]);
      expect(await events("worker.online")).toBe(1);
    });

    test("when most workers go silent at once, rescheduling holds off", async () => {
      await start();
      const [a, b, c] = [agent(), agent(), agent()];
      await register(a, "w1");
      await register(b, "w2");
      await register(c, "w3");
      await t.json("POST", "/v1/models/register", {
        body: { alias: "held", model_name: "m", worker_id: "w1" },
      });
      clock.advance((TIMEOUT_S + 1) * 1000);
      await beat(c, "w3");
      const tick = await t.manager.tick();
      expect(tick.offline.sort()).toEqual(["w1", "w2"]);
      expect(tick.holdingOff).toBe(true);
      expect(c.launches).toHaveLength(0);
      expect(await events("reconcile.hold_off")).toBe(1);
      const held = await info("held");
      expect(held.instances.map((i) => [i.worker_id, i.status])).toEqual([["w1", "lost"]]);
      // w1 returns with its engine: the lost instance is adopted back, nothing relaunched.
      a.markReady("held");
      await beat(a, "w1");
      const back = await info("held");
      expect(back.instances.map((i) => [i.worker_id, i.status])).toEqual([["w1", "ready"]]);
      expect(a.launches).toHaveLength(1);
      const resumed = await t.manager.tick();
      expect(resumed.holdingOff).toBe(false);
    });

    test("a pinned model whose worker dies is not moved, and says why", async () => {
      await start();
      const [a, b] = [agent(), agent()];
      await register(a, "w1");
      await register(b, "w2");
      await t.json("POST", "/v1/models/register", {
        body: { alias: "pinned", model_name: "m", worker_id: "w1" },
      });
      clock.advance((TIMEOUT_S + 1) * 1000);
      await beat(b, "w2");
      await t.manager.tick();
      const pinned = await info("pinned");
      expect(pinned.instances.map((i) => [i.worker_id, i.status])).toEqual([["w1", "lost"]]);
      expect(pinned.instances[0]?.last_error).toContain("w1: offline");
      expect(b.launches).toHaveLength(0);
    });

    test("a restarted manager adopts the engines agents report and relaunches nothing", async () => {
      await start();
      const a = agent();
      await register(a, "w1");
      await t.json("POST", "/v1/models/register", { body: { alias: "kept", model_name: "m" } });
      a.markReady("kept");
      await beat(a, "w1");
      const pid = (await info("kept")).instances[0]?.pid;
      await t.manager.close();

      // A new manager process on the same database: fresh caches, same rows.
      const { createApp } = await import("../../manager/app.ts");
      const { defaultConfig } = await import("../../manager/env.ts");
      const { silentLogger: silentLog } = await import("../../kit/log.ts");
      const restarted = createApp({
        db,
        clock,
        log: silentLog,
        config: defaultConfig({
          fleetToken: FLEET,
          adminToken: undefined,
          workerTimeoutS: TIMEOUT_S,
        }),
      });
      await restarted.start();
      try {
        // The agent re-registers (as after a 404) with its own credential, reporting its
        // running engine.
        const credential = t.credentials.get("w1")?.worker_credential;
        const reg = await restarted.app.request("/v1/workers/register", {
          method: "POST",
          headers: { authorization: `Bearer ${credential}`, "content-type": "application/json" },
          body: JSON.stringify(registration("w1", a.url, [gpu(0)], { instances: a.reports() })),
        });
        expect(reg.status).toBe(200);
        const tick = await restarted.tick();
        expect(tick.launched).toEqual([]);
        expect(a.launches).toHaveLength(1);
        const after = (await (await restarted.app.request("/v1/models/kept")).json()) as ModelInfo;
        expect(after.status).toBe("ready");
        expect(after.instances[0]?.pid).toBe(pid ?? -1);
      } finally {
        await restarted.close();
      }
    });

    test("after a database reset, reported engines are adopted only if a model wants them", async () => {
      await start();
      const a = agent();
      await register(a, "w1");
      await t.json("POST", "/v1/models/register", {
        body: { alias: "wanted", model_name: "m", gpu_memory_utilization: 0.4 },
      });
      await t.json("POST", "/v1/models/register", {
        body: { alias: "orphan", model_name: "m", gpu_memory_utilization: 0.4 },
      });
      a.markReady("wanted");
      a.markReady("orphan");
      // Lose the instance rows of "wanted" and the whole model "orphan".
      await db.query(sql`delete from instances where alias = 'wanted'`);
      await db.query(sql`delete from models where alias = 'orphan'`);
      t.manager.context.heartbeats.clear();
      await beat(a, "w1");
      const wanted = await info("wanted");
      expect(
        wanted.instances.map((i) => [i.worker_id, i.status, i.gpu_memory_utilization]),
      ).toEqual([["w1", "ready", 0.4]]);
      expect(wanted.routes).toHaveLength(1);
      await eventually(() => a.stops.includes("orphan"), { what: "orphan stopped" });
      expect(a.stops).not.toContain("wanted");
      expect(a.launches).toHaveLength(2);
    });

    test("an engine the agent stops reporting fails and is relaunched after the backoff", async () => {
      await start({ heartbeatIntervalS: 1, agentTimeoutS: 1 });
      const a = agent();
      await register(a, "w1");
      await t.json("POST", "/v1/models/register", { body: { alias: "vanish", model_name: "m" } });
      a.markReady("vanish");
      await beat(a, "w1");
      a.instances.clear();
      clock.advance(10_000);
      await beat(a, "w1");
      const failed = await info("vanish");
      expect(failed.instances[0]?.status).toBe("failed");
      expect(failed.instances[0]?.last_error).toContain("no longer reports");
      clock.advance(6_000);
      await t.manager.tick();
      expect(a.launches).toHaveLength(2);
      expect((await info("vanish")).instances[0]?.status).toBe("starting");
    });
  });
}
