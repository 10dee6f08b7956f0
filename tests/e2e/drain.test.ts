import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createTestDatabase, serviceDbTarget, type TestDatabase } from "../../devkit/db.ts";
import { type Running, type RunningAgent, startAgent, startManager } from "../../devkit/fleet.ts";
import { eventually, freePort, waitForHttp } from "../../devkit/net.ts";
import { bunBin, startProcess, stopAll } from "../../devkit/proc.ts";
import type { ModelInfo, RouteSnapshot, WorkerInfo } from "../../protocol/index.ts";

const ADMIN_TOKEN = "admin-token-drain";
const FLEET_TOKEN = "fleet-token-drain";

/**
 * Drain on stop: two replicas of a model on two agents, clients looping through the mounted
 * router and a standalone one, and SIGTERM to one agent. Its routes leave the snapshot while
 * it still runs, the stream it is serving finishes, it exits within its deadline, and no
 * client request fails.
 */
describe(`agent drain on SIGTERM (${serviceDbTarget})`, () => {
  let database: TestDatabase;
  let manager: Running;
  let router: Running;
  const agents = new Map<string, RunningAgent>();
  const DRAIN_TIMEOUT_S = 20;
  const SHUTDOWN_TIMEOUT_S = 10;

  const admin = async <T>(method: string, path: string, body?: unknown) => {
    const response = await fetch(`${manager.url}${path}`, {
      method,
      headers: { authorization: `Bearer ${ADMIN_TOKEN}`, "content-type": "application/json" },
      body: body === undefined ? null : JSON.stringify(body),
    });
    return { status: response.status, body: (await response.json()) as T };
  };

  beforeAll(async () => {
    database = await createTestDatabase();
    manager = await startManager({
      database,
      env: { ADMIN_TOKEN, FLEET_TOKEN, PROBE_INTERVAL_S: "0", WORKER_TIMEOUT_S: "30" },
    });
    for (const id of ["drain-a", "drain-b"]) {
      agents.set(
        id,
        await startAgent({
          managerUrl: manager.url,
          workerId: id,
          // Each token takes 20 ms: requests are in flight when the signal comes.
          env: {
            FLEET_TOKEN,
            SIM_ITL_MS: "20",
            // The default: twice the standalone router's default refresh.
            DRAIN_QUIET_MS: "2000",
            DRAIN_TIMEOUT_S: String(DRAIN_TIMEOUT_S),
            SHUTDOWN_TIMEOUT_S: String(SHUTDOWN_TIMEOUT_S),
          },
        }),
      );
    }
    await eventually(
      async () =>
        (await admin<{ workers: WorkerInfo[] }>("GET", "/v1/workers")).body.workers.length === 2,
      { what: "both agents to register", timeoutMs: 20_000 },
    );
    const placed = await admin("POST", "/v1/models/register", {
      alias: "dr",
      model_name: "org/drain",
      gpu_memory_utilization: 0.5,
      replicas: 2,
      placement: "spread",
    });
    expect(placed.status).toBe(201);
    await eventually(
      async () => (await admin<ModelInfo>("GET", "/v1/models/dr")).body.status === "ready",
      { what: "both replicas to be ready", timeoutMs: 30_000 },
    );
    const credential = await admin<{ token: string }>("POST", "/v1/routers", { name: "drain" });
    const port = await freePort();
    // A standalone router at its default refresh (1 s): it learns of the drain at its next poll.
    router = Object.assign(
      startProcess([bunBin, "router/main.ts"], {
        env: {
          MANAGER_URL: manager.url,
          HOST: "127.0.0.1",
          PORT: String(port),
          ROUTER_TOKEN: credential.body.token,
        },
      }),
      { url: `http://127.0.0.1:${port}`, port },
    );
    await router.waitFor("router listening", 30_000);
    await waitForHttp(`${router.url}/healthz`);
  }, 120_000);

  afterAll(async () => {
    await stopAll();
    await database?.destroy();
  });

  /** One chat request; a failure is any answer but a complete 200 (a stream ends in [DONE]). */
  async function chat(base: string, stream: boolean): Promise<string | null> {
    try {
      const response = await fetch(`${base}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          model: "dr",
          messages: [{ role: "user", content: "one two three" }],
          stream,
        }),
      });
      const text = await response.text();
      if (response.status !== 200) return `${response.status} ${text}`;
      if (stream && !text.includes("data: [DONE]")) return `stream cut: ${text.slice(-200)}`;
      return null;
    } catch (error) {
      return String(error);
    }
  }

  test("routes leave first, the in-flight stream finishes, the agent exits in time, no request fails", async () => {
    const a = agents.get("drain-a");
    if (!a) throw new Error("no agent");
    const routes = await admin<RouteSnapshot>("GET", "/v1/routes");
    const routeOfA = routes.body.routes.find((r) => r.worker_id === "drain-a");
    expect(routes.body.routes.filter((r) => r.ready)).toHaveLength(2);

    // Clients: four loops through the mounted router, four through the standalone one.
    let running = true;
    let ok = 0;
    const failures: string[] = [];
    const loop = async (base: string, i: number) => {
      for (let n = 0; running; n++) {
        const failure = await chat(base, (n + i) % 2 === 0);
        if (failure) failures.push(failure);
        else ok++;
      }
    };
    const loops = [0, 1, 2, 3].flatMap((i) => [loop(manager.url, i), loop(router.url, i)]);
    await eventually(() => ok >= 40, { what: "the loops to get going" });

    // A long stream on the agent being drained: 100 tokens at 20 ms, in flight at the signal.
    const long = fetch(`${a.url}/proxy/dr/v1/chat/completions`, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        authorization: `Bearer ${routeOfA?.agent_token}`,
      },
      body: JSON.stringify({
        model: "dr",
        messages: [{ role: "user", content: "long" }],
        max_tokens: 100,
        ignore_eos: true,
        stream: true,
      }),
    });
    const longResponse = await long;
    expect(longResponse.status).toBe(200);
    const reader = longResponse.body?.getReader();
    await reader?.read();

    const signalledAt = Date.now();
    a.proc.kill("SIGTERM");
    let streamEndedAt = 0;
    const longText = (async () => {
      let text = "";
      const decoder = new TextDecoder();
      for (;;) {
        const chunk = await reader?.read();
        if (!chunk || chunk.done) break;
        text += decoder.decode(chunk.value, { stream: true });
      }
      streamEndedAt = Date.now();
      return text;
    })();
    let exitedAt = 0;
    const exited = a.exited().then((code) => {
      exitedAt = Date.now();
      return code;
    });

    // The snapshot stops serving drain-a while the agent still runs.
    await eventually(
      async () => {
        const { body } = await admin<RouteSnapshot>("GET", "/v1/routes");
        return body.routes.every((r) => r.worker_id !== "drain-a" || !r.ready);
      },
      { intervalMs: 20 },
    );
    expect(a.proc.exitCode).toBeNull();
    expect((await admin<WorkerInfo>("GET", "/v1/workers/drain-a")).body.status).toBe("draining");

    expect(await exited).toBe(0);
    expect(await longText).toContain("data: [DONE]");
    expect(streamEndedAt).toBeLessThanOrEqual(exitedAt);
    expect(exitedAt - signalledAt).toBeLessThan((DRAIN_TIMEOUT_S + SHUTDOWN_TIMEOUT_S) * 1000);
    expect(a.output()).toContain('"msg":"drained"');
    expect(a.output()).toContain('"msg":"engine stopped"');

    // The loops keep going on drain-b alone.
    const afterExit = ok;
    await eventually(() => ok >= afterExit + 40, { what: "requests after the exit" });
    running = false;
    await Promise.all(loops);
    expect(failures).toEqual([]);
  }, 90_000);
});
