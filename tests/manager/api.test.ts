import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { sql } from "drizzle-orm";
import { dbTargets, type OpenTestDb, openFreshDb } from "../../devkit/db.ts";
import {
  type ApiKeyCreated,
  apiKeyCreateSchema,
  heartbeatSchema,
  type ModelInfo,
  modelRegistrationSchema,
  type OpenAiError,
  type RouteSnapshot,
  usageBatchSchema,
  workerRegistrationSchema,
} from "../../protocol/index.ts";
import {
  ADMIN,
  FLEET,
  gpu,
  registration,
  type StubAgent,
  stubAgent,
  type TestManager,
  testManager,
} from "./helpers.ts";

const agents: StubAgent[] = [];
function agent(): StubAgent {
  const a = stubAgent();
  agents.push(a);
  return a;
}
afterAll(() => {
  for (const a of agents) a.stop();
});

for (const target of dbTargets) {
  describe(`manager API (${target})`, () => {
    let t: TestManager;
    beforeAll(async () => {
      t = await testManager({ target });
    });
    afterAll(async () => {
      await t.close();
    });

    test("management endpoints answer 401 without ADMIN_TOKEN, in OpenAI's error shape", async () => {
      for (const token of [null, "wrong-token-123", FLEET]) {
        const { status, body } = await t.json<OpenAiError>("GET", "/v1/workers", { token });
        expect(status).toBe(401);
        expect(body.error.type).toBe("authentication_error");
        expect(body.error.message).toContain("ADMIN_TOKEN");
      }
      expect(
        (
          await t.call("POST", "/v1/models/register", {
            token: FLEET,
            body: { alias: "a", model_name: "m" },
          })
        ).status,
      ).toBe(401);
      expect((await t.call("POST", "/v1/keys", { token: null, body: {} })).status).toBe(401);
      expect((await t.call("GET", "/v1/workers")).status).toBe(200);
    });

    test("agent and router endpoints take FLEET_TOKEN or ADMIN_TOKEN, nothing else", async () => {
      const body = registration("auth-w", "http://127.0.0.1:9", []);
      expect((await t.call("POST", "/v1/workers/register", { body, token: null })).status).toBe(
        401,
      );
      expect(
        (await t.call("POST", "/v1/workers/register", { body, token: "nope-nope-nope" })).status,
      ).toBe(401);
      expect((await t.call("POST", "/v1/workers/register", { body, token: FLEET })).status).toBe(
        200,
      );
      expect((await t.call("POST", "/v1/workers/register", { body, token: ADMIN })).status).toBe(
        200,
      );
      expect((await t.call("GET", "/v1/routes", { token: FLEET })).status).toBe(200);
      expect((await t.call("GET", "/v1/routes", { token: ADMIN })).status).toBe(200);
      expect((await t.call("GET", "/v1/routes", { token: null })).status).toBe(401);
    });

    test("bad bodies answer 400 naming the field", async () => {
      const cases: [string, string, unknown, string | null][] = [
        ["POST", "/v1/models/register", { alias: "-bad", model_name: "m" }, "alias"],
        [
          "POST",
          "/v1/models/register",
          { alias: "ok", model_name: "m", gpu_memory_utilization: 1.5 },
          "gpu_memory_utilization",
        ],
        [
          "POST",
          "/v1/models/register",
          { alias: "ok", model_name: "m", tensor_parallel_size: 0 },
          "tensor_parallel_size",
        ],
        ["POST", "/v1/models/register", { alias: "ok", model_name: "m", surprise: 1 }, null],
        [
          "POST",
          "/v1/models/register",
          { alias: "ok", model_name: "m", gpu_ids: [0, 1] },
          "gpu_ids",
        ],
        [
          "POST",
          "/v1/models/register",
          { alias: "ok", model_name: "m", worker_id: "w", replicas: 2 },
          "replicas",
        ],
        [
          "POST",
          "/v1/models/register",
          { alias: "ok", model_name: "m", extra_args: ["--port=1"] },
          "extra_args.0",
        ],
        ["POST", "/v1/workers/register", { worker_id: "w" }, "worker_url"],
        ["POST", "/v1/workers/register", { ...registration("w", "ftp://x", []) }, "worker_url"],
        [
          "POST",
          "/v1/workers/w/heartbeat",
          { gpu_info: { gpus: [{ index: -1 }] } },
          "gpu_info.gpus.0.index",
        ],
        ["POST", "/v1/usage", { records: [{ ts: "yesterday" }] }, "records.0.ts"],
        ["POST", "/v1/keys", { name: "" }, "name"],
      ];
      for (const [method, path, body, param] of cases) {
        const { status, body: reply } = await t.json<OpenAiError>(method, path, { body });
        expect({ path, status }).toEqual({ path, status: 400 });
        expect(reply.error.type).toBe("invalid_request_error");
        if (param) expect({ path, param: reply.error.param }).toEqual({ path, param });
        expect(reply.error.message.length).toBeGreaterThan(5);
      }
      const notJson = await t.json<OpenAiError>("POST", "/v1/models/register", {
        body: "{not json",
      });
      expect(notJson.status).toBe(400);
      expect(notJson.body.error.code).toBe("invalid_json");
    });

    test("a heartbeat from an unknown worker answers 404 so the agent registers again", async () => {
      const { status, body } = await t.json<OpenAiError>("POST", "/v1/workers/ghost/heartbeat", {
        token: FLEET,
        body: { gpu_info: { gpus: [], warning: null }, instances: [] },
      });
      expect(status).toBe(404);
      expect(body.error.code).toBe("worker_not_found");
    });

    test("unknown paths and models answer 404 in OpenAI's shape", async () => {
      const missing = await t.json<OpenAiError>("GET", "/v1/models/nothing-here");
      expect(missing.status).toBe(404);
      expect(missing.body.error.code).toBe("model_not_found");
      const nowhere = await t.json<OpenAiError>("GET", "/v1/nowhere");
      expect(nowhere.status).toBe(404);
      expect(nowhere.body.error.type).toBe("not_found_error");
    });

    test("GET /openapi.json describes each request body field for field from its protocol schema; /docs is a page naming the routes", async () => {
      type JsonSchema = { $ref?: string; properties?: Record<string, unknown> };
      type Operation = { requestBody?: { content: Record<string, { schema: JsonSchema }> } };
      const { status, body } = await t.json<{
        openapi: string;
        paths: Record<string, Record<string, Operation>>;
        components?: { schemas?: Record<string, JsonSchema> };
      }>("GET", "/openapi.json", { token: null });
      expect(status).toBe(200);
      expect(body.openapi).toStartWith("3.");
      const bodyFields = (pattern: RegExp, method: string): string[] => {
        const path = Object.keys(body.paths).find((candidate) => pattern.test(candidate));
        let schema = path
          ? body.paths[path]?.[method]?.requestBody?.content["application/json"]?.schema
          : undefined;
        const ref = schema?.$ref?.replace("#/components/schemas/", "");
        if (ref) schema = body.components?.schemas?.[ref];
        return Object.keys(schema?.properties ?? {}).sort();
      };
      const bodies: [RegExp, { shape: Record<string, unknown> }][] = [
        [/^\/v1\/models\/register$/, modelRegistrationSchema],
        [/^\/v1\/workers\/register$/, workerRegistrationSchema],
        [/^\/v1\/workers\/\{[^}]+\}\/heartbeat$/, heartbeatSchema],
        [/^\/v1\/keys$/, apiKeyCreateSchema],
        [/^\/v1\/usage$/, usageBatchSchema],
      ];
      for (const [path, schema] of bodies) {
        expect({ path: String(path), fields: bodyFields(path, "post") }).toEqual({
          path: String(path),
          fields: Object.keys(schema.shape).sort(),
        });
      }
      expect(Object.keys(body.paths)).toContain("/v1/routes");
      const docs = await t.call("GET", "/docs", { token: null });
      expect(docs.headers.get("content-type")).toContain("text/html");
      expect(await docs.text()).toContain("/v1/workers/register");
    });
  });

  describe(`manager registry and placement (${target})`, () => {
    let t: TestManager;
    let db: OpenTestDb;
    beforeAll(async () => {
      db = await openFreshDb(target);
    });
    afterEach(async () => {
      await t?.close();
    });
    afterAll(async () => {
      await db.destroy();
    });

    const register = (a: StubAgent | { url: string }, id: string, gpus = [gpu(0)], extra = {}) =>
      t.json("POST", "/v1/workers/register", {
        token: FLEET,
        body: registration(id, a.url, gpus, extra),
      });
    const model = (body: Record<string, unknown>) =>
      t.json<ModelInfo & OpenAiError>("POST", "/v1/models/register", {
        body: { model_name: "Qwen/Qwen2.5-0.5B", ...body },
      });

    test("registration is an idempotent upsert: one row, GPUs replaced, URLs updated", async () => {
      t = await testManager({ db });
      const a = agent();
      await register(a, "w1", [gpu(0), gpu(1)]);
      const again = await register(a, "w1", [gpu(0, 40_960)], {
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

    test("routes use the worker's public URL when it has one and its worker_url otherwise", async () => {
      t = await testManager({ db });
      const a = agent();
      const b = agent();
      await register(a, "pub", [gpu(0)], {
        public_worker_url: "https://u1-6006.seetacloud.com:8443",
      });
      await register(b, "lan", [gpu(0)]);
      const one = await model({ alias: "on-pub", worker_id: "pub" });
      const two = await model({ alias: "on-lan", worker_id: "lan" });
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
      await register(a, "pub", [gpu(0)], { public_worker_url: null });
      const after = await t.json<ModelInfo>("GET", "/v1/models/on-pub");
      expect(after.body.routes[0]?.worker_url).toBe(a.url);
    });

    test("claims on one GPU sum to at most 1; the 409 says why, worker by worker", async () => {
      t = await testManager({ db });
      const a = agent();
      await register(a, "w1", [gpu(0)]);
      expect((await model({ alias: "m1", gpu_memory_utilization: 0.5 })).status).toBe(201);
      expect((await model({ alias: "m2", gpu_memory_utilization: 0.45 })).status).toBe(201);
      const full = await model({ alias: "m3", gpu_memory_utilization: 0.1 });
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
      expect((await model({ alias: "m3", gpu_memory_utilization: 0.05 })).status).toBe(201);
    });

    test("a claim must fit the GPU's live free memory (memory used outside the fleet counts)", async () => {
      t = await testManager({ db });
      const a = agent();
      // 80 GiB GPU with 60 GiB used by something else.
      await register(a, "w1", [gpu(0, 81_920, 20_480)]);
      const big = await model({ alias: "big", gpu_memory_utilization: 0.5 });
      expect(big.status).toBe(409);
      expect(big.body.error.message).toContain("needs 40960 MiB, 20480 MiB free");
      expect((await model({ alias: "small", gpu_memory_utilization: 0.2 })).status).toBe(201);
    });

    test("tensor_parallel_size N takes N GPUs of one worker", async () => {
      t = await testManager({ db });
      await register(agent(), "one-gpu", [gpu(0)]);
      await register(agent(), "two-gpus", [gpu(0), gpu(1)]);
      const tp = await model({ alias: "tp2", tensor_parallel_size: 2 });
      expect(tp.status).toBe(201);
      expect(tp.body.instances.map((i) => [i.worker_id, i.gpu_ids])).toEqual([
        ["two-gpus", [0, 1]],
      ]);
      const tp4 = await model({ alias: "tp4", tensor_parallel_size: 4 });
      expect(tp4.status).toBe(409);
      expect(tp4.body.error.message).toContain(
        "one-gpu: has 1 GPU, tensor_parallel_size 4 needs 4 on one worker",
      );
      expect(tp4.body.error.message).toContain("two-gpus: has 2 GPUs");
    });

    test("pins are honoured or refused", async () => {
      t = await testManager({ db });
      const a = agent();
      await register(a, "w1", [gpu(0), gpu(1)]);
      await register(agent(), "w2", [gpu(0), gpu(1)]);
      const pinned = await model({ alias: "pinned", worker_id: "w1", gpu_ids: [1] });
      expect(pinned.status).toBe(201);
      expect(pinned.body.instances.map((i) => [i.worker_id, i.gpu_ids])).toEqual([["w1", [1]]]);
      expect(a.launches.at(-1)?.gpu_ids).toEqual([1]);
      const busy = await model({
        alias: "busy",
        worker_id: "w1",
        gpu_ids: [1],
        gpu_memory_utilization: 0.5,
      });
      expect(busy.status).toBe(409);
      expect(busy.body.error.message).toContain("w1: pinned GPU 1 claims 0.9 + 0.5 > 1");
      const nowhere = await model({ alias: "nowhere", worker_id: "w9" });
      expect(nowhere.status).toBe(409);
      expect(nowhere.body.error.message).toContain("w9: pinned worker is not registered");
      const noGpu = await model({ alias: "nogpu", gpu_ids: [7] });
      expect(noGpu.status).toBe(409);
      expect(noGpu.body.error.message).toContain("GPU 7 does not exist");
    });

    test("binpack fills the busier worker, spread the emptier; replicas go to distinct workers", async () => {
      t = await testManager({ db });
      await register(agent(), "w1", [gpu(0)]);
      await register(agent(), "w2", [gpu(0)]);
      await model({ alias: "first", gpu_memory_utilization: 0.3, worker_id: "w1" });
      const packed = await model({ alias: "packed", gpu_memory_utilization: 0.3 });
      expect(packed.body.instances[0]?.worker_id).toBe("w1");
      const spread = await model({
        alias: "spread",
        gpu_memory_utilization: 0.3,
        placement: "spread",
      });
      expect(spread.body.instances[0]?.worker_id).toBe("w2");
      const two = await model({ alias: "two", gpu_memory_utilization: 0.1, replicas: 2 });
      expect(two.status).toBe(201);
      expect(two.body.instances.map((i) => i.worker_id).sort()).toEqual(["w1", "w2"]);
      expect(two.body.routes).toHaveLength(2);
      const three = await model({ alias: "three", gpu_memory_utilization: 0.1, replicas: 3 });
      expect(three.status).toBe(409);
      expect(three.body.error.message).toContain("replicas go to distinct workers and only 2 fit");
    });

    test("a duplicate alias answers 409 and leaves the first model alone", async () => {
      t = await testManager({ db });
      await register(agent(), "w1", [gpu(0)]);
      expect((await model({ alias: "dup", gpu_memory_utilization: 0.2 })).status).toBe(201);
      const again = await model({ alias: "dup", gpu_memory_utilization: 0.2, model_name: "other" });
      expect(again.status).toBe(409);
      expect(again.body.error.code).toBe("alias_taken");
      expect(again.body.error.param).toBe("alias");
      const kept = await t.json<ModelInfo>("GET", "/v1/models/dup");
      expect(kept.body.model_name).toBe("Qwen/Qwen2.5-0.5B");
      expect(kept.body.instances).toHaveLength(1);
    });

    test("concurrent registrations never oversubscribe a GPU", async () => {
      t = await testManager({ db });
      await register(agent(), "w1", [gpu(0)]);
      const replies = await Promise.all(
        Array.from({ length: 6 }, (_, i) =>
          model({ alias: `race-${i}`, gpu_memory_utilization: 0.3 }),
        ),
      );
      expect(replies.map((r) => r.status).sort()).toEqual([201, 201, 201, 409, 409, 409]);
      const claims = await t.db.query<{ total: number }>(
        sql`select sum(gpu_memory_utilization)::float8 as total from instances`,
      );
      expect(claims[0]?.total).toBeCloseTo(0.9, 6);
    });

    test("concurrent registrations of one worker id leave one row", async () => {
      t = await testManager({ db });
      const a = agent();
      const replies = await Promise.all(
        Array.from({ length: 20 }, () => register(a, "same", [gpu(0), gpu(1)])),
      );
      expect(replies.every((r) => r.status === 200)).toBe(true);
      const rows = await t.db.query<{ workers: number; gpus: number }>(
        sql`select (select count(*)::int from workers) as workers, (select count(*)::int from gpus) as gpus`,
      );
      expect(rows[0]).toEqual({ workers: 1, gpus: 2 });
    });

    test("offline workers are not placed on", async () => {
      t = await testManager({ db });
      await register(agent(), "w1", [gpu(0)]);
      await t.db.query(sql`update workers set status = 'offline'`);
      const none = await model({ alias: "x" });
      expect(none.status).toBe(409);
      expect(none.body.error.message).toContain("w1: offline");
    });

    test("heartbeats set readiness from reports and write events only for transitions", async () => {
      t = await testManager({ db });
      const a = agent();
      await register(a, "w1", [gpu(0)]);
      await model({ alias: "hb" });
      const beat = () =>
        t.json("POST", "/v1/workers/w1/heartbeat", {
          token: FLEET,
          body: { gpu_info: { gpus: [gpu(0)], warning: null }, instances: a.reports() },
        });
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
      const routes = await t.json<RouteSnapshot>("GET", "/v1/routes", { token: FLEET });
      expect(routes.body.routes.map((r) => [r.alias, r.ready])).toEqual([["hb", true]]);
    });

    test("GET /v1/routes carries an ETag; If-None-Match answers 304 until a route changes", async () => {
      t = await testManager({ db });
      const first = await t.call("GET", "/v1/routes", { token: FLEET });
      const etag = first.headers.get("etag");
      expect(etag).toMatch(/^"[0-9a-f]{8}-\d+"$/);
      const body = (await first.json()) as RouteSnapshot;
      expect(`"${body.version}"`).toBe(etag ?? "");
      const same = await t.call("GET", "/v1/routes", {
        token: FLEET,
        headers: { "if-none-match": etag ?? "" },
      });
      expect(same.status).toBe(304);
      expect(await same.text()).toBe("");
      await register(agent(), "w1", [gpu(0)]);
      await model({ alias: "etag" });
      const changed = await t.call("GET", "/v1/routes", {
        token: FLEET,
        headers: { "if-none-match": etag ?? "" },
      });
      expect(changed.status).toBe(200);
      expect(changed.headers.get("etag")).not.toBe(etag);
      const one = await t.json<{ routes: { alias: string }[] }>("GET", "/v1/routes/etag", {
        token: FLEET,
      });
      expect(one.body.routes.map((r) => r.alias)).toEqual(["etag"]);
      expect((await t.call("GET", "/v1/routes/none", { token: FLEET })).status).toBe(404);
    });

    test("API keys: shown once, stored as SHA-256 only, listed without the key, revocable", async () => {
      t = await testManager({ db });
      const created = await t.json<ApiKeyCreated>("POST", "/v1/keys", { body: { name: "ci" } });
      expect(created.status).toBe(201);
      expect(created.body.key).toMatch(/^sk-fleet-[A-Za-z0-9_-]{43}$/);
      expect(created.body.prefix).toBe(created.body.key.slice(0, 13));
      const stored = await t.db.query<Record<string, unknown>>(sql`select * from api_keys`);
      expect(JSON.stringify(stored)).not.toContain(created.body.key);
      const hash = new Bun.CryptoHasher("sha256").update(created.body.key).digest("hex");
      expect(stored[0]?.key_hash).toBe(hash);
      const list = await t.json<{ keys: Record<string, unknown>[] }>("GET", "/v1/keys");
      expect(list.body.keys).toHaveLength(1);
      expect(list.body.keys[0]).not.toHaveProperty("key");
      const snapshot = await t.json<RouteSnapshot>("GET", "/v1/routes", { token: FLEET });
      expect(snapshot.body.api_keys).toEqual([{ id: created.body.id, key_hash: hash }]);
      const revoked = await t.json<{ revoked_at: string | null }>(
        "DELETE",
        `/v1/keys/${created.body.id}`,
      );
      expect(revoked.status).toBe(200);
      expect(revoked.body.revoked_at).not.toBeNull();
      const after = await t.json<RouteSnapshot>("GET", "/v1/routes", { token: FLEET });
      expect(after.body.api_keys).toEqual([]);
      expect((await t.call("DELETE", "/v1/keys/key_missing")).status).toBe(404);
      expect((await t.call("POST", "/v1/keys", { body: "" })).status).toBe(201);
    });

    test("usage batches become request_logs rows", async () => {
      t = await testManager({ db });
      const key = await t.json<ApiKeyCreated>("POST", "/v1/keys", { body: { name: "u" } });
      const record = (i: number, keyId: string | null) => ({
        ts: new Date().toISOString(),
        api_key_id: keyId,
        alias: "qwen",
        worker_id: "w1",
        status: 200,
        latency_ms: 10 + i,
        ttft_ms: 5,
        prompt_tokens: 7,
        completion_tokens: i,
        stream: i % 2 === 0,
      });
      const records = [
        record(0, key.body.id),
        record(1, "key_gone"),
        ...Array.from({ length: 1498 }, (_, i) => record(i + 2, null)),
      ];
      const reply = await t.json<{ accepted: number }>("POST", "/v1/usage", {
        token: FLEET,
        body: { records },
      });
      expect(reply).toEqual({ status: 202, body: { accepted: 1500 } });
      const rows = await t.db.query<{ n: number; keyed: number; tokens: number }>(
        sql`select count(*)::int as n, count(api_key_id)::int as keyed, sum(completion_tokens)::int as tokens from request_logs`,
      );
      expect(rows[0]).toEqual({ n: 1500, keyed: 1, tokens: (1499 * 1500) / 2 });
    });

    test("the in-process usage sink batches records and flushes on close", async () => {
      t = await testManager({ db });
      for (let i = 0; i < 20; i++) {
        t.manager.usage.record({
          ts: new Date().toISOString(),
          api_key_id: null,
          alias: "a",
          worker_id: null,
          status: 200,
          latency_ms: 1,
          ttft_ms: null,
          prompt_tokens: null,
          completion_tokens: null,
          stream: false,
        });
      }
      const before = await t.db.query<{ n: number }>(
        sql`select count(*)::int as n from request_logs`,
      );
      expect(before[0]?.n).toBe(0);
      await t.manager.close();
      const after = await t.db.query<{ n: number }>(
        sql`select count(*)::int as n from request_logs`,
      );
      expect(after[0]?.n).toBe(20);
    });

    test("GET /v1/models lists registered models in OpenAI's shape; DELETE stops engines and removes routes", async () => {
      t = await testManager({ db });
      const a = agent();
      await register(a, "w1", [gpu(0)]);
      await model({ alias: "listed", gpu_memory_utilization: 0.4 });
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
      const routes = await t.json<RouteSnapshot>("GET", "/v1/routes", { token: FLEET });
      expect(routes.body.routes).toEqual([]);
      expect((await t.call("DELETE", "/v1/models/listed")).status).toBe(404);
    });
  });
}

describe("manager in open mode (loopback, no tokens)", () => {
  test("every endpoint in /openapi.json answers without a token", async () => {
    const t = await testManager({ config: { adminToken: undefined, fleetToken: undefined } });
    try {
      const doc = await t.json<{ paths: Record<string, Record<string, unknown>> }>(
        "GET",
        "/openapi.json",
        { token: null },
      );
      const operations = Object.entries(doc.body.paths).flatMap(([path, methods]) =>
        Object.keys(methods)
          .filter((method) => ["get", "post", "put", "patch", "delete"].includes(method))
          .map((method) => ({ method: method.toUpperCase(), path })),
      );
      // The whole management surface, not a sample of it.
      expect(operations.length).toBeGreaterThanOrEqual(14);
      const refused: string[] = [];
      for (const { method, path } of operations) {
        const concrete = path.replace(/\{[^}]+\}/g, "open-mode-x");
        const response = await t.call(method, concrete, {
          token: null,
          ...(method === "POST" ? { body: {} } : {}),
        });
        await response.body?.cancel();
        if (response.status === 401 || response.status === 403) {
          refused.push(`${method} ${path}: ${response.status}`);
        }
      }
      expect(refused).toEqual([]);
    } finally {
      await t.close();
    }
  });
});
