import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { createTestDatabase, serviceDbTarget, type TestDatabase } from "../../devkit/db.ts";
import { agentDataDir, type Running, startAgent, startManager } from "../../devkit/fleet.ts";
import { eventually, freePort } from "../../devkit/net.ts";
import { repoRoot, stopAll } from "../../devkit/proc.ts";
import type { InstanceList, ModelInfo, WorkerList } from "../../protocol/index.ts";
import {
  type AgentProcess,
  call,
  enginePortRange,
  groupAlive,
  processAlive,
  StubManager,
  simPath,
  simVllm,
  startAgent as startBareAgent,
} from "./helpers.ts";

// Real agents, engines and a manager on a shared 2-core machine.
setDefaultTimeout(90_000);

/** Every engine group a test caused: killed at the end whatever happened. */
const engineGroups = new Set<number>();
const unrelated: Subprocess[] = [];
afterAll(async () => {
  await stopAll();
  for (const pgid of engineGroups) {
    try {
      process.kill(-pgid, "SIGKILL");
    } catch {
      // Already gone.
    }
  }
  for (const proc of unrelated) proc.kill("SIGKILL");
});

type EngineRecordFile = {
  version: number;
  engines: { alias: string; pid: number; pgid: number; start_time: string; port: number }[];
};
const readRecords = (dataDir: string) =>
  JSON.parse(readFileSync(join(dataDir, "engines.json"), "utf8")) as EngineRecordFile;
const startTimeOf = (pid: number) => {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19] ?? "";
};
const launches = (file: string) =>
  existsSync(file) ? readFileSync(file, "utf8").split("\n").filter(Boolean) : [];

/** An agent process on loopback, open (no join token), its engines the simulator. */
async function bareAgent(options: {
  manager: StubManager;
  dataDir: string;
  port?: number;
  env?: Record<string, string>;
}): Promise<AgentProcess> {
  return startBareAgent({
    WORKER_ID: "adopter",
    WORKER_HOST: "127.0.0.1",
    ...(options.port ? { WORKER_PORT: String(options.port) } : {}),
    MANAGER_URL: options.manager.url,
    AGENT_DATA_DIR: options.dataDir,
    VLLM_BIN: simVllm,
    PATH: simPath,
    ENGINE_PORT_MIN: String(ports.min),
    ENGINE_PORT_MAX: String(ports.max),
    ENGINE_HEALTH_POLL_MS: "100",
    ENGINE_STOP_GRACE_S: "2",
    MANAGER_RETRY_MAX_S: "1",
    ...options.env,
  });
}

let ports: { min: number; max: number };
beforeAll(async () => {
  ports = await enginePortRange(30);
});

async function launch(agent: AgentProcess, alias: string, extra: string[] = []) {
  const res = await call(`${agent.url}/v1/instances`, {
    body: { alias, model_name: `m/${alias}`, extra_args: extra },
  });
  expect(res.status).toBe(202);
  engineGroups.add(res.json.pid as number);
  return eventually(
    async () => {
      const { json } = await call(`${agent.url}/v1/instances/${alias}`);
      return json.status === "ready" ? json : null;
    },
    { what: `${alias} ready` },
  );
}

async function chatThrough(agentUrl: string, alias: string): Promise<string> {
  const res = await fetch(`${agentUrl}/proxy/${alias}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: alias, messages: [{ role: "user", content: "still here" }] }),
  });
  expect(res.status).toBe(200);
  const body = (await res.json()) as { choices: { message: { content: string } }[] };
  return body.choices[0]?.message.content ?? "";
}

describe(`agent restart with a manager (${serviceDbTarget})`, () => {
  let database: TestDatabase;
  let manager: Running;
  beforeAll(async () => {
    database = await createTestDatabase();
    manager = await startManager({ database, env: { LAUNCH_RETRY_BASE_S: "1" } });
  });
  afterAll(async () => {
    await manager?.stop();
    await database?.destroy();
  });

  test("an agent killed with SIGKILL under a stream adopts its engine on restart: same pid and port, no second `vllm serve`, chat works, one instance", async () => {
    const dataDir = agentDataDir();
    const launchLog = join(mkdtempSync(join(tmpdir(), "launches-")), "vllm.log");
    const port = await freePort();
    const env = { AGENT_DATA_DIR: dataDir, SIM_LAUNCH_LOG: launchLog, SIM_ITL_MS: "20" };
    const first = await startAgent({ managerUrl: manager.url, workerId: "phoenix", port, env });
    const api = async <T>(method: string, path: string, body?: unknown) => {
      const res = await fetch(`${manager.url}${path}`, {
        method,
        headers: { "content-type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      return { status: res.status, json: (await res.json()) as T };
    };
    await eventually(
      async () => (await api<WorkerList>("GET", "/v1/workers")).json.workers.length === 1,
      { what: "the worker registered" },
    );
    const registered = await api<ModelInfo>("POST", "/v1/models/register", {
      alias: "phoenix",
      model_name: "m/phoenix",
    });
    expect(registered.status).toBe(201);
    const ready = await eventually(
      async () => {
        const info = (await api<ModelInfo>("GET", "/v1/models/phoenix")).json;
        return info.instances[0]?.status === "ready" ? info.instances[0] : null;
      },
      { what: "the engine ready" },
    );
    const pid = ready.pid as number;
    engineGroups.add(pid);
    expect(launches(launchLog)).toHaveLength(1);
    // The instance is ready in the database a moment before the manager's router has the
    // route in its snapshot: wait until the router serves the alias.
    const chatOnce = () =>
      fetch(`${manager.url}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ model: "phoenix", messages: [{ role: "user", content: "again" }] }),
      });
    await eventually(async () => (await (await chatOnce()).text()).includes("again"), {
      what: "the manager's router serving phoenix",
    });

    // A long stream through the manager's router; the agent dies in the middle of it.
    const stream = await fetch(`${manager.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        model: "phoenix",
        stream: true,
        max_tokens: 500,
        messages: [{ role: "user", content: "a long answer please ".repeat(20) }],
      }),
    });
    expect(stream.status).toBe(200);
    const reader = (stream.body as ReadableStream<Uint8Array>).getReader();
    expect((await reader.read()).done).toBe(false);
    first.proc.kill("SIGKILL");
    await first.exited();
    await reader.cancel().catch(() => {});
    expect(processAlive(pid)).toBe(true);
    expect(readRecords(dataDir).engines.map((r) => [r.alias, r.pid])).toEqual([["phoenix", pid]]);

    const second = await startAgent({ managerUrl: manager.url, workerId: "phoenix", port, env });
    await second.waitFor("engine adopted");
    const info = await eventually(
      async () => {
        const now = (await api<ModelInfo>("GET", "/v1/models/phoenix")).json;
        const instance = now.instances[0];
        return now.status === "ready" && instance?.status === "ready" ? now : null;
      },
      { what: "the model ready again" },
    );
    expect(info.instances).toHaveLength(1);
    expect(info.instances[0]?.pid).toBe(pid);
    expect(info.instances[0]?.port).toBe(ready.port);
    expect(info.instances[0]?.id).toBe(ready.id);
    // Served again once the router's snapshot has the route back (as above).
    await eventually(async () => (await (await chatOnce()).text()).includes("again"), {
      what: "the manager's router serving phoenix again",
    });
    // One `vllm serve` in all, and the second agent launched nothing.
    expect(launches(launchLog)).toHaveLength(1);
    expect(second.output()).not.toContain("engine started");

    // Stopped normally, the agent stops the adopted engine too (its whole group).
    await second.stop();
    await eventually(() => !groupAlive(pid), { what: "the adopted engine stopped" });
    expect(readRecords(dataDir).engines).toEqual([]);
  });
});

describe("agent restart", () => {
  let stub: StubManager;
  beforeAll(async () => {
    stub = await new StubManager().start();
  });
  afterAll(async () => {
    await stub.stop();
  });

  test("a record whose pid is now an unrelated process is not adopted; the unrelated process lives, the engine the record lost is stopped", async () => {
    const dataDir = agentDataDir();
    const first = await bareAgent({ manager: stub, dataDir });
    const a = await launch(first, "reused-a");
    const b = await launch(first, "reused-b");
    first.proc.kill("SIGKILL");
    await first.exited();

    // Two unrelated processes, each leading its own group as an engine does.
    const sleeperA = Bun.spawn(["sleep", "300"], {
      detached: true,
      stdio: ["ignore", "ignore", "ignore"],
    });
    const sleeperB = Bun.spawn(["sleep", "300"], {
      detached: true,
      stdio: ["ignore", "ignore", "ignore"],
    });
    unrelated.push(sleeperA, sleeperB);
    const file = readRecords(dataDir);
    for (const record of file.engines) {
      if (record.alias === "reused-a") {
        // The pid was reused and even the start time fits: only the command line tells.
        record.pid = sleeperA.pid;
        record.pgid = sleeperA.pid;
        record.start_time = startTimeOf(sleeperA.pid);
      } else {
        // The pid was reused; the start time is still the engine's.
        record.pid = sleeperB.pid;
        record.pgid = sleeperB.pid;
      }
    }
    writeFileSync(join(dataDir, "engines.json"), JSON.stringify(file));

    const second = await bareAgent({ manager: stub, dataDir });
    await second.waitFor("engine record no longer matches");
    const list = await call<InstanceList>(`${second.url}/v1/instances`);
    expect(list.json.instances).toEqual([]);
    expect(second.output()).toContain('runs \\"sleep 300\\", not the recorded engine');
    expect(second.output()).toContain("is another process now");
    // The engines still carry this agent's marker: with no record left they are stopped.
    await eventually(() => !groupAlive(a.pid as number) && !groupAlive(b.pid as number), {
      what: "the unrecorded engines stopped",
    });
    expect(processAlive(sleeperA.pid)).toBe(true);
    expect(processAlive(sleeperB.pid)).toBe(true);
    expect(readRecords(dataDir).engines).toEqual([]);
    await eventually(() => stub.lastRegistration()?.instances.length === 0);
    await second.stop();
  });

  test("AGENT_KEEP_ENGINES=1 and SIGUSR2 leave the engines running, and the next agent adopts them", async () => {
    const dataDir = agentDataDir();
    const port = await freePort();
    const first = await bareAgent({
      manager: stub,
      dataDir,
      port,
      env: { AGENT_KEEP_ENGINES: "1" },
    });
    const engine = await launch(first, "upgraded");
    const pid = engine.pid as number;
    expect(await first.stop("SIGTERM")).toBe(0);
    expect(first.output()).toContain("engines left running for the next agent to adopt");
    expect(processAlive(pid)).toBe(true);

    const registrations = stub.registrations.length;
    const second = await bareAgent({ manager: stub, dataDir, port });
    // The first registration of the new agent already reports it running.
    const registration = await eventually(() => stub.registrations[registrations]?.body);
    expect(registration.instances.map((i) => [i.alias, i.status, i.pid, i.port])).toEqual([
      ["upgraded", "ready", pid, engine.port],
    ]);
    expect(await chatThrough(second.url, "upgraded")).toBe("still here");

    // SIGUSR2: the same, without the variable.
    expect(await second.stop("SIGUSR2")).toBe(0);
    expect(processAlive(pid)).toBe(true);
    const third = await bareAgent({ manager: stub, dataDir, port });
    await eventually(async () => {
      const { json } = await call(`${third.url}/v1/instances/upgraded`);
      return json.status === "ready" && json.pid === pid;
    });
    expect(await chatThrough(third.url, "upgraded")).toBe("still here");
    expect(third.output()).not.toContain("engine started");
    await third.stop();
    await eventually(() => !groupAlive(pid), { what: "the engine stopped with the agent" });
  });

  test("an engine still loading when its agent died is adopted and becomes ready, not launched again", async () => {
    const dataDir = agentDataDir();
    const launchLog = join(mkdtempSync(join(tmpdir(), "launches-")), "vllm.log");
    const env = { SIM_LAUNCH_LOG: launchLog, ENGINE_ADOPT_GRACE_S: "1" };
    const first = await bareAgent({ manager: stub, dataDir, env });
    const res = await call(`${first.url}/v1/instances`, {
      body: { alias: "loading", model_name: "m/loading", extra_args: ["--startup-delay", "6000"] },
    });
    expect(res.status).toBe(202);
    const pid = res.json.pid as number;
    engineGroups.add(pid);
    await eventually(() => readRecords(dataDir).engines.some((r) => r.pid === pid));
    first.proc.kill("SIGKILL");
    await first.exited();

    // Still loading after the 1 s grace: it has the rest of its startup timeout.
    const second = await bareAgent({ manager: stub, dataDir, env });
    expect((await call(`${second.url}/v1/instances/loading`)).json.status).toBe("starting");
    const ready = await eventually(
      async () => {
        const { json } = await call(`${second.url}/v1/instances/loading`);
        return json.status === "ready" ? json : null;
      },
      { what: "the adopted engine ready" },
    );
    expect(ready.pid).toBe(pid);
    expect(ready.port).toBe(res.json.port);
    expect(launches(launchLog)).toHaveLength(1);
    expect(await chatThrough(second.url, "loading")).toBe("still here");
    await second.stop();
  });

  test("an adopted engine that no longer answers is stopped after the grace, its whole group", async () => {
    const dataDir = agentDataDir();
    const first = await bareAgent({
      manager: stub,
      dataDir,
      env: { VLLM_BIN: `${repoRoot}/tests/agent/fixtures/fake-vllm` },
    });
    const engine = await launch(first, "mute", ["--close-after-ready", "--spawn-child"]);
    const pid = engine.pid as number;
    first.proc.kill("SIGKILL");
    await first.exited();
    // The engine stops listening 300 ms after its first /health and stays alive: wait for
    // that, or a quick restart could still find it answering.
    await eventually(
      async () => {
        try {
          await fetch(`http://127.0.0.1:${engine.port}/health`);
          return false;
        } catch {
          return true;
        }
      },
      { what: "the engine no longer answering" },
    );
    expect(processAlive(pid)).toBe(true);

    const second = await bareAgent({
      manager: stub,
      dataDir,
      env: { VLLM_BIN: `${repoRoot}/tests/agent/fixtures/fake-vllm`, ENGINE_ADOPT_GRACE_S: "1" },
    });
    const failed = await eventually(
      async () => {
        const { json } = await call(`${second.url}/v1/instances/mute`);
        return json.status === "failed" ? json : null;
      },
      { what: "the adopted engine given up" },
    );
    expect(failed.last_error).toContain(`adopted engine (pid ${pid}) did not answer`);
    await eventually(() => !groupAlive(pid), { what: "its process group stopped" });
    await second.stop();
  });
});

describe("engine ports", () => {
  let stub: StubManager;
  beforeAll(async () => {
    stub = await new StubManager().start();
  });
  afterAll(async () => {
    await stub.stop();
  });

  test("a port another process answers on (even as the same model) does not make a launch ready: it moves to another port", async () => {
    const agent = await bareAgent({ manager: stub, dataDir: agentDataDir() });
    const res = await call(`${agent.url}/v1/instances`, {
      body: {
        alias: "squatted",
        model_name: "m/squatted",
        extra_args: ["--startup-delay", "1500"],
      },
    });
    expect(res.status).toBe(202);
    engineGroups.add(res.json.pid as number);
    const taken = res.json.port as number;
    // An impostor binds the port while the engine loads, and answers as the same model.
    let impostorChats = 0;
    const impostor = Bun.serve({
      hostname: "127.0.0.1",
      port: taken,
      fetch(req) {
        const path = new URL(req.url).pathname;
        if (path === "/health") return new Response(null, { status: 200 });
        if (path === "/v1/models")
          return Response.json({ object: "list", data: [{ id: "squatted" }] });
        impostorChats++;
        return Response.json({ choices: [{ message: { content: "impostor" } }] });
      },
    });
    try {
      const seen: { status: string; port: number | null }[] = [];
      const ready = await eventually(
        async () => {
          const { json } = await call(`${agent.url}/v1/instances/squatted`);
          seen.push({ status: json.status, port: json.port });
          return json.status === "ready" ? json : null;
        },
        { what: "ready on another port", intervalMs: 20 },
      );
      expect(seen.filter((s) => s.status === "ready" && s.port === taken)).toEqual([]);
      expect(ready.port).not.toBe(taken);
      engineGroups.add(ready.pid as number);
      expect(await chatThrough(agent.url, "squatted")).toBe("still here");
      expect(impostorChats).toBe(0);
      const logs = await call(`${agent.url}/v1/instances/squatted/logs`);
      expect(logs.text).toContain(`port ${taken}`);
    } finally {
      await impostor.stop(true);
      await agent.stop();
    }
  });
});
