import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { sql } from "drizzle-orm";
import { type OpenTestDb, openFreshDb } from "../../devkit/db.ts";
import { metric } from "../../devkit/metrics.ts";
import { eventually } from "../../devkit/net.ts";
import { Metrics } from "../../kit/metrics.ts";
import type { RouteSnapshot, UsageRecord } from "../../protocol/index.ts";
import { createApp } from "../../router/app.ts";
import { SnapshotPoller } from "../../router/snapshot-poller.ts";
import type { FetchLike } from "../../router/types.ts";
import { UsageBatcher } from "../../router/usage-batcher.ts";
import {
  createRouterToken,
  gpu,
  registration,
  stubAgent,
  type TestManager,
  testManager,
} from "../manager/helpers.ts";

/**
 * The router's two links to the manager, the route snapshot poller and the usage batcher,
 * against the real manager app in-process: their `fetch` is the app's own request handler,
 * so the ETag/304 contract and the usage endpoint are the manager's, not a copy of them.
 */

let db: OpenTestDb;
let t: TestManager;
/** This file's router credential on `t` (what ROUTER_TOKEN holds). */
let token: string;
const agents: { stop(): void }[] = [];

beforeAll(async () => {
  db = await openFreshDb();
});
afterEach(async () => {
  for (const agent of agents.splice(0)) agent.stop();
  await t?.close();
});
afterAll(async () => {
  await db?.destroy();
});

/** The manager app on the file's database, emptied, with a router credential created. */
async function startManager(): Promise<void> {
  t = await testManager({ db });
  token = await createRouterToken(t);
}

const managerUrl = "http://manager.test";

/** The manager app as the router's fetch, with each answer's status recorded. */
function managerFetch() {
  const statuses: number[] = [];
  /** `GET /v1/route-loads`, which the poller asks after each good revalidation. */
  const loadStatuses: number[] = [];
  const state = { down: false, calls: 0, corrupt: false };
  const fetch: FetchLike = async (input, init) => {
    const url = input instanceof Request ? input.url : String(input);
    if (url.endsWith("/v1/route-loads") && !state.down) {
      const response = await t.manager.app.request(url, init);
      loadStatuses.push(response.status);
      return response;
    }
    state.calls++;
    if (state.down) throw new TypeError("fetch failed: connection refused");
    const response = await t.manager.app.request(
      input instanceof Request ? input : String(input),
      // `corrupt`: the body is mangled on the way, as a broken proxy might.
      state.corrupt ? { ...init, body: '{"records":"not a list"}' } : init,
    );
    statuses.push(response.status);
    return response;
  };
  return { fetch, statuses, loadStatuses, state };
}

/** A worker registers and `alias` is placed on it through the manager's API. */
async function placeModel(alias: string, workerId = `${alias}-worker`) {
  const agent = stubAgent();
  agents.push(agent);
  const registered = await t.register(registration(workerId, agent.url, [gpu(0)]), agent);
  expect(registered.status).toBe(200);
  const placed = await t.call("POST", "/v1/models/register", {
    body: { alias, model_name: `org/${alias}` },
  });
  expect(placed.status).toBe(201);
  return {
    async ready() {
      agent.markReady(alias);
      const beat = await t.heartbeat(workerId, {
        gpu_info: { gpus: [gpu(0)], warning: null },
        instances: agent.reports(),
      });
      expect(beat.status).toBe(200);
    },
  };
}

async function managerSnapshot(): Promise<RouteSnapshot> {
  return (await (await t.call("GET", "/v1/routes", { token })).json()) as RouteSnapshot;
}

describe("SnapshotPoller against the manager", () => {
  test("loads the table, then revalidates with If-None-Match: 304 and the same snapshot while nothing changes", async () => {
    await startManager();
    await placeModel("qwen");
    const link = managerFetch();
    const poller = new SnapshotPoller({ managerUrl, routerToken: token, fetch: link.fetch });
    expect(poller.current()).toBeUndefined();
    await poller.refresh();
    const first = poller.current();
    expect(first).toEqual(await managerSnapshot());
    expect(first?.routes.map((r) => [r.alias, r.ready])).toEqual([["qwen", false]]);
    await poller.refresh();
    await poller.refresh();
    expect(link.statuses).toEqual([200, 304, 304]);
    // Each good revalidation also reads the route loads (apart from the snapshot).
    expect(link.loadStatuses).toEqual([200, 200, 200]);
    expect(poller.current()).toBe(first);
  });

  test("picks up a new route and a replica becoming ready", async () => {
    await startManager();
    const link = managerFetch();
    const poller = new SnapshotPoller({ managerUrl, routerToken: token, fetch: link.fetch });
    await poller.refresh();
    expect(poller.current()?.routes).toEqual([]);
    const qwen = await placeModel("qwen");
    await poller.refresh();
    expect(poller.current()?.routes.map((r) => [r.alias, r.ready])).toEqual([["qwen", false]]);
    await qwen.ready();
    await poller.refresh();
    expect(poller.current()?.routes.map((r) => [r.alias, r.ready])).toEqual([["qwen", true]]);
    expect(poller.current()?.version).toBe((await managerSnapshot()).version);
    expect(link.statuses).toEqual([200, 200, 200]);
  });

  test("serves the last table while the manager is unreachable, counts the failures, and recovers", async () => {
    await startManager();
    await (await placeModel("qwen")).ready();
    const link = managerFetch();
    const metrics = new Metrics();
    const poller = new SnapshotPoller({
      managerUrl,
      routerToken: token,
      fetch: link.fetch,
      metrics,
    });
    // The router's /healthz over this poller: what an orchestrator and a person see.
    const app = createApp({ routes: poller, usage: { record() {} } });
    const healthz = async () => {
      const response = await app.request("/healthz");
      const body = (await response.json()) as {
        status: string;
        reason?: string;
        routes_age_s?: number;
      };
      return { code: response.status, ...body };
    };
    await poller.refresh();
    const fresh = await healthz();
    expect(fresh).toMatchObject({ code: 200, status: "ok" });
    expect(fresh.routes_age_s).toBeLessThan(5);
    const before = poller.current();
    link.state.down = true;
    await poller.refresh();
    await poller.refresh();
    expect(poller.current()).toBe(before);
    expect(metric(metrics.render(), "fleet_router_routes_refresh_failures_total")).toBe(2);
    // Still 200: it serves the table it has; degraded, with the reason and the table's age.
    const degraded = await healthz();
    expect(degraded).toMatchObject({ code: 200, status: "degraded" });
    expect(String(degraded.reason)).toStartWith("manager unreachable: ");
    expect(typeof degraded.routes_age_s).toBe("number");
    link.state.down = false;
    await placeModel("llama");
    await poller.refresh();
    expect(await healthz()).toMatchObject({ code: 200, status: "ok" });
    expect(
      poller
        .current()
        ?.routes.map((r) => r.alias)
        .sort(),
    ).toEqual(["llama", "qwen"]);
    expect(metric(metrics.render(), "fleet_router_routes_refresh_failures_total")).toBe(2);
  });

  test("a token the manager refuses leaves it without a table", async () => {
    await startManager();
    const link = managerFetch();
    const metrics = new Metrics();
    const poller = new SnapshotPoller({
      managerUrl,
      routerToken: "fr_not-a-router-credential",
      fetch: link.fetch,
      metrics,
    });
    await poller.refresh();
    expect(link.statuses).toEqual([401]);
    expect(poller.current()).toBeUndefined();
    expect(metric(metrics.render(), "fleet_router_routes_refresh_failures_total")).toBe(1);
  });

  test("a revoked credential: the next refresh is refused, the last table keeps serving", async () => {
    await startManager();
    await (await placeModel("qwen")).ready();
    const link = managerFetch();
    const metrics = new Metrics();
    const poller = new SnapshotPoller({
      managerUrl,
      routerToken: token,
      fetch: link.fetch,
      metrics,
    });
    await poller.refresh();
    const before = poller.current();
    const { body } = await t.json<{ routers: { id: string }[] }>("GET", "/v1/routers");
    expect((await t.call("DELETE", `/v1/routers/${body.routers[0]?.id}`)).status).toBe(200);
    await poller.refresh();
    expect(link.statuses).toEqual([200, 401]);
    expect(poller.current()).toBe(before);
    expect(metric(metrics.render(), "fleet_router_routes_refresh_failures_total")).toBe(1);
  });

  test("concurrent refreshes share one request", async () => {
    await startManager();
    const link = managerFetch();
    const poller = new SnapshotPoller({ managerUrl, routerToken: token, fetch: link.fetch });
    await Promise.all(Array.from({ length: 5 }, () => poller.refresh()));
    expect(link.statuses).toEqual([200]);
  });

  test("start() keeps polling on its interval until stop()", async () => {
    await startManager();
    const link = managerFetch();
    const poller = new SnapshotPoller({
      managerUrl,
      routerToken: token,
      fetch: link.fetch,
      intervalMs: 20,
    });
    await poller.start();
    try {
      expect(poller.current()?.routes).toEqual([]);
      await placeModel("qwen");
      await eventually(() => poller.current()?.routes.length === 1, { what: "the polled change" });
    } finally {
      poller.stop();
    }
  });
});

const record = (index: number, extra: Partial<UsageRecord> = {}): UsageRecord => ({
  ts: new Date(Date.UTC(2026, 0, 1, 0, 0, index)).toISOString(),
  api_key_id: null,
  alias: "qwen",
  worker_id: "w1",
  status: 200,
  latency_ms: index,
  ttft_ms: 5,
  prompt_tokens: 7,
  completion_tokens: index,
  stream: index % 2 === 0,
  ...extra,
});

/** request_logs as the manager stored them, oldest first, by the `latency_ms` marker. */
async function stored(): Promise<{ latency_ms: number; status: number; stream: boolean }[]> {
  return db.query(sql`select latency_ms, status, stream from request_logs order by id`);
}

describe("UsageBatcher against the manager", () => {
  test("sends what is buffered in batches of maxBatch; the manager stores every record", async () => {
    await startManager();
    const link = managerFetch();
    const batcher = new UsageBatcher({
      managerUrl,
      routerToken: token,
      fetch: link.fetch,
      maxBatch: 2,
    });
    for (let index = 1; index <= 5; index++) batcher.record(record(index));
    expect(batcher.pending()).toBe(5);
    await batcher.flush();
    expect(link.statuses).toEqual([202, 202, 202]);
    expect(batcher.pending()).toBe(0);
    expect(await stored()).toEqual(
      [1, 2, 3, 4, 5].map((index) => ({ latency_ms: index, status: 200, stream: index % 2 === 0 })),
    );
  });

  test("once started, a full batch goes at once; close() sends the rest", async () => {
    await startManager();
    const link = managerFetch();
    const batcher = new UsageBatcher({
      managerUrl,
      routerToken: token,
      fetch: link.fetch,
      maxBatch: 3,
      flushIntervalMs: 60_000,
    });
    batcher.start();
    batcher.record(record(1));
    batcher.record(record(2));
    expect(link.state.calls).toBe(0);
    // The third record fills a batch: it is sent from record() itself, not on the timer.
    batcher.record(record(3));
    expect(link.state.calls).toBe(1);
    await eventually(async () => (await stored()).length === 3, { what: "the full batch" });
    batcher.record(record(4));
    expect(batcher.pending()).toBe(1);
    await batcher.close();
    expect((await stored()).map((row) => row.latency_ms)).toEqual([1, 2, 3, 4]);
  });

  test("while the manager is down records wait, and arrive once it is back", async () => {
    await startManager();
    const link = managerFetch();
    const metrics = new Metrics();
    const batcher = new UsageBatcher({
      managerUrl,
      routerToken: token,
      fetch: link.fetch,
      metrics,
    });
    link.state.down = true;
    for (let index = 1; index <= 3; index++) batcher.record(record(index));
    await batcher.flush();
    expect(batcher.pending()).toBe(3);
    expect(metric(metrics.render(), "fleet_router_usage_batches_total", { result: "failed" })).toBe(
      1,
    );
    expect(metric(metrics.render(), "fleet_router_usage_buffered")).toBe(3);
    link.state.down = false;
    await batcher.flush();
    expect(batcher.pending()).toBe(0);
    expect((await stored()).map((row) => row.latency_ms)).toEqual([1, 2, 3]);
    expect(metric(metrics.render(), "fleet_router_usage_batches_total", { result: "ok" })).toBe(1);
  });

  test("workerd's flushSoon tries again while the manager does not answer, a bounded number of times", async () => {
    await startManager();
    const link = managerFetch();
    const batcher = new UsageBatcher({
      managerUrl,
      routerToken: token,
      fetch: link.fetch,
      flushAttempts: 3,
    });
    link.state.down = true;
    batcher.record(record(1));
    await batcher.flushSoon(0);
    // Three attempts (0.5 s and 1 s apart), then it gives up until the next request.
    expect(link.state.calls).toBe(3);
    expect(batcher.pending()).toBe(1);
    // The manager comes back during the retries: the record arrives within the same call.
    link.state.calls = 0;
    const flushing = batcher.flushSoon(0);
    await eventually(() => link.state.calls >= 1, { what: "the first attempt" });
    link.state.down = false;
    await flushing;
    expect(link.state.calls).toBe(2);
    expect((await stored()).map((row) => row.latency_ms)).toEqual([1]);
  });

  test("a manager that refuses the token gets the batch again later; nothing is dropped", async () => {
    await startManager();
    const link = managerFetch();
    const batcher = new UsageBatcher({
      managerUrl,
      routerToken: "fr_not-a-router-credential",
      fetch: link.fetch,
    });
    batcher.record(record(1));
    await batcher.flush();
    expect(link.statuses).toEqual([401]);
    expect(batcher.pending()).toBe(1);
    expect(batcher.dropped).toBe(0);
  });

  test("keeps at most maxBuffer records while the manager is down, dropping the oldest", async () => {
    await startManager();
    const link = managerFetch();
    const metrics = new Metrics();
    const batcher = new UsageBatcher({
      managerUrl,
      routerToken: token,
      fetch: link.fetch,
      metrics,
      maxBuffer: 3,
    });
    link.state.down = true;
    for (let index = 1; index <= 5; index++) batcher.record(record(index));
    await batcher.flush();
    expect(batcher.pending()).toBe(3);
    expect(metric(metrics.render(), "fleet_router_usage_dropped_total")).toBe(2);
    link.state.down = false;
    await batcher.flush();
    expect((await stored()).map((row) => row.latency_ms)).toEqual([3, 4, 5]);
  });

  test("a record the manager finds invalid is set aside there; the rest of the batch is written", async () => {
    await startManager();
    const link = managerFetch();
    const metrics = new Metrics();
    const batcher = new UsageBatcher({
      managerUrl,
      routerToken: token,
      fetch: link.fetch,
      metrics,
    });
    batcher.record(record(1));
    batcher.record(record(2, { status: 42 }));
    batcher.record(record(3));
    await batcher.flush();
    expect(link.statuses).toEqual([202]);
    expect(batcher.pending()).toBe(0);
    expect(batcher.dropped).toBe(0);
    expect(metric(metrics.render(), "fleet_router_usage_records_rejected_total")).toBe(1);
    expect((await stored()).map((row) => row.latency_ms)).toEqual([1, 3]);
    // The queue is not wedged: the next record goes through.
    batcher.record(record(4));
    await batcher.flush();
    expect((await stored()).map((row) => row.latency_ms)).toEqual([1, 3, 4]);
  });

  test("a body the manager cannot read at all is dropped, not retried forever", async () => {
    await startManager();
    const link = managerFetch();
    const metrics = new Metrics();
    const batcher = new UsageBatcher({
      managerUrl,
      routerToken: token,
      fetch: link.fetch,
      metrics,
    });
    link.state.corrupt = true;
    batcher.record(record(1));
    await batcher.flush();
    expect(link.statuses).toEqual([400]);
    expect(batcher.pending()).toBe(0);
    expect(batcher.dropped).toBe(1);
    expect(
      metric(metrics.render(), "fleet_router_usage_batches_total", { result: "rejected" }),
    ).toBe(1);
  });
});
