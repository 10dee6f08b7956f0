import { expect, test } from "bun:test";
import { sql } from "drizzle-orm";
import { createLogger } from "../../../kit/log.ts";
import type {
  OpenAiError,
  RouteSnapshot,
  WorkerDrainReply,
  WorkerInfo,
} from "../../../protocol/index.ts";
import { gpu, type StubAgent, type TestManager } from "../helpers.ts";
import { describeApi } from "./harness.ts";

/**
 * `POST /v1/workers/{id}/drain`: an agent that is stopping takes its routes out of the
 * snapshot at once and gets no new placements; it stays draining until it registers again.
 */
describeApi("manager API: drain", (api) => {
  /** Two workers, each serving one ready replica of `m`. */
  async function twoReplicas(
    log?: ReturnType<typeof createLogger>,
  ): Promise<{ t: TestManager; a: StubAgent; b: StubAgent }> {
    const t = await api.manager(log ? { log } : {});
    const a = api.agent();
    const b = api.agent();
    await api.register(a, "w1", [gpu(0)]);
    await api.register(b, "w2", [gpu(0)]);
    expect(
      (
        await api.model({
          alias: "m",
          replicas: 2,
          placement: "spread",
          gpu_memory_utilization: 0.4,
        })
      ).status,
    ).toBe(201);
    for (const [id, agent] of [
      ["w1", a],
      ["w2", b],
    ] as const) {
      agent.markReady("m");
      await beat(t, id, agent);
    }
    return { t, a, b };
  }
  const beat = (t: TestManager, id: string, agent: StubAgent) =>
    t.heartbeat(id, { gpu_info: { gpus: [gpu(0)], warning: null }, instances: agent.reports() });
  const drain = (t: TestManager, id: string, body: unknown = { reason: "SIGTERM" }, as = id) =>
    t.json<WorkerDrainReply & OpenAiError>("POST", `/v1/workers/${id}/drain`, {
      token: t.credentials.get(as)?.worker_credential ?? null,
      body,
    });
  const served = async (t: TestManager) => {
    const { body } = await t.json<RouteSnapshot>("GET", "/v1/routes");
    return {
      version: body.version,
      workers: body.routes.filter((r) => r.ready).map((r) => r.worker_id),
    };
  };

  test("a draining worker's routes leave the snapshot at once and the version moves", async () => {
    const { t, a } = await twoReplicas();
    const before = await served(t);
    expect(before.workers.sort()).toEqual(["w1", "w2"]);

    const reply = await drain(t, "w1", { reason: "SIGTERM", timeout_s: 30 });
    expect(reply.status).toBe(200);
    expect(reply.body).toMatchObject({ worker_id: "w1", status: "draining", routes_unserved: 1 });
    const after = await served(t);
    expect(after.workers).toEqual(["w2"]);
    expect(after.version).not.toBe(before.version);
    expect(reply.body.routes_version).toBe(after.version);
    // The mounted router reads the same snapshot: it answers from w2 alone (checked in the
    // process test); here the worker's own view says draining.
    const worker = await t.json<WorkerInfo>("GET", "/v1/workers/w1");
    expect(worker.body.status).toBe("draining");

    // A heartbeat (one sent just before the drain, say) does not bring the routes back.
    expect((await beat(t, "w1", a)).status).toBe(200);
    expect((await served(t)).workers).toEqual(["w2"]);
    expect((await t.json<WorkerInfo>("GET", "/v1/workers/w1")).body.status).toBe("draining");

    // Draining twice changes nothing.
    const again = await drain(t, "w1");
    expect(again.body).toMatchObject({ status: "draining", routes_unserved: 0 });
    const events = await t.db.query<{ kind: string; from_status: string; to_status: string }>(
      sql`select kind, from_status, to_status from events where kind = 'worker.draining'`,
    );
    expect(events).toEqual([
      { kind: "worker.draining", from_status: "online", to_status: "draining" },
    ]);
  });

  test("a draining worker gets no new placements", async () => {
    const { t } = await twoReplicas();
    await drain(t, "w1");
    const pinned = await api.model({ alias: "pinned", worker_id: "w1" });
    expect(pinned.status).toBe(409);
    expect(pinned.body.error.message).toContain("w1: draining");
    const anywhere = await api.model({ alias: "anywhere", gpu_memory_utilization: 0.4 });
    expect(anywhere.status).toBe(201);
    expect(anywhere.body.instances.map((i) => i.worker_id)).toEqual(["w2"]);
  });

  test("registering again (the agent restarted) makes it online and its routes served", async () => {
    const { t, a } = await twoReplicas();
    await drain(t, "w1");
    expect((await served(t)).workers).toEqual(["w2"]);
    const registered = await api.register(a, "w1", [gpu(0)], { instances: a.reports() });
    expect(registered.status).toBe(200);
    expect((await served(t)).workers.sort()).toEqual(["w1", "w2"]);
  });

  test("only the worker's own credential drains it; the body is validated", async () => {
    const { t } = await twoReplicas();
    const other = await drain(t, "w1", { reason: "SIGTERM" }, "w2");
    expect(other.status).toBe(401);
    const none = await t.json<OpenAiError>("POST", "/v1/workers/w1/drain", {
      token: null,
      body: {},
    });
    expect(none.status).toBe(401);
    const admin = await t.json<OpenAiError>("POST", "/v1/workers/w1/drain", { body: {} });
    expect(admin.status).toBe(401);
    const bad = await drain(t, "w1", { timeout_s: -1 });
    expect(bad.status).toBe(400);
    expect(bad.body.error.param).toBe("timeout_s");
    expect((await served(t)).workers.sort()).toEqual(["w1", "w2"]);
  });

  test("the manager logs model and worker changes at info, one line per event", async () => {
    const lines: { level: string; msg: string; worker_id?: string; alias?: string }[] = [];
    const log = createLogger({
      service: "manager",
      write: (line) => lines.push(JSON.parse(line)),
    });
    const { t } = await twoReplicas(log);
    await drain(t, "w1");
    expect((await t.json("DELETE", "/v1/models/m")).status).toBe(200);
    const seen = lines.map((l) => `${l.level} ${l.msg} ${l.worker_id ?? l.alias ?? ""}`.trim());
    for (const expected of [
      "info worker registered w1",
      "info worker registered w2",
      "info model registered m",
      "info instance placed w1",
      "info instance ready w1",
      "info instance ready w2",
      "info worker draining w1",
      "info model deleted m",
    ]) {
      expect(seen).toContain(expected);
    }
  });
});
