#!/usr/bin/env bun
/**
 * `fleet`: the operator's command line over the manager's HTTP API.
 *
 *   fleet models register ALIAS MODEL [--max-model-len N] [--gpu-memory-utilization F]
 *                         [--tensor-parallel-size N] [--replicas N] [--dtype D]
 *                         [--worker ID] [--gpus 0,1] [--extra-arg ARG]... [--spread] [--wait]
 *                         [--routing least_loaded|prefix_affinity|session|round_robin]
 *   fleet models wait ALIAS [--timeout S] | fleet models ls | fleet models rm ALIAS
 *   fleet instances ls [ALIAS] | fleet instances restart ID|ALIAS [--worker ID] [--reason R] [--wait]
 *   fleet workers ls | fleet workers show ID | fleet workers rotate ID | fleet workers rm ID
 *   fleet workers add ID [--public-url URL | --worker-url URL]
 *   fleet routes ls
 *   fleet keys create [--name NAME] | fleet keys ls | fleet keys revoke ID
 *   fleet routers create NAME | fleet routers ls | fleet routers revoke ID
 *   fleet logs ALIAS [--tail N] [--worker ID] [--follow]
 *
 * Global: --url (FLEET_URL, default http://127.0.0.1:18000), --token (ADMIN_TOKEN), --json.
 */
import { hostname, userInfo } from "node:os";
import { parseArgs } from "node:util";
import { z } from "zod";
import { parseEnv } from "../kit/env.ts";
import { baseUrlSchema, dtypeSchema } from "../protocol/common.ts";
import type { LogLines } from "../protocol/instances.ts";
import type { InstanceRecord, ModelInfo } from "../protocol/models.ts";
import type { RouterCreated, RouterInfo, RouterList } from "../protocol/routers.ts";
import { routingPolicySchema } from "../protocol/routes.ts";
import {
  type InstallCommandReply,
  plainHttpProblemText,
  type WorkerInfo,
  type WorkerList,
  type WorkerPath,
  type WorkerRemovalReply,
} from "../protocol/workers.ts";
import { duration, LaunchView } from "./launch-view.ts";
import { printTable } from "./table.ts";

const usage = `usage: fleet <command> [options]

commands:
  models register ALIAS MODEL   place a model and launch it (--wait follows it to ready)
  models wait ALIAS             follow a model's launch until ready (phase, percent, ETA)
  models ls                     registered models and their status
  models rm ALIAS               stop a model's engines and remove its routes
  instances ls [ALIAS]          each engine: instance id, worker, GPUs, port, state, restarts
  instances restart ID|ALIAS    stop an engine and launch it again on the same worker, GPUs and
                                port; its route is unserved until it is ready again (an ALIAS
                                on several workers needs --worker; --wait follows it to ready)
  workers add ID                the line that installs the agent on a GPU host, join token included
                                (--public-url its port mapping, or --worker-url on this network)
  workers ls                    workers: the path the manager reaches each by, GPUs, flags
  workers show ID               one worker: both paths as last probed, and what to fix
  workers rotate ID             new credentials for a worker (its agent picks them up)
  workers rm ID                 remove a worker: its models move elsewhere, its credentials end
  routes ls                     the route table routers use
  keys create [--name NAME]     create an API key (shown once)
  keys ls                       API keys (never the keys themselves)
  keys revoke ID                revoke an API key
  routers create NAME           create a router credential (shown once) for ROUTER_TOKEN
  routers ls                    router credentials and when each was last used
  routers revoke ID             revoke a router credential (refused from the next request)
  logs ALIAS [--tail N]         the engine's last log lines (--follow: and new ones as they come)

options:
  --url URL      manager URL (FLEET_URL; default http://127.0.0.1:18000)
  --token TOKEN  admin token (ADMIN_TOKEN)
  --json         machine-readable output
register options:
  --max-model-len N  --gpu-memory-utilization F  --tensor-parallel-size N  --replicas N
  --dtype D  --worker ID  --gpus 0,1  --extra-arg ARG (repeatable)  --spread  --wait
  --routing least_loaded|prefix_affinity|session|round_robin (default prefix_affinity; docs/router.md)
  --timeout SECONDS (for --wait and models wait; default 1800)
restart options:
  --worker ID (which replica of an ALIAS)  --reason TEXT (kept in the event)  --wait  --timeout S
logs options:
  --tail N (default 100)  --worker ID  --follow (until Ctrl-C or the instance goes away)`;

const env = parseEnv(
  z.object({
    FLEET_URL: baseUrlSchema.default("http://127.0.0.1:18000"),
    ADMIN_TOKEN: z.string().optional(),
  }),
  process.env,
);

/** A failure to report; `code` 2 for usage mistakes (the default), 1 for failed requests. */
class CliError extends Error {
  constructor(
    message: string,
    readonly code = 2,
    /** The manager's HTTP status, when it answered one. */
    readonly status?: number,
  ) {
    super(message);
  }
}

const int = (name: string) =>
  z.coerce
    .number({ error: `--${name} must be a number` })
    .int(`--${name} must be a whole number`)
    .positive(`--${name} must be positive`);

const flagsSchema = z.object({
  url: baseUrlSchema.optional(),
  token: z.string().optional(),
  json: z.boolean().default(false),
  "max-model-len": int("max-model-len").optional(),
  "gpu-memory-utilization": z.coerce
    .number()
    .gt(0, "--gpu-memory-utilization must be in (0, 1]")
    .lte(1, "--gpu-memory-utilization must be in (0, 1]")
    .optional(),
  "tensor-parallel-size": int("tensor-parallel-size").optional(),
  replicas: int("replicas").optional(),
  dtype: dtypeSchema.optional(),
  worker: z.string().optional(),
  gpus: z
    .string()
    .regex(/^\d+(,\d+)*$/, "--gpus takes GPU indices separated by commas, e.g. 0,1")
    .transform((value) => value.split(",").map(Number))
    .optional(),
  "extra-arg": z.array(z.string()).default([]),
  spread: z.boolean().default(false),
  routing: z
    .enum(routingPolicySchema.options, {
      error: "--routing is least_loaded, prefix_affinity, session or round_robin",
    })
    .optional(),
  wait: z.boolean().default(false),
  follow: z.boolean().default(false),
  timeout: int("timeout").default(1800),
  tail: int("tail").default(100),
  name: z.string().optional(),
  reason: z.string().max(500, "--reason is at most 500 characters").optional(),
  "public-url": z.string().optional(),
  "worker-url": z.string().optional(),
});
type Flags = z.infer<typeof flagsSchema>;

async function main(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      url: { type: "string" },
      token: { type: "string" },
      json: { type: "boolean" },
      "max-model-len": { type: "string" },
      "gpu-memory-utilization": { type: "string" },
      "tensor-parallel-size": { type: "string" },
      replicas: { type: "string" },
      dtype: { type: "string" },
      worker: { type: "string" },
      gpus: { type: "string" },
      "extra-arg": { type: "string", multiple: true },
      spread: { type: "boolean" },
      routing: { type: "string" },
      wait: { type: "boolean" },
      follow: { type: "boolean", short: "f" },
      timeout: { type: "string" },
      tail: { type: "string" },
      name: { type: "string" },
      reason: { type: "string" },
      "public-url": { type: "string" },
      "worker-url": { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help || positionals.length === 0) {
    console.log(usage);
    return positionals.length === 0 && !values.help ? 2 : 0;
  }
  const parsed = flagsSchema.safeParse(values);
  if (!parsed.success)
    throw new CliError(parsed.error.issues.map((issue) => issue.message).join("; "));
  const flags = parsed.data;
  const api = new ManagerApi(flags.url ?? env.FLEET_URL, flags.token ?? env.ADMIN_TOKEN);
  const [group, action, ...rest] = positionals;

  switch (`${group} ${action ?? ""}`.trim()) {
    case "models register":
      return registerModel(api, flags, rest);
    case "models ls":
      return listModels(api, flags);
    case "models rm":
      return removeModel(api, flags, need(rest[0], "ALIAS"));
    case "models wait":
      return waitForModel(api, flags, need(rest[0], "ALIAS"));
    case "instances ls":
      return listInstances(api, flags, rest[0]);
    case "instances restart":
      return restartInstance(api, flags, need(rest[0], "ID or ALIAS"));
    case "workers add":
      return addWorker(api, flags, need(rest[0], "ID"));
    case "workers ls":
      return listWorkers(api, flags);
    case "workers show":
      return showWorker(api, flags, need(rest[0], "ID"));
    case "workers rotate":
      return rotateWorker(api, flags, need(rest[0], "ID"));
    case "workers rm":
      return removeWorker(api, flags, need(rest[0], "ID"));
    case "routes ls":
      return listRoutes(api, flags);
    case "keys create":
      return createKey(api, flags);
    case "keys ls":
      return listKeys(api, flags);
    case "keys revoke":
      return revokeKey(api, flags, need(rest[0], "ID"));
    case "routers create":
      return createRouter(api, flags, need(rest[0], "NAME"));
    case "routers ls":
      return listRouters(api, flags);
    case "routers revoke":
      return revokeRouter(api, flags, need(rest[0], "ID"));
    default:
      if (group === "logs") return showLogs(api, flags, need(action, "ALIAS"));
      throw new CliError(`unknown command: ${positionals.join(" ")}\n\n${usage}`);
  }
}

function need(value: string | undefined, name: string): string {
  if (!value) throw new CliError(`missing ${name}\n\n${usage}`);
  return value;
}

class ManagerApi {
  constructor(
    private readonly base: string,
    private readonly token: string | undefined,
  ) {}

  async request<T>(method: string, path: string, body?: unknown): Promise<T> {
    const text = await this.raw(method, path, body);
    return (text ? JSON.parse(text) : undefined) as T;
  }

  async raw(method: string, path: string, body?: unknown): Promise<string> {
    let response: Response;
    try {
      response = await fetch(`${this.base}${path}`, {
        method,
        headers: {
          ...(this.token ? { authorization: `Bearer ${this.token}` } : {}),
          ...(body === undefined ? {} : { "content-type": "application/json" }),
        },
        body: body === undefined ? null : JSON.stringify(body),
        signal: AbortSignal.timeout(30_000),
      });
    } catch (error) {
      throw new CliError(
        `cannot reach the manager at ${this.base}: ${error instanceof Error ? error.message : error}`,
      );
    }
    const text = await response.text();
    if (!response.ok) {
      let message = text;
      try {
        message = (JSON.parse(text) as { error?: { message?: string } }).error?.message ?? text;
      } catch {}
      const hint = response.status === 401 ? " (set ADMIN_TOKEN or pass --token)" : "";
      throw new CliError(
        `${method} ${path}: HTTP ${response.status}: ${message}${hint}`,
        1,
        response.status,
      );
    }
    return text;
  }
}

async function registerModel(api: ManagerApi, flags: Flags, args: string[]): Promise<number> {
  const alias = need(args[0], "ALIAS");
  const modelName = need(args[1], "MODEL");
  const body = {
    alias,
    model_name: modelName,
    max_model_len: flags["max-model-len"],
    gpu_memory_utilization: flags["gpu-memory-utilization"],
    tensor_parallel_size: flags["tensor-parallel-size"],
    replicas: flags.replicas,
    dtype: flags.dtype,
    worker_id: flags.worker,
    gpu_ids: flags.gpus,
    extra_args: flags["extra-arg"].length ? flags["extra-arg"] : undefined,
    placement: flags.spread ? "spread" : undefined,
    routing: flags.routing,
  };
  const model = await api.request<ModelInfo>("POST", "/v1/models/register", body);
  if (!flags.wait) {
    if (flags.json) printJson(model);
    else {
      console.log(`registered ${model.alias} (${model.model_name}): ${model.status}`);
      printRoutes(model.routes.map((route) => ({ ...route, routing: model.routing })));
    }
    return 0;
  }
  if (!flags.json) {
    for (const instance of model.instances) {
      console.log(`${instance.worker_id}: placed on GPU ${instance.gpu_ids.join(",") || "-"}`);
    }
  }
  return waitForModel(api, flags, alias);
}

/**
 * Follows a model until it is ready (exit 0), failed (exit 1: each failed engine's error and
 * last log lines, once, and when the manager retries it) or the timeout passes (exit 1).
 */
async function waitForModel(api: ManagerApi, flags: Flags, alias: string): Promise<number> {
  const deadline = Date.now() + flags.timeout * 1000;
  const view = new LaunchView({
    write: (text) => process.stdout.write(text),
    columns: () => process.stdout.columns,
    isTTY: !flags.json && Boolean(process.stdout.isTTY),
  });
  const path = `/v1/models/${encodeURIComponent(alias)}`;
  for (;;) {
    const model = await api.request<ModelInfo>("GET", path);
    if (!flags.json) view.update(model);
    if (model.status === "ready") {
      view.finish();
      if (flags.json) printJson(model);
      else printRoutes(model.routes.map((route) => ({ ...route, routing: model.routing })));
      return 0;
    }
    if (model.status === "failed") {
      view.finish();
      if (flags.json) printJson(model);
      for (const instance of model.instances.filter((i) => i.status === "failed")) {
        await explainFailure(api, alias, instance);
      }
      return 1;
    }
    if (Date.now() > deadline) {
      view.finish();
      console.error(`${alias} is still ${model.status} after ${flags.timeout} s`);
      return 1;
    }
    await Bun.sleep(500);
  }
}

/** A failed engine: the error's first line, the engine's last log lines, and what comes next. */
async function explainFailure(
  api: ManagerApi,
  alias: string,
  instance: InstanceRecord,
): Promise<void> {
  const error = (instance.last_error ?? "failed").split("; last log lines:")[0];
  const phase = instance.progress ? ` while ${instance.progress.phase.replaceAll("_", " ")}` : "";
  console.error(`${instance.worker_id}: failed${phase}: ${error}`);
  const logs = await api
    .raw(
      "GET",
      `/v1/models/${encodeURIComponent(alias)}/logs?tail=20&worker_id=${encodeURIComponent(instance.worker_id)}`,
    )
    .catch(() => "");
  if (logs) console.error(`--- last log lines on ${instance.worker_id} ---\n${logs.trimEnd()}`);
  const retry = instance.next_retry_at ? Date.parse(instance.next_retry_at) : Number.NaN;
  if (Number.isFinite(retry)) {
    const inS = Math.max(0, Math.round((retry - Date.now()) / 1000));
    console.error(
      `the manager will retry it ${inS > 0 ? `in about ${duration(inS)}` : "now"} (it keeps retrying, backing off, while ${alias} is registered): fleet models wait ${alias} to follow it, fleet models rm ${alias} to give up`,
    );
  } else {
    console.error(`the manager does not say when it retries; fleet models rm ${alias} to give up`);
  }
}

async function listModels(api: ManagerApi, flags: Flags): Promise<number> {
  const list = await api.request<{ data: Array<{ id: string }> }>("GET", "/v1/models");
  const models = await Promise.all(
    list.data.map((entry) =>
      api.request<ModelInfo>("GET", `/v1/models/${encodeURIComponent(entry.id)}`),
    ),
  );
  if (flags.json) return printJson(models);
  return printTable({
    columns: ["ALIAS", "MODEL", "STATUS", "READY", "WORKERS"],
    rows: models.map((model) => [
      model.alias,
      model.model_name,
      model.status,
      `${model.instances.filter((i) => i.status === "ready").length}/${model.replicas}`,
      model.instances.map((i) => i.worker_id).join(",") || "-",
    ]),
  });
}

async function removeModel(api: ManagerApi, flags: Flags, alias: string): Promise<number> {
  const result = await api.request<unknown>("DELETE", `/v1/models/${encodeURIComponent(alias)}`);
  if (flags.json) return printJson(result ?? { deleted: alias });
  console.log(`removed ${alias}`);
  return 0;
}

async function listInstances(
  api: ManagerApi,
  flags: Flags,
  alias: string | undefined,
): Promise<number> {
  const aliases = alias
    ? [alias]
    : (await api.request<{ data: Array<{ id: string }> }>("GET", "/v1/models")).data.map(
        (entry) => entry.id,
      );
  const models = await Promise.all(
    aliases.map((a) => api.request<ModelInfo>("GET", `/v1/models/${encodeURIComponent(a)}`)),
  );
  const instances = models.flatMap((model) => model.instances);
  if (flags.json) return printJson(instances);
  return printTable({
    columns: ["ID", "ALIAS", "WORKER", "GPUS", "PORT", "STATUS", "RESTARTS"],
    rows: instances.map((i) => [
      i.id,
      i.alias,
      i.worker_id,
      i.gpu_ids.join(",") || "-",
      String(i.port ?? "-"),
      i.status,
      String(i.restarts),
    ]),
  });
}

const uuidPattern = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/**
 * `fleet instances restart ID|ALIAS`: an instance id as `instances ls` prints it, or an alias
 * (with `--worker` when it runs on several workers). The event names this user and host.
 */
async function restartInstance(api: ManagerApi, flags: Flags, target: string): Promise<number> {
  let id = target;
  let alias: string | undefined;
  if (!uuidPattern.test(target)) {
    alias = target;
    const model = await api.request<ModelInfo>("GET", `/v1/models/${encodeURIComponent(target)}`);
    const candidates = model.instances.filter((i) => !flags.worker || i.worker_id === flags.worker);
    const only = candidates[0];
    if (!only) {
      throw new CliError(
        `${target} has no instance${flags.worker ? ` on ${flags.worker}` : ""} (it runs on ${model.instances.map((i) => i.worker_id).join(", ") || "no worker"})`,
        1,
      );
    }
    if (candidates.length > 1) {
      throw new CliError(
        `${target} runs on ${candidates.length} workers (${candidates.map((i) => i.worker_id).join(", ")}): name one with --worker`,
      );
    }
    id = only.id;
  }
  const instance = await api.request<InstanceRecord>(
    "POST",
    `/v1/instances/${encodeURIComponent(id)}/restart`,
    {
      requested_by: `fleet (${userInfo().username}@${hostname()})`,
      ...(flags.reason ? { reason: flags.reason } : {}),
    },
  );
  if (!flags.wait) {
    if (flags.json) return printJson(instance);
    console.log(
      `restarting ${instance.alias} on ${instance.worker_id} (instance ${instance.id}, restart ${instance.restarts}): its route is unserved until the engine is ready again; fleet models wait ${instance.alias} to follow it`,
    );
    return 0;
  }
  if (!flags.json) {
    console.log(`restarting ${instance.alias} on ${instance.worker_id} (instance ${instance.id})`);
  }
  return waitForModel(api, flags, alias ?? instance.alias);
}

async function listWorkers(api: ManagerApi, flags: Flags): Promise<number> {
  const { workers } = await api.request<WorkerList>("GET", "/v1/workers");
  if (flags.json) return printJson(workers);
  printTable({
    columns: [
      "WORKER",
      "STATUS",
      "PATH",
      "RTT",
      "FLAGS",
      "URL",
      "PUBLIC URL",
      "GPUS",
      "INSTANCES",
      "LAST HEARTBEAT",
    ],
    rows: workers.map((worker) => {
      const used = pathInUse(worker);
      return [
        worker.worker_id,
        worker.status,
        worker.management_path ?? (worker.paths.internal.reachable === null ? "-" : "none"),
        used?.rtt_ms == null ? "-" : `${used.rtt_ms}ms`,
        workerFlags.flatMap((flag) => flag(worker) ?? []).join(",") || "-",
        worker.worker_url,
        worker.public_worker_url ?? "-",
        gpuSummary(worker),
        worker.instances.map((instance) => instance.alias).join(",") || "-",
        ago(worker.last_heartbeat),
      ];
    }),
  });
  const troubled = workers.filter((worker) => worker.problems.length > 0);
  for (const worker of troubled) {
    console.log(
      `\n${worker.worker_id}: ${worker.problems.length} problem(s): fleet workers show ${worker.worker_id}`,
    );
  }
  return 0;
}

/** Short marks for `workers ls`, each from one look at the worker; `-` when none applies. */
const workerFlags: Array<(worker: WorkerInfo) => string | undefined> = [
  // Neither URL answered the manager: launches, stops and logs fail.
  (w) =>
    w.paths.internal.reachable === false && (w.paths.public?.reachable ?? false) === false
      ? "no-path"
      : undefined,
  // Managed over the internal URL, but the public one that routes use does not answer.
  (w) =>
    w.paths.internal.reachable === true && w.paths.public?.reachable === false
      ? "public-down"
      : undefined,
  // Prompts and credentials cross the internet in clear.
  (w) => (w.problems.includes(plainHttpProblemText) ? "plain-http" : undefined),
];

function pathInUse(worker: WorkerInfo): WorkerPath | undefined {
  if (worker.management_path === "internal") return worker.paths.internal;
  if (worker.management_path === "public") return worker.paths.public ?? undefined;
  return undefined;
}

function gpuSummary(worker: WorkerInfo): string {
  return (
    worker.gpu_info.gpus
      .map((gpu) => `${gpu.index}:${gpu.name} ${Math.round(gpu.memory_total_mib / 1024)}G`)
      .join(", ") || "none"
  );
}

async function showWorker(api: ManagerApi, flags: Flags, id: string): Promise<number> {
  const worker = await api.request<WorkerInfo>("GET", `/v1/workers/${encodeURIComponent(id)}`);
  if (flags.json) return printJson(worker);
  const path = (name: string, p: WorkerPath | null) => {
    if (!p) return [name, "none (PUBLIC_URL not set)"];
    const state =
      p.reachable === null
        ? "not probed yet"
        : p.reachable
          ? `reachable, ${p.rtt_ms ?? "?"} ms`
          : `unreachable: ${p.error ?? "no answer"}`;
    return [name, `${p.url}  ${state}`];
  };
  const lines = [
    [
      "worker",
      `${worker.worker_id} (${worker.status}, heartbeat ${ago(worker.last_heartbeat)}, agent ${worker.agent_version ?? "?"})`,
    ],
    path("internal", worker.paths.internal),
    path("public", worker.paths.public),
    [
      "management",
      worker.probed_at
        ? `${worker.management_path ?? "no path answers"} (probed ${ago(worker.probed_at)})`
        : "not probed yet",
    ],
    ["gpus", gpuSummary(worker)],
    [
      "instances",
      worker.instances
        .map((i) => `${i.alias} (${i.status}${i.port ? `, port ${i.port}` : ""})`)
        .join(", ") || "-",
    ],
  ];
  for (const [label, value] of lines) console.log(`${(label ?? "").padEnd(12)}${value}`);
  if (worker.problems.length === 0) {
    console.log("problems    none");
    return 0;
  }
  console.log("problems:");
  for (const problem of worker.problems) console.log(`  - ${problem}`);
  return 0;
}

async function addWorker(api: ManagerApi, flags: Flags, id: string): Promise<number> {
  const reply = await api.request<InstallCommandReply>("POST", "/v1/workers/install-command", {
    worker_id: id,
    ...(flags["public-url"] ? { public_url: flags["public-url"] } : {}),
    ...(flags["worker-url"] ? { worker_url: flags["worker-url"] } : {}),
  });
  if (flags.json) return printJson(reply);
  console.log(`on the GPU host ${id} (it holds the join token: paste it, do not keep it):\n`);
  console.log(`  ${reply.command}\n`);
  if (!reply.agent_available) {
    console.log(
      "the manager has no agent executable to hand out yet: run `npm run build:agent` where it runs",
    );
  }
  return 0;
}

async function rotateWorker(api: ManagerApi, flags: Flags, id: string): Promise<number> {
  const reply = await api.request<{ worker_id: string; status: string }>(
    "POST",
    `/v1/workers/${encodeURIComponent(id)}/rotate`,
  );
  if (flags.json) return printJson(reply);
  console.log(
    `rotation requested for ${id}: its next heartbeat gets a new pair; the old agent credential keeps working for a short grace (AGENT_TOKEN_GRACE_S on the agent)`,
  );
  return 0;
}

async function removeWorker(api: ManagerApi, flags: Flags, id: string): Promise<number> {
  const reply = await api.request<WorkerRemovalReply>(
    "DELETE",
    `/v1/workers/${encodeURIComponent(id)}`,
  );
  if (flags.json) return printJson(reply);
  console.log(`removed ${id}: its credentials no longer work`);
  for (const moved of reply.rescheduled) {
    console.log(`  ${moved.alias}: moved to ${moved.worker_id}`);
  }
  for (const dropped of reply.dropped) {
    console.log(`  ${dropped.alias}: not placed elsewhere (${dropped.reason})`);
  }
  if (reply.dropped.length > 0) {
    console.log(
      "  those models run short of replicas: add a worker with room and register them again",
    );
  }
  return 0;
}

type SnapshotRoute = ModelInfo["routes"][number] & { ready?: boolean; routing?: string };

async function listRoutes(api: ManagerApi, flags: Flags): Promise<number> {
  const snapshot = await api.request<{ version: string; routes: SnapshotRoute[] }>(
    "GET",
    "/v1/routes",
  );
  if (flags.json) return printJson(snapshot);
  return printRoutes(snapshot.routes);
}

function printRoutes(routes: SnapshotRoute[]): number {
  return printTable({
    columns: ["ALIAS", "MODEL", "WORKER", "WORKER URL", "VLLM PORT", "READY", "ROUTING", "CREATED"],
    rows: routes.map((route) => [
      route.alias,
      route.model_name,
      route.worker_id,
      route.worker_url,
      String(route.vllm_port ?? "-"),
      route.ready === undefined ? "-" : route.ready ? "yes" : "no",
      route.routing ?? "-",
      route.created_at,
    ]),
  });
}

async function createKey(api: ManagerApi, flags: Flags): Promise<number> {
  const key = await api.request<{ id: string; key: string; name: string }>("POST", "/v1/keys", {
    ...(flags.name ? { name: flags.name } : {}),
  });
  if (flags.json) return printJson(key);
  console.log(`created key ${key.id} (${key.name}); it is shown only once:\n\n  ${key.key}\n`);
  return 0;
}

async function listKeys(api: ManagerApi, flags: Flags): Promise<number> {
  const reply = await api.request<{ data?: KeyRow[]; keys?: KeyRow[] } | KeyRow[]>(
    "GET",
    "/v1/keys",
  );
  const keys = Array.isArray(reply) ? reply : (reply.keys ?? reply.data ?? []);
  if (flags.json) return printJson(keys);
  return printTable({
    columns: ["ID", "NAME", "PREFIX", "CREATED", "REVOKED"],
    rows: keys.map((key) => [key.id, key.name, key.prefix, key.created_at, key.revoked_at ?? "-"]),
  });
}
type KeyRow = {
  id: string;
  name: string;
  prefix: string;
  created_at: string;
  revoked_at: string | null;
};

async function revokeKey(api: ManagerApi, flags: Flags, id: string): Promise<number> {
  const result = await api.request<unknown>("DELETE", `/v1/keys/${encodeURIComponent(id)}`);
  if (flags.json) return printJson(result ?? { revoked: id });
  console.log(`revoked ${id}`);
  return 0;
}

async function createRouter(api: ManagerApi, flags: Flags, name: string): Promise<number> {
  const router = await api.request<RouterCreated>("POST", "/v1/routers", { name });
  if (flags.json) return printJson(router);
  console.log(
    `created router credential ${router.id} (${router.name}); it is shown only once:\n\n  ${router.token}\n\nGive it to the router as ROUTER_TOKEN (on Cloudflare: npx wrangler secret put ROUTER_TOKEN).`,
  );
  return 0;
}

async function listRouters(api: ManagerApi, flags: Flags): Promise<number> {
  const { routers } = await api.request<RouterList>("GET", "/v1/routers");
  if (flags.json) return printJson(routers);
  return printTable({
    columns: ["ID", "NAME", "PREFIX", "CREATED", "LAST USED", "REVOKED"],
    rows: routers.map((router) => [
      router.id,
      router.name,
      router.prefix,
      router.created_at,
      router.last_used_at ? ago(router.last_used_at) : "never",
      router.revoked_at ?? "-",
    ]),
  });
}

async function revokeRouter(api: ManagerApi, flags: Flags, id: string): Promise<number> {
  const router = await api.request<RouterInfo>("DELETE", `/v1/routers/${encodeURIComponent(id)}`);
  if (flags.json) return printJson(router);
  console.log(`revoked ${router.id} (${router.name}); the manager refuses it from now on`);
  return 0;
}

async function showLogs(api: ManagerApi, flags: Flags, alias: string): Promise<number> {
  if (flags.follow) return followLogs(api, flags, alias);
  const query = new URLSearchParams({ tail: String(flags.tail) });
  if (flags.worker) query.set("worker_id", flags.worker);
  const text = await api.raw("GET", `/v1/models/${encodeURIComponent(alias)}/logs?${query}`);
  if (flags.json) return printJson({ alias, logs: text });
  process.stdout.write(text.endsWith("\n") || text === "" ? text : `${text}\n`);
  return 0;
}

/** Where `logs --follow` is in one worker's engine log. */
type LogCursor = { worker: string; stream: string | null; next: number; gone: boolean };

/**
 * `fleet logs ALIAS --follow`: the last `--tail` lines, then new ones each second, from every
 * worker the alias runs on (prefixed `[worker]` when there are several). Polls the manager
 * (at most 1,000 lines a call; more are reported as skipped); ends on Ctrl-C, or when no
 * instance is left. A new engine process (a restart) starts its log over.
 */
async function followLogs(api: ManagerApi, flags: Flags, alias: string): Promise<number> {
  const base = `/v1/models/${encodeURIComponent(alias)}`;
  const workers = flags.worker
    ? [flags.worker]
    : (await api.request<ModelInfo>("GET", base)).instances.map((i) => i.worker_id);
  if (workers.length === 0) throw new CliError(`${alias} has no instance to follow`, 1);
  const cursors: LogCursor[] = workers.map((worker) => ({
    worker,
    stream: null,
    next: 0,
    gone: false,
  }));
  const say = (worker: string, line: string) =>
    process.stdout.write(workers.length > 1 ? `[${worker}] ${line}\n` : `${line}\n`);
  let interrupted = false;
  let wake: () => void = () => {};
  process.once("SIGINT", () => {
    interrupted = true;
    wake();
  });
  let unreachable = false;
  while (!interrupted && cursors.some((c) => !c.gone)) {
    for (const cursor of cursors.filter((c) => !c.gone)) {
      const starting = cursor.stream === null;
      const query = new URLSearchParams({
        worker_id: cursor.worker,
        after: String(starting ? 0 : cursor.next),
        limit: String(starting ? flags.tail : 1000),
      });
      let chunk: LogLines;
      try {
        chunk = await api.request<LogLines>("GET", `${base}/logs/lines?${query}`);
        unreachable = false;
      } catch (error) {
        if (!(error instanceof CliError) || error.code !== 1) throw error;
        if (error.status === 404) {
          say(cursor.worker, `[fleet] ${alias} is gone from ${cursor.worker}`);
          cursor.gone = true;
        } else if (!unreachable) {
          // The manager or the agent is away for a moment: say so once and keep polling.
          unreachable = true;
          console.error(`fleet: ${error.message} (retrying)`);
        }
        continue;
      }
      if (!starting && chunk.stream !== cursor.stream) {
        say(cursor.worker, "[fleet] a new engine process; its log from the start:");
        cursor.stream = null;
        continue;
      }
      if (!starting && chunk.skipped > 0) {
        say(cursor.worker, `[fleet] … ${chunk.skipped} lines skipped`);
      }
      for (const line of chunk.lines) say(cursor.worker, line);
      cursor.stream = chunk.stream;
      cursor.next = chunk.next;
    }
    if (interrupted) break;
    await new Promise<void>((resolve) => {
      wake = resolve;
      setTimeout(resolve, 1000);
    });
  }
  return 0;
}

function printJson(value: unknown): number {
  console.log(JSON.stringify(value, null, 2));
  return 0;
}

function ago(iso: string): string {
  const seconds = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  return seconds < 120 ? `${seconds}s ago` : `${Math.round(seconds / 60)}m ago`;
}

try {
  process.exitCode = await main(process.argv.slice(2));
} catch (error) {
  console.error(`fleet: ${error instanceof Error ? error.message : String(error)}`);
  process.exitCode = error instanceof CliError ? error.code : 1;
}
