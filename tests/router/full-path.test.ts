import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import OpenAI from "openai";
import { simAgentEnv } from "../../devkit/fleet.ts";
import { eventually, freePort, waitForHttp } from "../../devkit/net.ts";
import { bunBin, startProcess, stopAll } from "../../devkit/proc.ts";
import {
  fleetToken,
  type Router,
  route,
  type StubManager,
  startRouter,
  startStubManager,
} from "./fixtures.ts";

/**
 * The full path: client → standalone router → real agent (`bun agent/main.ts`, launching
 * the simulator through VLLM_BIN) → engine. The router authenticates to the agent with
 * FLEET_TOKEN; the client's own key never travels past the router.
 */

let manager: StubManager;
let router: Router;
let agentUrl: string;
const auth = { authorization: `Bearer ${fleetToken}`, "content-type": "application/json" };

beforeAll(async () => {
  const agentPort = await freePort();
  startProcess([bunBin, "agent/main.ts"], {
    env: {
      ...simAgentEnv({
        workerId: "full-path",
        port: agentPort,
        managerUrl: "http://127.0.0.1:9",
        fleetToken,
      }),
      LOG_LEVEL: "error",
    },
  });
  agentUrl = `http://127.0.0.1:${agentPort}`;
  await waitForHttp(`${agentUrl}/health`, { timeoutMs: 20_000 });
  const launched = await fetch(`${agentUrl}/v1/instances`, {
    method: "POST",
    headers: auth,
    body: JSON.stringify({ alias: "qwen", model_name: "org/qwen" }),
  });
  expect(launched.status).toBe(202);
  await eventually(
    async () => {
      const response = await fetch(`${agentUrl}/v1/instances/qwen`, { headers: auth });
      return ((await response.json()) as { status?: string }).status === "ready";
    },
    { what: "the engine behind the agent to be ready", timeoutMs: 30_000 },
  );
  manager = await startStubManager();
  manager.set([route({ alias: "qwen", workerId: "full-path", url: agentUrl })]);
  router = await startRouter("bun", manager);
});

afterAll(async () => {
  manager.stop();
  await stopAll();
});

describe("router → agent → engine", () => {
  test("answers chat and streams through the agent with the fleet token", async () => {
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
    const records = await eventually(() => (manager.usage.length >= 2 ? manager.usage : undefined));
    expect(records.every((r) => r.status === 200 && r.worker_id === "full-path")).toBe(true);
    expect(records.find((r) => r.stream)?.completion_tokens).toBeGreaterThan(0);
  });

  test("the agent refuses the same request without the fleet token", async () => {
    const response = await fetch(`${agentUrl}/proxy/qwen/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: "Bearer client-key" },
      body: JSON.stringify({ model: "qwen", messages: [{ role: "user", content: "hi" }] }),
    });
    expect(response.status).toBe(401);
  });
});
