import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import type { Server } from "bun";
import { createTestDatabase, serviceDbTarget, type TestDatabase } from "../../devkit/db.ts";
import { type Running, type RunningAgent, startAgent, startManager } from "../../devkit/fleet.ts";
import { eventually } from "../../devkit/net.ts";
import { stopAll } from "../../devkit/proc.ts";
import type { InstanceReport, InstanceSpec, WorkerCredentials } from "../../protocol/index.ts";

// Real processes on a shared 2-core machine.
setDefaultTimeout(90_000);

const FLEET_TOKEN = "fleet-join-token-malicious";
const ADMIN_TOKEN = "admin-token-malicious";

type Seen = { method: string; path: string; authorization: string | null };

/**
 * A host that joined legitimately turns hostile: it records everything the manager and the
 * router send it, then tries each secret it holds (its own pair, and every Authorization
 * header that reached it) against everything that is not its own. Every attempt must be
 * refused, and nothing it received may be a fleet-wide secret or another worker's.
 */
describe(`a malicious worker (${serviceDbTarget})`, () => {
  let database: TestDatabase;
  let manager: Running;
  let victim: RunningAgent;
  let attacker: Server<undefined>;
  let credentials: WorkerCredentials;
  const seen: Seen[] = [];
  const reports = new Map<string, InstanceReport>();

  const gpuInfo = {
    gpus: [
      {
        index: 0,
        uuid: "GPU-attacker-0",
        name: "NVIDIA H100 80GB HBM3",
        memory_total_mib: 81_559,
        memory_used_mib: 0,
        memory_free_mib: 81_559,
        utilization_pct: 0,
      },
    ],
    warning: null,
  };
  const call = async (
    url: string,
    init: { method?: string; token?: string | null; body?: unknown } = {},
  ) => {
    const headers: Record<string, string> = { "content-type": "application/json" };
    if (init.token) headers.authorization = `Bearer ${init.token}`;
    const response = await fetch(url, {
      method: init.method ?? (init.body === undefined ? "GET" : "POST"),
      headers,
      body: init.body === undefined ? undefined : JSON.stringify(init.body),
    });
    const text = await response.text();
    let body: unknown = text;
    try {
      body = text ? JSON.parse(text) : null;
    } catch {}
    return { status: response.status, body };
  };
  const admin = (path: string, body?: unknown, method?: string) =>
    call(`${manager.url}${path}`, { token: ADMIN_TOKEN, body, method });
  const heartbeat = () =>
    call(`${manager.url}/v1/workers/attacker/heartbeat`, {
      token: credentials.worker_credential,
      body: { gpu_info: gpuInfo, instances: [...reports.values()] },
    });

  beforeAll(async () => {
    database = await createTestDatabase();
    manager = await startManager({ database, env: { FLEET_TOKEN, ADMIN_TOKEN } });
    victim = await startAgent({
      managerUrl: manager.url,
      workerId: "victim",
      env: { FLEET_TOKEN },
    });

    // The hostile host: an agent in its answers, a recorder in its heart.
    attacker = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      async fetch(request) {
        const url = new URL(request.url);
        seen.push({
          method: request.method,
          path: url.pathname,
          authorization: request.headers.get("authorization"),
        });
        if (url.pathname === "/health") {
          // As an agent: it confirms its own credential (the manager's probes ask for it,
          // and a path that does not answer so has its routes withdrawn).
          const own =
            credentials &&
            request.headers.get("authorization") === `Bearer ${credentials.agent_token}`;
          return Response.json({
            status: "ok",
            worker_id: "attacker",
            ...(own ? { authenticated: true } : {}),
          });
        }
        if (url.pathname === "/v1/instances" && request.method === "POST") {
          const spec = (await request.json()) as InstanceSpec;
          const now = new Date().toISOString();
          const report: InstanceReport = {
            alias: spec.alias,
            model_name: spec.model_name,
            status: "ready",
            port: 19_999,
            gpu_ids: spec.gpu_ids ?? [],
            pid: 4242,
            restarts: 0,
            last_error: null,
            started_at: now,
            ready_at: now,
            updated_at: now,
            spec,
          };
          reports.set(spec.alias, report);
          return Response.json(report, { status: 202 });
        }
        if (url.pathname === "/v1/instances")
          return Response.json({ instances: [...reports.values()] });
        if (url.pathname.startsWith("/proxy/")) {
          return Response.json({
            id: "chatcmpl-attacker",
            object: "chat.completion",
            created: 0,
            model: "atk",
            choices: [
              { index: 0, message: { role: "assistant", content: "owned" }, finish_reason: "stop" },
            ],
            usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 },
          });
        }
        return Response.json({ error: { message: "no" } }, { status: 404 });
      },
    });

    const joined = await call(`${manager.url}/v1/workers/register`, {
      token: FLEET_TOKEN,
      body: {
        worker_id: "attacker",
        worker_url: `http://127.0.0.1:${attacker.port}`,
        public_worker_url: null,
        gpu_info: gpuInfo,
        instances: [],
        agent_version: "0.1.0",
      },
    });
    expect(joined.status).toBe(200);
    credentials = (joined.body as { credentials: WorkerCredentials }).credentials;
    expect(credentials.worker_credential).toStartWith("fw_");

    // One model on each host, so the manager launches on the attacker and the router sends
    // it traffic: everything a worker legitimately receives.
    await eventually(async () => {
      const workers = await admin("/v1/workers");
      const list = (workers.body as { workers: { worker_id: string; status: string }[] }).workers;
      return list.some((w) => w.worker_id === "victim" && w.status === "online");
    });
    const vic = await admin("/v1/models/register", {
      alias: "vic",
      model_name: "org/victim-model",
      worker_id: "victim",
      gpu_memory_utilization: 0.4,
    });
    expect(vic.status).toBe(201);
    const atk = await admin("/v1/models/register", {
      alias: "atk",
      model_name: "org/attacker-model",
      worker_id: "attacker",
      gpu_memory_utilization: 0.4,
    });
    expect(atk.status).toBe(201);
    await eventually(async () => reports.has("atk"));
    expect((await heartbeat()).status).toBe(200);
    for (const alias of ["vic", "atk"]) {
      await eventually(async () => {
        const chat = await call(`${manager.url}/v1/chat/completions`, {
          body: { model: alias, messages: [{ role: "user", content: `hello ${alias}` }] },
        });
        return chat.status === 200;
      });
    }
    // A logs request reaches the attacker with whatever the manager presents to agents.
    await admin("/v1/models/atk/logs?tail=5");
  });

  afterAll(async () => {
    attacker?.stop(true);
    await stopAll();
    await database?.destroy();
  });

  /** Every secret the attacker holds: its pair and each bearer token that reached it. */
  const loot = () => {
    const tokens = new Set<string>([credentials.worker_credential, credentials.agent_token]);
    for (const request of seen) {
      const token = request.authorization?.replace(/^Bearer\s+/i, "");
      if (token) tokens.add(token);
    }
    return [...tokens];
  };

  test("what reaches the worker is its own agent credential, never a fleet-wide secret or another worker's", async () => {
    const proxied = seen.filter((r) => r.path.startsWith("/proxy/"));
    expect(proxied.length).toBeGreaterThan(0);
    expect(seen.some((r) => r.path === "/v1/instances" && r.method === "POST")).toBe(true);
    const victimToken = victim.credentials()?.agent_token;
    expect(victimToken).toBeDefined();
    for (const request of seen) {
      if (request.authorization === null) continue;
      expect(request.authorization).toBe(`Bearer ${credentials.agent_token}`);
    }
    const tokens = loot();
    expect(tokens).not.toContain(FLEET_TOKEN);
    expect(tokens).not.toContain(ADMIN_TOKEN);
    expect(tokens).not.toContain(victimToken);
    expect(tokens).not.toContain(victim.credentials()?.worker_credential);
  });

  test("it cannot register another worker_id, heartbeat for another, or take over another's id", async () => {
    const registration = (workerId: string) => ({
      worker_id: workerId,
      worker_url: `http://127.0.0.1:${attacker.port}`,
      public_worker_url: null,
      gpu_info: gpuInfo,
      instances: [],
      agent_version: "0.1.0",
    });
    for (const token of loot()) {
      for (const workerId of ["victim", "attacker-2"]) {
        const taken = await call(`${manager.url}/v1/workers/register`, {
          token,
          body: registration(workerId),
        });
        expect([401, 409]).toContain(taken.status);
      }
      const beat = await call(`${manager.url}/v1/workers/victim/heartbeat`, {
        token,
        body: { gpu_info: gpuInfo, instances: [] },
      });
      expect(beat.status).toBe(401);
    }
    // The victim kept its URL and its route, and still serves.
    const workers = await admin("/v1/workers/victim");
    expect((workers.body as { worker_url: string }).worker_url).toBe(victim.url);
    const unknown = await admin("/v1/workers/attacker-2");
    expect(unknown.status).toBe(404);
    const chat = await call(`${manager.url}/v1/chat/completions`, {
      body: { model: "vic", messages: [{ role: "user", content: "still mine?" }] },
    });
    expect(chat.status).toBe(200);
    expect(JSON.stringify(chat.body)).not.toContain("owned");
  });

  test("it cannot read routes, post usage or manage the fleet", async () => {
    for (const token of loot()) {
      expect((await call(`${manager.url}/v1/routes`, { token })).status).toBe(401);
      expect((await call(`${manager.url}/v1/routes/vic`, { token })).status).toBe(401);
      const usage = await call(`${manager.url}/v1/usage`, {
        token,
        body: {
          records: [
            {
              ts: new Date().toISOString(),
              api_key_id: null,
              alias: "vic",
              worker_id: "victim",
              status: 200,
              latency_ms: 1,
              ttft_ms: null,
              prompt_tokens: 999_999_999,
              completion_tokens: 0,
              stream: false,
            },
          ],
        },
      });
      expect(usage.status).toBe(401);
      expect((await call(`${manager.url}/v1/workers`, { token })).status).toBe(401);
      expect((await call(`${manager.url}/v1/keys`, { token, body: { name: "x" } })).status).toBe(
        401,
      );
      const relaunch = await call(`${manager.url}/v1/models/register`, {
        token,
        body: { alias: "evil", model_name: "org/evil", extra_args: ["--trust-remote-code"] },
      });
      expect(relaunch.status).toBe(401);
    }
  });

  test("it cannot call another agent's instance API or proxy", async () => {
    for (const token of loot()) {
      expect((await call(`${victim.url}/v1/instances`, { token })).status).toBe(401);
      const stop = await call(`${victim.url}/v1/instances/vic`, { token, method: "DELETE" });
      expect(stop.status).toBe(401);
      const launch = await call(`${victim.url}/v1/instances`, {
        token,
        body: { alias: "evil", model_name: "org/evil", extra_args: ["--trust-remote-code"] },
      });
      expect(launch.status).toBe(401);
      const proxied = await call(`${victim.url}/proxy/vic/v1/chat/completions`, {
        token,
        body: { model: "vic", messages: [{ role: "user", content: "steal" }] },
      });
      expect(proxied.status).toBe(401);
    }
    // The victim's engine is untouched.
    const listed = await call(`${victim.url}/v1/instances`, {
      token: victim.credentials()?.agent_token,
    });
    expect(listed.status).toBe(200);
    const instances = (listed.body as { instances: { alias: string; status: string }[] }).instances;
    expect(instances.map((i) => [i.alias, i.status])).toEqual([["vic", "ready"]]);
  });
});
