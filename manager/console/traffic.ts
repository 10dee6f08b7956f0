import { sql } from "drizzle-orm";
import type { FleetDb } from "../../db/index.ts";

/** The windows the Traffic page offers, with the width of one chart bucket. */
export const trafficWindows = {
  "1h": { seconds: 3600, bucketS: 60, label: "last hour", per: "minute" },
  "24h": { seconds: 86_400, bucketS: 1800, label: "last day", per: "30 min" },
} as const;
export type TrafficWindow = keyof typeof trafficWindows;

/** One alias (or key) over the window: rates per second, percentiles in ms. */
export type TrafficSummary = {
  name: string;
  requests: number;
  errors: number;
  promptTokens: number;
  completionTokens: number;
  latencyP50: number | null;
  latencyP99: number | null;
  ttftP50: number | null;
  ttftP99: number | null;
  lastAt: string | null;
};

/** One chart bucket of an alias: its index from the window's start. */
export type TrafficBucket = {
  alias: string;
  bucket: number;
  requests: number;
  completionTokens: number;
  latencyP50: number | null;
  latencyP99: number | null;
};

export type Traffic = {
  window: TrafficWindow;
  buckets: number;
  aliases: TrafficSummary[];
  series: TrafficBucket[];
  keys: (TrafficSummary & { prefix: string | null; revoked: boolean })[];
};

type SummaryRow = {
  name: string;
  requests: number;
  errors: number;
  prompt_tokens: number;
  completion_tokens: number;
  latency_p50: number | null;
  latency_p99: number | null;
  ttft_p50: number | null;
  ttft_p99: number | null;
  last_at: string | null;
};

const summaryColumns = sql`
  count(*)::int as requests,
  (count(*) filter (where r.status >= 400))::int as errors,
  coalesce(sum(r.prompt_tokens), 0)::float8 as prompt_tokens,
  coalesce(sum(r.completion_tokens), 0)::float8 as completion_tokens,
  (percentile_cont(0.5) within group (order by r.latency_ms))::float8 as latency_p50,
  (percentile_cont(0.99) within group (order by r.latency_ms))::float8 as latency_p99,
  (percentile_cont(0.5) within group (order by r.ttft_ms))::float8 as ttft_p50,
  (percentile_cont(0.99) within group (order by r.ttft_ms))::float8 as ttft_p99,
  max(r.ts)::text as last_at`;

function summary(row: SummaryRow): TrafficSummary {
  return {
    name: row.name,
    requests: Number(row.requests),
    errors: Number(row.errors),
    promptTokens: Number(row.prompt_tokens),
    completionTokens: Number(row.completion_tokens),
    latencyP50: row.latency_p50 === null ? null : Number(row.latency_p50),
    latencyP99: row.latency_p99 === null ? null : Number(row.latency_p99),
    ttftP50: row.ttft_p50 === null ? null : Number(row.ttft_p50),
    ttftP99: row.ttft_p99 === null ? null : Number(row.ttft_p99),
    lastAt: row.last_at,
  };
}

/**
 * What `request_logs` says about the window ending `now`: per alias, per API key, and per
 * alias and bucket for the charts. Reads the (alias, ts) and ts indexes only.
 */
export async function loadTraffic(db: FleetDb, window: TrafficWindow, now: Date): Promise<Traffic> {
  const { seconds, bucketS } = trafficWindows[window];
  const since = new Date(now.getTime() - seconds * 1000).toISOString();
  const [aliases, keys, series] = await Promise.all([
    db.query<SummaryRow>(sql`
      select r.alias as name, ${summaryColumns}
      from request_logs r
      where r.ts > ${since}::timestamptz
      group by r.alias
      order by count(*) desc, r.alias`),
    db.query<SummaryRow & { prefix: string | null; revoked: boolean }>(sql`
      select coalesce(k.name, '(no key)') as name, k.prefix, (k.revoked_at is not null) as revoked,
             ${summaryColumns}
      from request_logs r
      left join api_keys k on k.id = r.api_key_id
      where r.ts > ${since}::timestamptz
      group by r.api_key_id, k.name, k.prefix, k.revoked_at
      order by count(*) desc, 1`),
    db.query<{
      alias: string;
      bucket: number;
      requests: number;
      completion_tokens: number;
      latency_p50: number | null;
      latency_p99: number | null;
    }>(sql`
      select r.alias,
             floor(extract(epoch from r.ts - ${since}::timestamptz) / ${bucketS})::int as bucket,
             count(*)::int as requests,
             coalesce(sum(r.completion_tokens), 0)::float8 as completion_tokens,
             (percentile_cont(0.5) within group (order by r.latency_ms))::float8 as latency_p50,
             (percentile_cont(0.99) within group (order by r.latency_ms))::float8 as latency_p99
      from request_logs r
      where r.ts > ${since}::timestamptz
      group by 1, 2`),
  ]);
  return {
    window,
    buckets: Math.ceil(seconds / bucketS),
    aliases: aliases.map(summary),
    keys: keys.map((row) => ({ ...summary(row), prefix: row.prefix, revoked: row.revoked })),
    series: series.map((row) => ({
      alias: row.alias,
      bucket: Number(row.bucket),
      requests: Number(row.requests),
      completionTokens: Number(row.completion_tokens),
      latencyP50: row.latency_p50 === null ? null : Number(row.latency_p50),
      latencyP99: row.latency_p99 === null ? null : Number(row.latency_p99),
    })),
  };
}

/** Per API key id over the last day: what the Keys page shows beside each key. */
export type KeyUsage = { requests: number; tokens: number; lastAt: string | null };

export async function loadKeyUsage(db: FleetDb, now: Date): Promise<Map<string, KeyUsage>> {
  const since = new Date(now.getTime() - 86_400_000).toISOString();
  const rows = await db.query<{
    id: string;
    requests: number;
    tokens: number;
    last_at: string;
  }>(sql`
    select api_key_id as id, count(*)::int as requests,
           coalesce(sum(coalesce(prompt_tokens, 0) + coalesce(completion_tokens, 0)), 0)::float8 as tokens,
           max(ts)::text as last_at
    from request_logs
    where ts > ${since}::timestamptz and api_key_id is not null
    group by api_key_id`);
  return new Map(
    rows.map((row) => [
      row.id,
      { requests: Number(row.requests), tokens: Number(row.tokens), lastAt: row.last_at },
    ]),
  );
}
