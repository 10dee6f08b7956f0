import { freePort, waitForHttp } from "../../devkit/net.ts";
import { bunBin, type Service, startProcess } from "../../devkit/proc.ts";
import type { RouteEntry, RouteSnapshot, UsageRecord } from "../../protocol/index.ts";

export const fleetToken = "fleet-secret-for-tests";

/**
 * A stand-in for the manager's router-facing API, run inside the test: `GET /v1/routes`
 * with ETag/304 and bearer FLEET_TOKEN, `POST /v1/usage` collecting records.
 */
export type StubManager = {
  url: string;
  usage: UsageRecord[];
  routeRequests: { status: number }[];
  usageRequests: number;
  set(routes: RouteEntry[], apiKeys?: RouteSnapshot["api_keys"]): void;
  /** While true the stub answers 503 to everything (a manager outage). */
  down: boolean;
  stop(): void;
};

export async function startStubManager(token = fleetToken): Promise<StubManager> {
  let snapshot: RouteSnapshot = { version: "0", routes: [], api_keys: [] };
  let version = 0;
  const stub: StubManager = {
    url: "",
    usage: [],
    routeRequests: [],
    usageRequests: 0,
    down: false,
    set(routes, apiKeys = []) {
      version++;
      snapshot = { version: String(version), routes, api_keys: apiKeys };
    },
    stop() {
      server.stop(true);
    },
  };
  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    async fetch(request) {
      const url = new URL(request.url);
      if (stub.down) return new Response("down", { status: 503 });
      if (request.headers.get("authorization") !== `Bearer ${token}`) {
        return Response.json({ error: { message: "bad token" } }, { status: 401 });
      }
      if (url.pathname === "/v1/routes" && request.method === "GET") {
        const etag = `"${snapshot.version}"`;
        if (request.headers.get("if-none-match") === etag) {
          stub.routeRequests.push({ status: 304 });
          return new Response(null, { status: 304, headers: { etag } });
        }
        stub.routeRequests.push({ status: 200 });
        return Response.json(snapshot, { headers: { etag } });
      }
      if (url.pathname === "/v1/usage" && request.method === "POST") {
        stub.usageRequests++;
        const body = (await request.json()) as { records: UsageRecord[] };
        stub.usage.push(...body.records);
        return Response.json({ accepted: body.records.length });
      }
      return new Response("not found", { status: 404 });
    },
  });
  stub.url = `http://127.0.0.1:${server.port}`;
  return stub;
}

export function route(options: {
  alias: string;
  workerId: string;
  url: string;
  ready?: boolean;
}): RouteEntry {
  return {
    alias: options.alias,
    model_name: `org/${options.alias}`,
    worker_id: options.workerId,
    worker_url: options.url,
    vllm_port: null,
    created_at: "2025-01-01T00:00:00.000Z",
    instance_id: `${options.workerId}-${options.alias}`,
    ready: options.ready ?? true,
  };
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

export type Router = Service & { url: string };

export function routerEnv(manager: StubManager, extra: Record<string, string> = {}) {
  return {
    MANAGER_URL: manager.url,
    FLEET_TOKEN: fleetToken,
    HOST: "127.0.0.1",
    ROUTES_REFRESH_MS: "200",
    USAGE_FLUSH_MS: "200",
    ...extra,
  };
}

/** A standalone router process: `bun router/main.ts` or `tsx router/node.ts`. */
export async function startRouter(
  runtime: "bun" | "node",
  manager: StubManager,
  extra: Record<string, string> = {},
): Promise<Router> {
  const port = await freePort();
  const argv =
    runtime === "bun"
      ? [bunBin, "router/main.ts"]
      : // tsx as a loader (not its CLI) keeps the router one process that stop() can reach.
        ["node", "--import", "tsx", "router/node.ts"];
  const service = startProcess(argv, { env: routerEnv(manager, { PORT: String(port), ...extra }) });
  const url = `http://127.0.0.1:${port}`;
  await service.waitFor("router listening", 30_000);
  await waitForHttp(`${url}/healthz`, { timeoutMs: 20_000 });
  return Object.assign(service, { url });
}

/** Reads one counter or gauge (summed over label sets matching `labels`) from Prometheus text. */
export function metricValue(
  text: string,
  name: string,
  labels: Record<string, string> = {},
): number {
  let total = 0;
  for (const line of text.split("\n")) {
    if (!line.startsWith(name)) continue;
    const match = /^([^{\s]+)(\{[^}]*\})?\s+(\S+)$/.exec(line);
    if (!match || match[1] !== name) continue;
    const labelText = match[2] ?? "";
    if (Object.entries(labels).every(([key, value]) => labelText.includes(`${key}="${value}"`))) {
      total += Number(match[3]);
    }
  }
  return total;
}

export async function sha256Hex(text: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return Buffer.from(digest).toString("hex");
}
