import { afterAll, describe, expect, test } from "bun:test";
import type { Server } from "bun";
import { sql } from "drizzle-orm";
import { freePort } from "../../../devkit/net.ts";
import { parseEnv } from "../../../kit/env.ts";
import { silentLogger } from "../../../kit/log.ts";
import { createApp } from "../../../manager/app.ts";
import { configFromEnv, defaultConfig, managerEnvSchema } from "../../../manager/env.ts";
import { startupHelp } from "../../../manager/server.ts";
import { type AgentAddress, AgentClient } from "../../../manager/services/agent-client.ts";
import { type ProblemInput, workerProblems } from "../../../manager/services/worker-problems.ts";
import type { ModelInfo, RouteSnapshot, WorkerInfo, WorkerList } from "../../../protocol/index.ts";
import { ADMIN, FLEET, gpu, manualClock, stubAgent, type TestManager } from "../helpers.ts";
import { describeApi } from "./harness.ts";

/**
 * Reaching workers: the manager probes each worker's internal and public URL, records what
 * answers, manages the worker over the path that answers and says what to fix when none does.
 */

/** What an agent's `/health` knows: the agent credential it was issued when it joined. */
type Self = { token: string | null };
type Answer = (request: Request, self: Self) => Response | Promise<Response>;
type HealthServer = Self & {
  url: string;
  port: number;
  hits(): number;
  answer(with_: Answer): void;
  stop(): void;
};

const servers: HealthServer[] = [];
afterAll(() => {
  for (const server of servers) server.stop();
});

/**
 * As the agent answers: its worker id, and `authenticated: true` to a caller presenting its
 * agent credential (`token`, set when the worker joins through `api.register`).
 */
const agentAnswer =
  (workerId: string, extra: Record<string, unknown> = {}): Answer =>
  (request, self) =>
    Response.json({
      status: "ok",
      worker_id: workerId,
      ...(self.token !== null && request.headers.get("authorization") === `Bearer ${self.token}`
        ? { authenticated: true }
        : {}),
      ...extra,
    });

/** An agent's `/health` answered as the test says, over real HTTP on a loopback port. */
function healthServer(answer: Answer, port = 0, token: string | null = null): HealthServer {
  let current = answer;
  let hits = 0;
  const server: Server<undefined> = Bun.serve({
    hostname: "127.0.0.1",
    port,
    fetch(request) {
      hits++;
      return current(request, health);
    },
  });
  const health: HealthServer = {
    token,
    url: `http://127.0.0.1:${server.port}`,
    port: server.port ?? port,
    hits: () => hits,
    answer(with_) {
      current = with_;
    },
    stop: () => void server.stop(true),
  };
  servers.push(health);
  return health;
}

async function workerInfo(t: TestManager, id: string): Promise<WorkerInfo> {
  const { status, body } = await t.json<WorkerInfo>("GET", `/v1/workers/${id}`);
  expect(status).toBe(200);
  return body;
}

async function pathEvents(t: TestManager) {
  return t.db.query<{
    worker_id: string;
    from_status: string;
    to_status: string;
    message: string;
    detail: { path: string; url: string; reachable: boolean; error: string | null };
  }>(sql`select worker_id, from_status, to_status, message, detail from events
         where kind = 'worker.path_changed' order by id`);
}

describeApi("manager API: reaching workers", (api) => {
  test("a registration is probed without holding up its reply; both paths then show an RTT", async () => {
    const t = await api.manager();
    const slow = healthServer(async (request, self) => {
      await Bun.sleep(800);
      return agentAnswer("w1")(request, self);
    });
    // Both URLs lead to the same agent, which holds the credential w1 is issued.
    const mapped = healthServer((request) => agentAnswer("w1")(request, slow));
    const started = performance.now();
    const reply = await api.register(slow, "w1", [gpu(0)], { public_worker_url: mapped.url });
    expect(reply.status).toBe(200);
    expect(performance.now() - started).toBeLessThan(700);
    const before = await workerInfo(t, "w1");
    expect(before.paths.internal).toEqual({
      url: slow.url,
      reachable: null,
      rtt_ms: null,
      error: null,
    });
    expect(before.management_path).toBeNull();
    expect(before.problems).toEqual([]);

    await t.manager.context.prober.idle();
    const after = await workerInfo(t, "w1");
    expect(after.paths.internal).toMatchObject({ url: slow.url, reachable: true, error: null });
    expect(after.paths.internal.rtt_ms).toBeGreaterThanOrEqual(750);
    expect(after.paths.public).toMatchObject({ url: mapped.url, reachable: true, error: null });
    expect(after.paths.public?.rtt_ms).toBeLessThan(750);
    expect(after.management_path).toBe("internal");
    expect(after.probed_at).toBeString();
    expect(after.problems).toEqual([]);
    const { body: list } = await t.json<WorkerList>("GET", "/v1/workers");
    expect(list.workers[0]?.paths).toEqual(after.paths);
  });

  test("a path counts only when that worker's own agent answers", async () => {
    const t = await api.manager({ config: { probeTimeoutMs: 300 } });
    const health = healthServer(agentAnswer("w1"));
    const elsewhere = healthServer((request) => agentAnswer("w1")(request, health));
    await api.register(health, "w1");
    await t.manager.context.prober.idle();
    expect((await workerInfo(t, "w1")).paths.internal.reachable).toBe(true);

    const cases: [string, Answer, string][] = [
      ["another agent", agentAnswer("w2"), "another agent answered: worker w2, not w1"],
      [
        "an agent older than the manager",
        () => Response.json({ status: "ok" }),
        "answered without a worker_id",
      ],
      ["a web page", () => new Response("<html></html>"), "answered without a worker_id"],
      ["an error", () => new Response("bad gateway", { status: 502 }), "answered HTTP 502"],
      [
        "a redirect to the right agent",
        () => Response.redirect(`${elsewhere.url}/health`, 307),
        "answered a redirect (307); probes never follow redirects",
      ],
      [
        "silence",
        async (request, self) => {
          await Bun.sleep(1500);
          return agentAnswer("w1")(request, self);
        },
        "no answer within 300 ms (PROBE_TIMEOUT_MS)",
      ],
    ];
    for (const [what, answer, error] of cases) {
      health.answer(answer);
      expect(await t.manager.context.prober.probe("w1")).toBe(true);
      const info = await workerInfo(t, "w1");
      expect({ what, ...info.paths.internal }).toMatchObject({
        what,
        reachable: false,
        rtt_ms: null,
        error: expect.stringContaining(error),
      });
      expect(info.management_path).toBeNull();
    }
    expect(elsewhere.hits()).toBe(0);
  });

  test("with an agent credential on record, the agent must confirm it", async () => {
    // Workers register without credentials here (no join token), as in open mode.
    const t = await api.manager({ config: { fleetToken: undefined } });
    const health = healthServer((request) =>
      Response.json({
        status: "ok",
        worker_id: "w1",
        ...(request.headers.get("authorization") === "Bearer fa_right"
          ? { authenticated: true }
          : {}),
      }),
    );
    await api.register(health, "w1");
    await t.manager.context.prober.idle();
    // Before the worker has a credential (open mode, or an agent from before them), the
    // worker_id is enough.
    expect((await workerInfo(t, "w1")).paths.internal.reachable).toBe(true);

    await t.db.query(sql`update workers set agent_token = 'fa_right' where worker_id = 'w1'`);
    await t.manager.context.prober.probe("w1");
    expect((await workerInfo(t, "w1")).paths.internal.reachable).toBe(true);

    await t.db.query(sql`update workers set agent_token = 'fa_other' where worker_id = 'w1'`);
    await t.manager.context.prober.probe("w1");
    expect((await workerInfo(t, "w1")).paths.internal).toMatchObject({
      reachable: false,
      error: "the agent did not accept worker w1's agent credential",
    });
  });

  test("launches go over the internal URL while it answers, then over the public one", async () => {
    const t = await api.manager();
    const internal = api.agent();
    const mapped = api.agent();
    internal.answersAs = "w1";
    mapped.answersAs = "w1";
    await api.register(internal, "w1", [gpu(0)], { public_worker_url: mapped.url });
    // One agent behind both URLs: it holds the credential w1 was issued.
    mapped.token = internal.token;
    await t.manager.context.prober.idle();
    expect((await workerInfo(t, "w1")).management_path).toBe("internal");
    expect((await api.model({ alias: "one", gpu_memory_utilization: 0.4 })).status).toBe(201);
    expect(internal.launches.map((l) => l.alias)).toEqual(["one"]);
    expect(mapped.launches).toEqual([]);

    internal.stop();
    await t.manager.context.prober.probe("w1");
    const info = await workerInfo(t, "w1");
    expect(info.management_path).toBe("public");
    expect(info.paths.internal.reachable).toBe(false);
    expect(info.paths.public?.reachable).toBe(true);
    expect(info.problems).toEqual([]);
    expect((await api.model({ alias: "two", gpu_memory_utilization: 0.4 })).status).toBe(201);
    expect(mapped.launches.map((l) => l.alias)).toEqual(["two"]);
  });

  test("a change of a path's reachability is an event, its first finding is not; problems say what to set", async () => {
    const t = await api.manager();
    const port = await freePort();
    let health = healthServer(agentAnswer("w1"), port);
    await api.register(health, "w1");
    await t.manager.context.prober.idle();
    expect(await pathEvents(t)).toEqual([]);

    health.stop();
    await t.manager.context.prober.probe("w1");
    const down = await workerInfo(t, "w1");
    const error = down.paths.internal.error;
    expect(error).toBeString();
    expect(down.problems).toEqual([
      `no path reaches this worker: the manager cannot dial ${health.url} (its loopback: ${error}). Set PUBLIC_URL on the agent to its port-forwarding URL, or WORKER_URL to an address the manager can dial`,
    ]);
    expect(await pathEvents(t)).toEqual([
      {
        worker_id: "w1",
        from_status: "reachable",
        to_status: "unreachable",
        message: `internal path ${health.url} stopped answering: ${error}`,
        detail: { path: "internal", url: health.url, reachable: false, error },
      },
    ]);

    // The same agent back on its port, with the credential it holds.
    health = healthServer(agentAnswer("w1"), port, health.token);
    await t.manager.context.prober.probe("w1");
    await t.manager.context.prober.probe("w1");
    const events = await pathEvents(t);
    expect(events.map((e) => [e.from_status, e.to_status, e.message])).toEqual([
      ["reachable", "unreachable", `internal path ${health.url} stopped answering: ${error}`],
      ["unreachable", "reachable", `internal path ${health.url} answers again`],
    ]);
    expect((await workerInfo(t, "w1")).problems).toEqual([]);
  });

  test("an agent that stopped is reported as not heard from, not as a URL to change; a URL that failed while its agent heartbeated keeps its advice", async () => {
    const clock = manualClock();
    // Probed only when the test says: a round the sweep's tick starts would claim both.
    const t = await api.manager({ clock, config: { probeIntervalS: 3600 } });
    const stopped = healthServer(agentAnswer("w1"));
    await api.register(stopped, "w1");
    // w2's agent runs and heartbeats, but nothing answers at the URL it advertises.
    const nowhere = `http://127.0.0.1:${await freePort()}`;
    await api.register({ url: nowhere }, "w2");
    await t.manager.context.prober.idle();
    expect((await workerInfo(t, "w1")).problems).toEqual([]);
    const heardFrom = (await workerInfo(t, "w1")).last_heartbeat;

    stopped.stop();
    clock.advance(1000);
    const beat = { gpu_info: { gpus: [gpu(0)], warning: null }, instances: [] };
    expect((await t.heartbeat("w2", beat)).status).toBe(200);
    await t.manager.context.prober.probe("w1");
    expect((await workerInfo(t, "w1")).paths.internal.reachable).toBe(false);
    clock.advance((t.manager.context.config.workerTimeoutS + 1) * 1000);
    expect((await t.manager.tick()).offline.sort()).toEqual(["w1", "w2"]);

    const silent = (id: string, since: string) =>
      `not heard from since ${since}: its agent stopped or its host is down. Start the agent again, or remove the worker: fleet workers rm ${id}`;
    const w1 = await workerInfo(t, "w1");
    expect([w1.status, w1.paths.internal.reachable]).toEqual(["offline", false]);
    expect(w1.problems).toEqual([silent("w1", heardFrom)]);
    const w2 = await workerInfo(t, "w2");
    expect(w2.problems).toEqual([
      silent("w2", w2.last_heartbeat),
      `no path reaches this worker: the manager cannot dial ${nowhere} (its loopback: ${w2.paths.internal.error}). Set PUBLIC_URL on the agent to its port-forwarding URL, or WORKER_URL to an address the manager can dial`,
    ]);
    // The list says the same.
    const list = await t.json<WorkerList>("GET", "/v1/workers");
    expect(list.body.workers.map((w) => [w.worker_id, w.problems])).toEqual([
      ["w1", w1.problems],
      ["w2", w2.problems],
    ]);
  });

  test("rounds probe the online workers that are due, and managers sharing a database split them", async () => {
    const clock = manualClock();
    const t = await api.manager({ clock });
    const one = healthServer(agentAnswer("w1"));
    const two = healthServer(agentAnswer("w2"));
    await api.register(one, "w1");
    await api.register(two, "w2");
    await t.manager.context.prober.idle();
    await t.db.query(sql`update workers set status = 'offline' where worker_id = 'w2'`);
    const [hitsOne, hitsTwo] = [one.hits(), two.hits()];

    // Probed at registration: not due before PROBE_INTERVAL_S (15 s).
    expect(await t.manager.context.prober.round()).toBe(0);
    clock.advance(16_000);
    const other = createApp({
      db: t.db,
      config: defaultConfig({ adminToken: ADMIN, fleetToken: FLEET }),
      log: silentLogger,
      clock,
    });
    try {
      const counts = await Promise.all([
        t.manager.context.prober.round(),
        other.context.prober.round(),
        t.manager.context.prober.round(),
      ]);
      expect(counts[0]).toBe(counts[2]);
      expect(counts[0] + counts[1]).toBe(1);
    } finally {
      await other.close();
    }
    expect(one.hits() - hitsOne).toBe(1);
    expect(two.hits() - hitsTwo).toBe(0);
  });

  test("a re-registration with a new URL forgets what the old one answered", async () => {
    const t = await api.manager();
    const old = healthServer(agentAnswer("w1"));
    await api.register(old, "w1");
    await t.manager.context.prober.idle();
    expect((await workerInfo(t, "w1")).management_path).toBe("internal");

    const moved = healthServer(async (request, self) => {
      await Bun.sleep(500);
      return agentAnswer("w1")(request, self);
    });
    await api.register(moved, "w1");
    const info = await workerInfo(t, "w1");
    expect(info.paths.internal).toEqual({
      url: moved.url,
      reachable: null,
      rtt_ms: null,
      error: null,
    });
    expect(info.management_path).toBeNull();
    await t.manager.context.prober.idle();
    expect((await workerInfo(t, "w1")).paths.internal.reachable).toBe(true);
  });

  test("a worker whose routed path stops answering leaves the route snapshot (after two failed probes), and comes back when it answers", async () => {
    const t = await api.manager({ config: { probeTimeoutMs: 300 } });
    const agent = api.agent();
    agent.answersAs = "w1";
    // The port mapping in front of the same agent (the URL in its routes).
    const asAgent: Answer = (request) => agentAnswer("w1")(request, agent);
    const mapped = healthServer(asAgent);
    await api.register(agent, "w1", [gpu(0)], { public_worker_url: mapped.url });
    await t.manager.context.prober.idle();
    expect((await api.model({ alias: "one", gpu_memory_utilization: 0.4 })).status).toBe(201);
    agent.markReady("one");
    const beat = () =>
      t.heartbeat("w1", {
        gpu_info: { gpus: [gpu(0)], warning: null },
        instances: agent.reports(),
      });
    await beat();
    const served = async () =>
      (await t.json<RouteSnapshot>("GET", "/v1/routes")).body.routes.map((r) => [
        r.worker_url,
        r.ready,
      ]);
    expect(await served()).toEqual([[mapped.url, true]]);
    const routeEvents = async () =>
      (
        await t.db.query<{
          kind: string;
          message: string;
          detail: { url: string; routes: number };
        }>(
          sql`select kind, message, detail from events
              where kind in ('worker.routes_withdrawn', 'worker.routes_restored') order by id`,
        )
      ).map((e) => [e.kind, e.detail.url, e.detail.routes]);

    // One failed probe is not enough: the second, a second later, answers.
    let fails = 1;
    mapped.answer((request, self) => {
      if (fails-- > 0) return new Response("bad gateway", { status: 502 });
      return asAgent(request, self);
    });
    await t.manager.context.prober.probe("w1");
    expect((await workerInfo(t, "w1")).paths.public?.reachable).toBe(true);
    expect(await served()).toEqual([[mapped.url, true]]);
    expect(await routeEvents()).toEqual([]);

    // Silent twice in a row: unreachable, and its routes leave the snapshot for every router.
    mapped.answer(async (request, self) => {
      await Bun.sleep(1000);
      return asAgent(request, self);
    });
    await t.manager.context.prober.probe("w1");
    const down = await workerInfo(t, "w1");
    expect(down.paths.public).toMatchObject({
      reachable: false,
      error: "no answer within 300 ms (PROBE_TIMEOUT_MS)",
    });
    // Managed over its internal URL all along.
    expect(down.management_path).toBe("internal");
    expect(await served()).toEqual([[mapped.url, false]]);
    expect(await routeEvents()).toEqual([["worker.routes_withdrawn", mapped.url, 1]]);
    // Its agent still reports the engine ready: the route stays out while the path is down.
    await beat();
    expect(await served()).toEqual([[mapped.url, false]]);
    // The model is ready, and its route says it is not served (what `fleet models wait` prints).
    const model = (await t.json<ModelInfo>("GET", "/v1/models/one")).body;
    expect([model.status, model.routes.map((r) => [r.worker_url, r.ready])]).toEqual([
      "ready",
      [[mapped.url, false]],
    ]);

    mapped.answer(asAgent);
    await t.manager.context.prober.probe("w1");
    expect(await served()).toEqual([[mapped.url, true]]);
    const back = (await t.json<ModelInfo>("GET", "/v1/models/one")).body;
    expect(back.routes.map((r) => r.ready)).toEqual([true]);
    expect(await routeEvents()).toEqual([
      ["worker.routes_withdrawn", mapped.url, 1],
      ["worker.routes_restored", mapped.url, 1],
    ]);
  });

  test("without a public URL, the internal one is the routed path", async () => {
    const t = await api.manager({ config: { probeTimeoutMs: 300 } });
    const port = await freePort();
    const agent = api.agent();
    agent.answersAs = "w1";
    await api.register(agent, "w1");
    await t.manager.context.prober.idle();
    expect((await api.model({ alias: "one", gpu_memory_utilization: 0.4 })).status).toBe(201);
    agent.markReady("one");
    await t.heartbeat("w1", {
      gpu_info: { gpus: [gpu(0)], warning: null },
      instances: agent.reports(),
    });
    const ready = async () =>
      (await t.json<RouteSnapshot>("GET", "/v1/routes")).body.routes.map((r) => r.ready);
    expect(await ready()).toEqual([true]);
    // Another URL that nothing answers: the next probe finds the internal path down.
    await t.db.query(
      sql`update workers set worker_url = ${`http://127.0.0.1:${port}`} where worker_id = 'w1'`,
    );
    await t.manager.context.prober.probe("w1");
    expect(await ready()).toEqual([false]);
  });
});

describe("the management path", () => {
  const agent = stubAgent();
  afterAll(() => agent.stop());
  const client = new AgentClient({ fetch, timeoutMs: 2000 });
  // Every call carries the worker's own agent credential, whichever path it takes.
  const AGENT_TOKEN = "fa_w1-agent-credential";
  agent.token = AGENT_TOKEN;

  test("internal when it answers, else public, else internal with public as the fallback", async () => {
    const dead = `http://127.0.0.1:${await freePort()}`;
    const worker: AgentAddress = {
      workerId: "w1",
      workerUrl: dead,
      publicWorkerUrl: agent.url,
      agentToken: AGENT_TOKEN,
      internalReachable: null,
      publicReachable: null,
    };
    const target = (fields: Partial<AgentAddress>) => client.target({ ...worker, ...fields });
    expect(target({ internalReachable: true, publicReachable: true })).toEqual({
      url: dead,
      fallback: undefined,
      token: AGENT_TOKEN,
    });
    expect(target({ internalReachable: false, publicReachable: true })).toEqual({
      url: agent.url,
      fallback: undefined,
      token: AGENT_TOKEN,
    });
    expect(target({ internalReachable: false, publicReachable: false })).toEqual({
      url: dead,
      fallback: agent.url,
      token: AGENT_TOKEN,
    });
    expect(target({})).toEqual({ url: dead, fallback: agent.url, token: AGENT_TOKEN });
    expect(
      target({ publicWorkerUrl: null, internalReachable: false, publicReachable: true }),
    ).toEqual({ url: dead, fallback: undefined, token: AGENT_TOKEN });

    // No path known: the internal URL refuses, the call goes through the public one.
    agent.instances.clear();
    const launched = await client.launch(worker, { alias: "fb", model_name: "m/fb" });
    expect(launched.ok).toBe(true);
    expect(agent.launches.map((l) => l.alias)).toEqual(["fb"]);

    const deadToo = `http://127.0.0.1:${await freePort()}`;
    const failed = await client.list({ ...worker, publicWorkerUrl: deadToo });
    expect(failed.ok).toBe(false);
    if (failed.ok) return;
    expect(failed.status).toBeNull();
    expect(failed.error).toContain(`agent at ${dead} unreachable`);
    expect(failed.error).toContain(`agent at ${deadToo} unreachable`);
  });
});

describe("worker problems", () => {
  const heardAt = new Date("2026-11-26T12:00:00.000Z");
  const base: ProblemInput = {
    workerId: "w1",
    status: "online",
    lastHeartbeat: heardAt,
    probedAt: null,
    workerUrl: "http://127.0.0.1:6006",
    publicWorkerUrl: null,
    internalReachable: null,
    internalProbeError: null,
    publicReachable: null,
    publicProbeError: null,
  };
  const problems = (fields: Partial<ProblemInput>) => workerProblems({ ...base, ...fields });

  test("none before the first probe, and none while a path answers", () => {
    expect(problems({})).toEqual([]);
    expect(problems({ internalReachable: true })).toEqual([]);
    expect(
      problems({
        publicWorkerUrl: "https://box.example:8443",
        internalReachable: false,
        internalProbeError: "ECONNREFUSED",
        publicReachable: true,
      }),
    ).toEqual([]);
  });

  test("no path: the loopback default is named, and so are PUBLIC_URL and WORKER_URL", () => {
    expect(problems({ internalReachable: false, internalProbeError: "ECONNREFUSED" })).toEqual([
      "no path reaches this worker: the manager cannot dial http://127.0.0.1:6006 (its loopback: ECONNREFUSED). Set PUBLIC_URL on the agent to its port-forwarding URL, or WORKER_URL to an address the manager can dial",
    ]);
    expect(
      problems({
        workerUrl: "http://10.0.0.12:6006",
        publicWorkerUrl: "https://box.example:8443",
        internalReachable: false,
        internalProbeError: "no answer within 3000 ms (PROBE_TIMEOUT_MS)",
        publicReachable: false,
        publicProbeError: "answered HTTP 502",
      }),
    ).toEqual([
      "no path reaches this worker: the manager cannot dial http://10.0.0.12:6006 (no answer within 3000 ms (PROBE_TIMEOUT_MS)) nor its public URL https://box.example:8443 (answered HTTP 502). On the agent, check that the port mapping forwards to the agent's WORKER_PORT and that PUBLIC_URL is the mapping's URL, or set WORKER_URL to an address the manager can dial",
    ]);
  });

  test("offline: not heard from since its last heartbeat; a URL's advice only when its probe failed while the agent still heartbeated", () => {
    const silent =
      "not heard from since 2026-11-26T12:00:00.000Z: its agent stopped or its host is down. Start the agent again, or remove the worker: fleet workers rm w1";
    const after = new Date(heardAt.getTime() + 5000);
    const before = new Date(heardAt.getTime() - 5000);
    const failed = { internalReachable: false, internalProbeError: "ECONNREFUSED" };
    expect(problems({ status: "offline" })).toEqual([silent]);
    expect(problems({ status: "offline", internalReachable: true, probedAt: before })).toEqual([
      silent,
    ]);
    // Probed after it went silent: the stop explains the failure.
    expect(problems({ status: "offline", ...failed, probedAt: after })).toEqual([silent]);
    expect(problems({ status: "offline", ...failed, probedAt: before })).toEqual([
      silent,
      "no path reaches this worker: the manager cannot dial http://127.0.0.1:6006 (its loopback: ECONNREFUSED). Set PUBLIC_URL on the agent to its port-forwarding URL, or WORKER_URL to an address the manager can dial",
    ]);
    // While it heartbeats (online, or draining), the URL's advice whenever the probe ran.
    for (const status of ["online", "draining"] as const) {
      expect(problems({ status, ...failed, probedAt: after })).toEqual([
        "no path reaches this worker: the manager cannot dial http://127.0.0.1:6006 (its loopback: ECONNREFUSED). Set PUBLIC_URL on the agent to its port-forwarding URL, or WORKER_URL to an address the manager can dial",
      ]);
    }
  });

  test("a public URL that does not answer while the internal one does: routes go there", () => {
    expect(
      problems({
        publicWorkerUrl: "https://box.example:8443",
        internalReachable: true,
        publicReachable: false,
        publicProbeError: "ECONNREFUSED",
      }),
    ).toEqual([
      "the public URL https://box.example:8443 does not answer the manager (ECONNREFUSED), and routes send requests there. On the agent, check that the port mapping forwards to the agent's WORKER_PORT and that PUBLIC_URL is the mapping's URL; leave PUBLIC_URL unset when routers reach the worker on http://127.0.0.1:6006",
    ]);
  });
});

describe("probe settings", () => {
  test("PROBE_INTERVAL_S and PROBE_TIMEOUT_MS default to 15 s and 3000 ms; bad values name the variable", () => {
    const config = configFromEnv(parseEnv(managerEnvSchema, {}));
    expect([config.probeIntervalS, config.probeTimeoutMs]).toEqual([15, 3000]);
    expect(() => parseEnv(managerEnvSchema, { PROBE_TIMEOUT_MS: "soon" })).toThrow(
      /PROBE_TIMEOUT_MS/,
    );
    expect(parseEnv(managerEnvSchema, { PROBE_INTERVAL_S: "0" }).PROBE_INTERVAL_S).toBe(0);
    expect(() => parseEnv(managerEnvSchema, { PROBE_INTERVAL_S: "-1" })).toThrow(
      /PROBE_INTERVAL_S/,
    );
  });

  test("the mounted router's first-byte check: 3000 ms, then 2000 ms to answer; 0 turns it off", () => {
    expect(configFromEnv(parseEnv(managerEnvSchema, {})).firstByteProbe).toEqual({
      afterMs: 3000,
      timeoutMs: 2000,
    });
    expect(
      configFromEnv(parseEnv(managerEnvSchema, { FIRST_BYTE_PROBE_MS: "0" })).firstByteProbe
        .afterMs,
    ).toBe(0);
    expect(() => parseEnv(managerEnvSchema, { FIRST_BYTE_PROBE_TIMEOUT_MS: "0" })).toThrow(
      /FIRST_BYTE_PROBE_TIMEOUT_MS/,
    );
  });
});

describe("the hint npm start prints", () => {
  test("beyond loopback it names PUBLIC_URL and WORKER_URL: the agent's default URL is its own loopback", () => {
    const help = startupHelp("http://0.0.0.0:18000", {
      host: "0.0.0.0",
      fleetToken: "t0ken-fleet",
    });
    expect(help).toContain(
      "MANAGER_URL=http://<this-host>:18000 FLEET_TOKEN=<the same token> PUBLIC_URL=<its port-forwarding URL> npm run agent",
    );
    expect(help).toContain(
      "MANAGER_URL=http://<this-host>:18000 FLEET_TOKEN=<the same token> WORKER_URL=http://<its address>:6006 npm run agent",
    );
    expect(help).not.toContain("t0ken-fleet");
  });

  test("it leads with the install line; the join token is written out only on a terminal", () => {
    const config = { host: "0.0.0.0", fleetToken: "t0ken-fleet" };
    const piped = startupHelp("http://0.0.0.0:18000", config, { showToken: false });
    expect(piped).toContain(
      "curl -fsSL http://<this-host>:18000/install.sh | FLEET_TOKEN=<the same token> WORKER_ID=<name> PUBLIC_URL=<its port-forwarding URL> sh",
    );
    expect(piped).toContain("fleet workers add NAME");
    expect(piped).not.toContain("t0ken-fleet");
    const terminal = startupHelp(
      "http://0.0.0.0:18000",
      { ...config, publicUrl: "https://fleet.example.com" },
      { showToken: true, agentAvailable: false },
    );
    expect(terminal).toContain(
      "curl -fsSL https://fleet.example.com/install.sh | FLEET_TOKEN=t0ken-fleet WORKER_ID=<name> PUBLIC_URL=<its port-forwarding URL> sh",
    );
    expect(terminal).toContain("npm run build:agent");
  });

  test("on loopback, agents on this machine listen on loopback too (they need no token then)", () => {
    const help = startupHelp("http://127.0.0.1:18000", {
      host: "127.0.0.1",
      fleetToken: undefined,
    });
    expect(help).toContain(
      "MANAGER_URL=http://127.0.0.1:18000 WORKER_HOST=127.0.0.1 npm run agent",
    );
    expect(help).toContain("HOST=0.0.0.0 and both tokens");
    expect(help).not.toContain("PUBLIC_URL");
  });
});
