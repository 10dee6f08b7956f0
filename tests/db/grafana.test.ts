import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { sql } from "drizzle-orm";
import { agentMetrics } from "../../agent/lib/metrics.ts";
import { dbTargets, type OpenTestDb, openFreshDb } from "../../devkit/db.ts";
import { silentLogger } from "../../kit/log.ts";
import { createApp as createRouterApp } from "../../router/app.ts";
import { loadRouterEnv } from "../../router/env.ts";
import { createStandaloneRouter } from "../../router/standalone.ts";
import { testManager } from "../manager/helpers.ts";
import { expandMacros, metricNames, promQueries, sqlQueries } from "./grafana-dashboard.ts";
import { seedOperatorData } from "./operator-data.ts";

/**
 * docs/grafana/vllm-fleet.json against what the services declare and what the database
 * holds: a panel over a metric nobody exports, or over a view or column the migrations do
 * not create, fails here instead of showing "No data". The labels its queries use are
 * checked against real scrapes in tests/e2e/metrics.test.ts.
 */

/** Family name → type, from the `# TYPE` lines of a registry's text. */
function families(text: string): Map<string, string> {
  return new Map(
    [...text.matchAll(/^# TYPE (\S+) (\S+)$/gm)].map((match) => [match[1] ?? "", match[2] ?? ""]),
  );
}

/** Every family the manager (with its mounted router), a standalone router and an agent declare. */
async function declaredFamilies(): Promise<Map<string, string>> {
  const t = await testManager();
  try {
    createRouterApp({
      routes: t.manager.routes,
      usage: t.manager.usage,
      metrics: t.manager.metrics,
    });
    const standalone = createStandaloneRouter({
      env: loadRouterEnv({ MANAGER_URL: "http://127.0.0.1:9", USAGE_SPOOL_MAX_MB: "0" }),
      log: silentLogger,
    });
    const agent = agentMetrics({ engines: () => [], gpus: () => ({ gpus: [], warning: null }) });
    return new Map([
      ...families(await t.manager.metrics.scrape()),
      ...families(standalone.metrics.render()),
      ...families(agent.render()),
    ]);
  } finally {
    await t.close();
  }
}

/** The family a sample name belongs to: histograms' `_bucket`, `_sum` and `_count` included. */
function familyOf(name: string, declared: Map<string, string>): string | undefined {
  if (declared.has(name)) return name;
  const base = name.replace(/_(bucket|sum|count)$/, "");
  return declared.get(base) === "histogram" ? base : undefined;
}

describe("docs/grafana/vllm-fleet.json: metrics", () => {
  let declared: Map<string, string>;
  beforeAll(async () => {
    declared = await declaredFamilies();
  });

  test("every metric a panel reads is one a service exports", () => {
    const queries = promQueries();
    expect(queries.length).toBeGreaterThan(25);
    const missing = queries.flatMap(({ title, expr }) =>
      metricNames(expr)
        .filter((name) => familyOf(name, declared) === undefined)
        .map((name) => `${title}: ${name}`),
    );
    expect(missing).toEqual([]);
  });

  test("the dashboard covers the router, the manager and the agents", () => {
    const read = new Set(
      promQueries().flatMap(({ expr }) =>
        metricNames(expr).map((name) => familyOf(name, declared) ?? name),
      ),
    );
    for (const name of [
      "fleet_router_requests_total",
      "fleet_router_request_duration_seconds",
      "fleet_router_ttft_seconds",
      "fleet_router_tokens_total",
      "fleet_manager_workers",
      "fleet_manager_worker_paths",
      "fleet_manager_instances",
      "fleet_manager_heartbeat_duration_seconds",
      "fleet_manager_reconcile_actions_total",
      "fleet_manager_usage_records_written_total",
      "fleet_manager_usage_dead_letters_total",
      "fleet_agent_engines",
      "fleet_agent_engine_restarts_total",
      "fleet_agent_gpu_memory_used_bytes",
      "fleet_agent_gpu_memory_claimed_bytes",
      "fleet_agent_engine_requests_waiting",
      "fleet_agent_engine_kv_cache_usage_ratio",
    ]) {
      expect([name, read.has(name)]).toEqual([name, true]);
    }
  });

  test("docs/dashboards.md lists every metric the services declare, with its type", () => {
    const doc = readFileSync(new URL("../../docs/dashboards.md", import.meta.url), "utf8");
    const rows = new Map(
      [...doc.matchAll(/^\|\s*`(fleet_[a-z0-9_]+)`\s*\|\s*([a-z]+)\s*\|/gm)].map((match) => [
        match[1] ?? "",
        match[2] ?? "",
      ]),
    );
    const wrong = [...declared].flatMap(([name, kind]) =>
      rows.get(name) === kind ? [] : [`${name}: ${kind}, documented ${rows.get(name) ?? "not"}`],
    );
    expect(wrong).toEqual([]);
  });
});

describe.each(dbTargets)("docs/grafana/vllm-fleet.json: SQL panels on %s", (target) => {
  let fleet: OpenTestDb;

  beforeAll(async () => {
    fleet = await openFreshDb(target);
    await seedOperatorData(fleet);
  });
  afterAll(async () => {
    await fleet?.destroy();
  });

  const panels = sqlQueries();
  test("the dashboard has its SQL panels", () => {
    expect(panels.length).toBeGreaterThanOrEqual(5);
    expect(panels.some((panel) => /\bfrom route_table\b/.test(panel.sql))).toBe(true);
  });

  // Each panel runs as Grafana sends it and finds the seeded rows: a missing view or column
  // is an error, and a query that selects nothing (a wrong join, a misspelt state) fails too.
  test.each(panels.map((panel) => [panel.title, panel.sql] as const))(
    "%s runs and finds the seeded rows",
    async (_title, query) => {
      const expanded = expandMacros(query);
      expect(expanded).not.toContain("$__");
      const rows = await fleet.query(sql.raw(expanded));
      expect(rows.length).toBeGreaterThan(0);
    },
  );

  test("the route table panel reads the view's columns", async () => {
    const query = panels.find((panel) => panel.title === "Route table")?.sql ?? "";
    const rows = await fleet.query<{ alias: string; is_public: boolean; serving: boolean }>(
      sql.raw(expandMacros(query)),
    );
    expect(rows.map((row) => [row.alias, row.is_public, row.serving])).toEqual([
      ["llama", false, false],
      ["qwen-vl-2b", true, true],
    ]);
  });
});
