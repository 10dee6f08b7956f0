import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { connect, type Socket } from "node:net";
import { createTestDatabase, serviceDbTarget, type TestDatabase } from "../../devkit/db.ts";
import { type Running, type RunningAgent, startAgent } from "../../devkit/fleet.ts";
import { eventually, freePort, waitForHttp } from "../../devkit/net.ts";
import { bunBin, type Service, startProcess, stopAll } from "../../devkit/proc.ts";
import type { ModelInfo, RouteSnapshot } from "../../protocol/index.ts";

const ADMIN_TOKEN = "admin-token-shutdown";
const FLEET_TOKEN = "fleet-token-shutdown";
/** Every service under test stops within this; the streams it holds would last 200 s. */
const SHUTDOWN_TIMEOUT_S = 2;
/** How late after its deadline a process may be seen gone (exit, pipes, a busy machine). */
const EXIT_SLACK_MS = 1500;

/**
 * Bounded shutdown: on SIGTERM the manager (Bun, Node), the standalone router (Bun, Node)
 * and the agent exit within their deadline although a client holds an idle keep-alive
 * connection and a stream that would run for minutes. A short request in flight still
 * finishes; what is open at the deadline is closed.
 */
describe(`shutdown deadlines (${serviceDbTarget})`, () => {
  const databases: TestDatabase[] = [];
  let bunFleet: Fleet;
  let nodeFleet: Fleet;

  type Fleet = { manager: Running; agent: RunningAgent };

  const admin = async <T>(manager: Running, method: string, path: string, body?: unknown) => {
    const response = await fetch(`${manager.url}${path}`, {
      method,
      headers: { authorization: `Bearer ${ADMIN_TOKEN}`, "content-type": "application/json" },
      body: body === undefined ? null : JSON.stringify(body),
    });
    return { status: response.status, body: (await response.json()) as T };
  };

  /** A manager on `runtime` with one agent serving model `slow` (a token every 100 ms). */
  async function startFleet(runtime: "bun" | "node", workerId: string): Promise<Fleet> {
    const database = await createTestDatabase();
    databases.push(database);
    const port = await freePort();
    const argv =
      runtime === "bun"
        ? [bunBin, "manager/main.ts"]
        : // tsx as a loader (not its CLI) keeps the manager one process that SIGTERM reaches.
          ["node", "--import", "tsx", "manager/node.ts"];
    const service = startProcess(argv, {
      env: {
        DATABASE_URL: "",
        ...database.env,
        HOST: "127.0.0.1",
        PORT: String(port),
        ADMIN_TOKEN,
        FLEET_TOKEN,
        HEARTBEAT_INTERVAL_S: "0.5",
        RECONCILE_INTERVAL_S: "0.3",
        PROBE_INTERVAL_S: "0",
        SHUTDOWN_TIMEOUT_S: String(SHUTDOWN_TIMEOUT_S),
      },
    });
    const manager = Object.assign(service, { url: `http://127.0.0.1:${port}`, port });
    await manager.waitFor("manager listening", 60_000);
    await waitForHttp(`${manager.url}/health`);
    const agent = await startAgent({
      managerUrl: manager.url,
      workerId,
      env: {
        FLEET_TOKEN,
        SIM_ITL_MS: "100",
        DRAIN_TIMEOUT_S: "1",
        SHUTDOWN_TIMEOUT_S: String(SHUTDOWN_TIMEOUT_S),
      },
    });
    await eventually(
      async () => (await admin(manager, "GET", `/v1/workers/${workerId}`)).status === 200,
      {
        what: "the agent to register",
        timeoutMs: 20_000,
      },
    );
    const placed = await admin(manager, "POST", "/v1/models/register", {
      alias: "slow",
      model_name: "org/slow",
      gpu_memory_utilization: 0.5,
    });
    expect(placed.status).toBe(201);
    await eventually(
      async () =>
        (await admin<ModelInfo>(manager, "GET", "/v1/models/slow")).body.status === "ready",
      { what: "the engine to be ready", timeoutMs: 30_000 },
    );
    return { manager, agent };
  }

  beforeAll(async () => {
    bunFleet = await startFleet("bun", "shut-bun");
    nodeFleet = await startFleet("node", "shut-node");
  }, 150_000);

  afterAll(async () => {
    await stopAll();
    for (const database of databases) await database.destroy();
  });

  /** A keep-alive connection that made one request and now sits idle; says when it closes. */
  async function idleConnection(url: string, path: string) {
    const { hostname, port } = new URL(url);
    const socket: Socket = connect(Number(port), hostname);
    socket.on("error", () => {});
    const closed = new Promise<void>((resolve) => socket.on("close", () => resolve()));
    await new Promise<void>((resolve) => socket.once("connect", () => resolve()));
    socket.write(`GET ${path} HTTP/1.1\r\nhost: ${hostname}\r\nconnection: keep-alive\r\n\r\n`);
    await new Promise<void>((resolve) => socket.once("data", () => resolve()));
    return { closed };
  }

  /** A chat stream of `tokens` tokens (100 ms each), read to its end in the background. */
  async function openStream(url: string, tokens: number, authorization?: string) {
    const response = await fetch(url, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        ...(authorization ? { authorization } : {}),
      },
      body: JSON.stringify({
        model: "slow",
        messages: [{ role: "user", content: "hold" }],
        max_tokens: tokens,
        ignore_eos: true,
        stream: true,
      }),
    });
    expect(response.status).toBe(200);
    const reader = response.body?.getReader();
    if (!reader) throw new Error("no body");
    const decoder = new TextDecoder();
    let text = decoder.decode((await reader.read()).value);
    const ended = (async () => {
      try {
        for (;;) {
          const chunk = await reader.read();
          if (chunk.done) break;
          text += decoder.decode(chunk.value, { stream: true });
        }
      } catch {
        // Cut by the shutdown: what arrived is what there is.
      }
      return text;
    })();
    return { ended };
  }

  /**
   * SIGTERM to `service` holding an idle keep-alive and a 200 s stream, with a 0.5 s stream
   * in flight too: the short one completes, the process exits within the deadline, the
   * long stream is cut and the idle connection closed.
   */
  async function expectBoundedExit(options: {
    service: Service;
    base: string;
    healthPath: string;
    streamUrl: string;
    authorization?: string;
    deadlineS: number;
  }) {
    const idle = await idleConnection(options.base, options.healthPath);
    const long = await openStream(options.streamUrl, 2000, options.authorization);
    const short = await openStream(options.streamUrl, 5, options.authorization);
    const signalledAt = Date.now();
    options.service.proc.kill("SIGTERM");
    const code = await options.service.exited();
    const tookMs = Date.now() - signalledAt;
    expect(code).toBe(0);
    expect(tookMs).toBeLessThan(options.deadlineS * 1000 + EXIT_SLACK_MS);
    expect(await short.ended).toContain("data: [DONE]");
    // The long stream was cut, never finished: a router ends it with its shutdown error
    // event and [DONE] (docs/router.md), an agent just closes it.
    const cut = await long.ended;
    expect(cut).not.toMatch(/"finish_reason":"(stop|length)"/);
    if (cut.includes("data: [DONE]")) {
      expect(cut).toContain('"message":"the router is shutting down');
    }
    await idle.closed;
    return tookMs;
  }

  for (const runtime of ["bun", "node"] as const) {
    test(`a standalone router on ${runtime} exits within SHUTDOWN_TIMEOUT_S`, async () => {
      const { manager } = bunFleet;
      const credential = await admin<{ token: string }>(manager, "POST", "/v1/routers", {
        name: `shutdown-${runtime}`,
      });
      const port = await freePort();
      const argv =
        runtime === "bun"
          ? [bunBin, "router/main.ts"]
          : ["node", "--import", "tsx", "router/node.ts"];
      const router = startProcess(argv, {
        env: {
          MANAGER_URL: manager.url,
          HOST: "127.0.0.1",
          PORT: String(port),
          ROUTER_TOKEN: credential.body.token,
          ROUTES_REFRESH_MS: "200",
          SHUTDOWN_TIMEOUT_S: String(SHUTDOWN_TIMEOUT_S),
        },
      });
      const url = `http://127.0.0.1:${port}`;
      await router.waitFor("router listening", 30_000);
      await waitForHttp(`${url}/healthz`);
      await expectBoundedExit({
        service: router,
        base: url,
        healthPath: "/healthz",
        streamUrl: `${url}/v1/chat/completions`,
        deadlineS: SHUTDOWN_TIMEOUT_S,
      });
      expect(router.output()).toContain("shutdown deadline: closing the connections still open");
    }, 60_000);
  }

  test("the manager on node exits within SHUTDOWN_TIMEOUT_S", async () => {
    const { manager } = nodeFleet;
    await expectBoundedExit({
      service: manager,
      base: manager.url,
      healthPath: "/health",
      streamUrl: `${manager.url}/v1/chat/completions`,
      deadlineS: SHUTDOWN_TIMEOUT_S,
    });
    expect(manager.output()).toContain("shutdown deadline: closing the connections still open");
  }, 60_000);

  test("the manager on bun exits within SHUTDOWN_TIMEOUT_S", async () => {
    const { manager } = bunFleet;
    // The agent credential, for the agent's own test after this one.
    const routes = await admin<RouteSnapshot>(manager, "GET", "/v1/routes");
    agentToken = routes.body.routes[0]?.agent_token ?? "";
    await expectBoundedExit({
      service: manager,
      base: manager.url,
      healthPath: "/health",
      streamUrl: `${manager.url}/v1/chat/completions`,
      deadlineS: SHUTDOWN_TIMEOUT_S,
    });
    expect(manager.output()).toContain("shutdown deadline: closing the connections still open");
  }, 60_000);

  let agentToken = "";

  test("the agent exits within DRAIN_TIMEOUT_S + SHUTDOWN_TIMEOUT_S, its engine stopped", async () => {
    // Its manager is gone (the test before): the drain goes on without telling it.
    const { agent } = bunFleet;
    expect(agentToken).not.toBe("");
    await expectBoundedExit({
      service: agent,
      base: agent.url,
      healthPath: "/health",
      streamUrl: `${agent.url}/proxy/slow/v1/chat/completions`,
      authorization: `Bearer ${agentToken}`,
      deadlineS: 1 + SHUTDOWN_TIMEOUT_S,
    });
    expect(agent.output()).toContain("drain timeout: closing the requests still in flight");
    expect(agent.output()).toContain("could not tell the manager this agent is draining");
    expect(agent.output()).toContain('"msg":"engine stopped"');
  }, 60_000);
});
