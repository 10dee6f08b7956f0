import { expect, test } from "bun:test";
import { sql } from "drizzle-orm";
import { silentLogger } from "../../../kit/log.ts";
import { createApp } from "../../../manager/app.ts";
import { defaultConfig } from "../../../manager/env.ts";
import type { ModelInfo, RouteSnapshot } from "../../../protocol/index.ts";
import { ADMIN, FLEET, gpu } from "../helpers.ts";
import { describeApi } from "./harness.ts";

/**
 * Registering models: placement on GPUs (claims, live memory, tensor parallel, pins,
 * binpack/spread, replicas), conflicts and races, listing and deleting.
 */
describeApi("manager API: models", (api) => {
  test("claims on one GPU sum to at most 1; the 409 says why, worker by worker", async () => {
    const t = await api.manager();
    const a = api.agent();
    await api.register(a, "w1", [gpu(0)]);
    expect((await api.model({ alias: "m1", gpu_memory_utilization: 0.5 })).status).toBe(201);
    expect((await api.model({ alias: "m2", gpu_memory_utilization: 0.45 })).status).toBe(201);
    const full = await api.model({ alias: "m3", gpu_memory_utilization: 0.1 });
    expect(full.status).toBe(409);
    expect(full.body.error.code).toBe("no_capacity");
    expect(full.body.error.message).toContain("w1: no GPU fits: GPU 0 claims 0.95 + 0.1 > 1");
    expect((full.body.error as unknown as { reasons: unknown[] }).reasons).toEqual([
      { worker_id: "w1", reason: "no GPU fits: GPU 0 claims 0.95 + 0.1 > 1" },
    ]);
    // Nothing half-written: no model, instance or route for m3.
    expect((await t.call("GET", "/v1/models/m3")).status).toBe(404);
    const rows = await t.db.query<{ n: number }>(
      sql`select count(*)::int as n from instances where alias = 'm3'`,
    );
    expect(rows[0]?.n).toBe(0);
    expect((await api.model({ alias: "m3", gpu_memory_utilization: 0.05 })).status).toBe(201);
  });

  test("a claim must fit the GPU's live free memory (memory used outside the fleet counts)", async () => {
    const _t = await api.manager();
    const a = api.agent();
    // 80 GiB GPU with 60 GiB used by something else.
    await api.register(a, "w1", [gpu(0, 81_920, 20_480)]);
    const big = await api.model({ alias: "big", gpu_memory_utilization: 0.5 });
    expect(big.status).toBe(409);
    expect(big.body.error.message).toContain("needs 40960 MiB, 20480 MiB free");
    expect((await api.model({ alias: "small", gpu_memory_utilization: 0.2 })).status).toBe(201);
  });

  test("tensor_parallel_size N takes N GPUs of one worker", async () => {
    const _t = await api.manager();
    await api.register(api.agent(), "one-gpu", [gpu(0)]);
    await api.register(api.agent(), "two-gpus", [gpu(0), gpu(1)]);
    const tp = await api.model({ alias: "tp2", tensor_parallel_size: 2 });
    expect(tp.status).toBe(201);
    expect(tp.body.instances.map((i) => [i.worker_id, i.gpu_ids])).toEqual([["two-gpus", [0, 1]]]);
    const tp4 = await api.model({ alias: "tp4", tensor_parallel_size: 4 });
    expect(tp4.status).toBe(409);
    expect(tp4.body.error.message).toContain(
      "one-gpu: has 1 GPU, tensor_parallel_size 4 needs 4 on one worker",
    );
    expect(tp4.body.error.message).toContain("two-gpus: has 2 GPUs");
  });

  test("pins are honoured or refused", async () => {
    const _t = await api.manager();
    const a = api.agent();
    await api.register(a, "w1", [gpu(0), gpu(1)]);
    await api.register(api.agent(), "w2", [gpu(0), gpu(1)]);
    const pinned = await api.model({ alias: "pinned", worker_id: "w1", gpu_ids: [1] });
    expect(pinned.status).toBe(201);
    expect(pinned.body.instances.map((i) => [i.worker_id, i.gpu_ids])).toEqual([["w1", [1]]]);
    expect(a.launches.at(-1)?.gpu_ids).toEqual([1]);
    const busy = await api.model({
      alias: "busy",
      worker_id: "w1",
      gpu_ids: [1],
      gpu_memory_utilization: 0.5,
    });
    expect(busy.status).toBe(409);
    expect(busy.body.error.message).toContain("w1: pinned GPU 1 claims 0.9 + 0.5 > 1");
    const nowhere = await api.model({ alias: "nowhere", worker_id: "w9" });
    expect(nowhere.status).toBe(409);
    expect(nowhere.body.error.message).toContain("w9: pinned worker is not registered");
    const noGpu = await api.model({ alias: "nogpu", gpu_ids: [7] });
    expect(noGpu.status).toBe(409);
    expect(noGpu.body.error.message).toContain("GPU 7 does not exist");
  });

  test("binpack fills the busier worker, spread the emptier; replicas go to distinct workers", async () => {
    const _t = await api.manager();
    await api.register(api.agent(), "w1", [gpu(0)]);
    await api.register(api.agent(), "w2", [gpu(0)]);
    await api.model({ alias: "first", gpu_memory_utilization: 0.3, worker_id: "w1" });
    const packed = await api.model({ alias: "packed", gpu_memory_utilization: 0.3 });
    expect(packed.body.instances[0]?.worker_id).toBe("w1");
    const spread = await api.model({
      alias: "spread",
      gpu_memory_utilization: 0.3,
      placement: "spread",
    });
    expect(spread.body.instances[0]?.worker_id).toBe("w2");
    const two = await api.model({ alias: "two", gpu_memory_utilization: 0.1, replicas: 2 });
    expect(two.status).toBe(201);
    expect(two.body.instances.map((i) => i.worker_id).sort()).toEqual(["w1", "w2"]);
    expect(two.body.routes).toHaveLength(2);
    const three = await api.model({ alias: "three", gpu_memory_utilization: 0.1, replicas: 3 });
    expect(three.status).toBe(409);
    expect(three.body.error.message).toContain("replicas go to distinct workers and only 2 fit");
  });

  test("a duplicate alias answers 409 and leaves the first model alone", async () => {
    const t = await api.manager();
    await api.register(api.agent(), "w1", [gpu(0)]);
    expect((await api.model({ alias: "dup", gpu_memory_utilization: 0.2 })).status).toBe(201);
    const again = await api.model({
      alias: "dup",
      gpu_memory_utilization: 0.2,
      model_name: "other",
    });
    expect(again.status).toBe(409);
    expect(again.body.error.code).toBe("alias_taken");
    expect(again.body.error.param).toBe("alias");
    const kept = await t.json<ModelInfo>("GET", "/v1/models/dup");
    expect(kept.body.model_name).toBe("Qwen/Qwen2.5-0.5B");
    expect(kept.body.instances).toHaveLength(1);
  });

  test("concurrent registrations never oversubscribe a GPU", async () => {
    const t = await api.manager();
    await api.register(api.agent(), "w1", [gpu(0)]);
    const replies = await Promise.all(
      Array.from({ length: 6 }, (_, i) =>
        api.model({ alias: `race-${i}`, gpu_memory_utilization: 0.3 }),
      ),
    );
    expect(replies.map((r) => r.status).sort()).toEqual([201, 201, 201, 409, 409, 409]);
    const claims = await t.db.query<{ total: number }>(
      sql`select sum(gpu_memory_utilization)::float8 as total from instances`,
    );
    expect(claims[0]?.total).toBeCloseTo(0.9, 6);
  });

  test("offline workers are not placed on", async () => {
    const t = await api.manager();
    await api.register(api.agent(), "w1", [gpu(0)]);
    await t.db.query(sql`update workers set status = 'offline'`);
    const none = await api.model({ alias: "x" });
    expect(none.status).toBe(409);
    expect(none.body.error.message).toContain("w1: offline");
  });

  test("GET /v1/models lists registered models in OpenAI's shape; DELETE stops engines and removes routes", async () => {
    const t = await api.manager();
    const a = api.agent();
    await api.register(a, "w1", [gpu(0)]);
    await api.model({ alias: "listed", gpu_memory_utilization: 0.4 });
    const list = await t.json<{ object: string; data: Record<string, unknown>[] }>(
      "GET",
      "/v1/models",
    );
    expect(list.body.object).toBe("list");
    expect(list.body.data).toEqual([
      expect.objectContaining({
        id: "listed",
        object: "model",
        owned_by: "vllm-fleet",
        status: "starting",
        model_name: "Qwen/Qwen2.5-0.5B",
        // Registered without one: null (the engine's default, not known here).
        max_model_len: null,
      }),
    ]);
    expect((await t.call("GET", "/v1/models", { token: FLEET })).status).toBe(401);
    const deleted = await t.json<{
      deleted: boolean;
      stopped: { worker_id: string; ok: boolean }[];
    }>("DELETE", "/v1/models/listed");
    expect(deleted.body).toMatchObject({
      deleted: true,
      stopped: [{ worker_id: "w1", ok: true }],
    });
    expect(a.stops).toEqual(["listed"]);
    const routes = await t.json<RouteSnapshot>("GET", "/v1/routes");
    expect(routes.body.routes).toEqual([]);
    expect((await t.call("DELETE", "/v1/models/listed")).status).toBe(404);
  });

  test("a model reads ready only once this process's router serves it (the snapshot catches up first)", async () => {
    const t = await api.manager();
    const a = api.agent();
    await api.register(a, "w1", [gpu(0)]);
    expect((await api.model({ alias: "m", gpu_memory_utilization: 0.5 })).status).toBe(201);
    // A second manager replica on the same database, its snapshot loaded now and never
    // polled again: only a read that catches it up can make it serve what the other wrote.
    const other = createApp({
      db: t.db,
      config: defaultConfig({ adminToken: ADMIN, fleetToken: FLEET, routesPollMs: 3_600_000 }),
      log: silentLogger,
    });
    try {
      await other.context.routes.refresh();
      const served = (alias: string) =>
        (other.routes.current()?.routes ?? []).filter((r) => r.alias === alias && r.ready).length;
      expect(served("m")).toBe(0);
      // The first manager takes the engine's ready report.
      a.markReady("m");
      const beat = await t.heartbeat("w1", {
        gpu_info: { gpus: [gpu(0)], warning: null },
        instances: a.reports(),
      });
      expect(beat.status).toBe(200);
      expect(served("m")).toBe(0);
      const read = await other.app.request("/v1/models/m", {
        headers: { authorization: `Bearer ${ADMIN}` },
      });
      expect(((await read.json()) as ModelInfo).status).toBe("ready");
      expect(served("m")).toBe(1);

      // The list says ready on the same terms.
      expect((await api.model({ alias: "n", gpu_memory_utilization: 0.4 })).status).toBe(201);
      a.markReady("n");
      await t.heartbeat("w1", {
        gpu_info: { gpus: [gpu(0)], warning: null },
        instances: a.reports(),
      });
      expect(served("n")).toBe(0);
      const list = await other.app.request("/v1/models", {
        headers: { authorization: `Bearer ${ADMIN}` },
      });
      const listed = ((await list.json()) as { data: { id: string; status: string }[] }).data;
      expect(listed.map(({ id, status }) => ({ id, status }))).toEqual([
        { id: "m", status: "ready" },
        { id: "n", status: "ready" },
      ]);
      expect(served("n")).toBe(1);
    } finally {
      await other.close();
    }
  });
});
