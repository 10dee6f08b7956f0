import { Hono } from "hono";
import { z } from "zod";
import { AppError, errorResponse, parseWith, renderError } from "../kit/errors.ts";
import { loopbackHostsOnly } from "../kit/host-check.ts";
import type { Logger } from "../kit/log.ts";
import type { BoundSeries, Metrics } from "../kit/metrics.ts";
import {
  aliasSchema,
  type GpuInfo,
  type InstanceSpec,
  instanceSpecSchema,
  type LogLines,
  logLinesQuerySchema,
  reservedEngineFlags,
} from "../protocol/index.ts";
import type { AgentIdentity } from "./lib/identity.ts";
import type { LoadMonitor } from "./lib/load-monitor.ts";
import { createProxy } from "./lib/proxy.ts";
import type { Supervisor } from "./lib/supervisor.ts";

export type AppDeps = {
  /**
   * This host's worker id: `/health` names it to callers holding the agent credential (the
   * manager's probes), so they know who answered.
   */
  workerId: string;
  supervisor: Supervisor;
  /** Engine loads for the proxy's `x-fleet-load` header (absent: no header). */
  loads?: Pick<LoadMonitor, "header">;
  /** Who may call: the agent credential (open without FLEET_TOKEN, on loopback only). */
  identity: Pick<AgentIdentity, "authorized" | "authenticated" | "open" | "workerCredential">;
  /** The host's GPUs, re-read when a launch names a GPU the last reading did not have. */
  gpus: { current(): GpuInfo; refresh(): Promise<GpuInfo> };
  log: Logger;
  /** The registry `/metrics` renders (agent/lib/metrics.ts); absent: no proxy counts, 404. */
  metrics?: Metrics;
};

const proxyPrefix = "/proxy/";
const wrongToken =
  "missing or wrong bearer token: this agent takes its own agent credential (issued by the manager when it joined), not FLEET_TOKEN";
const notJoined =
  "this agent has not joined the fleet yet: nothing can be launched or proxied on it until the manager has issued its credentials";
const logsQuerySchema = z.object({
  tail: z.coerce.number().int().min(0).max(100_000).default(200),
});

/** The agent's HTTP surface: `/health`, the instance API and the `/proxy` path. */
export function createApp(deps: AppDeps): Hono {
  const { supervisor, log } = deps;
  const app = new Hono();
  const proxy = createProxy({ supervisor, log, loads: deps.loads });
  const { identity } = deps;
  const unauthorized = () =>
    errorResponse("unauthorized", identity.workerCredential ? wrongToken : notJoined, {
      headers: { "www-authenticate": "Bearer" },
    });

  app.onError((error, c) => renderError(error, { log, path: c.req.path }));
  app.notFound(() => errorResponse("not_found", "no such endpoint on the agent"));
  if (identity.open) {
    app.use(
      "*",
      loopbackHostsOnly(
        "agent",
        "Give it FLEET_TOKEN (it then joins with a credential of its own) to take requests under other names.",
      ),
    );
  }

  // Open, and says nothing to strangers. To the manager's probes (which present the agent
  // credential) it says which worker answered, so a path that reaches another host is not
  // mistaken for this one; an open agent says it to anyone.
  app.get("/health", (c) => {
    const authorization = c.req.header("authorization");
    if (identity.authenticated(authorization)) {
      return c.json({ status: "ok", worker_id: deps.workerId, authenticated: true });
    }
    if (identity.open) return c.json({ status: "ok", worker_id: deps.workerId });
    return c.json({ status: "ok" });
  });

  // The hot path, registered before the middleware so that it runs alone: no body parsing,
  // no URL object, no per-request logging.
  const countProxied = proxyCounter(deps.metrics, supervisor);
  app.all("/proxy/:alias/v1/*", (c): Response | Promise<Response> => {
    const req = c.req.raw;
    if (!identity.authorized(req.headers.get("authorization"))) return unauthorized();
    const path = c.req.path;
    const slash = path.indexOf("/", proxyPrefix.length);
    const alias = path.slice(proxyPrefix.length, slash);
    const query = req.url.indexOf("?");
    const answer = proxy(
      req,
      alias,
      path.slice(slash + "/v1/".length),
      query === -1 ? "" : req.url.slice(query),
    );
    if (!countProxied) return answer;
    return answer.then((response) => {
      countProxied(alias, response.status);
      return response;
    });
  });

  app.use("*", async (c, next) => {
    if (!identity.authorized(c.req.header("authorization"))) return unauthorized();
    await next();
  });

  // Behind the agent credential like the rest: a rented host holds no secret of the fleet's,
  // so its metrics take the credential the manager and routers already present to it.
  const metrics = deps.metrics;
  if (metrics) {
    app.get("/metrics", async () => {
      return new Response(await metrics.scrape(), {
        headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" },
      });
    });
  }

  app.get("/v1/instances", (c) => c.json({ instances: supervisor.reports() }));

  app.post("/v1/instances", async (c) => {
    const spec = parseSpec(await readJson(c.req.raw));
    await checkGpus(spec, deps.gpus);
    const result = await supervisor.launch(spec);
    switch (result.kind) {
      case "created":
        return c.json(result.engine.report(), 202);
      case "existing":
        return c.json(result.engine.report(), 200);
      case "conflict":
        throw new AppError("conflict", result.reason, { param: "alias" });
      case "port_unavailable":
        throw new AppError(
          "conflict",
          result.port === null
            ? "no free engine port left in the agent's range (ENGINE_PORT_MIN..ENGINE_PORT_MAX)"
            : `port ${result.port} is in use on this host`,
          { param: "port" },
        );
    }
  });

  app.get("/v1/instances/:alias", (c) =>
    c.json(engineOf(supervisor, c.req.param("alias")).report()),
  );

  app.delete("/v1/instances/:alias", async (c) => {
    const alias = validAlias(c.req.param("alias"));
    const report = await supervisor.stop(alias);
    if (!report) throw new AppError("instance_not_found", `no instance ${alias} on this worker`);
    return c.json(report);
  });

  // An operator's restart, relayed by the manager: the engine stops and launches again on the
  // same GPUs and port. 202 as it begins (the report says `stopping`); the rest is reported.
  app.post("/v1/instances/:alias/restart", (c) => {
    const alias = validAlias(c.req.param("alias"));
    const result = supervisor.restart(alias);
    if (result.kind === "not_found") {
      throw new AppError("instance_not_found", `no instance ${alias} on this worker`, {
        param: "alias",
      });
    }
    if (result.kind === "conflict")
      throw new AppError("conflict", result.reason, { param: "alias" });
    return c.json(result.engine.report(), 202);
  });

  app.get("/v1/instances/:alias/logs/lines", (c) => {
    const engine = engineOf(supervisor, c.req.param("alias"));
    const query = parseWith(logLinesQuerySchema, c.req.query());
    const { lines, next, skipped } = engine.logs.since(query.after, query.limit);
    const reply: LogLines = { stream: engine.logs.id, next, skipped, lines };
    return c.json(reply);
  });

  app.get("/v1/instances/:alias/logs", (c) => {
    const engine = engineOf(supervisor, c.req.param("alias"));
    const query = logsQuerySchema.safeParse(c.req.query());
    if (!query.success) {
      throw new AppError("invalid_request", "tail must be an integer from 0 to 100000", {
        param: "tail",
      });
    }
    const lines = engine.logs.tail(query.data.tail);
    const first = engine.firstFailure;
    // The first crash's log is kept even after later restarts have rotated it out.
    const rotatedOut = first && engine.logs.total - first.atLine >= query.data.tail;
    const text = rotatedOut
      ? `[agent] first failure (log tail at the time):\n${first.text}\n[agent] latest lines:\n${lines.join("\n")}`
      : lines.join("\n");
    return c.text(text.length > 0 ? `${text}\n` : "");
  });

  return app;
}

const aliasParamSchema = z.object({ alias: aliasSchema });

function validAlias(alias: string): string {
  return parseWith(aliasParamSchema, { alias }).alias;
}

function engineOf(supervisor: Supervisor, raw: string) {
  const alias = validAlias(raw);
  const engine = supervisor.get(alias);
  if (!engine) throw new AppError("instance_not_found", `no instance ${alias} on this worker`);
  return engine;
}

async function readJson(req: Request): Promise<unknown> {
  try {
    return await req.json();
  } catch {
    throw new AppError("invalid_json", "the request body is not valid JSON");
  }
}

function parseSpec(body: unknown): InstanceSpec {
  const spec = parseWith(instanceSpecSchema, body);
  spec.extra_args.forEach((arg, i) => {
    // argparse accepts unambiguous prefixes (`--po 9000` means `--port`): refuse those too.
    const name = arg.split("=")[0] ?? "";
    if (
      name.length > 2 &&
      name.startsWith("--") &&
      reservedEngineFlags.some((flag) => flag.startsWith(name))
    ) {
      throw new AppError(
        "invalid_request",
        `extra_args may not set ${reservedEngineFlags.join(", ")} (the agent sets them): ${name}`,
        { param: `extra_args.${i}` },
      );
    }
  });
  if (
    spec.tensor_parallel_size !== undefined &&
    spec.gpu_ids.length > 0 &&
    spec.tensor_parallel_size > spec.gpu_ids.length
  ) {
    throw new AppError(
      "invalid_request",
      `tensor_parallel_size ${spec.tensor_parallel_size} needs at least as many gpu_ids (got ${spec.gpu_ids.length})`,
      { param: "tensor_parallel_size" },
    );
  }
  return spec;
}

async function checkGpus(spec: InstanceSpec, gpus: AppDeps["gpus"]): Promise<void> {
  if (spec.gpu_ids.length === 0) return;
  const known = (info: GpuInfo) => new Set(info.gpus.map((gpu) => gpu.index));
  let info = gpus.current();
  if (info.gpus.length === 0) return; // Discovery failed: the engine will tell.
  if (spec.gpu_ids.every((id) => known(info).has(id))) return;
  info = await gpus.refresh();
  const have = known(info);
  const missing = spec.gpu_ids.filter((id) => !have.has(id));
  if (missing.length > 0 && info.gpus.length > 0) {
    throw new AppError(
      "invalid_request",
      `gpu_ids ${missing.join(", ")} not on this worker (it has ${[...have].sort((a, b) => a - b).join(", ")})`,
      { param: "gpu_ids" },
    );
  }
}

/**
 * `fleet_agent_proxy_requests_total{alias,status}`, counted when the engine's answer starts
 * (the status is known then). Only aliases this agent runs get a series of their own, so a
 * caller cannot grow the label set; series are bound once per alias and status.
 */
function proxyCounter(
  metrics: Metrics | undefined,
  supervisor: Supervisor,
): ((alias: string, status: number) => void) | undefined {
  if (!metrics) return undefined;
  // By alias, then status: no key string built per request.
  const series = new Map<string, Map<number, BoundSeries>>();
  return (raw, status) => {
    const alias = supervisor.get(raw) ? raw : "unknown";
    let byStatus = series.get(alias);
    if (!byStatus) {
      byStatus = new Map();
      series.set(alias, byStatus);
    }
    let counter = byStatus.get(status);
    if (!counter) {
      counter = metrics.series("fleet_agent_proxy_requests_total", {
        alias,
        status: String(status),
      });
      byStatus.set(status, counter);
    }
    counter.add(1);
  };
}
