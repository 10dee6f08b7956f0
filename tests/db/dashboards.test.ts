import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { sql } from "drizzle-orm";
import { dbTargets, type OpenTestDb, openFreshDb } from "../../devkit/db.ts";
import { seedOperatorData } from "./operator-data.ts";

/** Every ```sql block of docs/dashboards.md except the role setup, in order. */
const doc = await Bun.file(new URL("../../docs/dashboards.md", import.meta.url)).text();
const queries = [...doc.matchAll(/```sql\n([\s\S]*?)```/g)]
  .map((match) => match[1] ?? "")
  .filter((query) => !query.includes("create role"));

describe.each(dbTargets)("docs/dashboards.md queries on %s", (target) => {
  let fleet: OpenTestDb;

  beforeAll(async () => {
    fleet = await openFreshDb(target);
    await seedOperatorData(fleet);
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
