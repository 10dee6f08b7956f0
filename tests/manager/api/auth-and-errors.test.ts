import { expect, test } from "bun:test";
import {
  apiKeyCreateSchema,
  heartbeatSchema,
  type ModelInfo,
  modelRegistrationSchema,
  type OpenAiError,
  usageBatchSchema,
  type WorkerInfo,
  workerRegistrationSchema,
} from "../../../protocol/index.ts";
import { ADMIN, FLEET, gpu, registration } from "../helpers.ts";
import { describeApi } from "./harness.ts";

/**
 * Who may call what, how refusals look (OpenAI's error shape, the field named), and the
 * OpenAPI document against the protocol schemas.
 */
describeApi("manager API: tokens, errors and the API document", (api) => {
  test("management endpoints answer 401 without ADMIN_TOKEN, in OpenAI's error shape", async () => {
    const t = await api.manager();
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

  test("joining takes FLEET_TOKEN or ADMIN_TOKEN, nothing else (worker identity: worker-identity.test.ts)", async () => {
    const t = await api.manager();
    const body = registration("auth-w", "http://127.0.0.1:9", []);
    expect((await t.call("POST", "/v1/workers/register", { body, token: null })).status).toBe(401);
    expect(
      (await t.call("POST", "/v1/workers/register", { body, token: "nope-nope-nope" })).status,
    ).toBe(401);
    expect((await t.call("POST", "/v1/workers/register", { body, token: FLEET })).status).toBe(200);
    const other = registration("auth-admin", "http://127.0.0.1:9", []);
    expect(
      (await t.call("POST", "/v1/workers/register", { body: other, token: ADMIN })).status,
    ).toBe(200);
  });

  test("bad bodies answer 400 naming the field", async () => {
    const t = await api.manager();
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
      ["POST", "/v1/models/register", { alias: "ok", model_name: "m", gpu_ids: [0, 1] }, "gpu_ids"],
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
      // A batch whose records are not a list (a bad record inside one is set aside: usage.test.ts).
      ["POST", "/v1/usage", { records: "none" }, "records"],
      ["POST", "/v1/keys", { name: "" }, "name"],
    ];
    for (const [method, path, body, param] of cases) {
      const { status, body: reply } = await t.json<OpenAiError>(method, path, { body });
      expect({ path, status }).toEqual({ path, status: 400 });
      expect(reply.error.type).toBe("invalid_request_error");
      if (param) expect({ path, param: reply.error.param }).toEqual({ path, param });
      expect(reply.error.message.length).toBeGreaterThan(5);
    }
    // A heartbeat is checked against the worker's own credential first, then its body.
    await t.register(registration("w", "http://127.0.0.1:9", []));
    const beat = await t.heartbeat("w", { gpu_info: { gpus: [{ index: -1 }] } } as never);
    expect(beat.status).toBe(400);
    expect((beat.body as OpenAiError).error.param).toBe("gpu_info.gpus.0.index");
    const notJson = await t.json<OpenAiError>("POST", "/v1/models/register", {
      body: "{not json",
    });
    expect(notJson.status).toBe(400);
    expect(notJson.body.error.code).toBe("invalid_json");
  });

  test("a NUL character or a lone surrogate (which Postgres cannot store) is refused in an admin's body, naming the field, and replaced in what an agent reports", async () => {
    const t = await api.manager();
    const a = api.agent();
    const nul = "NUL characters";
    const lone = "surrogate without its pair";
    const refused: [string, unknown, string, string][] = [
      ["/v1/keys", { name: "ci\u0000" }, "name", nul],
      ["/v1/routers", { name: "edge\u0000" }, "name", nul],
      ["/v1/models/register", { alias: "m", model_name: "org/m\u0000" }, "model_name", nul],
      [
        "/v1/models/register",
        { alias: "m", model_name: "org/m", extra_args: ["--x\u0000"] },
        "extra_args.0",
        nul,
      ],
      ["/v1/workers/install-command", { "\u0000": 1 }, "\u0000", nul],
      // JSON.stringify writes a lone surrogate as its escape, as a client's JSON would.
      ["/v1/keys", { name: "ci\ud800" }, "name", lone],
      ["/v1/keys", { name: "ci\udfff tail" }, "name", lone],
      [
        "/v1/models/register",
        { alias: "m", model_name: "org/m", extra_args: ["--x", "\ud83d"] },
        "extra_args.1",
        lone,
      ],
    ];
    for (const [path, body, param, why] of refused) {
      const { status, body: reply } = await t.json<OpenAiError>("POST", path, { body });
      expect({ path, status }).toEqual({ path, status: 400 });
      expect(reply.error).toMatchObject({ code: "invalid_request", param });
      expect(reply.error.message).toContain(why);
    }
    // Nothing was written by the refused calls.
    expect((await t.json<{ keys: unknown[] }>("GET", "/v1/keys")).body.keys).toEqual([]);
    expect((await t.call("GET", "/v1/models/m")).status).toBe(404);
    // A whole pair (an emoji) is a character like any other.
    const emoji = await t.json<{ name: string }>("POST", "/v1/keys", {
      body: { name: "ci \ud83d\ude80" },
    });
    expect([emoji.status, emoji.body.name]).toEqual([201, "ci 🚀"]);

    // An agent's report: a GPU name and an engine's last error, as the hardware and engine printed them.
    const gpu0 = { ...gpu(0), name: "NVIDIA A100\u0000" };
    expect((await api.register(a, "w1", [gpu0], { agent_version: "0.1.0-\ud800" })).status).toBe(
      200,
    );
    expect((await api.model({ alias: "m", gpu_memory_utilization: 0.5 })).status).toBe(201);
    const [report] = a.reports();
    if (!report) throw new Error("the stub agent launched nothing");
    const beat = await t.heartbeat("w1", {
      gpu_info: { gpus: [gpu0], warning: null },
      instances: [
        { ...report, status: "failed", last_error: "engine exited: \u0000\u0000core dumped" },
      ],
    });
    expect(beat.status).toBe(200);
    const worker = await t.json<WorkerInfo>("GET", "/v1/workers/w1");
    expect(worker.body.gpu_info.gpus[0]?.name).toBe("NVIDIA A100\ufffd");
    expect(worker.body.agent_version).toBe("0.1.0-\ufffd");
    const model = await t.json<ModelInfo>("GET", "/v1/models/m");
    expect(model.body.instances[0]?.last_error).toBe("engine exited: \ufffd\ufffdcore dumped");
  });

  test("unknown paths and models answer 404 in OpenAI's shape", async () => {
    const t = await api.manager();
    const missing = await t.json<OpenAiError>("GET", "/v1/models/nothing-here");
    expect(missing.status).toBe(404);
    expect(missing.body.error.code).toBe("model_not_found");
    const nowhere = await t.json<OpenAiError>("GET", "/v1/nowhere");
    expect(nowhere.status).toBe(404);
    expect(nowhere.body.error.type).toBe("not_found_error");
  });

  test("errors quote what the client sent up to 256 characters, then an ellipsis", async () => {
    const t = await api.manager();
    const long = "x".repeat(100_000);
    const path = await t.json<OpenAiError>("GET", `/v1/${long}`);
    expect(path.status).toBe(404);
    expect(path.body.error.message).toBe(`no route for GET ${`/v1/${long}`.slice(0, 256)}…`);
    // An unknown field's name is quoted the same way.
    const field = await t.json<OpenAiError>("POST", "/v1/models/register", {
      body: { alias: "ok", model_name: "m", [long]: 1 },
    });
    expect(field.status).toBe(400);
    expect(field.body.error.message.length).toBeLessThan(400);
    expect(field.body.error.message).toContain(`${long.slice(0, 256)}…`);
  });

  test("GET /openapi.json describes each request body field for field from its protocol schema; /docs is a page naming the routes", async () => {
    const t = await api.manager();
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

  test("every endpoint in /openapi.json answers without a token", async () => {
    const t = await api.manager({ config: { adminToken: undefined, fleetToken: undefined } });
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
  });
});
