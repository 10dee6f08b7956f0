/**
 * Standalone router on Node: `tsx router/node.ts` (npm run router:node). Same app as the
 * Bun entry; outbound HTTP goes through an undici Agent so the connect timeout is real and
 * Node's default 5-minute headers/body timeouts do not cut off queued vLLM requests.
 */
import type { Server } from "node:http";
import { serve } from "@hono/node-server";
import { getConnInfo } from "@hono/node-server/conninfo";
import { Agent, fetch as undiciFetch } from "undici";
import { clientLimitsFromEnv } from "../kit/client-limits.ts";
import { createLogger } from "../kit/log.ts";
import { nodeServer, onShutdownSignals, shutDown } from "../kit/shutdown.ts";
import { answerClientError, nodeServerOptions } from "../runtime/node-serve.ts";
import type { FetchLike } from "./app.ts";
import { loadRouterEnvOrExit } from "./env.ts";
import { endingStreamsFirst } from "./open-streams.ts";
import { openUsageSpool } from "./spool.ts";
import { createStandaloneRouter } from "./standalone.ts";

const env = loadRouterEnvOrExit(process.env);
const log = createLogger({ service: "router", level: env.LOG_LEVEL });
const dispatcher = new Agent({
  connect: { timeout: env.CONNECT_TIMEOUT_MS },
  // The app enforces first-byte and idle timeouts itself; these are only backstops.
  headersTimeout: env.FIRST_BYTE_TIMEOUT_MS + 60_000,
  bodyTimeout: env.IDLE_TIMEOUT_MS + 60_000,
  keepAliveTimeout: 30_000,
  connections: 1024,
});
const nodeFetch: FetchLike = (input, init) =>
  undiciFetch(input as Parameters<typeof undiciFetch>[0], {
    ...(init as Parameters<typeof undiciFetch>[1]),
    dispatcher,
  }) as unknown as Promise<Response>;

const router = createStandaloneRouter({
  env,
  log,
  fetch: nodeFetch,
  clientAddress: (c) => getConnInfo(c).remote.address,
  usageSpool: openUsageSpool(env, log),
});
await router.start();

const server = serve(
  {
    fetch: router.app.fetch,
    hostname: env.HOST,
    port: env.PORT,
    serverOptions: nodeServerOptions(clientLimitsFromEnv(env)),
  },
  (info) => {
    log.info(`router listening on http://${info.address}:${info.port}`, {
      manager_url: env.MANAGER_URL,
      routes_version: router.routes.current()?.version ?? null,
      runtime: `node ${process.version}`,
    });
  },
);
server.on("clientError", answerClientError);

// As on Bun (router/main.ts): in-flight requests finish until SHUTDOWN_TIMEOUT_S, less a
// reserve for the usage flush; then idle keep-alives and open streams are closed.
const exit = (code: number) => process.exit(code);
onShutdownSignals(
  (signal) => {
    log.info("router stopping", { signal, shutdown_timeout_s: env.SHUTDOWN_TIMEOUT_S });
    void shutDown({
      log,
      timeoutMs: env.SHUTDOWN_TIMEOUT_S * 1000,
      // At the deadline, streams still open end with an error event and [DONE] first.
      server: endingStreamsFirst(nodeServer(server as Server), {
        endStreams: router.endStreams,
        log,
      }),
      after: [
        { name: "usage flush", run: () => router.stop() },
        { name: "upstream client", run: () => dispatcher.destroy() },
      ],
      exit,
    });
  },
  { log, exit },
);
