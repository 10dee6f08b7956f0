import { afterAll, describe, expect, test } from "bun:test";
import { simAgentEnv } from "../../devkit/fleet.ts";
import { eventually, freePort } from "../../devkit/net.ts";
import { stopAll } from "../../devkit/proc.ts";
import { call, joinedDataDir, startAgent } from "./helpers.ts";

afterAll(async () => {
  await stopAll();
});

/** The agent credential the manager issued when this agent joined. */
const token = "fa_idle-timeout-agent-credential";

describe("agent proxy", () => {
  test("waits for a queued engine's first byte past Bun's fetch idle timeout", async () => {
    // Bun's fetch gives up on a connection idle for 5 minutes (BUN_CONFIG_HTTP_IDLE_TIMEOUT),
    // and a non-streamed request waiting in vLLM's queue sends nothing until it is done. With
    // the default shortened to 1 s (it fires after about 8 s, a coarse timer), an engine that
    // takes 13 s to its first token must still answer through the proxy: the proxy's fetch
    // runs without Bun's idle timeout.
    const port = await freePort();
    const managerUrl = "http://127.0.0.1:9";
    const agent = await startAgent({
      ...simAgentEnv({ workerId: "idle", port, managerUrl, fleetToken: "idle-join-token" }),
      AGENT_DATA_DIR: joinedDataDir({ workerId: "idle", managerUrl, agentToken: token }),
      BUN_CONFIG_HTTP_IDLE_TIMEOUT: "1",
      BUN_CONFIG_MAX_HTTP_REQUESTS: "4096",
    });
    const launched = await call(`${agent.url}/v1/instances`, {
      body: { alias: "slow", model_name: "m/slow", extra_args: ["--time-to-first-token", "13000"] },
      token,
    });
    expect(launched.status).toBe(202);
    await eventually(
      async () => (await call(`${agent.url}/v1/instances/slow`, { token })).json.status === "ready",
      { what: "slow ready" },
    );
    const reply = await call<{ choices: { message: { content: string } }[] }>(
      `${agent.url}/proxy/slow/v1/chat/completions`,
      {
        body: { model: "slow", messages: [{ role: "user", content: "hi" }], max_tokens: 4 },
        token,
      },
    );
    expect(reply.status).toBe(200);
    expect(reply.json.choices[0]?.message.content.length).toBeGreaterThan(0);
  }, 60_000);
});
