/**
 * What docs/grafana/vllm-fleet.json asks of the services and the database: its PromQL and
 * SQL, read the way Grafana reads them, for tests/db/grafana.test.ts and
 * tests/e2e/metrics.test.ts.
 */
import { readFileSync } from "node:fs";

type Target = { expr?: string; rawSql?: string; datasource?: { type?: string } };
type Panel = { title: string; type: string; targets?: Target[]; panels?: Panel[] };
type Dashboard = {
  panels: Panel[];
  templating: { list: { query: string | { query: string } }[] };
};

export const dashboardPath = new URL("../../docs/grafana/vllm-fleet.json", import.meta.url);

export function readDashboard(): Dashboard {
  return JSON.parse(readFileSync(dashboardPath, "utf8")) as Dashboard;
}

function allPanels(panels: Panel[]): Panel[] {
  return panels.flatMap((panel) => [panel, ...allPanels(panel.panels ?? [])]);
}

/** Every PromQL expression: panel targets and template variable queries. */
export function promQueries(dashboard = readDashboard()): { title: string; expr: string }[] {
  const panels = allPanels(dashboard.panels).flatMap((panel) =>
    (panel.targets ?? []).flatMap((target) =>
      target.expr ? [{ title: panel.title, expr: target.expr }] : [],
    ),
  );
  const variables = dashboard.templating.list.map((variable) => ({
    title: "template variable",
    expr: typeof variable.query === "string" ? variable.query : variable.query.query,
  }));
  return [...panels, ...variables];
}

/** Every SQL panel query, as written (with Grafana's macros). */
export function sqlQueries(dashboard = readDashboard()): { title: string; sql: string }[] {
  return allPanels(dashboard.panels).flatMap((panel) =>
    (panel.targets ?? []).flatMap((target) =>
      target.rawSql ? [{ title: panel.title, sql: target.rawSql }] : [],
    ),
  );
}

/**
 * A panel's SQL as Grafana's Postgres source sends it, over the last day: `$__timeFilter(c)`
 * and `$__timeGroupAlias(c, interval)` expanded. Any other macro is left in and fails.
 */
export function expandMacros(sql: string): string {
  return sql
    .replace(/\$__timeFilter\(([^)]+)\)/g, "$1 between now() - interval '1 day' and now()")
    .replace(
      /\$__timeGroupAlias\(([^,]+),\s*'(\d+)m'\)/g,
      (_, column: string, minutes: string) =>
        `to_timestamp(floor(extract(epoch from ${column}) / ${Number(minutes) * 60}) * ${Number(minutes) * 60}) as "time"`,
    );
}

/** The metric families an expression reads (`_bucket`, `_sum`, `_count` kept as written). */
export function metricNames(expr: string): string[] {
  return [...new Set(expr.match(/\bfleet_[a-z0-9_]+/g) ?? [])];
}

/**
 * The label names an expression selects or groups on, per metric: `{label=...}` selectors
 * and `by (...)` clauses (a `by` applies to every metric of the expression).
 */
export function labelsUsed(expr: string): Map<string, Set<string>> {
  const used = new Map<string, Set<string>>();
  const grouped = [...expr.matchAll(/\bby\s*\(([^)]*)\)/g)].flatMap((match) =>
    (match[1] ?? "")
      .split(",")
      .map((label) => label.trim())
      .filter((label) => label !== "" && label !== "le" && label !== "instance"),
  );
  for (const match of expr.matchAll(/\b(fleet_[a-z0-9_]+)(?:\{([^}]*)\})?/g)) {
    const name = match[1] ?? "";
    const labels = used.get(name) ?? new Set<string>();
    for (const selector of (match[2] ?? "").matchAll(/([a-z_]+)\s*(?:=~|!=|!~|=)/g)) {
      labels.add(selector[1] ?? "");
    }
    for (const label of grouped) labels.add(label);
    used.set(name, labels);
  }
  return used;
}
