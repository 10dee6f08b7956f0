/** `bun manager/main.ts` (`npm start`): the manager with the router mounted, on Bun. */
import { parseEnv } from "../kit/env.ts";
import { createLogger } from "../kit/log.ts";
import { routerEnvSchema } from "../router/env.ts";
import { startGcPacer } from "../runtime/gc-pacer.ts";
import { createUpstreamFetch } from "../runtime/upstream-fetch.ts";
import { runManager } from "./server.ts";

// The mounted router reaches agents over the same client as a standalone Bun router, chosen
// by the same variables; the manager's own few calls to agents (launch, stop) use Bun's fetch.
const upstreamEnv = parseEnv(
  routerEnvSchema.pick({
    UPSTREAM_CLIENT: true,
    CONNECT_TIMEOUT_MS: true,
    BUN_CONFIG_MAX_HTTP_REQUESTS: true,
  }),
  process.env,
);
await runManager({
  env: process.env,
  runtime: `bun ${Bun.version}`,
  upstream: createUpstreamFetch({
    client: upstreamEnv.UPSTREAM_CLIENT,
    connectTimeoutMs: upstreamEnv.CONNECT_TIMEOUT_MS,
    fetchCap: upstreamEnv.BUN_CONFIG_MAX_HTTP_REQUESTS,
    log: createLogger({ service: "manager" }),
  }),
  startGcPacer: (growthBytes) => startGcPacer({ growthBytes }),
  serve: async ({ fetch, hostname, port }) => {
    const server = Bun.serve({ fetch, hostname, port, idleTimeout: 0 });
    return { port: server.port ?? port, stop: () => server.stop() };
  },
});
