/**
 * Reading Prometheus text exposition (what /metrics of the router, the manager and the
 * engine simulator serve), for tests and benchmarks.
 *
 *   const text = await scrape(`${router.url}/metrics`);
 *   metric(text, "fleet_router_retries_total", { reason: "connect" }); // summed over the rest
 *
 * A page behind a token (docs/operations.md "Metrics") is scraped as `{ url, token }`.
 */

/** A /metrics page: its URL, with the bearer token it takes when it takes one. */
export type MetricsPage = string | { url: string; token?: string | undefined };

const sampleLine = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$/;
const labelPair = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

function labelsOf(text: string | undefined): Map<string, string> {
  const labels = new Map<string, string>();
  if (!text) return labels;
  for (const match of text.matchAll(labelPair)) {
    labels.set(
      match[1] ?? "",
      (match[2] ?? "").replace(/\\(.)/g, (_, c: string) => (c === "n" ? "\n" : c)),
    );
  }
  return labels;
}

/**
 * The value of `name` summed over every sample whose labels include all of `labels`; NaN when
 * no sample matches (so a misspelt name or label never reads as a zero).
 */
export function metric(text: string, name: string, labels: Record<string, string> = {}): number {
  let total = Number.NaN;
  for (const line of text.split("\n")) {
    if (!line.startsWith(name)) continue;
    const match = sampleLine.exec(line.trim());
    if (!match || match[1] !== name) continue;
    const have = labelsOf(match[2]);
    if (!Object.entries(labels).every(([key, value]) => have.get(key) === value)) continue;
    total = (Number.isNaN(total) ? 0 : total) + Number(match[3]);
  }
  return total;
}

/** GET a /metrics page as text (with its token); throws unless it answers 200. */
export async function scrape(page: MetricsPage): Promise<string> {
  const { url, token } = typeof page === "string" ? { url: page, token: undefined } : page;
  const response = await fetch(url, token ? { headers: { authorization: `Bearer ${token}` } } : {});
  const text = await response.text();
  if (response.status !== 200) throw new Error(`${url}: HTTP ${response.status}`);
  return text;
}

/** `metric()` of the page now. */
export async function metricAt(
  url: MetricsPage,
  name: string,
  labels: Record<string, string> = {},
): Promise<number> {
  return metric(await scrape(url), name, labels);
}
