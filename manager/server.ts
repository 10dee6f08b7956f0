import { existsSync } from "node:fs";
import { hostname, networkInterfaces } from "node:os";
import { join } from "node:path";
import type { Context } from "hono";
import { type CreateDbOptions, createDb, pgliteExists } from "../db/index.ts";
import {
  type ClientIdleTimer,
  type ClientLimits,
  clientLimitsProblem,
} from "../kit/client-limits.ts";
import { parseEnv } from "../kit/env.ts";
import { describeError } from "../kit/errors.ts";
import { createLogger, type Logger } from "../kit/log.ts";
import { isLoopbackHost } from "../kit/net.ts";
import { type ClosingServer, onShutdownSignals, shutDown } from "../kit/shutdown.ts";
import { createApp as createRouterApp, type FetchLike } from "../router/app.ts";
import { endingStreamsFirst, OpenStreams } from "../router/open-streams.ts";
import { openFileSpool } from "../runtime/file-spool.ts";
import { defaultAgentBinary, fileAgentDownload } from "./agent-download.ts";
import { createApp, type FetchHandler, type Manager } from "./app.ts";
import {
  configFromEnv,
  exposureProblem,
  type ManagerConfig,
  type ManagerEnv,
  managerEnvSchema,
} from "./env.ts";
import { installLine } from "./install-line.ts";

const MiB = 1024 * 1024;

export type Serve = (options: {
  /** Called with the runtime's second argument too (Bun's server, Node's bindings). */
  fetch: (request: Request, env?: object) => Response | Promise<Response>;
  hostname: string;
  port: number;
}) => Promise<{ port: number; server: ClosingServer }>;

/**
 * The runtime's server for the client limits the env sets: how it listens, and (Bun) the
 * connection idle timer the mounted router holds while it serves a request.
 */
export type ServerFor = (
  limits: ClientLimits,
  config: ManagerConfig,
) => { serve: Serve; idleTimer?: ClientIdleTimer };

/**
 * Everything `main.ts` (Bun) and `node.ts` (Node) share: env, database, migrations, the app
 * with the router mounted, the tick timer, and a clean shutdown. Only the server differs.
 */
export async function runManager(options: {
  env: Record<string, string | undefined>;
  server: ServerFor;
  runtime: string;
  /** How the mounted router reaches agents (default: the runtime's `fetch` for both). */
  upstream?: { fetch: FetchLike; streamFetch: FetchLike };
  /** Bun: keeps relayed garbage from piling up (runtime/gc-pacer.ts); GC_GROWTH_MB sets it. */
  startGcPacer?: (growthBytes: number) => { stop(): void };
  /** Bun: PGlite's files from the executable or node_modules (runtime/pglite-files.ts). */
  pgliteFiles?: () => Promise<CreateDbOptions["pgliteFiles"]>;
  /** The client's address, for the mounted router's X-Forwarded-For (runtime-specific). */
  clientAddress?: (c: Context) => string | undefined;
}): Promise<void> {
  let env: ManagerEnv;
  try {
    env = parseEnv(managerEnvSchema, options.env);
  } catch (error) {
    console.error(`manager: ${describeError(error)}`);
    process.exit(1);
  }
  const log = createLogger({ service: "manager", level: env.LOG_LEVEL });
  const config = configFromEnv(env);
  const problem = exposureProblem(config) ?? clientLimitsProblem(env);
  if (problem) {
    console.error(`manager: refusing to start: ${problem}`);
    process.exit(1);
  }
  let db: Awaited<ReturnType<typeof createDb>>;
  const embedded = !env.DATABASE_URL && !env.FLEET_DATA_DIR.startsWith("memory://");
  if (embedded && !pgliteExists(env.FLEET_DATA_DIR)) {
    // initdb in WebAssembly: tens of seconds on a small machine, with nothing else to show.
    console.log(
      `manager: creating the embedded database in ${env.FLEET_DATA_DIR} (first start only; this takes up to a minute)...`,
    );
  }
  try {
    db = await createDb({
      url: env.DATABASE_URL,
      dataDir: env.FLEET_DATA_DIR,
      pgliteFiles: env.DATABASE_URL ? undefined : await options.pgliteFiles?.(),
    });
    await db.migrate();
  } catch (error) {
    console.error(`manager: ${describeError(error)}`);
    process.exit(1);
  }
  // An in-memory database keeps nothing across a restart, so neither does its default spool.
  const spoolDir =
    env.USAGE_SPOOL_DIR ??
    (env.FLEET_DATA_DIR.startsWith("memory://")
      ? undefined
      : join(env.FLEET_DATA_DIR, "usage-spool"));
  let usageSpool: ReturnType<typeof openFileSpool> | undefined;
  try {
    usageSpool =
      spoolDir && env.USAGE_SPOOL_MAX_MB > 0
        ? openFileSpool({ dir: spoolDir, maxBytes: env.USAGE_SPOOL_MAX_MB * MiB, log })
        : undefined;
  } catch (error) {
    console.error(`manager: USAGE_SPOOL_DIR ${spoolDir} cannot be used: ${describeError(error)}`);
    process.exit(1);
  }
  const agentBinary = env.AGENT_BINARY ?? defaultAgentBinary();
  const manager = createApp({
    db,
    config,
    log,
    usageSpool,
    agentDownload: fileAgentDownload(agentBinary, log),
  });
  const streams = new OpenStreams();
  const { serve, idleTimer } = options.server(config.clientLimits, config);
  manager.mount(
    mountRouter(
      manager,
      config,
      { upstream: options.upstream, clientAddress: options.clientAddress, idleTimer, streams },
      log,
    ),
  );
  await manager.start();
  const server = await serve({
    fetch: manager.app.fetch,
    hostname: config.host,
    port: config.port,
  });
  manager.listening({ port: server.port, localAddresses: localAddresses() });

  const open = !config.adminToken || !config.fleetToken;
  const base = `http://${config.host.includes(":") ? `[${config.host}]` : config.host}:${server.port}`;
  console.log(
    `manager listening on ${base} (${options.runtime}, ${db.kind} at ${db.location}, router mounted)`,
  );
  // stdout, not the log: the line carries the join token when stdout is a terminal.
  console.log(
    startupHelp(base, config, {
      showToken: process.stdout.isTTY === true,
      agentAvailable: existsSync(agentBinary) || existsSync(`${agentBinary}.gz`),
    }),
  );
  if (open && isLoopbackHost(config.host)) {
    const which = [!config.adminToken && "ADMIN_TOKEN", !config.fleetToken && "FLEET_TOKEN"]
      .filter(Boolean)
      .join(" and ");
    console.log(
      `manager running OPEN on loopback: ${which} not set, so those endpoints take no token`,
    );
  }

  const pacer =
    env.GC_GROWTH_MB > 0 ? options.startGcPacer?.(env.GC_GROWTH_MB * 1024 * 1024) : undefined;

  let ticking = false;
  const timer = setInterval(async () => {
    if (ticking) return;
    ticking = true;
    try {
      await manager.tick();
    } catch (error) {
      log.error("tick failed", { error: describeError(error) });
    } finally {
      ticking = false;
    }
  }, config.reconcileIntervalS * 1000);

  // Within SHUTDOWN_TIMEOUT_S whatever is open: idle keep-alive clients and streams that
  // never end are closed at the deadline, and a step that hangs cannot outlive it.
  const exit = (code: number) => process.exit(code);
  onShutdownSignals(
    (signal) => {
      log.info("manager stopping", { signal, shutdown_timeout_s: env.SHUTDOWN_TIMEOUT_S });
      clearInterval(timer);
      pacer?.stop();
      void shutDown({
        log,
        timeoutMs: env.SHUTDOWN_TIMEOUT_S * 1000,
        // At the deadline, the mounted router's open streams end with an error event and
        // [DONE] first.
        server: endingStreamsFirst(server.server, { endStreams: () => streams.endAll(), log }),
        after: [
          // The usage the mounted router recorded until the end, then the database.
          { name: "manager loops and usage", run: () => manager.close() },
          { name: "database", run: () => db.close() },
        ],
        exit: (code) => {
          log.info("manager stopped", { code });
          exit(code);
        },
      });
    },
    { log, exit },
  );
}

/**
 * The router (router/app.ts) in this process, reading the manager's snapshot and usage sink;
 * the manager hands it the routes of router/routes.ts by name.
 */
function mountRouter(
  manager: Manager,
  config: ManagerConfig,
  runtime: {
    upstream: { fetch: FetchLike; streamFetch: FetchLike } | undefined;
    clientAddress: ((c: Context) => string | undefined) | undefined;
    idleTimer: ClientIdleTimer | undefined;
    /** What a shutdown ends cleanly (router/open-streams.ts). */
    streams: OpenStreams;
  },
  log: Logger,
): FetchHandler {
  const { clientAddress } = runtime;
  return createRouterApp({
    fetch: runtime.upstream?.fetch,
    streamFetch: runtime.upstream?.streamFetch,
    // X-Forwarded-For from the connection's peer, as a standalone router sends it; a request
    // that came without the server's bindings (an in-process call) sends none.
    clientAddress: clientAddress
      ? (c) => {
          try {
            return clientAddress(c);
          } catch {
            return undefined;
          }
        }
      : undefined,
    routes: manager.routes,
    usage: manager.usage,
    metrics: manager.metrics,
    // Beyond loopback the OpenAI surface needs an API key even before the first key exists.
    requireApiKey: !isLoopbackHost(config.host),
    log: log.child("router"),
    maxBodyBytes: config.clientLimits.maxBodyBytes,
    bodyTimeoutMs: config.clientLimits.bodyTimeoutMs,
    maxBodyMemoryBytes: config.clientLimits.maxBodyMemoryBytes,
    idleTimer: runtime.idleTimer,
    cors: config.cors,
    timeouts: {
      firstByteProbeMs: config.firstByteProbe.afterMs,
      probeTimeoutMs: config.firstByteProbe.timeoutMs,
    },
    streams: runtime.streams,
  });
}

/** This host's interface addresses and name: what a worker on a wildcard-bound manager may not advertise. */
function localAddresses(): string[] {
  const addresses = Object.values(networkInterfaces()).flatMap((list) =>
    (list ?? []).map((entry) => entry.address),
  );
  return [...addresses, hostname()];
}

/**
 * What a newcomer needs after `npm start`: where things are and how to add a GPU host, first
 * as the one line that installs the agent executable, then from a checkout. On loopback only
 * agents on this machine can reach the manager; beyond it, a host is reached through its port
 * mapping (PUBLIC_URL) or at an address the manager dials (WORKER_URL): the agent's default
 * worker URL is its own loopback, which no other host can dial. The join token is written out
 * only when `showToken` (stdout is a terminal): this text goes to stdout, never the log, but
 * stdout may be a file.
 */
export function startupHelp(
  base: string,
  config: Pick<ManagerConfig, "host" | "fleetToken"> & { publicUrl?: string | undefined },
  options: { showToken?: boolean; agentAvailable?: boolean } = {},
): string {
  const token = config.fleetToken ? " FLEET_TOKEN=<the same token>" : "";
  const sim = "VLLM_BIN=agent/sim/vllm PATH=agent/sim:$PATH";
  const loopback = isLoopbackHost(config.host);
  const reach = loopback ? base : base.replace(config.host, "<this-host>");
  const line = installLine({
    base: config.publicUrl ?? reach,
    fleetToken: config.fleetToken,
    hideToken: !options.showToken,
    loopback,
  });
  const notes = [
    ...(options.agentAvailable === false
      ? ["    (build the agent it installs first: npm run build:agent)"]
      : []),
    ...(config.fleetToken && !options.showToken
      ? [
          "    (the join token is written out only on a terminal; `fleet workers add NAME` prints the whole line)",
        ]
      : []),
  ];
  if (loopback) {
    return [
      `  OpenAI API   ${base}/v1  (chat/completions, completions, embeddings, responses, rerank, score, models)`,
      `  API docs     ${base}/docs  (OpenAPI: ${base}/openapi.json)`,
      "  add a GPU host on this machine (for other hosts, start with HOST=0.0.0.0 and both tokens):",
      `    ${line}`,
      ...notes,
      "  or from this checkout:",
      `    MANAGER_URL=${base}${token} WORKER_HOST=127.0.0.1 npm run agent`,
      "  no GPU? run the agent on the simulator kit:",
      `    MANAGER_URL=${base}${token} WORKER_HOST=127.0.0.1 ${sim} npm run agent`,
    ].join("\n");
  }
  return [
    `  OpenAI API   ${reach}/v1  (chat/completions, completions, embeddings, responses, rerank, score, models)`,
    `  API docs     ${reach}/docs  (OpenAPI: ${reach}/openapi.json)`,
    "  add a GPU host: on that host, through its port mapping (WORKER_URL=http://<its address>:6006 instead on this network):",
    `    ${line}`,
    ...notes,
    "  or, in a checkout of vllm-fleet on that host, through its port mapping:",
    `    MANAGER_URL=${reach}${token} PUBLIC_URL=<its port-forwarding URL> npm run agent`,
    "  or, with no port mapping, at an address this manager can dial:",
    `    MANAGER_URL=${reach}${token} WORKER_URL=http://<its address>:6006 npm run agent`,
    `  no GPU? add ${sim} to run the agent on the simulator kit`,
    "  then `npm run fleet -- workers ls` shows which path reaches each host",
  ].join("\n");
}
