import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { canBind } from "../../agent/lib/net.ts";
import { WorkerService, type WorkerServiceOptions } from "../../agent/service.ts";
import { eventually, freePort } from "../../devkit/net.ts";
import { repoRoot } from "../../devkit/proc.ts";
import { createLogger } from "../../kit/log.ts";
import type { InstanceList, InstanceReport } from "../../protocol/index.ts";
import {
  call,
  enginePortRange,
  groupAlive,
  joinedDataDir,
  procArgv,
  procEnv,
  processAlive,
  simPath,
  simVllm,
  twoH100,
} from "./helpers.ts";

// Real processes on a shared 2-core machine: give each test room (bunfig's timeout is not applied).
setDefaultTimeout(30_000);

/** The join token, and the agent credential the manager issued when the agent joined. */
const joinToken = "instances-test-join-token";
const token = "fa_instances-test-agent-credential";
const managerUrl = "http://127.0.0.1:9"; // nobody: the instance API must not care
let agent: WorkerService;
let base: string;

function newAgent(vllmBin = simVllm, overrides: Partial<WorkerServiceOptions> = {}) {
  return enginePortRange().then(
    (enginePorts) =>
      new WorkerService({
        workerId: "instances-test",
        listenHost: "127.0.0.1",
        listenPort: 0,
        managerUrl,
        fleetToken: joinToken,
        dataDir: joinedDataDir({ workerId: "instances-test", managerUrl, agentToken: token }),
        vllmBin,
        enginePorts,
        startupTimeoutMs: 20_000,
        stopGraceMs: 2000,
        restartBackoffMs: 150,
        restartBackoffMaxMs: 600,
        healthPollMs: 50,
        engineEnv: { ...process.env, PATH: simPath, SIM_GPUS: twoH100, FLEET_TOKEN: joinToken },
        log: createLogger({ service: "agent", level: "error" }),
        ...overrides,
      }),
  );
}

async function launch(body: Record<string, unknown>) {
  return call(`${base}/v1/instances`, { body, token });
}

async function waitStatus(
  alias: string,
  status: string,
  timeoutMs = 15_000,
): Promise<InstanceReport> {
  return eventually(
    async () => {
      const { json } = await call(`${base}/v1/instances/${alias}`, { token });
      return json.status === status ? json : null;
    },
    { timeoutMs, what: `${alias} ${status}` },
  );
}

beforeAll(async () => {
  agent = await newAgent();
  await agent.run();
  base = agent.url;
});

afterAll(async () => {
  await agent.stop();
});

describe("agent instance API", () => {
  test("launches vllm serve with the spec's flags, GPU pinning and no fleet token", async () => {
    const res = await launch({
      alias: "argv-check",
      model_name: "Qwen/Qwen2-VL-2B-Instruct",
      max_model_len: 8192,
      gpu_memory_utilization: 0.45,
      tensor_parallel_size: 2,
      dtype: "bfloat16",
      gpu_ids: [1, 0],
      extra_args: ["--max-num-seqs", "64", "--enforce-eager"],
    });
    expect(res.status).toBe(202);
    expect(res.json.status).toBe("starting");
    const { pid, port } = res.json;
    expect(pid).toBeGreaterThan(0);
    // agent/sim/vllm execs the simulator, so /proc shows what vLLM itself would receive.
    // A process just spawned shows an empty cmdline until its exec completes.
    const argv = await eventually(() => {
      const seen = procArgv(pid as number);
      return seen.includes("serve") ? seen : null;
    });
    const serve = argv.indexOf("serve");
    expect(argv.slice(serve)).toEqual([
      "serve",
      "Qwen/Qwen2-VL-2B-Instruct",
      "--host",
      "127.0.0.1",
      "--port",
      String(port),
      "--served-model-name",
      "argv-check",
      "--max-model-len",
      "8192",
      "--gpu-memory-utilization",
      "0.45",
      "--tensor-parallel-size",
      "2",
      "--dtype",
      "bfloat16",
      "--max-num-seqs",
      "64",
      "--enforce-eager",
    ]);
    const env = procEnv(pid as number);
    expect(env.CUDA_VISIBLE_DEVICES).toBe("1,0");
    expect(env.CUDA_DEVICE_ORDER).toBe("PCI_BUS_ID");
    expect(env.FLEET_TOKEN).toBeUndefined();
    const ready = await waitStatus("argv-check", "ready");
    expect(ready.ready_at).not.toBeNull();
    // The engine answers on loopback only, under the alias.
    const models = await fetch(`http://127.0.0.1:${port}/v1/models`).then((r) => r.json());
    expect(models.data[0].id).toBe("argv-check");
  });

  test("the same spec again answers with the running instance; a different spec is a conflict", async () => {
    const spec = { alias: "idem", model_name: "m/idem", gpu_ids: [0] };
    const first = await launch(spec);
    expect(first.status).toBe(202);
    const again = await launch(spec);
    expect(again.status).toBe(200);
    expect(again.json.pid).toBe(first.json.pid);
    const other = await launch({ ...spec, max_model_len: 1024 });
    expect(other.status).toBe(409);
    expect(other.json.error.param).toBe("alias");
    const list = await call<InstanceList>(`${base}/v1/instances`, { token });
    const idem = list.json.instances.filter((i) => i.alias === "idem");
    expect(idem).toHaveLength(1);
    expect(idem[0]?.spec).toEqual({
      alias: "idem",
      model_name: "m/idem",
      gpu_ids: [0],
      extra_args: [],
    });
  });

  test("an engine that exits while starting fails the instance with its log tail", async () => {
    const res = await launch({
      alias: "oom",
      model_name: "m/oom",
      gpu_ids: [0],
      extra_args: ["--fail-startup"],
    });
    expect(res.status).toBe(202);
    const failed = await waitStatus("oom", "failed");
    expect(failed.last_error).toContain("during startup");
    expect(failed.last_error).toContain("CUDA out of memory");
    expect(failed.restarts).toBe(0);
    const logs = await call(`${base}/v1/instances/oom/logs?tail=3`, { token });
    expect(logs.status).toBe(200);
    expect(logs.headers.get("content-type")).toContain("text/plain");
    expect(logs.text.trimEnd().split("\n")).toHaveLength(3);
    // A failed alias can be launched again (the manager retrying elsewhere or with a fix).
    const retry = await launch({ alias: "oom", model_name: "m/oom", gpu_ids: [0] });
    expect(retry.status).toBe(202);
    await waitStatus("oom", "ready");
  });

  test("an engine that crashes after it was ready is restarted with growing backoff", async () => {
    const res = await launch({
      alias: "crashy",
      model_name: "m/crashy",
      gpu_ids: [1],
      extra_args: ["--crash-after", "700"],
    });
    const firstPid = res.json.pid;
    await waitStatus("crashy", "ready");
    const restarted = await eventually(
      async () => {
        const { json } = await call(`${base}/v1/instances/crashy`, { token });
        return json.restarts >= 3 ? json : null;
      },
      { timeoutMs: 20_000, what: "three restarts" },
    );
    expect(restarted.pid).not.toBe(firstPid);
    expect(restarted.last_error).toContain("died unexpectedly");
    expect(restarted.port).toBe(res.json.port); // the route stays valid
    const logs = await call(`${base}/v1/instances/crashy/logs?tail=1000`, { token });
    expect(logs.text).toContain("restart 1 in 150 ms");
    expect(logs.text).toContain("restart 2 in 300 ms");
    expect(logs.text).toContain("restart 3 in 600 ms");
    // The first crash's log stays available after later restarts push it out of the tail.
    const short = await call(`${base}/v1/instances/crashy/logs?tail=2`, { token });
    expect(short.text.startsWith("[agent] first failure")).toBe(true);
    expect(short.text).toContain("died unexpectedly");
    await call(`${base}/v1/instances/crashy`, { method: "DELETE", token });
  });

  test("stopping an instance ends its whole process group and frees its port", async () => {
    const res = await launch({ alias: "stopme", model_name: "m/stop", gpu_ids: [0] });
    const { pid, port } = res.json as { pid: number; port: number };
    await waitStatus("stopme", "ready");
    const stopped = await call(`${base}/v1/instances/stopme`, { method: "DELETE", token });
    expect(stopped.status).toBe(200);
    expect(stopped.json.status).toBe("stopped");
    expect(groupAlive(pid)).toBe(false);
    expect(processAlive(pid)).toBe(false);
    expect(await canBind(port)).toBe(true);
    const gone = await call(`${base}/v1/instances/stopme`, { token });
    expect(gone.status).toBe(404);
    expect(gone.json.error.code).toBe("instance_not_found");
    const again = await call(`${base}/v1/instances/stopme`, { method: "DELETE", token });
    expect(again.status).toBe(404);
  });

  test("a restart stops the engine's process group and launches it again on the same port", async () => {
    const res = await launch({
      alias: "restartme",
      model_name: "m/restart",
      gpu_ids: [1],
      extra_args: ["--startup-delay", "400"],
    });
    const { pid, port } = res.json as { pid: number; port: number };
    // Not ready yet: nothing to restart (the launch is already under way).
    const early = await call(`${base}/v1/instances/restartme/restart`, { method: "POST", token });
    expect(early.status).toBe(409);
    expect(early.json.error.message).toContain("only a ready engine can be restarted");
    await waitStatus("restartme", "ready");

    const restarted = await call(`${base}/v1/instances/restartme/restart`, {
      method: "POST",
      token,
    });
    expect(restarted.status).toBe(202);
    expect(restarted.json.status).toBe("stopping");
    expect(restarted.json.restarts).toBe(1);
    // A second request while the first is under way is refused, not doubled.
    const twice = await call(`${base}/v1/instances/restartme/restart`, { method: "POST", token });
    expect(twice.status).toBe(409);
    expect(twice.json.error.code).toBe("conflict");

    const starting = await waitStatus("restartme", "starting");
    expect(starting.pid).not.toBe(pid);
    expect(starting.port).toBe(port);
    // The new launch reports its own progress from the start.
    expect(starting.progress?.phase).not.toBe("ready");
    expect(groupAlive(pid)).toBe(false);
    const ready = await waitStatus("restartme", "ready");
    expect(ready.pid).toBe(starting.pid);
    expect(ready.restarts).toBe(1);
    expect(ready.last_error).toBeNull();
    const models = await fetch(`http://127.0.0.1:${port}/v1/models`).then((r) => r.json());
    expect(models.data[0].id).toBe("restartme");
    const logs = await call(`${base}/v1/instances/restartme/logs?tail=1000`, { token });
    expect(logs.text).toContain(`[agent] restart requested: stopping pid ${pid}`);

    const unknown = await call(`${base}/v1/instances/nobody/restart`, { method: "POST", token });
    expect(unknown.status).toBe(404);
    expect(unknown.json.error.code).toBe("instance_not_found");
    const bad = await call(`${base}/v1/instances/Bad%20Alias!/restart`, { method: "POST", token });
    expect(bad.status).toBe(400);
    await call(`${base}/v1/instances/restartme`, { method: "DELETE", token });
  });

  test("a stop during a restart wins: the engine is not launched again", async () => {
    const res = await launch({ alias: "restart-stop", model_name: "m/rs", gpu_ids: [0] });
    const { pid, port } = res.json as { pid: number; port: number };
    await waitStatus("restart-stop", "ready");
    const restarted = await call(`${base}/v1/instances/restart-stop/restart`, {
      method: "POST",
      token,
    });
    expect(restarted.status).toBe(202);
    const stopped = await call(`${base}/v1/instances/restart-stop`, { method: "DELETE", token });
    expect(stopped.status).toBe(200);
    expect(stopped.json.status).toBe("stopped");
    expect(groupAlive(pid)).toBe(false);
    const gone = await call(`${base}/v1/instances/restart-stop`, { token });
    expect(gone.status).toBe(404);
    // Nothing listens on the port afterwards: the restart did not launch behind the stop.
    expect(await canBind(port)).toBe(true);
  });

  test("a port the manager names is used when free and refused when taken", async () => {
    const taken = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("busy") });
    try {
      const busy = await launch({ alias: "named-port", model_name: "m/p", port: taken.port });
      expect(busy.status).toBe(409);
      expect(busy.json.error.param).toBe("port");
      // A port free a moment ago (a random one can be some connection's ephemeral port).
      const port = await freePort();
      const ok = await launch({ alias: "named-port", model_name: "m/p", port });
      expect(ok.status).toBe(202);
      expect(ok.json.port).toBe(port);
      await waitStatus("named-port", "ready");
      expect((await fetch(`http://127.0.0.1:${port}/health`)).status).toBe(200);
    } finally {
      await taken.stop(true);
      await call(`${base}/v1/instances/named-port`, { method: "DELETE", token });
    }
  });

  test("bad instance requests are refused with 400 in OpenAI's error shape", async () => {
    const cases: [string, unknown, string | null][] = [
      ["bad alias", { alias: "../etc", model_name: "m" }, "alias"],
      ["missing model", { alias: "ok" }, "model_name"],
      ["string GPU id", { alias: "ok", model_name: "m", gpu_ids: ["0"] }, "gpu_ids.0"],
      ["fractional GPU id", { alias: "ok", model_name: "m", gpu_ids: [1.5] }, "gpu_ids.0"],
      ["GPU this host lacks", { alias: "ok", model_name: "m", gpu_ids: [7] }, "gpu_ids"],
      ["unknown field", { alias: "ok", model_name: "m", gpus: [0] }, null],
      ["wrong type", { alias: "ok", model_name: "m", max_model_len: "4096" }, "max_model_len"],
      [
        "utilization above 1",
        { alias: "ok", model_name: "m", gpu_memory_utilization: 1.5 },
        "gpu_memory_utilization",
      ],
      [
        "--port in extra_args",
        { alias: "ok", model_name: "m", extra_args: ["--port", "80"] },
        "extra_args.0",
      ],
      [
        "--port= in extra_args",
        { alias: "ok", model_name: "m", extra_args: ["--port=80"] },
        "extra_args.0",
      ],
      [
        "--host in extra_args",
        { alias: "ok", model_name: "m", extra_args: ["--host", "0.0.0.0"] },
        "extra_args.0",
      ],
      [
        "abbreviated --port",
        { alias: "ok", model_name: "m", extra_args: ["--po", "80"] },
        "extra_args.0",
      ],
      // The OS refuses a NUL in an argument: refused here, not a failed launch.
      ["NUL in model_name", { alias: "ok", model_name: "org/m\u0000x" }, "model_name"],
      [
        "NUL in extra_args",
        { alias: "ok", model_name: "m", extra_args: ["--x\u0000"] },
        "extra_args.0",
      ],
      [
        "tp above GPU count",
        { alias: "ok", model_name: "m", gpu_ids: [0], tensor_parallel_size: 2 },
        "tensor_parallel_size",
      ],
    ];
    for (const [what, body, param] of cases) {
      const res = await launch(body as Record<string, unknown>);
      expect({ what, status: res.status }).toEqual({ what, status: 400 });
      expect(res.json.error.type).toBe("invalid_request_error");
      expect(typeof res.json.error.message).toBe("string");
      if (param) expect({ what, param: res.json.error.param }).toEqual({ what, param });
    }
    const notJson = await call(`${base}/v1/instances`, { raw: "{nope", token });
    expect(notJson.status).toBe(400);
    expect(notJson.json.error.code).toBe("invalid_json");
    const list = await call<InstanceList>(`${base}/v1/instances`, { token });
    expect(list.json.instances.some((i) => i.alias === "ok")).toBe(false);
  });

  test("every endpoint but /health needs the agent credential; FLEET_TOKEN opens nothing", async () => {
    const health = await fetch(`${base}/health`);
    expect(health.status).toBe(200);
    // Open, and it tells strangers nothing.
    expect(await health.json()).toEqual({ status: "ok" });
    // Presented the agent credential (as the manager's probes do), it says who answered.
    const probed = await fetch(`${base}/health`, { headers: { authorization: `Bearer ${token}` } });
    expect(await probed.json()).toEqual({
      status: "ok",
      worker_id: "instances-test",
      authenticated: true,
    });
    for (const [method, path] of [
      ["GET", "/v1/instances"],
      ["POST", "/v1/instances"],
      ["DELETE", "/v1/instances/argv-check"],
      ["GET", "/v1/instances/argv-check/logs"],
      ["POST", "/proxy/argv-check/v1/chat/completions"],
      ["GET", "/proxy/argv-check/v1/models"],
      ["GET", "/nowhere"],
    ] as const) {
      for (const authorization of [
        undefined,
        "Bearer wrong-token",
        `Bearer ${joinToken}`,
        `Basic ${token}`,
        token,
      ]) {
        const headers: Record<string, string> = authorization ? { authorization } : {};
        const res = await fetch(`${base}${path}`, { method, headers });
        expect({ method, path, authorization, status: res.status }).toEqual({
          method,
          path,
          authorization,
          status: 401,
        });
        const body = await res.json();
        expect(body.error.type).toBe("authentication_error");
      }
    }
    // The instance launched by the first test is untouched.
    const list = await call<InstanceList>(`${base}/v1/instances`, { token });
    expect(list.json.instances.find((i) => i.alias === "argv-check")?.status).toBe("ready");
  });
});

describe("agent startup timeout", () => {
  test("an engine not ready within the startup timeout fails and is stopped", async () => {
    const impatient = await newAgent(simVllm, { startupTimeoutMs: 1000 });
    await impatient.run();
    try {
      const res = await call(`${impatient.url}/v1/instances`, {
        body: { alias: "slowload", model_name: "m/slow", extra_args: ["--startup-delay", "60000"] },
        token,
      });
      const pid = res.json.pid as number;
      const failed = await eventually(
        async () => {
          const { json } = await call(`${impatient.url}/v1/instances/slowload`, { token });
          return json.status === "failed" ? json : null;
        },
        { what: "the startup timeout" },
      );
      expect(failed.last_error).toContain("not ready after 1s");
      await eventually(() => !processAlive(pid), { what: "the engine to be stopped" });
    } finally {
      await impatient.stop();
    }
  });
});

describe("agent process groups", () => {
  test("stop reaches the engine's children, and SIGKILL follows a SIGTERM the engine ignores", async () => {
    const stubborn = await newAgent(`${repoRoot}/tests/agent/fixtures/fake-vllm`);
    await stubborn.run();
    try {
      const res = await call(`${stubborn.url}/v1/instances`, {
        body: {
          alias: "stubborn",
          model_name: "m/stubborn",
          extra_args: ["--ignore-sigterm", "--spawn-child"],
        },
        token,
      });
      expect(res.status).toBe(202);
      const pid = res.json.pid as number;
      const child = await eventually(
        () => {
          const line = stubborn.supervisor
            .get("stubborn")
            ?.logs.tail(50)
            .find((l) => l.startsWith("child "));
          return line ? Number(line.slice("child ".length)) : null;
        },
        { what: "the engine's child pid" },
      );
      expect(processAlive(child)).toBe(true);
      await eventually(() => stubborn.supervisor.get("stubborn")?.status === "ready");
      const started = Date.now();
      const stopped = await call(`${stubborn.url}/v1/instances/stubborn`, {
        method: "DELETE",
        token,
      });
      expect(stopped.json.status).toBe("stopped");
      // It ignored SIGTERM, so only the SIGKILL after the 2 s grace ended it.
      expect(Date.now() - started).toBeGreaterThanOrEqual(1900);
      expect(processAlive(pid)).toBe(false);
      expect(processAlive(child)).toBe(false);
      expect(groupAlive(pid)).toBe(false);
    } finally {
      await stubborn.stop();
    }
  });
});
