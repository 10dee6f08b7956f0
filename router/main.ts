/**
 * Standalone router on Bun: `bun router/main.ts` (npm run router). Reads routes from the
 * manager (MANAGER_URL, ROUTER_TOKEN) and sends usage back in batches.
 */
import { getConnInfo } from "hono/bun";
import { clientLimitsFromEnv } from "../kit/client-limits.ts";
import { createLogger } from "../kit/log.ts";
import { bunServer, onShutdownSignals, shutDown } from "../kit/shutdown.ts";
import { serveBun } from "../runtime/bun-serve.ts";
import { startGcPacer } from "../runtime/gc-pacer.ts";
import { createUpstreamFetch } from "../runtime/upstream-fetch.ts";
import { loadRouterEnvOrExit } from "./env.ts";
import { endingStreamsFirst } from "./open-streams.ts";
import { openUsageSpool } from "./spool.ts";
import { createStandaloneRouter } from "./standalone.ts";

const env = loadRouterEnvOrExit(process.env);
const log = createLogger({ service: "router", level: env.LOG_LEVEL });
// Agents are reached over Bun's fetch for whole answers and our own HTTP/1.1 client for
// streams unless UPSTREAM_CLIENT says otherwise (runtime/upstream-fetch.ts).
const upstream = createUpstreamFetch({
  client: env.UPSTREAM_CLIENT,
  connectTimeoutMs: env.CONNECT_TIMEOUT_MS,
  fetchCap: env.BUN_CONFIG_MAX_HTTP_REQUESTS,
  log,
});
const limits = clientLimitsFromEnv(env);
const serving = serveBun({ limits, log });
const router = createStandaloneRouter({
  env,
  log,
  fetch: upstream.fetch,
  streamFetch: upstream.streamFetch,
  clientAddress: (c) => getConnInfo(c).remote.address,
  idleTimer: serving.idleTimer,
  usageSpool: openUsageSpool(env, log),
});
await router.start();

// Relayed chunks are short-lived garbage; collect it before it piles up (runtime/gc-pacer.ts).
router.metrics.declare(
  "fleet_router_gc_pause_seconds",
  "histogram",
  "Full garbage collections run by the pacer, by pause",
);
const pacer =
  env.GC_GROWTH_MB > 0
    ? startGcPacer({
        growthBytes: env.GC_GROWTH_MB * 1024 * 1024,
        onCollect: (pauseMs) =>
          router.metrics.observe("fleet_router_gc_pause_seconds", undefined, pauseMs / 1000),
      })
    : undefined;

// Inference requests hold the connection's idle timer while they are served (a completion
// can queue for minutes); everything else runs under KEEPALIVE_TIMEOUT_S (runtime/bun-serve.ts).
const server = serving.listen({
  hostname: env.HOST,
  port: env.PORT,
  fetch: (request, bunServer) => router.app.fetch(request, bunServer),
});
log.info(`router listening on http://${server.hostname}:${server.port}`, {
  manager_url: env.MANAGER_URL,
  routes_version: router.routes.current()?.version ?? null,
});
// In-flight requests and streams finish until SHUTDOWN_TIMEOUT_S (less a reserve for the
// usage flush), then whatever is still open is closed and the usage buffered goes out.
const exit = (code: number) => process.exit(code);
onShutdownSignals(
  (signal) => {
    log.info("router stopping", { signal, shutdown_timeout_s: env.SHUTDOWN_TIMEOUT_S });
    void shutDown({
      log,
      timeoutMs: env.SHUTDOWN_TIMEOUT_S * 1000,
      // At the deadline, streams still open end with an error event and [DONE] first.
      server: endingStreamsFirst(bunServer(server), { endStreams: router.endStreams, log }),
      after: [
        { name: "usage flush", run: () => router.stop() },
        {
          name: "upstream client",
          run: () => {
            upstream.close();
            pacer?.stop();
          },
        },
      ],
      exit,
    });
  },
  { log, exit },
);
