import { z } from "zod";

/**
 * An engine's load, as its agent last read it from the engine's own `/metrics` (agent
 * lib/load-monitor.ts, about once a second on the engine's host; routers never scrape).
 * `kv` is the KV-cache usage (0–1); `hit` the prefix-cache hit rate since the previous read
 * (null before the first query, or when the engine does not export the counters).
 */
export const engineLoadSchema = z.object({
  running: z.number().int().min(0),
  waiting: z.number().int().min(0),
  kv: z.number().min(0).max(1),
  hit: z.number().min(0).max(1).nullable(),
});
export type EngineLoad = z.infer<typeof engineLoadSchema>;

/**
 * `GET /v1/route-loads` (router credential or ADMIN_TOKEN): each route's last engine load as
 * its agent's heartbeat carried it, `age_s` seconds ago. Apart from the route snapshot, so
 * that loads never move its version.
 */
export const routeLoadSchema = z.object({
  alias: z.string(),
  worker_id: z.string(),
  load: engineLoadSchema,
  age_s: z.number().min(0),
});
export type RouteLoad = z.infer<typeof routeLoadSchema>;
export const routeLoadsSchema = z.object({ loads: z.array(routeLoadSchema) });

/**
 * The header an agent adds to every response it proxies, with the engine's last load:
 * `x-fleet-load: r=3;w=0;kv=0.42` and `;hit=0.81` when known. Unknown keys are ignored,
 * so a later agent may add some; a router reads it with `parseLoadHeader`.
 */
export const LOAD_HEADER = "x-fleet-load";

export function formatLoadHeader(load: EngineLoad): string {
  const kv = Math.round(load.kv * 100) / 100;
  const hit = load.hit === null ? "" : `;hit=${Math.round(load.hit * 100) / 100}`;
  return `r=${load.running};w=${load.waiting};kv=${kv}${hit}`;
}

/** The load in a header value; null when `r` or `w` is missing or anything is malformed. */
export function parseLoadHeader(value: string | null | undefined): EngineLoad | null {
  if (!value || value.length > 200) return null;
  let running = -1;
  let waiting = -1;
  let kv = 0;
  let hit: number | null = null;
  for (const part of value.split(";")) {
    const eq = part.indexOf("=");
    if (eq <= 0) return null;
    const key = part.slice(0, eq).trim();
    const number = Number(part.slice(eq + 1).trim());
    if (!Number.isFinite(number) || number < 0) return null;
    if (key === "r") running = Math.floor(number);
    else if (key === "w") waiting = Math.floor(number);
    else if (key === "kv") kv = Math.min(1, number);
    else if (key === "hit") hit = Math.min(1, number);
  }
  if (running < 0 || waiting < 0) return null;
  return { running, waiting, kv, hit };
}

/** The counters and gauges routing needs, from one read of an engine's `/metrics`. */
export type EngineSample = {
  running: number;
  waiting: number;
  kv: number;
  prefixQueries: number | null;
  prefixHits: number | null;
};

/**
 * Reads vLLM's Prometheus text across versions: `vllm:kv_cache_usage_perc` or the older
 * `vllm:gpu_cache_usage_perc`; prefix-cache counters `vllm:prefix_cache_*` or the older
 * `vllm:gpu_prefix_cache_*`, with or without `_total`; any labels (`model_name`, `engine`
 * — samples of several engines (data parallel) are summed, usage averaged). Null when
 * neither request gauge is there (not a vLLM metrics page).
 */
export function parseVllmMetrics(text: string): EngineSample | null {
  let running: number | null = null;
  let waiting: number | null = null;
  let kvSum = 0;
  let kvCount = 0;
  let oldKvSum = 0;
  let oldKvCount = 0;
  let queries: number | null = null;
  let hits: number | null = null;
  let oldQueries: number | null = null;
  let oldHits: number | null = null;
  for (const raw of text.split("\n")) {
    if (!raw.startsWith("vllm:")) continue;
    const brace = raw.indexOf("{");
    const space = raw.lastIndexOf(" ");
    if (space < 0) continue;
    const name = brace > 0 && brace < space ? raw.slice(0, brace) : raw.slice(0, space).trim();
    const close = raw.lastIndexOf("}");
    const valueText = raw
      .slice(close > 0 ? close + 1 : name.length)
      .trim()
      .split(/\s+/)[0];
    const value = Number(valueText);
    if (!Number.isFinite(value)) continue;
    const base = name.endsWith("_total") ? name.slice(0, -6) : name;
    switch (base) {
      case "vllm:num_requests_running":
        running = (running ?? 0) + value;
        break;
      case "vllm:num_requests_waiting":
        waiting = (waiting ?? 0) + value;
        break;
      case "vllm:kv_cache_usage_perc":
        kvSum += value;
        kvCount++;
        break;
      case "vllm:gpu_cache_usage_perc":
        oldKvSum += value;
        oldKvCount++;
        break;
      case "vllm:prefix_cache_queries":
        queries = (queries ?? 0) + value;
        break;
      case "vllm:prefix_cache_hits":
        hits = (hits ?? 0) + value;
        break;
      case "vllm:gpu_prefix_cache_queries":
        oldQueries = (oldQueries ?? 0) + value;
        break;
      case "vllm:gpu_prefix_cache_hits":
        oldHits = (oldHits ?? 0) + value;
        break;
    }
  }
  if (running === null && waiting === null) return null;
  const kv = kvCount > 0 ? kvSum / kvCount : oldKvCount > 0 ? oldKvSum / oldKvCount : 0;
  return {
    running: Math.max(0, Math.round(running ?? 0)),
    waiting: Math.max(0, Math.round(waiting ?? 0)),
    kv: Math.min(1, Math.max(0, kv)),
    prefixQueries: queries ?? oldQueries,
    prefixHits: hits ?? oldHits,
  };
}
