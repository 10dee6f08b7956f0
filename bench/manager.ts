/**
 * Manager benchmark (issue 5), against Postgres (DATABASE_URL, default the local test server):
 *   1. 1,000 simulated workers heartbeating every 5 s (steady state: each reports one ready
 *      engine): heartbeat p50/p99 latency and manager CPU (goal p99 <= 20 ms, CPU <= 25%).
 *   2. GET /v1/routes with a matching If-None-Match, per second (goal >= 10,000).
 *   2b. GET /metrics (one grouped read of workers and instances per scrape) at this size:
 *      scrape latency, one scraper at a time and eight at once (concurrent scrapes share one read).
 *   3. Register-to-ready overhead with a real agent and the engine simulator: time from
 *      POST /v1/models/register to a ready route, minus the engine's own startup as the agent
 *      reports it (started_at → ready_at). Goal <= 1 s.
 *
 *   bun bench/manager.ts [--workers 1000] [--seconds 10]
 * Prints figures; not a test.
 */
import postgres from "postgres";
import { agentDataDir, readAgentCredentials, simAgentEnv } from "../devkit/fleet.ts";
import type { InstanceList, RouteSnapshot } from "../protocol/index.ts";
import { formatLoad, percentiles, runLoad } from "./lib/load.ts";
import { bunBin, freePort, spawnServer } from "./lib/server.ts";

const args = process.argv.slice(2);
const flag = (name: string, fallback: number) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && args[i + 1] ? Number(args[i + 1]) : fallback;
};
const WORKERS = flag("workers", 1000);
const SECONDS = flag("seconds", 10);
const INTERVAL_S = 5;
const serverUrl = process.env.DATABASE_URL || "postgres://postgres@127.0.0.1:5432/test";
const FLEET = "bench-fleet-token";
const ADMIN = "bench-admin-token";

const dbName = `fleet_bench_${Date.now().toString(36)}`;
const admin = postgres(serverUrl, { max: 1, onnotice: () => {} });
await admin.unsafe(`create database "${dbName}"`);
const dbUrl = new URL(serverUrl);
dbUrl.pathname = `/${dbName}`;

const port = await freePort();
const base = `http://127.0.0.1:${port}`;
const manager = await spawnServer({
  argv: [bunBin, "manager/main.ts"],
  env: {
    DATABASE_URL: dbUrl.toString(),
    HOST: "127.0.0.1",
    PORT: String(port),
    FLEET_TOKEN: FLEET,
    ADMIN_TOKEN: ADMIN,
    HEARTBEAT_INTERVAL_S: String(INTERVAL_S),
    WORKER_TIMEOUT_S: "60",
  },
  readyUrl: `${base}/health`,
  timeoutMs: 60_000,
});
const db = postgres(dbUrl.toString(), { max: 2, onnotice: () => {} });
const fleetHeaders = { authorization: `Bearer ${FLEET}`, "content-type": "application/json" };
const adminHeaders = { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" };

const gpuInfo = {
  gpus: [0, 1].map((index) => ({
    index,
    uuid: `GPU-${index}`,
    name: "NVIDIA H100 80GB HBM3",
    memory_total_mib: 81_559,
    memory_used_mib: 40_000,
    memory_free_mib: 41_559,
    utilization_pct: 35,
  })),
  warning: null,
};
const report = (i: number) => {
  const now = new Date().toISOString();
  return {
    alias: "bench-model",
    model_name: "Qwen/Qwen2.5-7B-Instruct",
    status: "ready",
    port: 8100,
    gpu_ids: [0],
    pid: 10_000 + i,
    restarts: 0,
    last_error: null,
    started_at: now,
    ready_at: now,
    updated_at: now,
  };
};

try {
  // Desired state: one model that wants an engine on every worker, so each worker's first
  // registration adopts its engine and every heartbeat carries one ready engine.
  await db`insert into models (alias, model_name, gpu_memory_utilization, replicas)
           values ('bench-model', 'Qwen/Qwen2.5-7B-Instruct', 0.45, ${WORKERS})`;
  const registerStart = performance.now();
  const ids = Array.from(
    { length: WORKERS },
    (_, i) => `bench-worker-${String(i).padStart(4, "0")}`,
  );
  // Each worker joins with the join token and heartbeats with the credential it got.
  const credentials = new Map<string, string>();
  for (let i = 0; i < WORKERS; i += 20) {
    await Promise.all(
      ids.slice(i, i + 20).map(async (id, j) => {
        const response = await fetch(`${base}/v1/workers/register`, {
          method: "POST",
          headers: fleetHeaders,
          body: JSON.stringify({
            worker_id: id,
            worker_url: `http://10.0.${Math.floor((i + j) / 250)}.${(i + j) % 250}:6006`,
            public_worker_url: null,
            gpu_info: gpuInfo,
            instances: [report(i + j)],
            agent_version: "bench",
          }),
        });
        if (!response.ok)
          throw new Error(`register ${id}: ${response.status} ${await response.text()}`);
        const reply = (await response.json()) as { credentials?: { worker_credential: string } };
        if (reply.credentials) credentials.set(id, reply.credentials.worker_credential);
      }),
    );
  }
  const registerS = (performance.now() - registerStart) / 1000;
  const [counts] = await db<{ routes: number; ready: number }[]>`
    select count(*)::int as routes, count(*) filter (where ready)::int as ready from routes`;
  console.log(
    `registered ${WORKERS} workers in ${registerS.toFixed(1)} s (${Math.round(WORKERS / registerS)}/s); routes ${counts?.routes}, ready ${counts?.ready}`,
  );

  // 1. Heartbeats: each worker every INTERVAL_S, phases spread evenly over the interval.
  const bodies = ids.map((_, i) => JSON.stringify({ gpu_info: gpuInfo, instances: [report(i)] }));
  const beatHeaders = ids.map((id) => ({
    authorization: `Bearer ${credentials.get(id)}`,
    "content-type": "application/json",
  }));
  const latencies: number[] = [];
  let failures = 0;
  const cpuBefore = manager.cpuMs() ?? 0;
  const t0 = performance.now();
  const endAt = t0 + SECONDS * 1000;
  await Promise.all(
    ids.map(async (id, i) => {
      let next = t0 + (i / WORKERS) * INTERVAL_S * 1000;
      while (next < endAt) {
        const wait = next - performance.now();
        if (wait > 0) await Bun.sleep(wait);
        const start = performance.now();
        try {
          const response = await fetch(`${base}/v1/workers/${id}/heartbeat`, {
            method: "POST",
            headers: beatHeaders[i],
            body: bodies[i],
          });
          await response.arrayBuffer();
          if (response.ok) latencies.push(performance.now() - start);
          else failures++;
        } catch {
          failures++;
        }
        next += INTERVAL_S * 1000;
      }
    }),
  );
  const wallMs = performance.now() - t0;
  const cpu = ((manager.cpuMs() ?? 0) - cpuBefore) / wallMs;
  const hb = percentiles(latencies);
  console.log(
    `heartbeats: ${WORKERS} workers every ${INTERVAL_S} s for ${(wallMs / 1000).toFixed(1)} s: ${latencies.length} ok (${Math.round((latencies.length / wallMs) * 1000)}/s), ${failures} failed; p50 ${hb.p50.toFixed(2)} ms  p99 ${hb.p99.toFixed(2)} ms  max ${hb.max.toFixed(2)} ms; manager CPU ${(cpu * 100).toFixed(1)}% of a core`,
  );

  // 2. Route snapshot polling with a matching ETag, as a router polls: with its own
  // credential, which the manager looks up on every request (a revocation applies at once).
  const created = await fetch(`${base}/v1/routers`, {
    method: "POST",
    headers: adminHeaders,
    body: JSON.stringify({ name: "bench-router" }),
  });
  if (created.status !== 201) throw new Error(`router credential: ${await created.text()}`);
  const { token: routerToken } = (await created.json()) as { token: string };
  const routerHeaders = { authorization: `Bearer ${routerToken}` };
  const first = await fetch(`${base}/v1/routes`, { headers: routerHeaders });
  const etag = first.headers.get("etag") ?? "";
  const snapshot = (await first.json()) as RouteSnapshot;
  console.log(
    `route snapshot: ${snapshot.routes.length} routes, ${JSON.stringify(snapshot).length} bytes, ETag ${etag}`,
  );
  const notModified = await runLoad({
    url: `${base}/v1/routes`,
    headers: { ...routerHeaders, "if-none-match": etag },
    concurrency: 32,
    durationMs: 3000,
  });
  console.log(
    `GET /v1/routes 304: ${formatLoad(notModified)}  statuses ${JSON.stringify(notModified.statuses)}`,
  );
  const full = await runLoad({
    url: `${base}/v1/routes`,
    headers: routerHeaders,
    concurrency: 8,
    durationMs: 2000,
  });
  console.log(
    `GET /v1/routes 200 (full ${snapshot.routes.length}-route body): ${formatLoad(full)}`,
  );

  // 2b. Scrapes of /metrics, as Prometheus makes them (with the admin token).
  const page = await fetch(`${base}/metrics`, { headers: adminHeaders });
  const pageText = await page.text();
  const online = /^fleet_manager_workers\{status="online"\} (\d+)$/m.exec(pageText)?.[1];
  console.log(
    `/metrics: ${pageText.length} bytes, fleet_manager_workers{status="online"} ${online}`,
  );
  for (const concurrency of [1, 8]) {
    const scrapes = await runLoad({
      url: `${base}/metrics`,
      headers: adminHeaders,
      concurrency,
      durationMs: 2000,
    });
    console.log(`GET /metrics, ${concurrency} at once: ${formatLoad(scrapes)}`);
  }

  // 3. Register-to-ready with a real agent launching the simulator.
  const agentPort = await freePort();
  const agentDir = agentDataDir();
  const agent = await spawnServer({
    argv: [bunBin, "agent/main.ts"],
    env: {
      ...simAgentEnv({
        workerId: "bench-agent",
        port: agentPort,
        managerUrl: base,
        fleetToken: FLEET,
      }),
      AGENT_DATA_DIR: agentDir,
      SIM_GPUS: "1x NVIDIA H100 80GB HBM3:81559",
      SIM_STARTUP_DELAY_MS: "500",
      ENGINE_HEALTH_POLL_MS: "50",
      ENGINE_STOP_GRACE_S: "2",
    },
    readyUrl: `http://127.0.0.1:${agentPort}/health`,
    timeoutMs: 30_000,
  });
  try {
    for (let wait = 0; wait < 100; wait++) {
      const [row] = await db<
        { n: number }[]
      >`select count(*)::int as n from workers where worker_id = 'bench-agent'`;
      if (row?.n) break;
      await Bun.sleep(100);
    }
    const overheads: number[] = [];
    const totals: number[] = [];
    for (let round = 0; round < 3; round++) {
      const alias = `r2r-${round}`;
      const start = performance.now();
      const created = await fetch(`${base}/v1/models/register`, {
        method: "POST",
        headers: adminHeaders,
        body: JSON.stringify({
          alias,
          model_name: "Qwen/Qwen2.5-0.5B",
          worker_id: "bench-agent",
          gpu_memory_utilization: 0.3,
        }),
      });
      if (created.status !== 201)
        throw new Error(`register ${alias}: ${created.status} ${await created.text()}`);
      // The admin token reads routes (the join token does not: it only joins workers); a
      // route that is not ready within 30 s stops the benchmark instead of waiting forever.
      for (const deadline = performance.now() + 30_000; ; ) {
        const response = await fetch(`${base}/v1/routes/${alias}`, { headers: adminHeaders });
        const body = (await response.json()) as { routes?: { ready: boolean }[] };
        if (body.routes?.[0]?.ready) break;
        if (performance.now() > deadline) {
          throw new Error(`${alias} not ready in 30 s: ${response.status} ${JSON.stringify(body)}`);
        }
        await Bun.sleep(10);
      }
      const total = performance.now() - start;
      const instances = (await (
        await fetch(`http://127.0.0.1:${agentPort}/v1/instances`, {
          headers: { authorization: `Bearer ${readAgentCredentials(agentDir)?.agent_token}` },
        })
      ).json()) as InstanceList;
      const engine = instances.instances.find((i) => i.alias === alias);
      const engineMs =
        engine?.started_at && engine.ready_at
          ? Date.parse(engine.ready_at) - Date.parse(engine.started_at)
          : 0;
      totals.push(total);
      overheads.push(total - engineMs);
      await fetch(`${base}/v1/models/${alias}`, { method: "DELETE", headers: adminHeaders });
    }
    console.log(
      `register-to-ready (engine simulator, 500 ms startup): total ${totals.map((t) => t.toFixed(0)).join(", ")} ms; overhead beyond the engine's own startup ${overheads.map((o) => o.toFixed(0)).join(", ")} ms`,
    );
  } finally {
    await agent.stop();
  }
} finally {
  await manager.stop();
  await db.end();
  await admin.unsafe(`drop database if exists "${dbName}" with (force)`);
  await admin.end();
}
