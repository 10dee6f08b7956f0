import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Miniflare } from "miniflare";
import OpenAI, { APIError } from "openai";
import { type OpenTestDb, openFreshDb } from "../../devkit/db.ts";
import { corsPreflight, eventually } from "../../devkit/net.ts";
import { bunBin, repoRoot, stopAll } from "../../devkit/proc.ts";
import type { ApiKeyCreated, OpenAiError } from "../../protocol/index.ts";
import wrangler from "../../router/wrangler.toml";
import {
  addReplicas,
  createRouterCredential,
  fleetToken,
  type ServedManager,
  type Sim,
  serveManager,
  startRouter,
  startSim,
} from "./fixtures.ts";

/**
 * The OpenAI surface through a standalone router on each runtime: Bun (`bun router/main.ts`),
 * Node (`tsx router/node.ts`) and workerd (the built worker in Miniflare), driven by the
 * official `openai` client, with the engine simulator standing in for a worker. The routes,
 * keys and usage are the real manager's (its app served on loopback by this process).
 */

const maxBodyBytes = 64 * 1024;
const runtimes = ["bun", "node", "workerd"] as const;

let sim: Sim;
let buildDir: string;
let db: OpenTestDb;
const miniflares: Miniflare[] = [];

beforeAll(async () => {
  buildDir = mkdtempSync(join(tmpdir(), "router-worker-"));
  const build = Bun.spawn(
    [
      bunBin,
      "build",
      "router/worker.ts",
      "--target=browser",
      "--format=esm",
      "--outfile",
      join(buildDir, "worker.js"),
    ],
    { cwd: repoRoot, stdout: "pipe", stderr: "pipe" },
  );
  sim = await startSim({ names: ["qwen"] });
  db = await openFreshDb();
  expect(await build.exited).toBe(0);
});

afterAll(async () => {
  await Promise.all(miniflares.map((mf) => mf.dispose()));
  await stopAll();
  await db?.destroy();
  rmSync(buildDir, { recursive: true, force: true });
});

/** The built worker in Miniflare with `bindings`; resolves to its URL. */
async function startWorkerd(bindings: Record<string, string>): Promise<string> {
  const mf = new Miniflare({
    modules: [
      {
        type: "ESModule",
        path: "worker.js",
        contents: readFileSync(join(buildDir, "worker.js"), "utf8"),
      },
    ],
    // The date the committed deployment uses (router/wrangler.toml).
    compatibilityDate: wrangler.compatibility_date,
    bindings,
    host: "127.0.0.1",
    port: 0,
  });
  miniflares.push(mf);
  return String(await mf.ready).replace(/\/$/, "");
}

async function startRuntime(runtime: (typeof runtimes)[number], manager: ServedManager) {
  const extra = { MAX_BODY_BYTES: String(maxBodyBytes) };
  if (runtime !== "workerd") return (await startRouter(runtime, manager.url, extra)).url;
  const credential = await createRouterCredential(manager.url, "edge");
  return startWorkerd({
    MANAGER_URL: manager.url,
    ROUTER_TOKEN: credential.token,
    ROUTES_REFRESH_MS: "200",
    ...extra,
  });
}

for (const runtime of runtimes) {
  describe(`router on ${runtime}`, () => {
    let manager: ServedManager;
    let url: string;
    let client: OpenAI;
    let apiKey: string;
    let keyId: string;

    beforeAll(async () => {
      manager = await serveManager(db);
      await addReplicas(manager, "qwen", [{ workerId: "w1", url: sim.url }]);
      // Placed, but its engine never reports ready.
      await addReplicas(manager, "loading", [{ workerId: "w2", url: sim.url }], { ready: false });
      const key = await manager.json<ApiKeyCreated>("POST", "/v1/keys", {
        body: { name: `client-${runtime}` },
      });
      apiKey = key.body.key;
      keyId = key.body.id;
      url = await startRuntime(runtime, manager);
      client = new OpenAI({ baseURL: `${url}/v1`, apiKey, maxRetries: 0 });
    });

    afterAll(() => manager.close());

    const post = (path: string, body: BodyInit, headers: Record<string, string> = {}) =>
      fetch(`${url}${path}`, {
        method: "POST",
        headers: {
          authorization: `Bearer ${apiKey}`,
          "content-type": "application/json",
          ...headers,
        },
        body,
      });

    test("answers a chat completion with the model's text and usage", async () => {
      const reply = await client.chat.completions.create({
        model: "qwen",
        messages: [{ role: "user", content: "hello there" }],
        max_tokens: 8,
      });
      expect(reply.object).toBe("chat.completion");
      expect(reply.choices[0]?.message.content?.length).toBeGreaterThan(0);
      expect(reply.usage?.prompt_tokens).toBeGreaterThan(0);
    });

    test("streams chunks and ends with the usage chunk when the client asks for it", async () => {
      const stream = await client.chat.completions.create({
        model: "qwen",
        messages: [{ role: "user", content: "count to ten please" }],
        max_tokens: 16,
        stream: true,
        stream_options: { include_usage: true },
      });
      let text = "";
      const usageChunks = [];
      for await (const chunk of stream) {
        text += chunk.choices[0]?.delta.content ?? "";
        if (chunk.usage) usageChunks.push(chunk);
      }
      expect(text.length).toBeGreaterThan(0);
      expect(usageChunks).toHaveLength(1);
      expect(usageChunks[0]?.choices).toEqual([]);
      expect(usageChunks[0]?.usage?.completion_tokens).toBeGreaterThan(0);
    });

    test("hides the usage chunk it requested on behalf of a client that did not ask", async () => {
      const stream = await client.chat.completions.create({
        model: "qwen",
        messages: [{ role: "user", content: "count to ten please" }],
        max_tokens: 16,
        stream: true,
      });
      let chunks = 0;
      let text = "";
      for await (const chunk of stream) {
        chunks++;
        text += chunk.choices[0]?.delta.content ?? "";
        expect(chunk.usage ?? null).toBeNull();
        expect(chunk.choices.length).toBeGreaterThan(0);
      }
      expect(chunks).toBeGreaterThan(1);
      expect(text.length).toBeGreaterThan(0);
    });

    test("sends streams unbuffered with X-Accel-Buffering: no", async () => {
      const response = await post(
        "/v1/chat/completions",
        JSON.stringify({
          model: "qwen",
          messages: [{ role: "user", content: "hi" }],
          stream: true,
        }),
      );
      expect(response.status).toBe(200);
      expect(response.headers.get("content-type")).toContain("text/event-stream");
      expect(response.headers.get("x-accel-buffering")).toBe("no");
      const text = await response.text();
      expect(text.trimEnd().endsWith("data: [DONE]")).toBe(true);
    });

    test("lets a web page on another origin call it: preflight, then a readable answer", async () => {
      const page = "https://playground.example";
      const preflight = await corsPreflight(`${url}/v1/chat/completions`, page);
      expect(preflight.status).toBe(204);
      expect(preflight.headers.get("access-control-allow-origin")).toBe("*");
      expect(preflight.headers.get("access-control-allow-headers")).toBe(
        "authorization, content-type",
      );
      const response = await post(
        "/v1/chat/completions",
        JSON.stringify({ model: "qwen", messages: [{ role: "user", content: "hi" }] }),
        { origin: page },
      );
      expect(response.status).toBe(200);
      expect(response.headers.get("access-control-allow-origin")).toBe("*");
      expect(response.headers.get("access-control-expose-headers")).toContain("x-request-id");
      await response.text();
    });

    test("answers completions and embeddings", async () => {
      const completion = await client.completions.create({
        model: "qwen",
        prompt: "Once upon a time",
        max_tokens: 8,
      });
      expect(completion.choices[0]?.text.length).toBeGreaterThan(0);
      const embedding = await client.embeddings.create({ model: "qwen", input: ["a", "b"] });
      expect(embedding.data).toHaveLength(2);
      expect(embedding.data[0]?.embedding.length).toBeGreaterThan(0);
    });

    test("lists only aliases with a ready replica", async () => {
      const models = await client.models.list();
      const ids = models.data.map((model) => model.id);
      expect(ids).toEqual(["qwen"]);
      expect(models.data[0]?.object).toBe("model");
    });

    test("answers an unknown model with 404 model_not_found", async () => {
      const error = await client.chat.completions
        .create({ model: "nope", messages: [{ role: "user", content: "hi" }] })
        .catch((caught: unknown) => caught);
      expect(error).toBeInstanceOf(APIError);
      expect((error as APIError).status).toBe(404);
      expect((error as APIError).code).toBe("model_not_found");
    });

    test("answers a model without a ready replica with 503 and Retry-After", async () => {
      const error = await client.chat.completions
        .create({ model: "loading", messages: [{ role: "user", content: "hi" }] })
        .catch((caught: unknown) => caught);
      expect((error as APIError).status).toBe(503);
      expect((error as APIError).code).toBe("no_ready_replica");
      expect(Number((error as APIError).headers?.get("retry-after"))).toBeGreaterThan(0);
    });

    test("rejects malformed JSON and a missing model with 400 in OpenAI's shape", async () => {
      const malformed = await post("/v1/chat/completions", "{not json");
      expect(malformed.status).toBe(400);
      // Refusals carry a request id for the logs like proxied answers do.
      expect(malformed.headers.get("x-request-id")).toMatch(/^[\w.:-]+$/);
      expect(((await malformed.json()) as { error: { code: string } }).error.code).toBe(
        "invalid_json",
      );
      const missing = await post("/v1/chat/completions", JSON.stringify({ messages: [] }));
      expect(missing.status).toBe(400);
      const body = (await missing.json()) as { error: { param: string; type: string } };
      expect(body.error.param).toBe("model");
      expect(body.error.type).toBe("invalid_request_error");
    });

    test("rejects a body over MAX_BODY_BYTES with 413", async () => {
      const big = JSON.stringify({
        model: "qwen",
        messages: [{ role: "user", content: "x".repeat(maxBodyBytes + 10) }],
      });
      // The server answers before reading the body and then drops the connection (workerd
      // resets it), so this request gets a connection of its own.
      const response = await fetch(`${url}/v1/chat/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json" },
        body: big,
        keepalive: false,
      });
      expect(response.status).toBe(413);
      expect(((await response.json()) as { error: { code: string } }).error.code).toBe(
        "payload_too_large",
      );
    });

    test("requires a valid API key once one exists", async () => {
      const body = JSON.stringify({ model: "qwen", messages: [{ role: "user", content: "hi" }] });
      const none = await fetch(`${url}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body,
      });
      expect(none.status).toBe(401);
      const wrong = await post("/v1/chat/completions", body, { authorization: "Bearer sk-wrong" });
      expect(wrong.status).toBe(401);
      const error = (await wrong.json()) as { error: { type: string; code: string } };
      expect(error.error.type).toBe("authentication_error");
      expect(error.error.code).toBe("invalid_api_key");
      expect((await post("/v1/chat/completions", body)).status).toBe(200);
    });

    test("sends usage records with key, tokens and time to first token to the manager", async () => {
      const loading = await post(
        "/v1/chat/completions",
        JSON.stringify({ model: "loading", messages: [{ role: "user", content: "hi" }] }),
      );
      expect(loading.status).toBe(503);
      await loading.body?.cancel();
      const reply = await client.chat.completions.create({
        model: "qwen",
        messages: [{ role: "user", content: "usage please" }],
        max_tokens: 4,
        user: "usage-check",
      });
      const streamed = await client.chat.completions.create({
        model: "qwen",
        messages: [{ role: "user", content: "streamed usage please" }],
        max_tokens: 6,
        stream: true,
      });
      for await (const _ of streamed) {
        // drain
      }
      const records = await eventually(
        async () => {
          const rows = await manager.usage();
          const ok = rows.filter((r) => r.alias === "qwen" && r.status === 200);
          return ok.some((r) => r.stream) &&
            ok.some((r) => !r.stream) &&
            rows.some((r) => r.alias === "loading")
            ? rows
            : undefined;
        },
        { what: "usage records at the manager" },
      );
      const plain = records.find(
        (r) => r.alias === "qwen" && !r.stream && r.prompt_tokens === reply.usage?.prompt_tokens,
      );
      expect(plain?.api_key_id).toBe(keyId);
      expect(plain?.worker_id).toBe("w1");
      expect(plain?.completion_tokens).toBe(reply.usage?.completion_tokens ?? -1);
      const stream = records.find((r) => r.alias === "qwen" && r.stream);
      expect(stream?.completion_tokens).toBeGreaterThan(0);
      expect(stream?.ttft_ms).not.toBeNull();
      expect(stream?.latency_ms).toBeGreaterThanOrEqual(stream?.ttft_ms ?? 0);
      const notReady = records.filter((r) => r.alias === "loading");
      expect(notReady.map((r) => [r.status, r.worker_id])).toEqual(notReady.map(() => [503, null]));
      expect(notReady.length).toBeGreaterThan(0);
    });

    test("rejects a revoked key once the manager's table drops it", async () => {
      const other = await manager.json<ApiKeyCreated>("POST", "/v1/keys", {
        body: { name: "other" },
      });
      expect((await manager.call("DELETE", `/v1/keys/${keyId}`)).status).toBe(200);
      await eventually(
        async () => {
          const response = await post(
            "/v1/chat/completions",
            JSON.stringify({ model: "qwen", messages: [{ role: "user", content: "hi" }] }),
          );
          await response.body?.cancel();
          return response.status === 401;
        },
        { what: "revoked key rejected" },
      );
      const otherClient = new OpenAI({
        baseURL: `${url}/v1`,
        apiKey: other.body.key,
        maxRetries: 0,
      });
      const models = await otherClient.models.list();
      expect(models.data.map((model) => model.id)).toEqual(["qwen"]);
    });
  });
}

describe("router on workerd, misconfigured", () => {
  test("with FLEET_TOKEN and no ROUTER_TOKEN it answers 500 bad_environment naming the fix", async () => {
    const url = await startWorkerd({ MANAGER_URL: "http://127.0.0.1:9", FLEET_TOKEN: fleetToken });
    const response = await fetch(`${url}/v1/models`);
    expect(response.status).toBe(500);
    const body = (await response.json()) as OpenAiError;
    expect(body.error.code).toBe("bad_environment");
    expect(body.error.message).toContain("ROUTER_TOKEN");
    expect(body.error.message).toContain("fleet routers create");
    expect(body.error.message).not.toContain(fleetToken);
  });
});

describe("the committed edge deployment (router/wrangler.toml)", () => {
  test("deploys what npm run build:worker writes, with a date whose fetch honours custom ports", () => {
    const packageJson = JSON.parse(readFileSync(join(repoRoot, "package.json"), "utf8")) as {
      scripts: Record<string, string>;
    };
    const outfile = packageJson.scripts["build:worker"]?.match(/--outfile (\S+)/)?.[1];
    expect(outfile).toBeDefined();
    expect(join("router", wrangler.main)).toBe(outfile ?? "");
    expect(wrangler.build.command).toBe("npm run build:worker");
    expect(wrangler.compatibility_date >= "2024-09-02").toBe(true);
    expect(packageJson.scripts["deploy:edge"]).toBe(
      "npx wrangler deploy --config router/wrangler.toml",
    );
  });
});
