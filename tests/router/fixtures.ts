import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Server } from "bun";
import { sql } from "drizzle-orm";
import type { OpenTestDb } from "../../devkit/db.ts";
import { freePort, waitForHttp } from "../../devkit/net.ts";
import { bunBin, type Service, startProcess } from "../../devkit/proc.ts";
import type { ModelInfo, RoutingPolicy } from "../../protocol/index.ts";
import {
  ADMIN,
  FLEET,
  gpu,
  registration,
  type StubAgent,
  stubAgent,
  type TestManager,
  testManager,
} from "../manager/helpers.ts";

/** The test manager's FLEET_TOKEN, the join token: it opens nothing on an agent. */
export const fleetToken = FLEET;

/**
 * The real manager app (`createApp` over the file's database, emptied first), listening on a
 * loopback port so router processes can poll it and post usage to it. `stop()` is an outage
 * (the listener goes away); `resume()` listens again on the same port.
 */
export type ServedManager = TestManager & {
  url: string;
  stop(): void;
  resume(): void;
  /** Stops listening, the stub agents and the app; the database stays for the next test. */
  close(): Promise<void>;
  /** The manager's request_logs, oldest first: what routers delivered. */
  usage(): Promise<UsageRow[]>;
  /** Stub agents for the workers `addReplicas` registered, by worker id. */
  agents: Map<string, StubAgent>;
};

export type UsageRow = {
  api_key_id: string | null;
  alias: string;
  worker_id: string | null;
  status: number;
  latency_ms: number;
  ttft_ms: number | null;
  prompt_tokens: number | null;
  completion_tokens: number | null;
  stream: boolean;
};

export async function serveManager(
  db: OpenTestDb,
  config: Parameters<typeof testManager>[0] = {},
): Promise<ServedManager> {
  // Its workers' public URLs are simulators standing in for whole workers: their /health is
  // vLLM's, not an agent's, so probes would find every routed path unreachable and take the
  // routes out. Probes stay off unless a test turns them on.
  const t = await testManager({
    ...config,
    config: { probeIntervalS: 0, ...config.config },
    db,
  });
  const listen = (port: number): Server<undefined> =>
    Bun.serve({ hostname: "127.0.0.1", port, fetch: (request) => t.manager.app.fetch(request) });
  let server: Server<undefined> | undefined = listen(0);
  const port = server.port ?? 0;
  const agents = new Map<string, StubAgent>();
  const closeApp = t.close;
  return Object.assign(t, {
    url: `http://127.0.0.1:${port}`,
    agents,
    stop() {
      server?.stop(true);
      server = undefined;
    },
    resume() {
      server ??= listen(port);
    },
    async close() {
      server?.stop(true);
      server = undefined;
      for (const agent of agents.values()) agent.stop();
      await closeApp();
    },
    async usage() {
      return t.db.query<UsageRow>(
        sql`select api_key_id, alias, worker_id, status, latency_ms, ttft_ms, prompt_tokens,
                   completion_tokens, stream
            from request_logs order by id`,
      );
    },
  });
}

/**
 * Puts `alias` on `replicas` the way a fleet does, through the manager's API: each replica is
 * a worker that registers with one GPU (its management API is a stub agent; its public URL,
 * the one routes carry, is `url`: a simulator or a test server answering
 * `/proxy/{alias}/v1/*`), the model is placed on all of them, and their heartbeats report it
 * ready unless `ready` is false. At the default gpu_memory_utilization (0.9) a worker holds
 * one alias, so each alias lands on exactly the workers registered for it.
 */
export async function addReplicas(
  manager: ServedManager,
  alias: string,
  replicas: { workerId: string; url: string }[],
  options: { ready?: boolean; routing?: RoutingPolicy } = {},
): Promise<ModelInfo> {
  for (const replica of replicas) {
    const agent = stubAgent();
    manager.agents.set(replica.workerId, agent);
    const registered = await manager.register(
      registration(replica.workerId, agent.url, [gpu(0)], { public_worker_url: replica.url }),
      agent,
    );
    if (registered.status !== 200) {
      throw new Error(
        `register ${replica.workerId}: ${registered.status} ${JSON.stringify(registered.body)}`,
      );
    }
  }
  const placed = await manager.json<ModelInfo>("POST", "/v1/models/register", {
    body: {
      alias,
      model_name: `org/${alias}`,
      replicas: replicas.length,
      placement: "spread",
      ...(options.routing ? { routing: options.routing } : {}),
    },
  });
  const placedOn = placed.body.routes?.map((r) => r.worker_id).sort();
  const wanted = replicas.map((r) => r.workerId).sort();
  if (placed.status !== 201 || JSON.stringify(placedOn) !== JSON.stringify(wanted)) {
    throw new Error(`placing ${alias}: ${placed.status} ${JSON.stringify(placed.body)}`);
  }
  if (options.ready !== false) {
    for (const replica of replicas) await heartbeat(manager, replica.workerId, alias);
  }
  return placed.body;
}

/** The worker's heartbeat, reporting `alias` ready (as its agent would once vLLM answers). */
export async function heartbeat(
  manager: ServedManager,
  workerId: string,
  alias?: string,
): Promise<void> {
  const agent = manager.agents.get(workerId);
  if (!agent) throw new Error(`no agent for ${workerId}`);
  if (alias) agent.markReady(alias);
  const response = await manager.heartbeat(workerId, {
    gpu_info: { gpus: [gpu(0)], warning: null },
    instances: agent.reports(),
  });
  if (response.status !== 200) throw new Error(`heartbeat ${workerId}: ${response.status}`);
}

export type Sim = Service & { url: string; port: number };

/** The engine simulator standing in for a whole worker: it answers /proxy/{name}/v1/*. */
export async function startSim(options: {
  names: string[];
  ttftMs?: number;
  itlMs?: number;
  extra?: string[];
  env?: Record<string, string>;
}): Promise<Sim> {
  const port = await freePort();
  const argv = [
    bunBin,
    "agent/sim/main.ts",
    "serve",
    `org/${options.names[0]}`,
    "--host",
    "127.0.0.1",
    "--port",
    String(port),
    "--served-model-name",
    ...options.names,
    "--time-to-first-token",
    String(options.ttftMs ?? 5),
    "--inter-token-latency",
    String(options.itlMs ?? 2),
    ...(options.extra ?? []),
  ];
  const service = startProcess(argv, { env: options.env });
  const url = `http://127.0.0.1:${port}`;
  await waitForHttp(`${url}/health`, { timeoutMs: 20_000 });
  return Object.assign(service, { url, port });
}

export type Router = Service & {
  url: string;
  /** The router credential it runs with (ROUTER_TOKEN). */
  credential: RouterCredential;
  /** Its /metrics page and the METRICS_TOKEN it takes (devkit/metrics.ts `scrape`). */
  metrics: { url: string; token: string };
};

export type RouterCredential = { id: string; name: string; token: string };

/** `POST {managerUrl}/v1/routers` with the test ADMIN_TOKEN: what `fleet routers create` does. */
export async function createRouterCredential(
  managerUrl: string,
  name = `router-${crypto.randomUUID().slice(0, 8)}`,
): Promise<RouterCredential> {
  const response = await fetch(`${managerUrl}/v1/routers`, {
    method: "POST",
    headers: { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" },
    body: JSON.stringify({ name }),
  });
  if (response.status !== 201) {
    throw new Error(`router credential: ${response.status} ${await response.text()}`);
  }
  return (await response.json()) as RouterCredential;
}

/** `DELETE {managerUrl}/v1/routers/{id}` with the test ADMIN_TOKEN (`fleet routers revoke`). */
export async function revokeRouterCredential(managerUrl: string, id: string): Promise<void> {
  const response = await fetch(`${managerUrl}/v1/routers/${id}`, {
    method: "DELETE",
    headers: { authorization: `Bearer ${ADMIN}` },
  });
  if (response.status !== 200) {
    throw new Error(`revoke ${id}: ${response.status} ${await response.text()}`);
  }
}

/**
 * A standalone router's environment: no FLEET_TOKEN (agents get each route's own credential;
 * the manager takes only ROUTER_TOKEN, which `startRouter` adds), and a usage spool of its
 * own (`extra.USAGE_SPOOL_DIR` for one that outlives the process across a restart).
 */
export function routerEnv(managerUrl: string, extra: Record<string, string> = {}) {
  return {
    MANAGER_URL: managerUrl,
    HOST: "127.0.0.1",
    ROUTES_REFRESH_MS: "200",
    USAGE_FLUSH_MS: "200",
    // What `npm run router` sets: Bun reads its in-flight fetch cap only at startup, and
    // UPSTREAM_CLIENT=auto uses Bun's fetch only when it is set.
    BUN_CONFIG_MAX_HTTP_REQUESTS: "65000",
    USAGE_SPOOL_DIR: mkdtempSync(join(tmpdir(), "fleet-router-spool-")),
    ...extra,
  };
}

export function routerArgv(runtime: "bun" | "node"): string[] {
  return runtime === "bun"
    ? [bunBin, "router/main.ts"]
    : // tsx as a loader (not its CLI) keeps the router one process that stop() can reach.
      ["node", "--import", "tsx", "router/node.ts"];
}

/**
 * A standalone router process, `bun router/main.ts` or `tsx router/node.ts`, with a router
 * credential created for it on the manager (or `credential`, when given).
 */
export async function startRouter(
  runtime: "bun" | "node",
  managerUrl: string,
  extra: Record<string, string> = {},
  credential?: RouterCredential,
): Promise<Router> {
  const port = await freePort();
  const held = credential ?? (await createRouterCredential(managerUrl));
  const metricsToken = extra.METRICS_TOKEN ?? `metrics-${crypto.randomUUID()}`;
  const service = startProcess(routerArgv(runtime), {
    env: routerEnv(managerUrl, {
      PORT: String(port),
      ROUTER_TOKEN: held.token,
      METRICS_TOKEN: metricsToken,
      ...extra,
    }),
  });
  const url = `http://127.0.0.1:${port}`;
  await service.waitFor("router listening", 30_000);
  await waitForHttp(`${url}/healthz`, { timeoutMs: 20_000 });
  return Object.assign(service, {
    url,
    credential: held,
    metrics: { url: `${url}/metrics`, token: metricsToken },
  });
}
