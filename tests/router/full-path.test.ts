import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import OpenAI from "openai";
import { type OpenTestDb, openFreshDb } from "../../devkit/db.ts";
import { startAgent } from "../../devkit/fleet.ts";
import { eventually } from "../../devkit/net.ts";
import { stopAll } from "../../devkit/proc.ts";
import type { ModelInfo } from "../../protocol/index.ts";
import {
  fleetToken,
  type Router,
  type ServedManager,
  serveManager,
  startRouter,
} from "./fixtures.ts";

/**
 * The full path: client → standalone router → real agent (`bun agent/main.ts`, launching
 * the simulator through VLLM_BIN) → engine, with the real manager app (served on loopback by
 * this process) placing the model on the agent. The agent joined with FLEET_TOKEN; the router
 * authenticates to it with the route's agent credential, which the agent alone accepts; the
 * client's own key never travels past the router.
 */

let db: OpenTestDb;
let manager: ServedManager;
let router: Router;
let agentUrl: string;

beforeAll(async () => {
  db = await openFreshDb();
  manager = await serveManager(db, { config: { heartbeatIntervalS: 0.5 } });
  const agent = await startAgent({
    managerUrl: manager.url,
    workerId: "full-path",
    env: { FLEET_TOKEN: fleetToken },
  });
  agentUrl = agent.url;
  await eventually(async () => (await manager.call("GET", "/v1/workers/full-path")).ok, {
    what: "the agent to register",
    timeoutMs: 20_000,
  });
  const placed = await manager.call("POST", "/v1/models/register", {
    body: { alias: "qwen", model_name: "org/qwen", gpu_memory_utilization: 0.5 },
  });
  expect(placed.status).toBe(201);
  await eventually(
    async () => {
      const { body } = await manager.json<ModelInfo>("GET", "/v1/models/qwen");
      if (body.status === "failed") throw new Error(JSON.stringify(body.instances));
      return body.status === "ready";
    },
    { what: "the engine behind the agent to be ready", timeoutMs: 30_000 },
  );
  router = await startRouter("bun", manager.url);
}, 90_000);

afterAll(async () => {
  await stopAll();
  await manager?.close();
  await db?.destroy();
});

describe("router → agent → engine", () => {
  test("answers chat and streams through the agent with its agent credential", async () => {
    const client = new OpenAI({ baseURL: `${router.url}/v1`, apiKey: "client-key", maxRetries: 0 });
    const reply = await client.chat.completions.create({
      model: "qwen",
      messages: [{ role: "user", content: "through the agent" }],
      max_tokens: 8,
    });
    expect(reply.choices[0]?.message.content?.length).toBeGreaterThan(0);
    const stream = await client.chat.completions.create({
      model: "qwen",
      messages: [{ role: "user", content: "stream through the agent" }],
      max_tokens: 8,
      stream: true,
    });
    let text = "";
    for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? "";
    expect(text.length).toBeGreaterThan(0);
    const records = await eventually(async () => {
      const rows = await manager.usage();
      return rows.length >= 2 ? rows : undefined;
    });
    expect(records).toHaveLength(2);
    expect(records.every((r) => r.status === 200 && r.worker_id === "full-path")).toBe(true);
    expect(records.find((r) => r.stream)?.completion_tokens).toBeGreaterThan(0);
  });

  test("the Responses API reaches the engine through the agent, whole and streamed", async () => {
    const client = new OpenAI({ baseURL: `${router.url}/v1`, apiKey: "client-key", maxRetries: 0 });
    const whole = await client.responses.create({
      model: "qwen",
      input: "responses via the agent",
    });
    expect(whole.output_text).toBe("responses via the agent");
    const stream = await client.responses.create({
      model: "qwen",
      input: "and streamed",
      stream: true,
    });
    let text = "";
    for await (const event of stream) {
      if (event.type === "response.output_text.delta") text += event.delta;
    }
    expect(text).toBe("and streamed");
  });

  test("a rerank reaches the engine through the agent, and its tokens are recorded", async () => {
    const before = (await manager.usage()).length;
    const response = await fetch(`${router.url}/v1/rerank`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: "Bearer client-key" },
      body: JSON.stringify({
        model: "qwen",
        query: "where do rerankers run",
        documents: ["on the GPU hosts", "rerankers run where the fleet runs them"],
      }),
    });
    expect(response.status).toBe(200);
    const body = (await response.json()) as {
      usage: { total_tokens: number };
      results: { index: number }[];
    };
    expect(body.results[0]?.index).toBe(1);
    const records = await eventually(async () => {
      const rows = await manager.usage();
      return rows.length > before ? rows : undefined;
    });
    expect(records.at(-1)).toMatchObject({
      status: 200,
      worker_id: "full-path",
      prompt_tokens: body.usage.total_tokens,
    });
  });

  test("the agent refuses the same request with the client's key or the join token", async () => {
    for (const token of ["client-key", fleetToken]) {
      const response = await fetch(`${agentUrl}/proxy/qwen/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
        body: JSON.stringify({ model: "qwen", messages: [{ role: "user", content: "hi" }] }),
      });
      expect({ token, status: response.status }).toEqual({ token, status: 401 });
    }
  });
});
