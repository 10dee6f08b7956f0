import { expect, test } from "bun:test";
import { sql } from "drizzle-orm";
import type {
  ModelInfo,
  OpenAiError,
  RouteSnapshot,
  WorkerCredentials,
} from "../../../protocol/index.ts";
import { FLEET, gpu, registration } from "../helpers.ts";
import { describeApi } from "./harness.ts";

/**
 * Workers register (an idempotent upsert), heartbeat, and are forgotten: what agents see.
 */
describeApi("manager API: workers", (api) => {
  test("a heartbeat from an unknown worker answers 404 so the agent registers again", async () => {
    const t = await api.manager();
    const { status, body } = await t.json<OpenAiError>("POST", "/v1/workers/ghost/heartbeat", {
      token: FLEET,
      body: { gpu_info: { gpus: [], warning: null }, instances: [] },
    });
    expect(status).toBe(404);
    expect(body.error.code).toBe("worker_not_found");
  });

  test("registration is an idempotent upsert: one row, GPUs replaced, URLs updated", async () => {
    const t = await api.manager();
    const a = api.agent();
    await api.register(a, "w1", [gpu(0), gpu(1)]);
    const again = await api.register(a, "w1", [gpu(0, 40_960)], {
      public_worker_url: "https://w1.example:8443/",
    });
    expect(again.status).toBe(200);
    expect(again.body).toMatchObject({
      worker_id: "w1",
      status: "online",
      heartbeat_interval_s: 5,
    });
    const { body } = await t.json<{
      workers: { worker_id: string; public_worker_url: string; gpu_info: { gpus: unknown[] } }[];
    }>("GET", "/v1/workers");
    expect(body.workers).toHaveLength(1);
    expect(body.workers[0]?.gpu_info.gpus).toHaveLength(1);
    expect(body.workers[0]?.public_worker_url).toBe("https://w1.example:8443");
  });

  test("concurrent registrations of one worker id leave one row; of concurrent joins one wins", async () => {
    const t = await api.manager();
    const a = api.agent();
    const joins = await Promise.all(
      Array.from({ length: 10 }, () =>
        t.json("POST", "/v1/workers/register", {
          token: FLEET,
          body: registration("same", a.url, [gpu(0), gpu(1)]),
        }),
      ),
    );
    expect(joins.map((r) => r.status).sort()).toEqual([200, ...Array(9).fill(409)]);
    const winner = joins.find((r) => r.status === 200)?.body as {
      credentials: WorkerCredentials;
    };
    t.credentials.set("same", winner.credentials);
    const replies = await Promise.all(
      Array.from({ length: 20 }, () => api.register(a, "same", [gpu(0), gpu(1)])),
    );
    expect(replies.every((r) => r.status === 200)).toBe(true);
    const rows = await t.db.query<{ workers: number; gpus: number }>(
      sql`select (select count(*)::int from workers) as workers, (select count(*)::int from gpus) as gpus`,
    );
    expect(rows[0]).toEqual({ workers: 1, gpus: 2 });
  });

  test("heartbeats set readiness from reports and write events only for transitions", async () => {
    const t = await api.manager();
    const a = api.agent();
    await api.register(a, "w1", [gpu(0)]);
    await api.model({ alias: "hb" });
    const beat = () =>
      t.heartbeat("w1", { gpu_info: { gpus: [gpu(0)], warning: null }, instances: a.reports() });
    const events = async () =>
      (await t.db.query<{ n: number }>(sql`select count(*)::int as n from events`))[0]?.n ?? 0;
    await beat();
    const before = await events();
    for (let i = 0; i < 5; i++) expect((await beat()).status).toBe(200);
    expect(await events()).toBe(before);
    a.markReady("hb");
    await beat();
    expect(await events()).toBe(before + 1);
    const info = await t.json<ModelInfo>("GET", "/v1/models/hb");
    expect(info.body.status).toBe("ready");
    const routes = await t.json<RouteSnapshot>("GET", "/v1/routes");
    expect(routes.body.routes.map((r) => [r.alias, r.ready])).toEqual([["hb", true]]);
  });
});
