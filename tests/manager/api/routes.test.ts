import { expect, test } from "bun:test";
import { sql } from "drizzle-orm";
import type { z } from "zod";
import type { ModelInfo, RouteSnapshot } from "../../../protocol/index.ts";
import type { routeLoadsSchema } from "../../../protocol/load.ts";
import { createRouterToken, gpu } from "../helpers.ts";
import { describeApi } from "./harness.ts";

type RouteLoads = z.infer<typeof routeLoadsSchema>;

/**
 * The route table routers poll: public URLs, ETag and 304.
 */
describeApi("manager API: routes", (api) => {
  test("routes use the worker's public URL when it has one and its worker_url otherwise", async () => {
    const t = await api.manager();
    const a = api.agent();
    const b = api.agent();
    await api.register(a, "pub", [gpu(0)], {
      public_worker_url: "https://u1-6006.seetacloud.com:8443",
    });
    await api.register(b, "lan", [gpu(0)]);
    const one = await api.model({ alias: "on-pub", worker_id: "pub" });
    const two = await api.model({ alias: "on-lan", worker_id: "lan" });
    expect(one.status).toBe(201);
    expect(one.body.routes).toEqual([
      {
        alias: "on-pub",
        model_name: "Qwen/Qwen2.5-0.5B",
        worker_id: "pub",
        worker_url: "https://u1-6006.seetacloud.com:8443",
        vllm_port: expect.any(Number),
        created_at: expect.any(String),
        // Launched, not ready yet: no router sends it traffic.
        ready: false,
      },
    ]);
    expect(two.body.routes[0]?.worker_url).toBe(b.url);
    // The launch itself always goes to the internal URL.
    expect(a.launches.map((l) => l.alias)).toEqual(["on-pub"]);
    const view = await t.db.query<{ alias: string; url: string; is_public: boolean }>(
      sql`select alias, url, is_public from route_table order by alias`,
    );
    expect(view).toEqual([
      { alias: "on-lan", url: b.url, is_public: false },
      { alias: "on-pub", url: "https://u1-6006.seetacloud.com:8443", is_public: true },
    ]);
    // PUBLIC_URL removed on re-registration: the route falls back to worker_url.
    await api.register(a, "pub", [gpu(0)], { public_worker_url: null });
    const after = await t.json<ModelInfo>("GET", "/v1/models/on-pub");
    expect(after.body.routes[0]?.worker_url).toBe(a.url);
  });

  test("GET /v1/routes carries an ETag; If-None-Match answers 304 until a route changes", async () => {
    const t = await api.manager();
    const token = await createRouterToken(t);
    const first = await t.call("GET", "/v1/routes", { token });
    const etag = first.headers.get("etag");
    expect(etag).toMatch(/^"[0-9a-f]{8}-\d+"$/);
    const body = (await first.json()) as RouteSnapshot;
    expect(`"${body.version}"`).toBe(etag ?? "");
    const same = await t.call("GET", "/v1/routes", {
      token,
      headers: { "if-none-match": etag ?? "" },
    });
    expect(same.status).toBe(304);
    expect(await same.text()).toBe("");
    await api.register(api.agent(), "w1", [gpu(0)]);
    await api.model({ alias: "etag" });
    const changed = await t.call("GET", "/v1/routes", {
      token,
      headers: { "if-none-match": etag ?? "" },
    });
    expect(changed.status).toBe(200);
    expect(changed.headers.get("etag")).not.toBe(etag);
    const one = await t.json<{ routes: { alias: string }[] }>("GET", "/v1/routes/etag", {
      token,
    });
    expect(one.body.routes.map((r) => r.alias)).toEqual(["etag"]);
    expect((await t.call("GET", "/v1/routes/none", { token })).status).toBe(404);
  });

  test("GET /v1/route-loads: each route's load from its last heartbeat; the snapshot version stays", async () => {
    const t = await api.manager();
    const token = await createRouterToken(t);
    const agent = api.agent();
    await api.register(agent, "busy", [gpu(0)]);
    await api.model({ alias: "loaded", worker_id: "busy" });
    agent.markReady("loaded");
    const beat = (load: { running: number; waiting: number; kv: number; hit: number | null }) =>
      t.heartbeat("busy", {
        gpu_info: { gpus: [gpu(0)], warning: null },
        instances: agent.reports().map((report) => ({ ...report, load })),
      });
    expect((await beat({ running: 3, waiting: 1, kv: 0.5, hit: 0.8 })).status).toBe(200);
    const version = (await t.json<RouteSnapshot>("GET", "/v1/routes", { token })).body.version;
    const loads = await t.json<RouteLoads>("GET", "/v1/route-loads", { token });
    expect(loads.status).toBe(200);
    expect(loads.body.loads).toEqual([
      {
        alias: "loaded",
        worker_id: "busy",
        load: { running: 3, waiting: 1, kv: 0.5, hit: 0.8 },
        age_s: expect.any(Number),
      },
    ]);
    // A new load is served at once and does not move the snapshot's version.
    expect((await beat({ running: 0, waiting: 0, kv: 0.1, hit: null })).status).toBe(200);
    const next = await t.json<RouteLoads>("GET", "/v1/route-loads", { token });
    expect(next.body.loads[0]?.load).toEqual({ running: 0, waiting: 0, kv: 0.1, hit: null });
    expect((await t.json<RouteSnapshot>("GET", "/v1/routes", { token })).body.version).toBe(
      version,
    );
    // The same access as the snapshot (a router credential or the admin).
    expect((await t.call("GET", "/v1/route-loads")).status).toBe(
      (await t.call("GET", "/v1/routes")).status,
    );
  });
});
