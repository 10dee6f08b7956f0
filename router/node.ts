/**
 * Standalone router on Node: `tsx router/node.ts` (npm run router:node). Same app as the
 * Bun entry; outbound HTTP goes through an undici Agent so the connect timeout is real and
 * Node's default 5-minute headers/body timeouts do not cut off queued vLLM requests.
 */
import { serve } from "@hono/node-server";
import { getConnInfo } from "@hono/node-server/conninfo";
import { Agent, fetch as undiciFetch } from "undici";
import { clientLimitsFromEnv } from "../kit/client-limits.ts";
import { createLogger } from "../kit/log.ts";
import { answerClientError, nodeServerOptions } from "../runtime/node-serve.ts";
import type { FetchLike } from "./app.ts";
import { loadRouterEnvOrExit } from "./env.ts";
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

let stopping = false;
const shutdown = async (signal: string) => {
  if (stopping) return;
  stopping = true;
  log.info("router stopping", { signal });
  const closed = new Promise<void>((resolve) => server.close(() => resolve()));
  await Promise.race([closed, new Promise((resolve) => setTimeout(resolve, 10_000))]);
  await Promise.race([router.stop(), new Promise((resolve) => setTimeout(resolve, 5000))]);
  process.exit(0);
};
process.on("SIGTERM", () => void shutdown("SIGTERM"));
process.on("SIGINT", () => void shutdown("SIGINT"));
