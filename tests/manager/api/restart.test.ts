import { expect, test } from "bun:test";
import { asc, eq } from "drizzle-orm";
import { schema } from "../../../db/index.ts";
import type {
  InstanceRecord,
  ModelInfo,
  OpenAiError,
  RouteSnapshot,
} from "../../../protocol/index.ts";
import { gpu, manualClock, type StubAgent, type TestManager } from "../helpers.ts";
import { describeApi } from "./harness.ts";

/**
 * `POST /v1/instances/{id}/restart`: a ready instance's route leaves the snapshot, the agent
 * is asked to restart the engine, and the agent's reports bring it back to ready.
 */
describeApi("manager API: instance restart", (api) => {
  /** One worker serving a ready instance of `m`; its id. */
  async function readyInstance(): Promise<{ t: TestManager; a: StubAgent; id: string }> {
    const t = await api.manager();
    const a = api.agent();
    await api.register(a, "w1", [gpu(0)]);
    const model = await api.model({ alias: "m", gpu_memory_utilization: 0.5 });
    expect(model.status).toBe(201);
    a.markReady("m");
    await beat(t, a);
    const id = model.body.instances[0]?.id;
    if (!id) throw new Error("no instance");
    expect((await instanceOf(t)).status).toBe("ready");
    return { t, a, id };
  }
  const beat = (t: TestManager, agent: StubAgent, id = "w1") =>
    t.heartbeat(id, { gpu_info: { gpus: [gpu(0)], warning: null }, instances: agent.reports() });
  const restart = (t: TestManager, id: string, body?: unknown, token?: string | null) =>
    t.json<InstanceRecord & OpenAiError>("POST", `/v1/instances/${id}/restart`, {
      ...(body === undefined ? {} : { body }),
      ...(token === undefined ? {} : { token }),
    });
  const instanceOf = async (t: TestManager) => {
    const { body } = await t.json<ModelInfo>("GET", "/v1/models/m");
    const instance = body.instances[0];
    if (!instance) throw new Error("no instance of m");
    return instance;
  };
  const served = async (t: TestManager) => {
    const { body } = await t.json<RouteSnapshot>("GET", "/v1/routes");
    return body.routes.filter((r) => r.alias === "m").map((r) => r.ready);
  };
  const events = async (t: TestManager, kind: string) =>
    t.db.db
      .select()
      .from(schema.events)
      .where(eq(schema.events.kind, kind))
      .orderBy(asc(schema.events.id));

  test("a ready instance restarts: its route leaves the snapshot, and the reports bring it back", async () => {
    const { t, a, id } = await readyInstance();
    expect(await served(t)).toEqual([true]);
    const before = await instanceOf(t);

    const reply = await restart(t, id, { requested_by: "ops@console", reason: "stuck KV cache" });
    expect(reply.status).toBe(202);
    expect(reply.body).toMatchObject({ id, status: "stopping", restarts: 1, port: before.port });
    expect(a.restarts).toEqual(["m"]);
    expect(await served(t)).toEqual([false]);
    const [event] = await events(t, "instance.restarted");
    expect(event).toMatchObject({
      instanceId: id,
      workerId: "w1",
      alias: "m",
      fromStatus: "ready",
      toStatus: "stopping",
      message: "restart requested by ops@console: stuck KV cache",
    });
    expect(event?.detail).toMatchObject({
      requested_by: "ops@console",
      auth: "admin token",
      reason: "stuck KV cache",
      pid: before.pid,
    });
    // The model is on its way back, not failed, while its only replica restarts.
    expect((await t.json<ModelInfo>("GET", "/v1/models/m")).body.status).toBe("starting");

    // A heartbeat the agent sent before it took the restart (the old engine, ready) arrives
    // late: it does not serve the route again.
    const engineNow = a.instances.get("m");
    if (!engineNow) throw new Error("the stub lost m");
    const stale = { ...engineNow, status: "ready" as const, restarts: 0 };
    expect(
      (
        await t.heartbeat("w1", {
          gpu_info: { gpus: [gpu(0)], warning: null },
          instances: [stale],
        })
      ).status,
    ).toBe(200);
    expect(await served(t)).toEqual([false]);
    // A heartbeat sent while the engine stops keeps it unserved.
    expect((await beat(t, a)).status).toBe(200);
    expect(await served(t)).toEqual([false]);
    // The new process loads: its progress shows again.
    const engine = a.instances.get("m");
    if (!engine) throw new Error("the stub lost m");
    Object.assign(engine, {
      status: "starting",
      pid: (before.pid ?? 0) + 1,
      progress: {
        phase: "loading_weights",
        percent: 40,
        elapsed_s: 2,
        eta_s: 3,
        last_line: "Loading safetensors checkpoint shards: 40% 2/5",
        started_at: new Date().toISOString(),
      },
    });
    await beat(t, a);
    const loading = await instanceOf(t);
    expect(loading.status).toBe("starting");
    expect(loading.progress?.phase).toBe("loading_weights");
    expect(await served(t)).toEqual([false]);
    a.markReady("m");
    await beat(t, a);
    const after = await instanceOf(t);
    expect([after.status, after.restarts, after.port]).toEqual(["ready", 1, before.port]);
    expect(after.pid).not.toBe(before.pid);
    expect(await served(t)).toEqual([true]);
  });

  test("a manager that died mid-restart leaves nothing stuck: the engine's report wins after a while", async () => {
    const clock = manualClock();
    const t = await api.manager({ clock });
    const a = api.agent();
    await api.register(a, "w1", [gpu(0)]);
    const model = await api.model({ alias: "m", gpu_memory_utilization: 0.5 });
    a.markReady("m");
    await beat(t, a);
    const id = model.body.instances[0]?.id ?? "";
    // The claim is written, but the agent never hears of the restart (as if the manager
    // stopped before calling it): the row is stopping, the engine ready as it was.
    const [row] = await t.db.db.select().from(schema.instances).where(eq(schema.instances.id, id));
    if (!row) throw new Error("no row");
    await t.manager.context.lifecycle.write(clock.now(), (w) =>
      w.restarted(row, { requested_by: "test" }, "restart requested by test"),
    );
    await beat(t, a);
    expect((await instanceOf(t)).status).toBe("stopping");
    clock.advance((3 * 2 + 5) * 1000 + 1);
    await beat(t, a);
    expect((await instanceOf(t)).status).toBe("ready");
    expect(await served(t)).toEqual([true]);
  });

  test("bad ids are 400, unknown ones 404, and the admin token is needed", async () => {
    const { t, id } = await readyInstance();
    const bad = await restart(t, "not-a-uuid");
    expect(bad.status).toBe(400);
    expect(bad.body.error).toMatchObject({ code: "invalid_request", param: "id" });
    const unknown = await restart(t, crypto.randomUUID());
    expect(unknown.status).toBe(404);
    expect(unknown.body.error).toMatchObject({ code: "instance_not_found", param: "id" });
    const extra = await restart(t, id, { force: true });
    expect(extra.status).toBe(400);
    expect(extra.body.error.message).toContain("force");
    const anonymous = await restart(t, id, undefined, null);
    expect(anonymous.status).toBe(401);
    expect((await instanceOf(t)).status).toBe("ready");
  });

  test("an instance that is not ready is 409 with what to do instead", async () => {
    const t = await api.manager();
    const a = api.agent();
    await api.register(a, "w1", [gpu(0)]);
    const model = await api.model({ alias: "m", gpu_memory_utilization: 0.5 });
    const id = model.body.instances[0]?.id ?? "";
    const starting = await restart(t, id);
    expect(starting.status).toBe(409);
    expect(starting.body.error.code).toBe("conflict");
    expect(starting.body.error.message).toContain("is starting: its engine is loading already");
    expect(a.restarts).toEqual([]);
  });

  test("two restarts at once: one wins, the other is 409, and the agent is asked once", async () => {
    const { t, a, id } = await readyInstance();
    const replies = await Promise.all([restart(t, id), restart(t, id)]);
    expect(replies.map((r) => r.status).sort()).toEqual([202, 409]);
    const loser = replies.find((r) => r.status === 409);
    expect(loser?.body.error.message).toContain(
      "is stopping: a restart (or a stop) is already under way",
    );
    expect(a.restarts).toEqual(["m"]);
    expect(await events(t, "instance.restarted")).toHaveLength(1);
  });

  test("a draining worker's instances are not restarted", async () => {
    const { t, a, id } = await readyInstance();
    const drained = await t.json("POST", "/v1/workers/w1/drain", {
      token: t.credentials.get("w1")?.worker_credential ?? null,
      body: { reason: "SIGTERM" },
    });
    expect(drained.status).toBe(200);
    const reply = await restart(t, id);
    expect(reply.status).toBe(409);
    expect(reply.body.error.message).toContain("worker w1 is draining");
    expect(a.restarts).toEqual([]);
    expect((await instanceOf(t)).status).toBe("ready");
  });

  test("an agent that cannot be reached: 502, and the instance is ready and served as before", async () => {
    const { t, a, id } = await readyInstance();
    a.stop();
    const reply = await restart(t, id);
    expect(reply.status).toBe(502);
    expect(reply.body.error.code).toBe("upstream_error");
    expect(reply.body.error.message).toContain("unreachable");
    expect(reply.body.error.message).toContain("Nothing was restarted");
    const instance = await instanceOf(t);
    expect([instance.status, instance.restarts]).toEqual(["ready", 0]);
    expect(await served(t)).toEqual([true]);
    const [failed] = await events(t, "instance.restart_failed");
    expect(failed).toMatchObject({ fromStatus: "stopping", toStatus: "ready" });
  });

  test("an agent that refuses: 409 with its reason; one without the engine: failed, relaunched", async () => {
    const { t, a, id } = await readyInstance();
    const engine = a.instances.get("m");
    if (!engine) throw new Error("the stub lost m");
    // The agent knows better than the last heartbeat: its engine is loading again.
    engine.status = "starting";
    const refused = await restart(t, id);
    expect(refused.status).toBe(409);
    expect(refused.body.error.message).toContain("only a ready engine can be restarted");
    expect((await instanceOf(t)).status).toBe("ready");

    // An agent older than the restart call: it says no such endpoint; nothing changes.
    a.oldAgent = true;
    engine.status = "ready";
    const old = await restart(t, id);
    expect(old.status).toBe(409);
    expect(old.body.error.message).toContain("cannot restart engines");
    expect(old.body.error.message).toContain("upgrade it");
    expect((await instanceOf(t)).status).toBe("ready");
    expect(await served(t)).toEqual([true]);
    a.oldAgent = false;

    a.instances.delete("m");
    const gone = await restart(t, id);
    expect(gone.status).toBe(409);
    expect(gone.body.error.message).toContain("has no engine for m");
    const instance = await instanceOf(t);
    expect(instance.status).toBe("failed");
    expect(instance.last_error).toContain("has no engine for m");
    expect(instance.next_retry_at).toBeDefined();
    expect(await served(t)).toEqual([false]);
  });
});
