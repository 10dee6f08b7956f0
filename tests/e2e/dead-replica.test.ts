import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Miniflare } from "miniflare";
import { createTestDatabase, serviceDbTarget, type TestDatabase } from "../../devkit/db.ts";
import {
  type Running,
  startAgent,
  startManager,
  startTcpForwarder,
  type TcpForwarder,
} from "../../devkit/fleet.ts";
import { type MetricsPage, metricAt } from "../../devkit/metrics.ts";
import { eventually, freePort } from "../../devkit/net.ts";
import { bunBin, repoRoot, stopAll } from "../../devkit/proc.ts";
import type { ModelInfo, RouteSnapshot, WorkerInfo } from "../../protocol/index.ts";
import { ADMIN, FLEET } from "../manager/helpers.ts";
import { createRouterCredential, startRouter } from "../router/fixtures.ts";

/**
 * A worker whose port mapping is black-holed (connections accepted, nothing answered) next
 * to a healthy one, both reached through their public URLs as on a rental host: routers
 * check the replica that keeps requests waiting and fail over within the check threshold,
 * and the manager's probes take the worker's routes out of the snapshot, then back in when
 * the mapping answers again. Routers: the manager's mounted one, Bun with each upstream
 * client setting, Node, and workerd (Miniflare).
 */

/** A router under test: where it serves, and its /metrics page with the token it takes. */
type Router = { url: string; metrics: MetricsPage };

/** FIRST_BYTE_PROBE_MS and FIRST_BYTE_PROBE_TIMEOUT_MS of the standalone routers. */
const probeMs = 1000;
const probeTimeoutMs = 1000;
/** The slow replica's time to first token. */
const slowTtftMs = 2500;

async function call<T>(
  manager: Running,
  method: string,
  path: string,
  body?: unknown,
): Promise<{ status: number; body: T }> {
  const response = await fetch(`${manager.url}${path}`, {
    method,
    headers: { "content-type": "application/json", authorization: `Bearer ${ADMIN}` },
    body: body === undefined ? null : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, body: (text ? JSON.parse(text) : null) as T };
}

type Timed = { status: number; ms: number; text: string };

async function chat(
  router: Router,
  content: string,
  stream: boolean,
  model = "qwen",
): Promise<Timed> {
  const started = performance.now();
  const response = await fetch(`${router.url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model, messages: [{ role: "user", content }], stream }),
  });
  const text = await response.text();
  return { status: response.status, ms: Math.round(performance.now() - started), text };
}

describe(`a black-holed public URL (${serviceDbTarget})`, () => {
  let database: TestDatabase;
  let manager: Running;
  const forwarders = new Map<string, TcpForwarder>();
  const routers = new Map<string, Router>();
  let miniflare: Miniflare | undefined;
  const buildDir = mkdtempSync(join(tmpdir(), "dead-replica-"));

  const snapshotOf = async (workerId: string) => {
    const { body } = await call<RouteSnapshot>(manager, "GET", "/v1/routes");
    return body.routes.find((route) => route.worker_id === workerId);
  };

  beforeAll(async () => {
    database = await createTestDatabase();
    // Probes every 4 s: the routers' own checks carry the first seconds alone.
    manager = await startManager({
      database,
      env: {
        FLEET_TOKEN: FLEET,
        ADMIN_TOKEN: ADMIN,
        PROBE_INTERVAL_S: "4",
        PROBE_TIMEOUT_MS: "500",
        // Its mounted router checks as the standalone ones do.
        FIRST_BYTE_PROBE_MS: String(probeMs),
        FIRST_BYTE_PROBE_TIMEOUT_MS: String(probeTimeoutMs),
      },
    });
    for (const workerId of ["dark", "lit"]) {
      const port = await freePort();
      const forwarder = await startTcpForwarder(port);
      forwarders.set(workerId, forwarder);
      await startAgent({
        managerUrl: manager.url,
        workerId,
        port,
        env: { PUBLIC_URL: forwarder.url, FLEET_TOKEN: FLEET, SIM_GPUS: "1" },
      });
    }
    for (const workerId of forwarders.keys()) {
      await eventually(
        async () =>
          (await call<WorkerInfo>(manager, "GET", `/v1/workers/${workerId}`)).status === 200,
        { timeoutMs: 20_000, what: `${workerId} registered` },
      );
    }
    // 0.8 of the one GPU each host has: one replica per host.
    const registered = await call<ModelInfo>(manager, "POST", "/v1/models/register", {
      alias: "qwen",
      model_name: "Qwen/Qwen2.5-0.5B",
      replicas: 2,
      gpu_memory_utilization: 0.8,
    });
    expect({ status: registered.status, body: registered.body }).toMatchObject({ status: 201 });
    // A slow but live replica on the healthy host: 2.5 s before its first token, well past
    // the routers' check threshold.
    const slow = await call<ModelInfo>(manager, "POST", "/v1/models/register", {
      alias: "slow",
      model_name: "Qwen/Qwen2.5-0.5B",
      worker_id: "lit",
      gpu_memory_utilization: 0.1,
      extra_args: ["--time-to-first-token", String(slowTtftMs)],
    });
    expect({ status: slow.status, body: slow.body }).toMatchObject({ status: 201 });
    await eventually(
      async () => {
        const { body } = await call<RouteSnapshot>(manager, "GET", "/v1/routes");
        return body.routes.filter((route) => route.ready).length === 3;
      },
      { timeoutMs: 30_000, what: "every replica served" },
    );
    const env = {
      FIRST_BYTE_PROBE_MS: String(probeMs),
      FIRST_BYTE_PROBE_TIMEOUT_MS: String(probeTimeoutMs),
    };
    routers.set("mounted", {
      url: manager.url,
      metrics: { url: `${manager.url}/metrics`, token: ADMIN },
    });
    routers.set(
      "bun-http1",
      await startRouter("bun", manager.url, { ...env, UPSTREAM_CLIENT: "http1" }),
    );
    // Bun's fetch for plain requests, the HTTP/1.1 client for streams (the default).
    routers.set(
      "bun-auto",
      await startRouter("bun", manager.url, { ...env, BUN_CONFIG_MAX_HTTP_REQUESTS: "4096" }),
    );
    routers.set(
      "bun-fetch",
      await startRouter("bun", manager.url, {
        ...env,
        UPSTREAM_CLIENT: "fetch",
        BUN_CONFIG_MAX_HTTP_REQUESTS: "4096",
      }),
    );
    routers.set("node", await startRouter("node", manager.url, env));
    const build = Bun.spawn(
      [
        bunBin,
        "build",
        "router/worker.ts",
        "--target=browser",
        "--format=esm",
        "--outfile",
        join(buildDir, "worker.js"),
      ],
      { cwd: repoRoot, stdout: "pipe", stderr: "pipe" },
    );
    expect(await build.exited).toBe(0);
    miniflare = new Miniflare({
      modules: [
        {
          type: "ESModule",
          path: "worker.js",
          contents: readFileSync(join(buildDir, "worker.js"), "utf8"),
        },
      ],
      compatibilityDate: "2025-01-01",
      bindings: {
        MANAGER_URL: manager.url,
        ROUTER_TOKEN: (await createRouterCredential(manager.url)).token,
        REQUIRE_API_KEY: "false",
        METRICS_TOKEN: "edge-metrics-token",
        ROUTES_REFRESH_MS: "200",
        ...env,
      },
      host: "127.0.0.1",
      port: 0,
    });
    const edgeUrl = String(await miniflare.ready).replace(/\/$/, "");
    routers.set("workerd", {
      url: edgeUrl,
      metrics: { url: `${edgeUrl}/metrics`, token: "edge-metrics-token" },
    });
    for (const router of routers.values()) {
      await eventually(async () => (await chat(router, "warm", false)).status === 200, {
        what: "router serving",
      });
    }
  }, 120_000);

  afterAll(async () => {
    await miniflare?.dispose();
    rmSync(buildDir, { recursive: true, force: true });
    await stopAll();
    for (const forwarder of forwarders.values()) await forwarder.close();
    await database?.destroy();
  });

  test("a replica slow to its first token but answering its checks keeps its requests", async () => {
    await Promise.all(
      [...routers].map(async ([name, router]) => {
        const metrics = router.metrics;
        const movedBefore = await metricAt(metrics, "fleet_router_retries_total");
        const results = await Promise.all([
          chat(router, `slow plain via ${name}`, false, "slow"),
          chat(router, `slow stream via ${name}`, true, "slow"),
        ]);
        expect({ name, statuses: results.map((r) => r.status) }).toEqual({
          name,
          statuses: [200, 200],
        });
        expect(results[0]?.text).toContain(`slow plain via ${name}`);
        expect(results[1]?.text).toContain("data: [DONE]");
        for (const result of results) expect(result.ms).toBeGreaterThanOrEqual(slowTtftMs);
        // Checked while it waited, found alive, never ejected, nothing moved on.
        expect(
          await metricAt(metrics, "fleet_router_replica_checks_total", {
            worker_id: "lit",
            result: "alive",
          }),
        ).toBeGreaterThanOrEqual(1);
        expect(
          await metricAt(metrics, "fleet_router_ejections_total", { alias: "slow" }),
        ).toBeNaN();
        const movedAfter = await metricAt(metrics, "fleet_router_retries_total");
        expect({ name, moved: movedAfter }).toEqual({ name, moved: movedBefore });
      }),
    );
  }, 60_000);

  test("requests fail over within the check threshold, and the worker's routes leave the snapshot", async () => {
    const dark = forwarders.get("dark");
    if (!dark) throw new Error("no forwarder");
    // Every router has keep-alive connections through both mappings before the black hole.
    for (const router of routers.values()) {
      for (let index = 0; index < 8; index++) {
        expect((await chat(router, `before ${index}`, index % 2 === 0)).status).toBe(200);
      }
    }
    dark.blackHole();
    const blackHoledAt = performance.now();

    const figures: string[] = [];
    await Promise.all(
      [...routers].map(async ([name, router]) => {
        const results = await Promise.all(
          Array.from({ length: 12 }, (_, index) =>
            chat(router, `during ${index} via ${name}`, index % 2 === 1),
          ),
        );
        for (const [index, result] of results.entries()) {
          expect({ name, index, status: result.status }).toEqual({ name, index, status: 200 });
          // The whole answer: the echoed prompt, or a stream to its [DONE].
          expect(result.text).toContain(index % 2 === 1 ? "data: [DONE]" : `during ${index} via`);
        }
        const movedOn = await metricAt(router.metrics, "fleet_router_retries_total", {
          reason: "unresponsive",
        });
        // Some of the 12 went to the black-holed replica first, and all were answered.
        expect({ name, movedOn: movedOn > 0 }).toEqual({ name, movedOn: true });
        expect(
          await metricAt(router.metrics, "fleet_router_replica_checks_total", {
            worker_id: "dark",
            result: "unresponsive",
          }),
        ).toBeGreaterThanOrEqual(1);
        const ms = results.map((r) => r.ms).sort((a, b) => a - b);
        const slow = ms.filter((value) => value >= probeMs);
        figures.push(
          `${name}: ${movedOn} of 12 failed over; those took ${slow.join(", ")} ms; the others ≤ ${ms[ms.length - slow.length - 1]} ms`,
        );
      }),
    );
    console.log(
      `black hole, FIRST_BYTE_PROBE_MS=${probeMs}, FIRST_BYTE_PROBE_TIMEOUT_MS=${probeTimeoutMs}:\n  ${figures.join("\n  ")}`,
    );

    // The manager's probes find the public URL silent twice: dark's route leaves the snapshot.
    await eventually(async () => (await snapshotOf("dark"))?.ready === false, {
      timeoutMs: 30_000,
      what: "dark's route withdrawn",
    });
    const withdrawnAfter = Math.round(performance.now() - blackHoledAt);
    expect((await snapshotOf("lit"))?.ready).toBe(true);
    const { body: worker } = await call<WorkerInfo>(manager, "GET", "/v1/workers/dark");
    expect(worker.status).toBe("online");
    expect(worker.paths.public?.reachable).toBe(false);
    expect(worker.management_path).toBe("internal");
    console.log(
      `dark's route left the snapshot ${withdrawnAfter} ms after the black hole (PROBE_INTERVAL_S=4, PROBE_TIMEOUT_MS=500, two failed probes)`,
    );

    // Once every router has the new snapshot, nothing is sent to the dead replica: no more
    // checks fail and no request moves on.
    for (const [name, router] of routers) {
      const unresponsive = () =>
        metricAt(router.metrics, "fleet_router_retries_total", { reason: "unresponsive" });
      await eventually(
        async () => {
          const before = await unresponsive();
          const results = await Promise.all(
            Array.from({ length: 6 }, (_, index) =>
              chat(router, `after ${index}`, index % 2 === 0),
            ),
          );
          expect({ name, statuses: results.map((r) => r.status) }).toEqual({
            name,
            statuses: Array(6).fill(200),
          });
          return (await unresponsive()) === before;
        },
        { timeoutMs: 20_000, what: `${name} no longer sends to the dead replica` },
      );
    }
  }, 120_000);

  test("the routes come back when the mapping answers again", async () => {
    const dark = forwarders.get("dark");
    if (!dark) throw new Error("no forwarder");
    dark.restore();
    await eventually(async () => (await snapshotOf("dark"))?.ready === true, {
      timeoutMs: 30_000,
      what: "dark's route served again",
    });
    const carried = dark.bytesIn();
    await eventually(
      async () => {
        for (const router of routers.values()) {
          expect((await chat(router, "back", false)).status).toBe(200);
        }
        return dark.bytesIn() > carried;
      },
      { timeoutMs: 30_000, what: "requests through the mapping again" },
    );
  }, 60_000);
});
