/**
 * Data-layer benchmark: worker heartbeat upserts per second and the route-snapshot query
 * for 1,000 routes, on the embedded PGlite database and (when DATABASE_URL is set, or on
 * the local server by default) on Postgres, side by side in one run.
 *
 *   npx bun bench/db.ts            # DATABASE_URL defaults to postgres://postgres@127.0.0.1:5432/test
 */
import { eq, sql } from "drizzle-orm";
import postgres from "postgres";
import { schema } from "../db/index.ts";
import { type DbTarget, type OpenTestDb, openFreshDb } from "../devkit/db.ts";

process.env.DATABASE_URL ||= "postgres://postgres@127.0.0.1:5432/test";
const { workers, gpus, models, instances, routes } = schema;

const WORKERS = 250;
const ROUTES = 1000;
const HEARTBEAT_SECONDS = 3;
const CONCURRENCY = 16;

async function seed(fleet: OpenTestDb) {
  const workerRows = Array.from({ length: WORKERS }, (_, i) => ({
    workerId: `w${i}`,
    workerUrl: `http://127.0.0.1:${10000 + i}`,
    publicWorkerUrl: i % 2 ? `https://w${i}.example.test:8443` : null,
  }));
  await fleet.db.insert(workers).values(workerRows);
  await fleet.db.insert(gpus).values(
    workerRows.map((w) => ({
      workerId: w.workerId,
      index: 0,
      name: "H100",
      memoryTotalMib: 81559,
    })),
  );
  // 1,000 routes: 250 aliases x 4 replicas on distinct workers.
  const aliases = Array.from({ length: ROUTES / 4 }, (_, i) => `m${i}`);
  await fleet.db
    .insert(models)
    .values(aliases.map((alias) => ({ alias, modelName: `org/${alias}` })));
  for (const [a, alias] of aliases.entries()) {
    const placed = await fleet.db
      .insert(instances)
      .values(
        [0, 1, 2, 3].map((r) => ({
          alias,
          workerId: `w${(a + r * 61) % WORKERS}`,
          gpuMemoryUtilization: 0.2,
          status: "ready" as const,
        })),
      )
      .returning();
    await fleet.db.insert(routes).values(
      placed.map((instance) => ({
        alias,
        modelName: `org/${alias}`,
        workerId: instance.workerId,
        workerUrl: `http://127.0.0.1:1`,
        vllmPort: 40000,
        instanceId: instance.id,
        ready: true,
      })),
    );
  }
}

async function heartbeats(fleet: OpenTestDb): Promise<number> {
  let done = 0;
  const deadline = performance.now() + HEARTBEAT_SECONDS * 1000;
  const lane = async (offset: number) => {
    for (let i = offset; performance.now() < deadline; i += CONCURRENCY) {
      const workerId = `w${i % WORKERS}`;
      // What a heartbeat writes, in one round trip: liveness on the worker row and live
      // stats on its GPU row.
      await fleet.db.execute(sql`
        with beat as (
          update ${workers} set last_heartbeat = now(), status = 'online'
          where worker_id = ${workerId} returning worker_id
        )
        update ${gpus} set memory_used_mib = ${i % 80000}, memory_free_mib = 1000,
          utilization_pct = ${i % 100}, updated_at = now()
        from beat where ${gpus.workerId} = beat.worker_id and ${gpus.index} = 0`);
      done++;
    }
  };
  const started = performance.now();
  await Promise.all(Array.from({ length: CONCURRENCY }, (_, i) => lane(i)));
  return done / ((performance.now() - started) / 1000);
}

async function snapshotQuery(
  fleet: OpenTestDb,
): Promise<{ p50: number; p99: number; rows: number }> {
  const query = () =>
    fleet.db
      .select({
        alias: routes.alias,
        modelName: routes.modelName,
        workerId: routes.workerId,
        workerUrl: routes.workerUrl,
        vllmPort: routes.vllmPort,
        createdAt: routes.createdAt,
        instanceId: routes.instanceId,
        ready: sql<boolean>`${routes.ready} and ${workers.status} = 'online'`,
      })
      .from(routes)
      .innerJoin(workers, eq(workers.workerId, routes.workerId));
  for (let i = 0; i < 20; i++) await query();
  const times: number[] = [];
  let rows = 0;
  for (let i = 0; i < 200; i++) {
    const t = performance.now();
    rows = (await query()).length;
    times.push(performance.now() - t);
  }
  times.sort((a, b) => a - b);
  return { p50: times[100] ?? 0, p99: times[198] ?? 0, rows };
}

/** The same query through postgres.js alone (prepared), to separate driver from ORM cost. */
async function snapshotQueryRaw(url: string): Promise<{ p50: number; p99: number }> {
  const client = postgres(url, { max: 1, onnotice: () => {} });
  const query = () => client`
    select r.alias, r.model_name, r.worker_id, r.worker_url, r.vllm_port, r.created_at,
           r.instance_id, r.ready and w.status = 'online' as ready
    from routes r join workers w on w.worker_id = r.worker_id`;
  try {
    for (let i = 0; i < 20; i++) await query();
    const times: number[] = [];
    for (let i = 0; i < 200; i++) {
      const t = performance.now();
      await query();
      times.push(performance.now() - t);
    }
    times.sort((a, b) => a - b);
    return { p50: times[100] ?? 0, p99: times[198] ?? 0 };
  } finally {
    await client.end();
  }
}

const results: string[] = [];
for (const target of ["postgres", "pglite"] satisfies DbTarget[]) {
  const fleet = await openFreshDb(target);
  try {
    await seed(fleet);
    const rate = await heartbeats(fleet);
    const snap = await snapshotQuery(fleet);
    const url = fleet.database.env.DATABASE_URL;
    const raw = url ? await snapshotQueryRaw(url) : undefined;
    const rawCell = raw ? `${raw.p50.toFixed(2)} / ${raw.p99.toFixed(2)}` : "-";
    results.push(
      `| ${target} | ${Math.round(rate).toLocaleString("en-US")} | ${snap.rows} | ${snap.p50.toFixed(2)} | ${snap.p99.toFixed(2)} | ${rawCell} |`,
    );
  } finally {
    await fleet.destroy();
  }
}
console.log(
  `heartbeat upserts: ${CONCURRENCY} concurrent for ${HEARTBEAT_SECONDS} s over ${WORKERS} workers (worker row + GPU row each)`,
);
console.log(
  "| database | heartbeats/s | snapshot rows | snapshot p50 ms (Drizzle) | p99 ms | p50 / p99 ms (postgres.js alone) |",
);
console.log("| --- | --- | --- | --- | --- | --- |");
for (const line of results) console.log(line);
