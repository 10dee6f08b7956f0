import { afterAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { metric } from "../../devkit/metrics.ts";
import { eventually, freePort } from "../../devkit/net.ts";
import { bunBin, startProcess, stopAll } from "../../devkit/proc.ts";
import {
  call,
  enginePortRange,
  joinedDataDir,
  processAlive,
  StubManager,
  simPath,
  simVllm,
  startAgent,
  twoH100,
} from "./helpers.ts";

// Real processes on a shared 2-core machine: give each test room (bunfig's timeout is not applied).
setDefaultTimeout(30_000);

/** The join token (FLEET_TOKEN) the stub managers issue credentials for. */
const token = "registration-test-token";
const managers: StubManager[] = [];

/** A stub manager that issues credentials for `joinToken` (none: an open manager). */
async function stubManager(port?: number, joinToken: string | null = token) {
  const manager = await new StubManager(joinToken ?? undefined).start(port);
  managers.push(manager);
  return manager;
}

afterAll(async () => {
  await stopAll();
  await Promise.all(managers.map((m) => m.stop()));
});

describe("agent registration", () => {
  test("joins with the join token, then heartbeats with its own credential, reporting URLs, GPUs and version", async () => {
    const manager = await stubManager();
    const agent = await startAgent({
      WORKER_ID: "gpu-host-1",
      WORKER_HOST: "0.0.0.0",
      MANAGER_URL: manager.url,
      PUBLIC_URL: "https://u557149-9507-6992150f.bjb2.seetacloud.com:8443/",
      FLEET_TOKEN: token,
      PATH: simPath,
      SIM_GPUS: twoH100,
      SIM_GPU_USED_MIB: "1:71234",
    });
    const seen = await eventually(() => manager.registrations[0], { what: "a registration" });
    expect(seen.authorization).toBe(`Bearer ${token}`);
    const body = seen.body;
    expect(body.worker_id).toBe("gpu-host-1");
    // Listening on 0.0.0.0: the manager dials loopback, the world comes through PUBLIC_URL.
    expect(body.worker_url).toBe(`http://127.0.0.1:${agent.port}`);
    expect(body.public_worker_url).toBe("https://u557149-9507-6992150f.bjb2.seetacloud.com:8443");
    expect(body.instances).toEqual([]);
    expect(body.agent_version).toMatch(/^\d+\.\d+\.\d+/);
    expect(body.gpu_info.warning).toBeNull();
    expect(body.gpu_info.gpus).toHaveLength(2);
    const [first, second] = body.gpu_info.gpus;
    expect(first?.index).toBe(0);
    expect(first?.name).toBe("NVIDIA H100 80GB HBM3");
    expect(first?.memory_total_mib).toBe(81559);
    expect(first?.uuid).toMatch(/^GPU-/);
    expect(second?.memory_used_mib).toBe(71234);
    // Heartbeats follow at the interval the manager asked for, with fresh GPU readings and
    // the worker's own credential (never the join token again).
    await eventually(() => manager.heartbeats.length >= 2, { what: "heartbeats" });
    expect(manager.heartbeats[0]?.authorization).toBe(
      `Bearer ${manager.current("gpu-host-1")?.worker_credential}`,
    );
    expect(manager.heartbeats[0]?.body.gpu_info.gpus).toHaveLength(2);
    await agent.stop();
  });

  test("WORKER_URL overrides the dialled URL; no nvidia-smi means zero GPUs and a warning", async () => {
    const manager = await stubManager();
    const agent = await startAgent({
      WORKER_ID: "cpu-box",
      WORKER_HOST: "127.0.0.1",
      WORKER_URL: "http://10.1.2.3:6006",
      MANAGER_URL: manager.url,
      FLEET_TOKEN: token,
      PATH: "/nonexistent",
    });
    const { body } = await eventually(() => manager.registrations[0], { what: "a registration" });
    expect(body.worker_url).toBe("http://10.1.2.3:6006");
    expect(body.public_worker_url).toBeNull();
    expect(body.gpu_info.gpus).toEqual([]);
    expect(body.gpu_info.warning).toContain("nvidia-smi");
    expect(agent.output()).toContain("nvidia-smi not found");
    await agent.stop();
  });

  test('"No devices were found" is zero GPUs with that warning', async () => {
    const manager = await stubManager(undefined, null);
    const agent = await startAgent({
      WORKER_HOST: "127.0.0.1",
      MANAGER_URL: manager.url,
      PATH: simPath,
      SIM_NVIDIA_SMI_NO_DEVICES: "1",
    });
    const { body } = await eventually(() => manager.registrations[0], { what: "a registration" });
    expect(body.gpu_info.gpus).toEqual([]);
    expect(body.gpu_info.warning).toContain("No devices were found");
    // Open on loopback without a token, and it says so.
    expect(agent.output()).toContain("FLEET_TOKEN is not set");
    expect((await call(`${agent.url}/v1/instances`)).status).toBe(200);
    await agent.stop();
  });

  test("keeps retrying while the manager is down and registers once it is up", async () => {
    const port = await freePort();
    const agent = await startAgent({
      WORKER_HOST: "127.0.0.1",
      MANAGER_URL: `http://127.0.0.1:${port}`,
      MANAGER_RETRY_MAX_S: "0.5",
      FLEET_TOKEN: token,
      PATH: simPath,
    });
    await agent.waitFor("registration failed");
    // The agent serves while it cannot register, but before it has joined nothing can be
    // launched on it (and the join token opens nothing there).
    const early = await call(`${agent.url}/v1/instances`, { token });
    expect(early.status).toBe(401);
    expect(early.json.error.message).toContain("has not joined the fleet yet");
    expect((await call(`${agent.url}/health`)).status).toBe(200);
    const manager = await stubManager(port);
    await eventually(() => manager.registrations.length > 0, {
      what: "a late registration",
      timeoutMs: 20_000,
    });
    expect(manager.registrations).toHaveLength(1);
    const agentToken = manager.current(manager.registrations[0]?.body.worker_id ?? "")?.agent_token;
    await eventually(
      async () => (await call(`${agent.url}/v1/instances`, { token: agentToken })).status === 200,
      { what: "the instance API to open with the agent credential" },
    );
    await agent.stop();
  });

  test("a heartbeat answered 404 re-registers with the running instances, which keep running", async () => {
    const manager = await stubManager();
    const enginePorts = await enginePortRange();
    const agent = await startAgent({
      WORKER_ID: "rereg",
      WORKER_HOST: "127.0.0.1",
      MANAGER_URL: manager.url,
      FLEET_TOKEN: token,
      VLLM_BIN: simVllm,
      PATH: simPath,
      SIM_GPUS: twoH100,
      ENGINE_PORT_MIN: String(enginePorts.min),
      ENGINE_PORT_MAX: String(enginePorts.max),
      ENGINE_HEALTH_POLL_MS: "50",
    });
    await eventually(() => manager.registrations.length === 1, { what: "first registration" });
    const agentToken = manager.current("rereg")?.agent_token;
    await eventually(
      async () => (await call(`${agent.url}/v1/instances`, { token: agentToken })).status === 200,
      { what: "the credentials to be in use" },
    );
    const launched = await call(`${agent.url}/v1/instances`, {
      body: { alias: "survivor", model_name: "m/survivor", gpu_ids: [1] },
      token: agentToken,
    });
    expect(launched.status).toBe(202);
    const pid = launched.json.pid as number;
    // The state change is reported right away, not only at the next tick.
    await eventually(
      () => manager.heartbeats.some((h) => h.body.instances.some((i) => i.status === "ready")),
      { what: "a heartbeat with the ready instance" },
    );

    manager.forgetWorker = true;
    const again = await eventually(() => manager.registrations[1], { what: "re-registration" });
    // With its own credential: the same identity, not a second join.
    expect(again.authorization).toBe(`Bearer ${manager.current("rereg")?.worker_credential}`);
    expect(manager.issued).toHaveLength(1);
    const survivor = again.body.instances.find((i) => i.alias === "survivor");
    expect(survivor?.status).toBe("ready");
    expect(survivor?.pid).toBe(pid);
    expect(survivor?.spec).toEqual({
      alias: "survivor",
      model_name: "m/survivor",
      gpu_ids: [1],
      extra_args: [],
    });

    // A manager outage stops neither the engine nor the proxy: once the agent has noticed it
    // (a failed heartbeat), both still answer.
    await manager.stop();
    await agent.waitFor("heartbeat failed; engines and proxy keep running");
    const chat = await fetch(`${agent.url}/proxy/survivor/v1/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${agentToken}`, "content-type": "application/json" },
      body: JSON.stringify({
        model: "survivor",
        messages: [{ role: "user", content: "still here" }],
      }),
    });
    expect(chat.status).toBe(200);
    expect((await chat.json()).choices[0].message.content).toBe("still here");
    expect(processAlive(pid)).toBe(true);
    await agent.stop();
  });
});

describe("agent process", () => {
  test("SIGTERM stops its engines before it exits", async () => {
    const enginePorts = await enginePortRange();
    const agent = await startAgent({
      WORKER_HOST: "127.0.0.1",
      MANAGER_URL: "http://127.0.0.1:9",
      VLLM_BIN: simVllm,
      PATH: simPath,
      ENGINE_PORT_MIN: String(enginePorts.min),
      ENGINE_PORT_MAX: String(enginePorts.max),
    });
    const pids: number[] = [];
    for (const alias of ["one", "two"]) {
      const res = await call(`${agent.url}/v1/instances`, {
        body: { alias, model_name: `m/${alias}` },
      });
      pids.push(res.json.pid as number);
    }
    await eventually(async () => {
      const { json } = await call<{ instances: { status: string }[] }>(`${agent.url}/v1/instances`);
      return json.instances.every((i) => i.status === "ready");
    });
    const code = await agent.stop("SIGTERM", 15_000);
    expect(code).toBe(0);
    for (const pid of pids) expect(processAlive(pid)).toBe(false);
    expect(agent.output()).toContain(`"msg":"engine stopped","alias":"one"`);
  });

  test("holds more than Bun's default 256 engine requests in flight, and frees them on disconnect", async () => {
    const enginePorts = await enginePortRange();
    const agentToken = "fa_wide-agent-credential";
    const agent = await startAgent({
      WORKER_ID: "wide-host",
      WORKER_HOST: "127.0.0.1",
      MANAGER_URL: "http://127.0.0.1:9",
      FLEET_TOKEN: token,
      AGENT_DATA_DIR: joinedDataDir({
        workerId: "wide-host",
        managerUrl: "http://127.0.0.1:9",
        agentToken,
      }),
      VLLM_BIN: simVllm,
      PATH: simPath,
      ENGINE_PORT_MIN: String(enginePorts.min),
      ENGINE_PORT_MAX: String(enginePorts.max),
      ENGINE_HEALTH_POLL_MS: "50",
      // What `npm run agent` sets: Bun reads the cap only at startup.
      BUN_CONFIG_MAX_HTTP_REQUESTS: "4096",
    });
    const launched = await call(`${agent.url}/v1/instances`, {
      body: {
        alias: "wide",
        model_name: "m/wide",
        extra_args: ["--max-num-seqs", "1024", "--inter-token-latency", "200"],
      },
      token: agentToken,
    });
    const metrics = `http://127.0.0.1:${launched.json.port}/metrics`;
    await eventually(
      async () =>
        (await call(`${agent.url}/v1/instances/wide`, { token: agentToken })).json.status ===
        "ready",
    );
    // Raw sockets: this test process's own fetch has the 256 cap the agent must not have.
    const body = JSON.stringify({
      model: "wide",
      prompt: "x",
      max_tokens: 1000,
      ignore_eos: true,
      stream: true,
    });
    const request = `POST /proxy/wide/v1/completions HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer ${agentToken}\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\n\r\n${body}`;
    const sockets = await Promise.all(
      Array.from({ length: 300 }, () =>
        Bun.connect({ hostname: "127.0.0.1", port: agent.port, socket: { data() {} } }).then(
          (socket) => {
            socket.write(request);
            return socket;
          },
        ),
      ),
    );
    const running = async () =>
      metric(await fetch(metrics).then((r) => r.text()), "vllm:num_requests_running");
    await eventually(async () => (await running()) === 300, {
      what: "300 requests running in the engine",
      timeoutMs: 20_000,
    });
    for (const socket of sockets) socket.end();
    await eventually(async () => (await running()) === 0, {
      what: "the engine to drop them",
      timeoutMs: 20_000,
    });
    await agent.stop();
  });

  test("refuses to listen beyond loopback without FLEET_TOKEN, naming the variable", async () => {
    const agent = startProcess([bunBin, "agent/main.ts"], {
      env: {
        WORKER_HOST: "0.0.0.0",
        WORKER_PORT: String(await freePort()),
        FLEET_TOKEN: "",
        AGENT_DATA_DIR: mkdtempSync(join(tmpdir(), "agent-data-")),
      },
    });
    const code = await agent.exited();
    expect(code).toBe(1);
    expect(agent.output()).toContain("FLEET_TOKEN");
    expect(agent.output()).not.toContain("agent listening");
  });

  test("a bad variable stops the agent with a message naming it", async () => {
    const agent = startProcess([bunBin, "agent/main.ts"], {
      env: { WORKER_HOST: "127.0.0.1", WORKER_PORT: "sixty", PUBLIC_URL: "ftp://x" },
    });
    expect(await agent.exited()).toBe(1);
    expect(agent.output()).toContain("WORKER_PORT");
    expect(agent.output()).toContain("PUBLIC_URL");
  });
});
