import type { FC } from "hono/jsx";
import { type Traffic, type TrafficBucket, trafficWindows } from "./traffic.ts";
import { Table } from "./views.tsx";

const ms = (value: number | null) => (value === null ? "–" : `${Math.round(value)} ms`);
const rate = (count: number, seconds: number) => {
  const perS = count / seconds;
  return perS >= 10 ? perS.toFixed(0) : perS >= 0.1 ? perS.toFixed(2) : perS.toFixed(4);
};

/** Bars of one value per bucket, scaled to the largest; drawn as SVG, no library. */
const BarChart: FC<{ values: number[]; label: string }> = ({ values, label }) => {
  const max = Math.max(1, ...values);
  return (
    <svg
      class="chart"
      viewBox={`0 0 ${values.length} 40`}
      preserveAspectRatio="none"
      role="img"
      aria-label={label}
    >
      <title>{label}</title>
      <line class="axis" x1="0" y1="40" x2={String(values.length)} y2="40" />
      {values.map((value, i) =>
        value > 0 ? (
          <rect
            class="bar"
            x={String(i + 0.1)}
            y={(40 - (value / max) * 38).toFixed(2)}
            width="0.8"
            height={((value / max) * 38).toFixed(2)}
          />
        ) : null,
      )}
    </svg>
  );
};

/** Lines of latency percentiles per bucket (gaps where a bucket had no request). */
const LatencyChart: FC<{ p50: (number | null)[]; p99: (number | null)[]; label: string }> = (
  props,
) => {
  const max = Math.max(1, ...props.p99.map((v) => v ?? 0), ...props.p50.map((v) => v ?? 0));
  const points = (values: (number | null)[]) =>
    values
      // A flat step across each bucket, so a lone bucket still shows.
      .flatMap((v, i) => {
        if (v === null) return [];
        const y = (40 - (v / max) * 38).toFixed(2);
        return [`${i + 0.1},${y}`, `${i + 0.9},${y}`];
      })
      .join(" ");
  return (
    <svg
      class="chart"
      viewBox={`0 0 ${props.p50.length} 40`}
      preserveAspectRatio="none"
      role="img"
      aria-label={props.label}
    >
      <title>{props.label}</title>
      <line class="axis" x1="0" y1="40" x2={String(props.p50.length)} y2="40" />
      <polyline class="p99" points={points(props.p99)} />
      <polyline class="p50" points={points(props.p50)} />
    </svg>
  );
};

export const TrafficView: FC<{ traffic: Traffic }> = ({ traffic }) => {
  const window = trafficWindows[traffic.window];
  const seriesOf = (alias: string) => {
    const out: (TrafficBucket | undefined)[] = Array.from(
      { length: traffic.buckets },
      () => undefined,
    );
    for (const bucket of traffic.series) {
      if (bucket.alias === alias && bucket.bucket >= 0 && bucket.bucket < traffic.buckets)
        out[bucket.bucket] = bucket;
    }
    return out;
  };
  return (
    <>
      <nav aria-label="Window" class="filters">
        {Object.entries(trafficWindows).map(([key, w]) => (
          <a
            href={`/traffic?window=${key}`}
            aria-current={key === traffic.window ? "page" : undefined}
          >
            {w.label}
          </a>
        ))}
      </nav>
      <section id="traffic" data-live>
        <h2>Per model, {window.label}</h2>
        {traffic.aliases.length === 0 ? (
          <p class="muted">No request in the {window.label}.</p>
        ) : null}
        {traffic.aliases.length > 0 ? (
          <Table
            headers={[
              "Alias",
              "Requests",
              "Req/s",
              "Tokens/s in · out",
              "Latency p50 · p99",
              "TTFT p50 · p99",
              "Errors",
              `Requests per ${window.per}`,
              "Latency p50 (solid) · p99",
            ]}
          >
            {traffic.aliases.map((a) => {
              const series = seriesOf(a.name);
              return (
                <tr data-alias={a.name}>
                  <td>{a.name}</td>
                  <td class="requests">{a.requests}</td>
                  <td>{rate(a.requests, window.seconds)}</td>
                  <td class="tokens">
                    {rate(a.promptTokens, window.seconds)} ·{" "}
                    {rate(a.completionTokens, window.seconds)}
                  </td>
                  <td>
                    {ms(a.latencyP50)} · {ms(a.latencyP99)}
                  </td>
                  <td>
                    {ms(a.ttftP50)} · {ms(a.ttftP99)}
                  </td>
                  <td>
                    {a.requests === 0 ? "–" : `${((a.errors / a.requests) * 100).toFixed(1)}%`}
                  </td>
                  <td>
                    <BarChart
                      values={series.map((b) => b?.requests ?? 0)}
                      label={`${a.name}: requests per ${window.per}, ${window.label}`}
                    />
                  </td>
                  <td>
                    <LatencyChart
                      p50={series.map((b) => b?.latencyP50 ?? null)}
                      p99={series.map((b) => b?.latencyP99 ?? null)}
                      label={`${a.name}: latency p50 and p99 per ${window.per}, ${window.label}`}
                    />
                  </td>
                </tr>
              );
            })}
          </Table>
        ) : null}
        <h2>Per API key, {window.label}</h2>
        {traffic.keys.length === 0 ? <p class="muted">No request in the {window.label}.</p> : null}
        {traffic.keys.length > 0 ? (
          <Table
            headers={[
              "Key",
              "Requests",
              "Prompt tokens",
              "Completion tokens",
              "Errors",
              "Latency p50 · p99",
              "Last request",
            ]}
          >
            {traffic.keys.map((k) => (
              <tr data-key={k.name}>
                <td>
                  {k.name} {k.prefix ? <code>{k.prefix}…</code> : null}
                  {k.revoked ? <span class="badge s-revoked">revoked</span> : null}
                </td>
                <td class="requests">{k.requests}</td>
                <td>{k.promptTokens}</td>
                <td>{k.completionTokens}</td>
                <td>{k.errors}</td>
                <td>
                  {ms(k.latencyP50)} · {ms(k.latencyP99)}
                </td>
                <td>{k.lastAt ?? "–"}</td>
              </tr>
            ))}
          </Table>
        ) : null}
      </section>
    </>
  );
};
