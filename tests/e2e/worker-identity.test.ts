import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { mkdtempSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Server } from "bun";
import { createTestDatabase, serviceDbTarget, type TestDatabase } from "../../devkit/db.ts";
import {
  agentDataDir,
  type Running,
  type RunningAgent,
  startAgent,
  startManager,
} from "../../devkit/fleet.ts";
import { eventually, freePort } from "../../devkit/net.ts";
import { bunBin, type Service, startProcess, stopAll } from "../../devkit/proc.ts";
import type { ModelInfo, WorkerInfo } from "../../protocol/index.ts";

// Real processes on a shared 2-core machine.
setDefaultTimeout(60_000);

const FLEET_TOKEN = "fleet-join-token-e2e";
const ADMIN_TOKEN = "admin-token-e2e";
const GRACE_S = 2;

/**
 * What a worker host holds, across real processes: agents join with the join token and keep
 * their own pair; the routers (mounted in the manager, and standalone) send each worker its
 * own agent credential; a rotation reaches both routers within a snapshot refresh and ends
 * the old credential after the grace; removing a worker moves its model at once.
 *
 * The route's URL is a recording HTTP proxy in front of agent A (its PUBLIC_URL), so the test
 * sees exactly what the routers send the worker.
 */
describe(`worker identity across processes (${serviceDbTarget})`, () => {
  let database: TestDatabase;
  let manager: Running;
  let router: Service & { url: string };
  let agentA: RunningAgent;
  let agentB: RunningAgent;
  let recorder: Server<undefined>;
  /** The Authorization header of every /proxy request that reached worker A's public URL. */
  const seen: (string | null)[] = [];

  const api = async <T>(method: string, path: string, token: string | null = ADMIN_TOKEN) => {
    const response = await fetch(`${manager.url}${path}`, {
      method,
      headers: token ? { authorization: `Bearer ${token}` } : {},
    });
    const text = await response.text();
    return { status: response.status, body: (text ? JSON.parse(text) : null) as T };
  };
  const chat = async (base: string) => {
    const response = await fetch(`${base}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "ident", messages: [{ role: "user", content: "hi" }] }),
    });
    await response.text();
    return response.status;
  };
  const fleet = async (...args: string[]) => {
    const cli = startProcess([bunBin, "bin/fleet.ts", ...args], {
      env: { FLEET_URL: manager.url, ADMIN_TOKEN },
    });
    const code = await cli.exited();
    return { code, output: cli.output() };
  };

  beforeAll(async () => {
    database = await createTestDatabase();
    manager = await startManager({
      database,
      env: { FLEET_TOKEN, ADMIN_TOKEN, LAUNCH_RETRY_BASE_S: "1", RECONCILE_INTERVAL_S: "0.3" },
    });
    const portA = await freePort();
    recorder = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      async fetch(request) {
        const url = new URL(request.url);
        if (url.pathname.startsWith("/proxy/")) seen.push(request.headers.get("authorization"));
        const headers = new Headers(request.headers);
        headers.delete("host");
        return fetch(`http://127.0.0.1:${portA}${url.pathname}${url.search}`, {
          method: request.method,
          headers,
          body: request.method === "GET" ? undefined : await request.arrayBuffer(),
          redirect: "manual",
        });
      },
    });
    agentA = await startAgent({
      managerUrl: manager.url,
      workerId: "ident-a",
      port: portA,
      env: {
        FLEET_TOKEN,
        PUBLIC_URL: `http://127.0.0.1:${recorder.port}`,
        AGENT_TOKEN_GRACE_S: String(GRACE_S),
        SIM_GPUS: "1x NVIDIA H100 80GB HBM3:81559",
      },
    });
    await eventually(() => agentA.credentials(), { what: "agent A to join" });
    const registered = await fleet(
      "models",
      "register",
      "ident",
      "org/ident",
      "--gpu-memory-utilization",
      "0.5",
      "--wait",
      "--timeout",
      "40",
    );
    expect(registered.code).toBe(0);
    const created = await fleet("routers", "create", "ident-router", "--json");
    expect(created.code).toBe(0);
    const routerToken = (JSON.parse(created.output) as { token: string }).token;
    const routerPort = await freePort();
    // A router holds its own credential for the manager and no fleet-wide secret at all.
    const service = startProcess([bunBin, "router/main.ts"], {
      env: {
        MANAGER_URL: manager.url,
        ROUTER_TOKEN: routerToken,
        HOST: "127.0.0.1",
        PORT: String(routerPort),
        ROUTES_REFRESH_MS: "200",
        USAGE_FLUSH_MS: "200",
        USAGE_SPOOL_DIR: mkdtempSync(join(tmpdir(), "fleet-router-spool-")),
      },
    });
    await service.waitFor("router listening", 30_000);
    router = Object.assign(service, { url: `http://127.0.0.1:${routerPort}` });
    await eventually(async () => (await chat(router.url)) === 200, { what: "router ready" });
  }, 120_000);

  afterAll(async () => {
    await stopAll();
    recorder?.stop(true);
    await database?.destroy();
  });

  test("a joined agent keeps its pair in a 0600 file; both routers send it its own agent credential, never FLEET_TOKEN", async () => {
    const held = agentA.credentials();
    expect(held?.worker_id).toBe("ident-a");
    expect(held?.worker_credential).toStartWith("fw_");
    expect(statSync(join(agentA.dataDir, "credentials.json")).mode & 0o777).toBe(0o600);
    seen.length = 0;
    expect(await chat(manager.url)).toBe(200);
    expect(await chat(router.url)).toBe(200);
    expect(seen).toEqual([`Bearer ${held?.agent_token}`, `Bearer ${held?.agent_token}`]);

    // The agent refuses the join token on /proxy and on its instance API.
    for (const [method, path] of [
      ["POST", "/proxy/ident/v1/chat/completions"],
      ["GET", "/v1/instances"],
      ["DELETE", "/v1/instances/ident"],
    ] as const) {
      const refused = await fetch(`${agentA.url}${path}`, {
        method,
        headers: { authorization: `Bearer ${FLEET_TOKEN}`, "content-type": "application/json" },
        body: method === "POST" ? "{}" : undefined,
      });
      expect({ path, status: refused.status }).toEqual({ path, status: 401 });
    }
  });

  test("a restarted agent registers with its stored credential: no new identity", async () => {
    const dataDir = agentDataDir();
    const env = {
      FLEET_TOKEN,
      AGENT_DATA_DIR: dataDir,
      SIM_GPUS: "1x NVIDIA H100 80GB HBM3:81559",
    };
    agentB = await startAgent({ managerUrl: manager.url, workerId: "ident-b", env });
    const first = await eventually(() => agentB.credentials(), { what: "agent B to join" });
    await agentB.stop();
    agentB = await startAgent({ managerUrl: manager.url, workerId: "ident-b", env });
    await agentB.waitFor("registered with the manager");
    expect(agentB.output()).not.toContain("joined the fleet");
    expect(agentB.credentials()).toEqual(first);
    const worker = await api<WorkerInfo>("GET", "/v1/workers/ident-b");
    expect(worker.body.status).toBe("online");
  });

  test("a rotation reaches the mounted and the standalone router within a refresh; the old agent credential ends after the grace", async () => {
    const old = agentA.credentials();
    const rotated = await fleet("workers", "rotate", "ident-a");
    expect(rotated.code).toBe(0);
    expect(rotated.output).toContain("rotation requested for ident-a");
    const next = await eventually(
      () => {
        const held = agentA.credentials();
        return held && held.agent_token !== old?.agent_token ? held : undefined;
      },
      { what: "the agent to store the new pair" },
    );
    expect(next.previous_agent_token).toBe(old?.agent_token ?? "");
    // Both routers switch once the manager promotes the pair (next heartbeat, then one
    // snapshot refresh): each request is sent with the new credential from then on.
    for (const base of [manager.url, router.url]) {
      await eventually(
        async () => {
          seen.length = 0;
          return (await chat(base)) === 200 && seen.at(-1) === `Bearer ${next.agent_token}`;
        },
        { what: `${base} to send the new agent credential`, timeoutMs: 5_000 },
      );
    }
    const withOld = async () =>
      (
        await fetch(`${agentA.url}/v1/instances`, {
          headers: { authorization: `Bearer ${old?.agent_token}` },
        })
      ).status;
    await eventually(async () => (await withOld()) === 401, {
      what: "the old agent credential to expire",
      timeoutMs: (GRACE_S + 5) * 1000,
    });
    // The old worker credential no longer opens anything on the manager either.
    const beat = await fetch(`${manager.url}/v1/workers/ident-a/heartbeat`, {
      method: "POST",
      headers: {
        authorization: `Bearer ${old?.worker_credential}`,
        "content-type": "application/json",
      },
      body: JSON.stringify({ gpu_info: { gpus: [], warning: null }, instances: [] }),
    });
    expect(beat.status).toBe(401);
    expect(await chat(router.url)).toBe(200);
  });

  test("removing a worker moves its model at once; its credential stops working", async () => {
    const held = agentA.credentials();
    const removed = await fleet("workers", "rm", "ident-a");
    expect(removed.code).toBe(0);
    expect(removed.output).toContain("removed ident-a");
    expect(removed.output).toContain("ident: moved to ident-b");
    await eventually(
      async () => {
        const model = (await api<ModelInfo>("GET", "/v1/models/ident")).body;
        return model.status === "ready" && model.routes[0]?.worker_id === "ident-b";
      },
      { what: "the model ready on ident-b", timeoutMs: 30_000 },
    );
    await eventually(async () => (await chat(router.url)) === 200, {
      what: "the standalone router to serve from ident-b",
    });
    // The removed worker's credential registers nothing any more; its agent (still running
    // here) joins again as a new identity, as documented: stop an agent to keep it out.
    const reregister = await fetch(`${manager.url}/v1/workers/register`, {
      method: "POST",
      headers: {
        authorization: `Bearer ${held?.worker_credential}`,
        "content-type": "application/json",
      },
      body: JSON.stringify({
        worker_id: "ident-a",
        worker_url: agentA.url,
        gpu_info: { gpus: [], warning: null },
        agent_version: "test",
      }),
    });
    expect(reregister.status).toBe(401);
    const rejoined = await eventually(
      () => {
        const now = agentA.credentials();
        return now && now.worker_credential !== held?.worker_credential ? now : undefined;
      },
      { what: "agent A to join again", timeoutMs: 20_000 },
    );
    expect(rejoined.worker_credential).toStartWith("fw_");
  });
});
