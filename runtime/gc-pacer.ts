/**
 * Keeps a Bun gateway's memory near its live set under stream churn.
 *
 * Every chunk a gateway relays is a short-lived buffer, and JavaScriptCore lets such
 * garbage pile up well past the live set before it collects (and Bun's allocator holds
 * freed pages until then). With 1,000 streams turning over, that garbage was a fifth of the
 * router's peak memory (docs/router.md "Memory"). The pacer checks the resident size once a
 * second and runs a full collection only when it grew by `growthBytes` since the last one:
 * an idle process never collects, a busy one at most once a second. Each pause is reported
 * so it shows on /metrics.
 *
 *   const pacer = startGcPacer({ onCollect: (pauseMs) => metrics.observe(...) });
 *   pacer.stop();
 */
export type GcPacerOptions = {
  /** How often to look (default 1 s). */
  intervalMs?: number;
  /** Resident growth since the last collection that warrants one (default 16 MiB). */
  growthBytes?: number;
  /** Called after each collection with its pause and the resident size before and after. */
  onCollect?: (pauseMs: number, rssBefore: number, rssAfter: number) => void;
};

export function startGcPacer(options: GcPacerOptions = {}): { stop(): void } {
  const growth = options.growthBytes ?? 16 * 1024 * 1024;
  let baseline = process.memoryUsage.rss();
  const timer = setInterval(() => {
    const before = process.memoryUsage.rss();
    if (before < baseline + growth) {
      // Memory went down on its own (the runtime collected): follow it down.
      baseline = Math.min(baseline, before);
      return;
    }
    const started = performance.now();
    Bun.gc(true);
    const pauseMs = performance.now() - started;
    baseline = process.memoryUsage.rss();
    options.onCollect?.(pauseMs, before, baseline);
  }, options.intervalMs ?? 1000);
  timer.unref();
  return { stop: () => clearInterval(timer) };
}
