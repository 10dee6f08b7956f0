import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { sql } from "drizzle-orm";
import { schema } from "../../db/index.ts";
import { dbTargets, type OpenTestDb, openFreshDb } from "../../devkit/db.ts";

/** Every ```sql block of docs/dashboards.md except the role setup, in order. */
const doc = await Bun.file(new URL("../../docs/dashboards.md", import.meta.url)).text();
const queries = [...doc.matchAll(/```sql\n([\s\S]*?)```/g)]
  .map((match) => match[1] ?? "")
  .filter((query) => !query.includes("create role"));

describe.each(dbTargets)("docs/dashboards.md queries on %s", (target) => {
  let fleet: OpenTestDb;

  beforeAll(async () => {
    fleet = await openFreshDb(target);
    const { workers, gpus, models, instances, routes, apiKeys, requestLogs, events } = schema;
    await fleet.db.insert(workers).values([
      {
        workerId: "rental",
        workerUrl: "http://127.0.0.1:6006",
        publicWorkerUrl: "https://rental.example.test:8443",
      },
      { workerId: "lab", workerUrl: "http://127.0.0.1:6007" },
    ]);
    await fleet.db.insert(gpus).values([
      {
        workerId: "rental",
        index: 0,
        name: "RTX 4090",
        memoryTotalMib: 24564,
        memoryUsedMib: 20000,
      },
      { workerId: "lab", index: 0, name: "A100", memoryTotalMib: 81920, memoryUsedMib: 0 },
    ]);
    await fleet.db.insert(models).values([
      { alias: "qwen-vl-2b", modelName: "Qwen/Qwen2-VL-2B-Instruct" },
      { alias: "llama", modelName: "meta-llama/Llama-3.1-8B-Instruct" },
    ]);
    const [instance, loading] = await fleet.db
      .insert(instances)
      .values([
        {
          alias: "qwen-vl-2b",
          workerId: "rental",
          gpuIds: [0],
          gpuMemoryUtilization: 0.8,
          status: "ready",
        },
        // Still loading: an alias with a route but no serving replica.
        {
          alias: "llama",
          workerId: "lab",
          gpuIds: [0],
          gpuMemoryUtilization: 0.5,
          status: "starting",
        },
      ])
      .returning();
    if (!instance || !loading) throw new Error("no instance");
    await fleet.db.insert(routes).values([
      {
        alias: "qwen-vl-2b",
        modelName: "Qwen/Qwen2-VL-2B-Instruct",
        workerId: "rental",
        workerUrl: "https://rental.example.test:8443",
        vllmPort: 40001,
        instanceId: instance.id,
        ready: true,
      },
      {
        alias: "llama",
        modelName: "meta-llama/Llama-3.1-8B-Instruct",
        workerId: "lab",
        workerUrl: "http://127.0.0.1:6007",
        vllmPort: 40002,
        instanceId: loading.id,
        ready: false,
      },
    ]);
    await fleet.db
      .insert(apiKeys)
      .values({ id: "key_a", keyHash: "c".repeat(64), prefix: "sk-fleet-Ab", name: "team-a" });
    await fleet.db.insert(requestLogs).values([
      {
        apiKeyId: "key_a",
        alias: "qwen-vl-2b",
        workerId: "rental",
        status: 200,
        latencyMs: 120,
        ttftMs: 30,
        promptTokens: 10,
        completionTokens: 20,
        stream: true,
      },
      {
        apiKeyId: "key_a",
        alias: "qwen-vl-2b",
        workerId: "rental",
        status: 503,
        latencyMs: 2,
        stream: false,
      },
      // Past the 30-day retention the doc's delete statement applies.
      {
        ts: new Date(Date.now() - 40 * 24 * 3600 * 1000),
        apiKeyId: "key_a",
        alias: "qwen-vl-2b",
        workerId: "rental",
        status: 200,
        latencyMs: 90,
        promptTokens: 1,
        completionTokens: 1,
        stream: false,
      },
    ]);
    await fleet.db
      .insert(events)
      .values({ kind: "worker.online", workerId: "rental", toStatus: "online" });
  });
  afterAll(async () => {
    await fleet?.destroy();
  });

  test("the document holds the queries", () => {
    expect(queries.length).toBeGreaterThanOrEqual(9);
  });

  // The seed gives every query something to find, so a query that runs but selects nothing
  // (a wrong join, a misspelt status) fails here instead of showing an empty panel.
  test.each(queries.map((query, i) => [i, query] as const))(
    "query %d finds the seeded rows",
    async (_i, query) => {
      if (/^\s*delete\b/i.test(query)) {
        const old = sql`select count(*)::int as n from request_logs where ts < now() - interval '30 days'`;
        expect((await fleet.query<{ n: number }>(old))[0]?.n).toBe(1);
        await fleet.query(sql.raw(query));
        expect((await fleet.query<{ n: number }>(old))[0]?.n).toBe(0);
        return;
      }
      const rows = await fleet.query(sql.raw(query));
      expect(rows.length).toBeGreaterThan(0);
    },
  );

  test("the route table query shows which URL is the public one and what serves", async () => {
    const rows = await fleet.query<{ url: string; is_public: boolean; serving: boolean }>(
      sql.raw(queries[0] ?? ""),
    );
    expect(rows).toEqual([
      expect.objectContaining({
        alias: "llama",
        url: "http://127.0.0.1:6007",
        is_public: false,
        serving: false,
      }),
      expect.objectContaining({
        alias: "qwen-vl-2b",
        url: "https://rental.example.test:8443",
        is_public: true,
        serving: true,
      }),
    ]);
  });

  test("the query for aliases without a serving replica names only those", async () => {
    const query = queries.find((q) => q.includes("having count(*) filter (where serving) = 0"));
    const rows = await fleet.query<{ alias: string }>(sql.raw(query ?? ""));
    expect(rows.map((row) => row.alias)).toEqual(["llama"]);
  });

  test("the usage query sums tokens per key", async () => {
    const query = queries.find((q) => q.includes("from api_keys k")) ?? "";
    const rows = await fleet.query<{
      name: string;
      requests: number | string;
      tokens: number | string;
    }>(sql.raw(query));
    expect(rows.map((row) => [row.name, Number(row.requests), Number(row.tokens)])).toEqual([
      ["team-a", 2, 30],
    ]);
  });
});
