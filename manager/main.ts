/** `bun manager/main.ts` (`npm start`): the manager with the router mounted, on Bun. */
import { getConnInfo } from "hono/bun";
import { infoFlags } from "../kit/cli-info.ts";
import { parseEnv } from "../kit/env.ts";
import { createLogger } from "../kit/log.ts";
import { bunServer } from "../kit/shutdown.ts";
import { routerEnvSchema } from "../router/env.ts";
import { serveBun } from "../runtime/bun-serve.ts";
import { startGcPacer } from "../runtime/gc-pacer.ts";
import { loadPgliteFiles } from "../runtime/pglite-files.ts";
import { createUpstreamFetch } from "../runtime/upstream-fetch.ts";
import { managerEnvSchema } from "./env.ts";
import { runManager } from "./server.ts";

const info = infoFlags(process.argv.slice(2), {
  name: "fleet-manager",
  summary:
    "The vllm-fleet manager with the router mounted (HOST:PORT): workers, models, routes, API keys and\nthe OpenAI API, on the embedded database under FLEET_DATA_DIR unless DATABASE_URL is set.\nIt also hands GPU hosts their agent: curl -fsSL http://HOST:PORT/install.sh | sh",
  schema: managerEnvSchema.extend(
    routerEnvSchema.pick({
      UPSTREAM_CLIENT: true,
      CONNECT_TIMEOUT_MS: true,
      BUN_CONFIG_MAX_HTTP_REQUESTS: true,
    }).shape,
  ),
  docs: "docs/manager.md and docs/operations.md",
  runtime: `bun ${Bun.version}, ${process.platform}-${process.arch}`,
});
if (info) {
  console.log(info.text);
  process.exit(info.exitCode);
}

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
  pgliteFiles: loadPgliteFiles,
  clientAddress: (c) => getConnInfo(c).remote.address,
  server: (limits, config) => {
    // The manager's own handlers may wait on an agent (AGENT_TIMEOUT_S) before they write a
    // byte; the mounted router holds its requests' timer itself (runtime/bun-serve.ts).
    const serving = serveBun({
      limits,
      log: createLogger({ service: "manager" }),
      busyS: Math.min(255, Math.max(limits.keepAliveS, Math.ceil(config.agentTimeoutS) + 5)),
    });
    return {
      idleTimer: serving.idleTimer,
      serve: async ({ fetch, hostname, port }) => {
        const server = serving.listen({ fetch, hostname, port });
        return { port: server.port ?? port, server: bunServer(server) };
      },
    };
  },
});
