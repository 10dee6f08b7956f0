import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { silentLogger } from "../../kit/log.ts";
import { consolePaths } from "../../manager/console/routes.tsx";
import type { OpenAiError, OpenAiModelList, RouteSnapshot } from "../../protocol/index.ts";
import { createApp as createRouterApp } from "../../router/app.ts";
import { ADMIN, FLEET, type TestManager, testManager } from "./helpers.ts";

type OpenApiDocument = {
  openapi: string;
  paths: Record<string, Record<string, { security?: Record<string, string[]>[] }>>;
};

/**
 * The console's pages and form posts (manager/console): HTML for people, not API, so the
 * document leaves them out. Excluded by their own list, which console.test.ts checks answers
 * no JSON, so an API route cannot hide here.
 */
const consolePages = new Set<string>(consolePaths);

/** `METHOD /path/{param}` for every API route a Hono app answers (middleware excluded). */
function answered(routes: { method: string; path: string }[]): string[] {
  const out = new Set<string>();
  for (const { method, path } of routes) {
    if (method === "ALL" || consolePages.has(path)) continue;
    out.add(`${method} ${path.replace(/:([^/]+)/g, "{$1}")}`);
  }
  return [...out].sort();
}

function documented(doc: OpenApiDocument): Set<string> {
  const out = new Set<string>();
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const method of Object.keys(item)) out.add(`${method.toUpperCase()} ${path}`);
  }
  return out;
}

describe("manager /openapi.json", () => {
  let t: TestManager;
  let doc: OpenApiDocument;
  beforeAll(async () => {
    t = await testManager();
    doc = (await t.json<OpenApiDocument>("GET", "/openapi.json", { token: null })).body;
  });
  afterAll(async () => {
    await t.close();
  });

  test("documents every route the manager answers", () => {
    const paths = answered(t.manager.app.routes);
    expect(paths).toContain("POST /v1/chat/completions");
    expect(paths).toContain("GET /docs/assets/{file}");
    const missing = paths.filter((route) => !documented(doc).has(route));
    expect(missing).toEqual([]);
  });

  test("documents every route of the router, which the manager mounts", () => {
    const router = createRouterApp({
      routes: { current: () => undefined },
      usage: { record() {} },
      log: silentLogger,
    });
    const paths = answered(router.routes);
    expect(paths.length).toBeGreaterThanOrEqual(6);
    const missing = paths.filter((route) => !documented(doc).has(route));
    expect(missing).toEqual([]);
  });

  test("documents nothing the manager does not answer", async () => {
    const paths = new Set(answered(t.manager.app.routes));
    expect([...documented(doc)].filter((route) => !paths.has(route))).toEqual([]);
  });

  test("each operation names who may call it", () => {
    const security = (method: string, path: string) =>
      doc.paths[path]?.[method]?.security?.flatMap((entry) => Object.keys(entry));
    expect(security("post", "/v1/models/register")).toEqual(["adminToken"]);
    expect(security("post", "/v1/workers/register")).toEqual([
      "workerCredential",
      "joinToken",
      "adminToken",
    ]);
    expect(security("post", "/v1/workers/{worker_id}/heartbeat")).toEqual(["workerCredential"]);
    expect(security("post", "/v1/workers/{worker_id}/rotate")).toEqual(["adminToken"]);
    expect(security("delete", "/v1/workers/{worker_id}")).toEqual(["adminToken"]);
    expect(security("get", "/v1/routes")).toEqual(["routerToken", "adminToken"]);
    expect(security("post", "/v1/usage")).toEqual(["routerToken", "adminToken"]);
    expect(security("post", "/v1/routers")).toEqual(["adminToken"]);
    expect(security("post", "/v1/chat/completions")).toEqual(["apiKey"]);
    expect(security("get", "/health")).toEqual([]);
    expect(security("get", "/metrics")).toEqual(["adminToken", "metricsToken"]);
  });

  test("the OpenAI request bodies carry the fields clients send", () => {
    const body = (path: string) => {
      const post = doc.paths[path]?.post as
        | {
            requestBody?: {
              content: Record<string, { schema: { properties: Record<string, unknown> } }>;
            };
          }
        | undefined;
      return Object.keys(post?.requestBody?.content["application/json"]?.schema.properties ?? {});
    };
    expect(body("/v1/chat/completions")).toEqual(
      expect.arrayContaining(["model", "messages", "stream", "stream_options", "max_tokens"]),
    );
    expect(body("/v1/completions")).toEqual(expect.arrayContaining(["model", "prompt"]));
    expect(body("/v1/embeddings")).toEqual(expect.arrayContaining(["model", "input"]));
  });
});

describe("manager route validation", () => {
  let t: TestManager;
  beforeAll(async () => {
    t = await testManager();
  });
  afterAll(async () => {
    await t.close();
  });

  test("a bad path or query parameter is a 400 naming it", async () => {
    const alias = await t.json<OpenAiError>("GET", "/v1/models/-bad-alias");
    expect(alias.status).toBe(400);
    expect(alias.body.error.param).toBe("alias");
    expect(alias.body.error.message).toStartWith("alias: ");
    const tail = await t.json<OpenAiError>("GET", "/v1/models/some-model/logs?tail=0");
    expect(tail.status).toBe(400);
    expect(tail.body.error.type).toBe("invalid_request_error");
    expect(tail.body.error.param).toBe("tail");
    const worker = await t.json<OpenAiError>("GET", "/v1/workers/-nope", { token: ADMIN });
    expect(worker.body.error.param).toBe("worker_id");
  });

  test("the token is checked before the body is read", async () => {
    const reply = await t.json<OpenAiError>("POST", "/v1/models/register", {
      token: FLEET,
      body: "{not json",
    });
    expect(reply.status).toBe(401);
  });

  test("a body that is not JSON says what to send", async () => {
    // What `curl -d '{...}'` sends without -H 'Content-Type: application/json'.
    const curl = await t.manager.app.request("/v1/models/register", {
      method: "POST",
      headers: {
        authorization: `Bearer ${ADMIN}`,
        "content-type": "application/x-www-form-urlencoded",
      },
      body: '{"alias":"a","model_name":"m"}',
    });
    const error = ((await curl.json()) as OpenAiError).error;
    expect(curl.status).toBe(400);
    expect(error.code).toBe("invalid_request");
    expect(error.message).toContain("Content-Type: application/json");
  });

  test("malformed JSON is invalid_json; an empty body is validated as {}", async () => {
    const broken = await t.json<OpenAiError>("POST", "/v1/usage", { body: '{"records": [' });
    expect(broken.status).toBe(400);
    expect(broken.body.error.code).toBe("invalid_json");
    const empty = await t.json<OpenAiError>("POST", "/v1/models/register", { body: "" });
    expect(empty.status).toBe(400);
    expect(empty.body.error.param).toBe("alias");
    const noBody = await t.manager.app.request("/v1/keys", {
      method: "POST",
      headers: { authorization: `Bearer ${ADMIN}` },
    });
    expect(noBody.status).toBe(201);
    expect(((await noBody.json()) as { name: string }).name).toBe("default");
  });
});

describe("manager mounts the router by name", () => {
  let t: TestManager;
  const upstream: string[] = [];
  beforeAll(async () => {
    t = await testManager();
  });
  afterAll(async () => {
    await t.close();
  });

  const snapshotWithModel: RouteSnapshot = {
    version: "test-1",
    routes: [
      {
        alias: "chat-model",
        model_name: "org/chat-model",
        worker_id: "w1",
        worker_url: "http://127.0.0.1:9",
        vllm_port: 8000,
        created_at: "2026-01-01T00:00:00.000Z",
        instance_id: "i1",
        ready: true,
        agent_token: "fa_agent-of-w1",
        max_model_len: null,
        routing: "prefix_affinity",
      },
    ],
    api_keys: [],
  };
  const mountRouter = () =>
    t.manager.mount(
      createRouterApp({
        routes: { current: () => snapshotWithModel },
        usage: { record() {} },
        // As the entries mount it: counting on the manager's registry.
        metrics: t.manager.metrics,
        log: silentLogger,
        fetch: async (input, init) => {
          upstream.push(`${init?.method ?? "GET"} ${String(input)}`);
          return Response.json({ object: "chat.completion", choices: [] });
        },
      }),
    );

  test("without a router the OpenAI routes answer 404 in OpenAI's shape", async () => {
    const reply = await t.json<OpenAiError>("POST", "/v1/chat/completions", {
      token: null,
      body: { model: "chat-model", messages: [] },
    });
    expect(reply.status).toBe(404);
    expect(reply.body.error.type).toBe("not_found_error");
    expect((await t.call("GET", "/v1/models", { token: null })).status).toBe(401);
  });

  test("with a router, inference, /metrics and /healthz reach it; other paths do not", async () => {
    mountRouter();
    const reply = await t.call("POST", "/v1/chat/completions", {
      token: null,
      // `messages` breaks the documented schema: the router checks only what it reads.
      body: { model: "chat-model", messages: "not an array" },
    });
    expect(reply.status).toBe(200);
    await reply.text(); // the request is accounted once its body has been sent
    expect(upstream).toEqual(["POST http://127.0.0.1:9/proxy/chat-model/v1/chat/completions"]);
    const refused = await t.json<OpenAiError>("GET", "/metrics", { token: null });
    expect(refused.status).toBe(401);
    expect(refused.body.error.code).toBe("unauthorized");
    const metrics = await t.call("GET", "/metrics", { token: ADMIN });
    expect(await metrics.text()).toContain('fleet_router_requests_total{alias="chat-model"');
    const health = await t.json<{ routes_version: string }>("GET", "/healthz", { token: null });
    expect(health.body.routes_version).toBe("test-1");
    const nowhere = await t.json<OpenAiError>("GET", "/v1/nowhere", { token: null });
    expect(nowhere.status).toBe(404);
    expect(nowhere.body.error.message).toBe("no route for GET /v1/nowhere");
  });

  test("GET /v1/models is the manager's list for an admin and the router's otherwise", async () => {
    mountRouter();
    const admin = await t.json<OpenAiModelList>("GET", "/v1/models", { token: ADMIN });
    expect(admin.status).toBe(200);
    expect(admin.body.data).toEqual([]); // nothing registered in this manager's database
    const served = await t.json<OpenAiModelList>("GET", "/v1/models", { token: null });
    expect(served.status).toBe(200);
    expect(served.body.data.map((m) => m.id)).toEqual(["chat-model"]);
  });
});

describe("manager /docs", () => {
  let t: TestManager;
  beforeAll(async () => {
    t = await testManager();
  });
  afterAll(async () => {
    await t.close();
  });

  test("the page and every file it references are served by the manager", async () => {
    const page = await t.call("GET", "/docs", { token: null });
    expect(page.status).toBe(200);
    expect(page.headers.get("content-type")).toContain("text/html");
    const html = await page.text();
    const references = [...html.matchAll(/\b(?:src|href)="([^"]+)"/g)].map((m) => m[1] ?? "");
    expect(references.length).toBeGreaterThanOrEqual(4);
    const base = new URL("http://manager.invalid/docs");
    const expectedType: Record<string, string> = {
      ".css": "text/css",
      ".js": "text/javascript",
      ".png": "image/png",
      ".json": "application/json",
    };
    const scripts: string[] = [];
    for (const reference of references) {
      const url = new URL(reference, base);
      expect({ reference, origin: url.origin }).toEqual({ reference, origin: base.origin });
      const reply = await t.call("GET", url.pathname, { token: null });
      expect({ reference, status: reply.status }).toEqual({ reference, status: 200 });
      const extension = /\.[a-z]+$/.exec(url.pathname)?.[0] ?? "";
      expect(reply.headers.get("content-type") ?? "").toStartWith(expectedType[extension] ?? "?");
      const bytes = new Uint8Array(await reply.arrayBuffer());
      expect(bytes.byteLength).toBeGreaterThan(100);
      if (extension === ".js") scripts.push(new TextDecoder().decode(bytes));
    }
    expect(references).toContain("docs/assets/swagger-ui-bundle.js");
    // The page's own script loads the manager's document and turns off the public validator.
    const init = scripts.find((script) => script.includes("SwaggerUIBundle({"));
    expect(init).toContain('"openapi.json"');
    expect(init).toContain("validatorUrl: null");
  });

  test("without JavaScript the page still lists the operations", async () => {
    const html = await (await t.call("GET", "/docs", { token: null })).text();
    expect(html).toContain("<noscript>");
    expect(html).toContain("/v1/models/register");
    expect(html).toContain("/v1/chat/completions");
  });

  test("a name that is not a file of the page is a 404", async () => {
    for (const name of ["package.json", "..%2Fpackage.json", "swagger-ui.js.map"]) {
      const reply = await t.json<OpenAiError>("GET", `/docs/assets/${name}`, { token: null });
      expect({ name, status: reply.status }).toEqual({ name, status: 404 });
    }
  });
});
