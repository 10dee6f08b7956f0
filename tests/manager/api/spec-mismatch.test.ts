import { describe, expect, test } from "bun:test";
import { sql } from "drizzle-orm";
import type { ModelRow } from "../../../db/schema/index.ts";
import { eventually } from "../../../devkit/net.ts";
import { instanceSpec, specMismatch } from "../../../manager/services/launcher.ts";
import type {
  InstanceReport,
  InstanceSpec,
  ModelInfo,
  RouteSnapshot,
} from "../../../protocol/index.ts";
import { gpu, manualClock, type StubAgent, type TestManager } from "../helpers.ts";
import { describeApi } from "./harness.ts";

const MODEL = "Qwen/Qwen2.5-0.5B";

/** An engine as an agent reports it, launched with `spec`. */
function engine(
  spec: Partial<InstanceSpec> & { alias: string },
  status: "ready" | "starting" = "ready",
): InstanceReport {
  const full: InstanceSpec = {
    model_name: MODEL,
    gpu_ids: [0],
    extra_args: [],
    gpu_memory_utilization: 0.9,
    tensor_parallel_size: 1,
    ...spec,
  };
  const now = new Date().toISOString();
  return {
    alias: full.alias,
    model_name: full.model_name,
    status,
    port: 31_000,
    gpu_ids: full.gpu_ids,
    pid: 4242,
    restarts: 0,
    last_error: null,
    started_at: now,
    ready_at: status === "ready" ? now : null,
    updated_at: now,
    spec: full,
  };
}

describe("specMismatch", () => {
  const model = {
    alias: "m",
    modelName: MODEL,
    maxModelLen: 4096,
    gpuMemoryUtilization: 0.5,
    tensorParallelSize: 2,
    dtype: "bfloat16",
    extraArgs: ["--enable-prefix-caching"],
  } as ModelRow;
  const asked = instanceSpec(model, { gpuIds: [2, 3], gpuMemoryUtilization: 0.5 });
  const launched = engine({
    alias: "m",
    gpu_ids: [2, 3],
    gpu_memory_utilization: 0.5,
    tensor_parallel_size: 2,
    max_model_len: 4096,
    dtype: "bfloat16",
    extra_args: ["--enable-prefix-caching"],
  });

  test("an engine running exactly what was asked matches (GPU order aside)", () => {
    expect(specMismatch(asked, launched)).toBeUndefined();
    const reordered = { ...launched, gpu_ids: [3, 2] };
    expect(specMismatch(asked, reordered)).toBeUndefined();
  });

  test.each([
    [
      { model_name: "evil/model" },
      'model_name reported "evil/model", expected "Qwen/Qwen2.5-0.5B"',
    ],
    [
      { extra_args: ["--trust-remote-code"] },
      'extra_args reported ["--trust-remote-code"], expected ["--enable-prefix-caching"]',
    ],
    [{ tensor_parallel_size: 1 }, "tensor_parallel_size reported 1, expected 2"],
    [{ max_model_len: undefined }, "max_model_len reported unset, expected 4096"],
    [{ dtype: "float32" as const }, 'dtype reported "float32", expected "bfloat16"'],
    [{ gpu_memory_utilization: 0.95 }, "gpu_memory_utilization reported 0.95, expected 0.5"],
    [{ gpu_ids: [0, 1] }, "gpu_ids reported [0,1], expected [2,3]"],
  ])("names the field that differs: %j", (change, message) => {
    const spec = { ...launched.spec, ...change } as InstanceSpec;
    const report = { ...launched, model_name: spec.model_name, gpu_ids: spec.gpu_ids, spec };
    expect(specMismatch(asked, report)).toBe(`spec mismatch: ${message}`);
  });

  test("every differing field is listed; very long values are cut", () => {
    const spec = { ...launched.spec, extra_args: ["x".repeat(500)], dtype: "half" } as InstanceSpec;
    const message = specMismatch(asked, { ...launched, spec }) ?? "";
    expect(message).toStartWith('spec mismatch: extra_args reported ["xxx');
    expect(message).toContain('; dtype reported "half", expected "bfloat16"');
    expect(message.length).toBeLessThan(400);
  });

  test("an option left unset is vLLM's default", () => {
    const plain = instanceSpec(
      { ...model, maxModelLen: null, dtype: null, tensorParallelSize: 1, extraArgs: [] },
      {
        gpuIds: [0],
        gpuMemoryUtilization: 0.9,
      },
    );
    const bare = engine({
      alias: "m",
      gpu_memory_utilization: undefined,
      tensor_parallel_size: undefined,
      dtype: "auto",
    });
    expect(specMismatch(plain, bare)).toBeUndefined();
  });

  test("without the spec in the report, the model and GPUs are still compared", () => {
    const { spec: _spec, ...bare } = launched;
    expect(specMismatch(asked, bare)).toBeUndefined();
    expect(specMismatch(asked, { ...bare, gpu_ids: [0] })).toBe(
      "spec mismatch: gpu_ids reported [0], expected [2,3]",
    );
  });
});

/**
 * An engine that does not run what the manager asked for is never served: through heartbeats,
 * the launch call and adoption.
 */
describeApi("manager API: engines that run another spec", (api) => {
  const beat = (t: TestManager, workerId: string, instances: InstanceReport[]) =>
    t.heartbeat(workerId, { gpu_info: { gpus: [gpu(0)], warning: null }, instances });
  const served = async (t: TestManager, alias: string) =>
    (await t.json<RouteSnapshot>("GET", "/v1/routes")).body.routes
      .filter((route) => route.alias === alias)
      .map((route) => [route.worker_id, route.ready]);
  const instances = async (t: TestManager, alias: string) =>
    (await t.json<ModelInfo>("GET", `/v1/models/${alias}`)).body.instances.map((i) => ({
      worker_id: i.worker_id,
      status: i.status,
      last_error: i.last_error,
    }));
  const events = (t: TestManager, kind: string) =>
    t.db.query<{ alias: string; worker_id: string; message: string }>(
      sql`select alias, worker_id, message from events where kind = ${kind} order by id`,
    );
  const stopped = (agent: StubAgent, alias: string) =>
    eventually(() => agent.stops.includes(alias), { what: `a stop of ${alias}` });

  test("another host's engine relaunched with --trust-remote-code is failed, unserved and stopped; the manager relaunches its own", async () => {
    const clock = manualClock();
    const t = await api.manager({ clock });
    const agent = api.agent();
    await api.register(agent, "w1");
    expect((await api.model({ alias: "victim" })).status).toBe(201);
    agent.markReady("victim");
    await beat(t, "w1", agent.reports());
    expect(await served(t, "victim")).toEqual([["w1", true]]);

    // Whoever reached the agent's instance API deleted the engine and launched it again with
    // code execution on.
    const original = agent.instances.get("victim");
    if (!original?.spec) throw new Error("the stub reports its spec");
    agent.instances.set("victim", {
      ...original,
      pid: (original.pid ?? 0) + 1,
      spec: { ...original.spec, extra_args: ["--trust-remote-code"] },
    });
    await beat(t, "w1", agent.reports());
    const mismatch = 'spec mismatch: extra_args reported ["--trust-remote-code"], expected []';
    expect(await instances(t, "victim")).toEqual([
      { worker_id: "w1", status: "failed", last_error: mismatch },
    ]);
    expect(await served(t, "victim")).toEqual([["w1", false]]);
    expect(await events(t, "instance.spec_mismatch")).toEqual([
      { alias: "victim", worker_id: "w1", message: mismatch },
    ]);
    await stopped(agent, "victim");

    // The same report again (before the stop took effect) is not adopted either, and not
    // recorded twice.
    clock.advance(40_000);
    await beat(t, "w1", [
      { ...original, spec: { ...original.spec, extra_args: ["--trust-remote-code"] } },
    ]);
    expect((await instances(t, "victim"))[0]?.status).toBe("failed");
    expect(await events(t, "instance.spec_mismatch")).toHaveLength(1);

    // After the retry backoff the manager launches what it asked for in the first place.
    agent.instances.delete("victim");
    await beat(t, "w1", []);
    await t.manager.tick();
    expect(agent.launches.at(-1)?.extra_args).toEqual([]);
    agent.markReady("victim");
    await beat(t, "w1", agent.reports());
    expect(await served(t, "victim")).toEqual([["w1", true]]);
  });

  test("an engine of another model under the alias is failed and stopped", async () => {
    const t = await api.manager();
    const agent = api.agent();
    await api.register(agent, "w1");
    await api.model({ alias: "m" });
    await beat(t, "w1", [engine({ alias: "m", model_name: "attacker/model" })]);
    expect(await instances(t, "m")).toEqual([
      {
        worker_id: "w1",
        status: "failed",
        last_error: `spec mismatch: model_name reported "attacker/model", expected "${MODEL}"`,
      },
    ]);
    expect(await served(t, "m")).toEqual([["w1", false]]);
    await stopped(agent, "m");
  });

  test("a launch meeting an engine of another spec under the alias stops it and launches again", async () => {
    const t = await api.manager();
    const agent = api.agent();
    agent.instances.set("m", engine({ alias: "m", extra_args: ["--trust-remote-code"] }));
    await api.register(agent, "w1");
    const placed = await api.model({ alias: "m" });
    expect(placed.status).toBe(201);
    expect(agent.stops).toEqual(["m"]);
    expect(agent.launches.map((spec) => spec.extra_args)).toEqual([[], []]);
    expect(await instances(t, "m")).toEqual([
      { worker_id: "w1", status: "starting", last_error: null },
    ]);
  });

  test("an agent whose launch reply reports another spec has not launched it", async () => {
    const t = await api.manager();
    const stops: string[] = [];
    // An agent that answers the launch with the engine it chose to run instead.
    const liar = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      async fetch(request) {
        // The manager's probe: this agent answers as the worker it is.
        if (new URL(request.url).pathname === "/health") {
          return Response.json({ status: "ok", worker_id: "w1" });
        }
        if (request.method === "DELETE") {
          stops.push(new URL(request.url).pathname);
          return Response.json({ status: "stopped" });
        }
        const spec = (await request.json()) as InstanceSpec;
        const report = engine({ ...spec, extra_args: ["--trust-remote-code"] }, "starting");
        return Response.json(report, { status: 202 });
      },
    });
    try {
      await api.register({ url: `http://127.0.0.1:${liar.port}` }, "w1");
      const placed = await api.model({ alias: "m" });
      expect(placed.status).toBe(201);
      expect(await instances(t, "m")).toEqual([
        {
          worker_id: "w1",
          status: "failed",
          last_error:
            'launch on worker w1 failed: spec mismatch: extra_args reported ["--trust-remote-code"], expected []',
        },
      ]);
      expect(stops).toEqual(["/v1/instances/m"]);
    } finally {
      liar.stop(true);
    }
  });

  test("an engine the manager never placed is adopted only if it runs the model's spec", async () => {
    const t = await api.manager();
    const first = api.agent();
    first.refuse = { status: 400, message: "no" };
    await api.register(first, "w1");
    await api.model({ alias: "m" });
    expect((await instances(t, "m")).map((i) => i.status)).toEqual(["failed"]);

    // A host shows up already running the alias, with remote code allowed: not adopted.
    const rogue = api.agent();
    const tampered = engine({ alias: "m", extra_args: ["--trust-remote-code"] });
    rogue.instances.set("m", tampered);
    await api.register(rogue, "w2", [gpu(0)], { instances: [tampered] });
    expect((await instances(t, "m")).map((i) => i.worker_id)).toEqual(["w1"]);
    expect(await served(t, "m")).toEqual([["w1", false]]);
    await stopped(rogue, "m");
    const unwanted = await eventually(async () => {
      const rows = await events(t, "instance.unwanted_stopped");
      return rows.length > 0 ? rows : undefined;
    });
    expect(unwanted).toEqual([
      {
        alias: "m",
        worker_id: "w2",
        message: 'spec mismatch: extra_args reported ["--trust-remote-code"], expected []',
      },
    ]);

    // The same engine with the model's spec is taken as a replica.
    const honest = api.agent();
    const same = engine({ alias: "m" });
    honest.instances.set("m", same);
    await api.register(honest, "w3", [gpu(0)], { instances: [same] });
    expect(await served(t, "m")).toEqual(
      expect.arrayContaining([
        ["w1", false],
        ["w3", true],
      ]),
    );
  });
});
