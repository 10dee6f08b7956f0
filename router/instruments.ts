import type { BoundHistogram, BoundSeries, Metrics } from "../kit/metrics.ts";
import type { Balancer } from "./balancer.ts";

/** One alias's request series, bound once: a request's metrics cost a few additions. */
export type AliasSeries = {
  inFlight: BoundSeries;
  duration: BoundHistogram;
  ttft: BoundHistogram;
  /** Counts a finished request under its final status. */
  count(status: number): void;
  /** Adds a finished request's checked token counts under its API key (null: none). */
  tokens(apiKeyId: string | null, prompt: number | null, completion: number | null): void;
};

/**
 * Declares the router's metrics on `metrics` (docs/router.md "Metrics") and hands out the
 * per-alias series. The `alias` label always comes from the route table and `api_key_id`
 * from the snapshot's keys, never from raw client input, so the number of series stays
 * bounded.
 */
export function routerInstruments(
  metrics: Metrics,
  balancer: Balancer,
): { seriesFor(alias: string): AliasSeries } {
  metrics.declare("fleet_router_requests_total", "counter", "Requests by alias and final status");
  metrics.declare(
    "fleet_router_request_duration_seconds",
    "histogram",
    "Time from request arrival to the end of the response body",
  );
  metrics.declare(
    "fleet_router_ttft_seconds",
    "histogram",
    "Time from request arrival to the first body byte from the agent",
  );
  metrics.declare(
    "fleet_router_tokens_total",
    "counter",
    "Tokens served, by alias, API key id (`none` without a key) and kind (prompt, completion), as the engines reported them and the router checked them",
  );
  metrics.declare("fleet_router_in_flight", "gauge", "Requests being proxied, by alias");
  metrics.declare("fleet_router_retries_total", "counter", "Attempts retried on another replica");
  metrics.declare("fleet_router_ejections_total", "counter", "Replicas ejected after failures");
  metrics.declare(
    "fleet_router_malformed_answers_total",
    "counter",
    "Answers refused from agents: a status outside 200-599, a Content-Length the body did not keep, too many or too large headers; by alias and worker",
  );
  metrics.declare("fleet_router_ejected_replicas", "gauge", "Replicas currently ejected");
  metrics.declare(
    "fleet_router_replica_checks_total",
    "counter",
    "Health checks of replicas that kept a request waiting for its first byte, by worker and result",
  );
  metrics.collect(() =>
    metrics.set("fleet_router_ejected_replicas", undefined, balancer.ejectedCount()),
  );

  const byAlias = new Map<string, AliasSeries>();
  return {
    seriesFor(alias) {
      let series = byAlias.get(alias);
      if (series) return series;
      const labels = { alias };
      const byStatus = new Map<number, BoundSeries>();
      const byKey = new Map<string, { prompt: BoundSeries; completion: BoundSeries }>();
      series = {
        inFlight: metrics.series("fleet_router_in_flight", labels, "gauge"),
        duration: metrics.histogramSeries("fleet_router_request_duration_seconds", labels),
        ttft: metrics.histogramSeries("fleet_router_ttft_seconds", labels),
        count(status) {
          let counter = byStatus.get(status);
          if (!counter) {
            counter = metrics.series("fleet_router_requests_total", {
              alias,
              status: String(status),
            });
            byStatus.set(status, counter);
          }
          counter.add(1);
        },
        tokens(apiKeyId, prompt, completion) {
          if (prompt === null && completion === null) return;
          const key = apiKeyId ?? "none";
          let counters = byKey.get(key);
          if (!counters) {
            const series = (kind: string) =>
              metrics.series("fleet_router_tokens_total", { alias, api_key_id: key, kind });
            counters = { prompt: series("prompt"), completion: series("completion") };
            byKey.set(key, counters);
          }
          if (prompt !== null) counters.prompt.add(prompt);
          if (completion !== null) counters.completion.add(completion);
        },
      };
      byAlias.set(alias, series);
      return series;
    },
  };
}
