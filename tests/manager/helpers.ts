import { afterAll } from "bun:test";
import type { Server } from "bun";
import { sql } from "drizzle-orm";
import { type DbTarget, type OpenTestDb, openFreshDb } from "../../devkit/db.ts";
import type { Clock } from "../../kit/clock.ts";
import type { FetchLike } from "../../kit/fetch.ts";
import { type Logger, silentLogger as silentLog } from "../../kit/log.ts";
import { isLoopbackHost } from "../../kit/net.ts";
import { createApp, type Manager } from "../../manager/app.ts";
import { defaultConfig, type ManagerConfig } from "../../manager/env.ts";
import type {
  Gpu,
  Heartbeat,
  InstanceReport,
  InstanceSpec,
  WorkerCredentials,
  WorkerRegistrationInput,
} from "../../protocol/index.ts";

export type TestManager = {
  manager: Manager;
  db: OpenTestDb;
  call(
    method: string,
    path: string,
    options?: { body?: unknown; token?: string | null; headers?: Record<string, string> },
  ): Promise<Response>;
  json<T = Record<string, unknown>>(
    method: string,
    path: string,
    options?: { body?: unknown; token?: string | null },
  ): Promise<{ status: number; body: T }>;
  /** The credentials each worker received when it joined through `register` (or a rotation). */
  credentials: Map<string, WorkerCredentials>;
  /**
   * `POST /v1/workers/register` as an agent does it: with the worker's own credential once it
   * has one, else the join token. Keeps what the reply issues and gives `agent` (a stub) its
   * agent credential, so the manager's calls to it pass.
   */
  register<T = Record<string, unknown>>(
    body: WorkerRegistrationInput,
    agent?: { token: string | null },
  ): Promise<{ status: number; body: T }>;
  /** `POST /v1/workers/{id}/heartbeat` with that worker's credential. */
  heartbeat<T = Record<string, unknown>>(
    workerId: string,
    body: Heartbeat,
  ): Promise<{ status: number; body: T }>;
  close(): Promise<void>;
};

export const ADMIN = "admin-token-for-tests";
export const FLEET = "fleet-token-for-tests";

/** A manager app on a fresh database, driven with `app.request` (no listener). */
export async function testManager(
  options: {
    config?: Partial<ManagerConfig>;
    target?: DbTarget;
    clock?: Clock;
    db?: OpenTestDb;
    /** Silent unless given. */
    log?: Logger;
  } = {},
): Promise<TestManager> {
  const shared = options.db;
  if (shared) await resetDb(shared);
  const db = shared ?? (await openFreshDb(options.target));
  const config = defaultConfig({
    adminToken: ADMIN,
    fleetToken: FLEET,
    agentTimeoutS: 3,
    ...options.config,
  });
  const manager = createApp({
    db,
    config,
    fetch: loopbackOnlyFetch,
    log: options.log ?? silentLog,
    ...(options.clock ? { clock: options.clock } : {}),
  });
  await manager.start();
  const call: TestManager["call"] = (method, path, opts = {}) => {
    const headers: Record<string, string> = { ...opts.headers };
    const token = opts.token === undefined ? ADMIN : opts.token;
    if (token) headers.authorization = `Bearer ${token}`;
    let body: string | undefined;
    if (opts.body !== undefined) {
      headers["content-type"] = "application/json";
      body = typeof opts.body === "string" ? opts.body : JSON.stringify(opts.body);
    }
    return Promise.resolve(manager.app.request(path, { method, headers, body }));
  };
  const json = async <T>(
    method: string,
    path: string,
    opts: { body?: unknown; token?: string | null } = {},
  ) => {
    const response = await call(method, path, opts);
    const text = await response.text();
    return { status: response.status, body: (text ? JSON.parse(text) : null) as T };
  };
  const credentials = new Map<string, WorkerCredentials>();
  return {
    manager,
    db,
    call,
    json,
    credentials,
    async register<T>(body: WorkerRegistrationInput, agent?: { token: string | null }) {
      const held = credentials.get(body.worker_id)?.worker_credential;
      const reply = await json<T & { credentials?: WorkerCredentials }>(
        "POST",
        "/v1/workers/register",
        { token: held ?? config.fleetToken ?? null, body },
      );
      if (reply.body?.credentials) credentials.set(body.worker_id, reply.body.credentials);
      const issued = credentials.get(body.worker_id);
      if (agent && issued) agent.token = issued.agent_token;
      return reply;
    },
    heartbeat<T>(workerId: string, body: Heartbeat) {
      return json<T>("POST", `/v1/workers/${encodeURIComponent(workerId)}/heartbeat`, {
        token: credentials.get(workerId)?.worker_credential ?? null,
        body,
      });
    },
    async close() {
      await manager.close();
      if (!shared) await db.destroy();
    },
  };
}

/**
 * A router credential created through the admin API, as `fleet routers create NAME` does:
 * what a standalone router presents as ROUTER_TOKEN.
 */
export async function createRouterToken(
  t: Pick<TestManager, "json">,
  name = `router-${crypto.randomUUID().slice(0, 8)}`,
): Promise<string> {
  const created = await t.json<{ token?: string }>("POST", "/v1/routers", { body: { name } });
  if (created.status !== 201 || !created.body.token) {
    throw new Error(`router credential ${name}: ${created.status} ${JSON.stringify(created.body)}`);
  }
  return created.body.token;
}

/**
 * The test manager's outbound fetch: loopback only. Tests register workers at made-up (and
 * some real) host names, which the manager probes at once; those probes fail here, on this
 * host, instead of leaving it.
 */
const loopbackOnlyFetch: FetchLike = (input, init) => {
  const url = new URL(input instanceof Request ? input.url : input);
  if (!isLoopbackHost(url.hostname)) {
    return Promise.reject(new TypeError(`tests dial loopback only, not ${url.host}`));
  }
  return fetch(input, init);
};

/**
 * Empties a test database between tests (much cheaper than a new one); statement triggers
 * bump the route version, like every other write.
 */
export async function resetDb(db: OpenTestDb): Promise<void> {
  await db.query(
    sql`truncate workers, gpus, models, instances, routes, api_keys, routers, request_logs, usage_dead_letters, events`,
  );
}

export function gpu(index: number, totalMib = 81_920, freeMib: number | null = totalMib): Gpu {
  return {
    index,
    uuid: `GPU-${index}`,
    name: "NVIDIA A100-SXM4-80GB",
    memory_total_mib: totalMib,
    memory_used_mib: freeMib === null ? null : totalMib - freeMib,
    memory_free_mib: freeMib,
    utilization_pct: 0,
  };
}

export function registration(
  workerId: string,
  workerUrl: string,
  gpus: Gpu[],
  extra: Partial<WorkerRegistrationInput> = {},
): WorkerRegistrationInput {
  return {
    worker_id: workerId,
    worker_url: workerUrl,
    public_worker_url: null,
    gpu_info: { gpus, warning: null },
    instances: [],
    agent_version: "test",
    ...extra,
  };
}

/**
 * A stand-in agent over real HTTP for handler tests: accepts launches (202 with the
 * instance, as the agent does), lists and stops them. `refuse` makes launches fail. Once it
 * has an agent credential (`token`, set when its worker joins) it takes that alone, as the
 * agent does.
 */
export type StubAgent = {
  url: string;
  token: string | null;
  /** The Authorization header of every call it received. */
  authorizations: (string | null)[];
  launches: InstanceSpec[];
  stops: string[];
  /** The aliases it was asked to restart (`POST /v1/instances/{alias}/restart`). */
  restarts: string[];
  /** Answer restarts as an agent older than them does: 404 `not_found` (no such endpoint). */
  oldAgent: boolean;
  instances: Map<string, InstanceReport>;
  refuse: { status: number; message: string } | null;
  /**
   * The worker id its open `/health` names (what the manager's probes check); null answers
   * 401 there, as an agent the probes cannot confirm.
   */
  answersAs: string | null;
  /** The reports a heartbeat would carry. */
  reports(): InstanceReport[];
  markReady(alias: string): void;
  stop(): void;
};

let nextPid = 40_000;

/** Hands out stub agents, each stopped after the calling file's tests (`afterAll`). */
export function stubAgentPool(): () => StubAgent {
  const agents: StubAgent[] = [];
  afterAll(() => {
    for (const a of agents) a.stop();
  });
  return () => {
    const a = stubAgent();
    agents.push(a);
    return a;
  };
}

export function stubAgent(): StubAgent {
  const stub: Omit<StubAgent, "url" | "stop"> = {
    token: null,
    authorizations: [],
    launches: [],
    stops: [],
    restarts: [],
    oldAgent: false,
    instances: new Map(),
    refuse: null,
    answersAs: null,
    reports: () => [...stub.instances.values()],
    markReady(alias) {
      const instance = stub.instances.get(alias);
      if (instance) {
        instance.status = "ready";
        instance.ready_at = new Date().toISOString();
      }
    },
  };
  let port = 30_000;
  const server: Server<undefined> = Bun.serve({
    port: 0,
    hostname: "127.0.0.1",
    async fetch(request) {
      if (stub.answersAs && new URL(request.url).pathname === "/health") {
        // As the agent: `authenticated` only to a caller presenting its agent credential.
        const presented = request.headers.get("authorization");
        const authenticated = stub.token !== null && presented === `Bearer ${stub.token}`;
        return Response.json({
          status: "ok",
          worker_id: stub.answersAs,
          ...(authenticated ? { authenticated: true } : {}),
        });
      }
      const authorization = request.headers.get("authorization");
      stub.authorizations.push(authorization);
      if (stub.token !== null && authorization !== `Bearer ${stub.token}`) {
        return Response.json(
          {
            error: {
              message: "unauthorized",
              type: "authentication_error",
              param: null,
              code: "unauthorized",
            },
          },
          { status: 401 },
        );
      }
      const url = new URL(request.url);
      if (request.method === "POST" && url.pathname === "/v1/instances") {
        const spec = (await request.json()) as InstanceSpec;
        stub.launches.push(spec);
        if (stub.refuse) {
          return Response.json(
            {
              error: {
                message: stub.refuse.message,
                type: "invalid_request_error",
                param: null,
                code: "refused",
              },
            },
            { status: stub.refuse.status },
          );
        }
        if (stub.instances.has(spec.alias)) {
          return Response.json(
            { error: { message: "exists", type: "conflict_error", param: null, code: "conflict" } },
            { status: 409 },
          );
        }
        const now = new Date().toISOString();
        const report: InstanceReport = {
          alias: spec.alias,
          model_name: spec.model_name,
          status: "starting",
          port: port++,
          gpu_ids: spec.gpu_ids ?? [],
          pid: nextPid++,
          restarts: 0,
          last_error: null,
          started_at: now,
          ready_at: null,
          updated_at: now,
          spec,
        };
        stub.instances.set(spec.alias, report);
        return Response.json(report, { status: 202 });
      }
      if (request.method === "GET" && url.pathname === "/v1/instances") {
        return Response.json({ instances: stub.reports() });
      }
      const restart = /^\/v1\/instances\/([^/]+)\/restart$/.exec(url.pathname);
      if (request.method === "POST" && restart?.[1]) {
        // As the agent: a ready engine starts stopping (restarts counted), else 404 / 409.
        const alias = decodeURIComponent(restart[1]);
        stub.restarts.push(alias);
        if (stub.oldAgent) {
          return Response.json(
            {
              error: {
                message: "no such endpoint on the agent",
                type: "not_found_error",
                param: null,
                code: "not_found",
              },
            },
            { status: 404 },
          );
        }
        const instance = stub.instances.get(alias);
        const refusal = (status: number, code: string, message: string) =>
          Response.json(
            { error: { message, type: "invalid_request_error", param: "alias", code } },
            { status },
          );
        if (!instance)
          return refusal(404, "instance_not_found", `no instance ${alias} on this worker`);
        if (instance.status !== "ready") {
          return refusal(
            409,
            "conflict",
            `instance ${alias} is ${instance.status}: only a ready engine can be restarted`,
          );
        }
        instance.status = "stopping";
        instance.restarts += 1;
        return Response.json(instance, { status: 202 });
      }
      const match = /^\/v1\/instances\/([^/]+)$/.exec(url.pathname);
      if (request.method === "DELETE" && match?.[1]) {
        const alias = decodeURIComponent(match[1]);
        stub.stops.push(alias);
        const existed = stub.instances.delete(alias);
        return existed
          ? Response.json({ alias, status: "stopped" })
          : new Response(null, { status: 404 });
      }
      return new Response("not found", { status: 404 });
    },
  });
  // The same object, so that tests flipping `refuse` change what the server does.
  return Object.assign(stub, {
    url: `http://127.0.0.1:${server.port}`,
    stop: () => void server.stop(true),
  });
}

/** A clock tests move forward by hand (the sweep and backoff read it). */
export function manualClock(): Clock & { advance(ms: number): void } {
  let offset = 0;
  return {
    now: () => new Date(Date.now() + offset),
    advance(ms) {
      offset += ms;
    },
  };
}
