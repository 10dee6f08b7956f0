import { expect, test } from "bun:test";
import { sql } from "drizzle-orm";
import type { ModelInfo, RouteSnapshot } from "../../../protocol/index.ts";
import { createRouterToken, gpu } from "../helpers.ts";
import { describeApi } from "./harness.ts";

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
});
