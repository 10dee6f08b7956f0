/**
 * Standalone router on Bun: `bun router/main.ts` (npm run router). Reads routes from the
 * manager (MANAGER_URL, ROUTER_TOKEN) and sends usage back in batches.
 */
import { getConnInfo } from "hono/bun";
import { clientLimitsFromEnv } from "../kit/client-limits.ts";
import { createLogger } from "../kit/log.ts";
import { serveBun } from "../runtime/bun-serve.ts";
import { startGcPacer } from "../runtime/gc-pacer.ts";
import { createUpstreamFetch } from "../runtime/upstream-fetch.ts";
import { loadRouterEnvOrExit } from "./env.ts";
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
const serving = serveBun({ limits });
const router = createStandaloneRouter({
  env,
  log,
  fetch: upstream.fetch,
  streamFetch: upstream.streamFetch,
  clientAddress: (c) => getConnInfo(c).remote.address,
  idleTimer: serving.idleTimer,
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
if (env.HEADER_TIMEOUT_S !== 10) {
  log.warn(
    "HEADER_TIMEOUT_S is not used on Bun: Bun closes a connection whose headers take about 10 s",
    {
      header_timeout_s: env.HEADER_TIMEOUT_S,
    },
  );
}

let stopping = false;
const shutdown = async (signal: string) => {
  if (stopping) return;
  stopping = true;
  log.info("router stopping", { signal });
  // In-flight streams get a short grace, then usage still buffered goes to the manager.
  await Promise.race([server.stop(false), Bun.sleep(10_000)]);
  await Promise.race([router.stop(), Bun.sleep(5000)]);
  upstream.close();
  pacer?.stop();
  process.exit(0);
};
process.on("SIGTERM", () => void shutdown("SIGTERM"));
process.on("SIGINT", () => void shutdown("SIGINT"));
