/**
 * What launch progress costs a heartbeat (docs/benchmarks.md): one worker with one starting
 * engine, heartbeats through the manager app in this process (`app.request`, no network),
 * N of each kind: nothing moved (the common case), the percentage moved (one extra UPDATE),
 * the phase moved (the full comparison, and an event). Against Postgres when DATABASE_URL
 * is set, else PGlite.
 *
 *   bun bench/progress-heartbeats.ts [--beats 300]
 * Prints figures; not a test.
 */
import { sql } from "drizzle-orm";
import { openFreshDb } from "../devkit/db.ts";
import { createLogger } from "../kit/log.ts";
import { createApp } from "../manager/app.ts";
import { defaultConfig } from "../manager/env.ts";
import { type InstanceReport, launchPhases, type WorkerCredentials } from "../protocol/index.ts";
import { percentiles } from "./lib/load.ts";

const args = process.argv.slice(2);
const at = args.indexOf("--beats");
const BEATS = at >= 0 ? Number(args[at + 1]) : 300;
const FLEET = "bench-fleet";
const ADMIN = "bench-admin";

const db = await openFreshDb(process.env.DATABASE_URL ? "postgres" : "pglite");
const manager = createApp({
  db,
  config: defaultConfig({ adminToken: ADMIN, fleetToken: FLEET, agentTimeoutS: 600 }),
  // The worker's URL is a closed loopback port: launches fail fast, the report adopts it.
  fetch: (input, init) => fetch(input, init),
  log: createLogger({ service: "bench", level: "error" }),
});
// No background loops: nothing but these heartbeats touches the rows.
const call = async (path: string, token: string, body: unknown) => {
  const response = await manager.app.request(path, {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`${path}: ${response.status} ${text}`);
  return JSON.parse(text) as Record<string, unknown>;
};

const gpu_info = {
  gpus: [
    {
      index: 0,
      uuid: "GPU-0",
      name: "H100",
      memory_total_mib: 81_920,
      memory_used_mib: 0,
      memory_free_mib: 81_920,
      utilization_pct: 0,
    },
  ],
  warning: null,
};
const spec = {
  alias: "m",
  model_name: "org/m",
  gpu_ids: [0],
  extra_args: [],
  gpu_memory_utilization: 0.9,
  tensor_parallel_size: 1,
};
const report = (progress: InstanceReport["progress"]): InstanceReport => ({
  alias: "m",
  model_name: "org/m",
  status: "starting",
  port: 8100,
  gpu_ids: [0],
  pid: 4242,
  restarts: 0,
  last_error: null,
  started_at: new Date().toISOString(),
  ready_at: null,
  updated_at: new Date().toISOString(),
  spec,
  ...(progress ? { progress } : {}),
});
const started = new Date().toISOString();
const progress = (phase: number, percent: number) => ({
  phase: launchPhases[phase % 7] ?? "starting",
  percent,
  elapsed_s: 1,
  eta_s: null,
  last_line: `line ${percent}`,
  started_at: started,
  phases: launchPhases.slice(0, phase % 7).map((p) => ({ phase: p, duration_s: 1 })),
});

// The engine is known to the manager as the model's instance (adopted from the report).
const joined = await call("/v1/workers/register", FLEET, {
  worker_id: "w",
  worker_url: "http://127.0.0.1:9",
  public_worker_url: null,
  gpu_info,
  instances: [],
  agent_version: "bench",
});
const credential = (joined.credentials as WorkerCredentials).worker_credential;
await manager.app.request("/v1/models/register", {
  method: "POST",
  headers: { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" },
  body: JSON.stringify({ alias: "m", model_name: "org/m", worker_id: "w", gpu_ids: [0] }),
});
await call("/v1/workers/register", credential, {
  worker_id: "w",
  worker_url: "http://127.0.0.1:9",
  public_worker_url: null,
  gpu_info,
  instances: [report(progress(1, 0))],
  agent_version: "bench",
});

async function run(name: string, next: (i: number) => InstanceReport["progress"]) {
  const times: number[] = [];
  for (let i = 0; i < BEATS; i++) {
    const body = { gpu_info, instances: [report(next(i))] };
    const t0 = performance.now();
    await call("/v1/workers/w/heartbeat", credential, body);
    times.push(performance.now() - t0);
  }
  const p = percentiles(times);
  console.log(`${name.padEnd(44)} p50 ${p.p50.toFixed(2)} ms  p99 ${p.p99.toFixed(2)} ms`);
}

const rows = await db.query<{ status: string }>(sql`select status from instances`);
console.log(`${BEATS} heartbeats each, ${db.kind}; the instance is ${rows[0]?.status}`);
await run("no progress in the report (older agent)", () => undefined);
await run("progress unchanged", () => progress(2, 50));
await run("percentage and last line moved each beat", (i) => progress(2, i % 100));
await run("phase moved each beat (an event each)", (i) => progress(1 + (i % 6), 0));
await manager.close();
await db.destroy();
