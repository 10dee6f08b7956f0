#!/usr/bin/env bun
/**
 * `fleet`: the operator's command line over the manager's HTTP API.
 *
 *   fleet models register ALIAS MODEL [--max-model-len N] [--gpu-memory-utilization F]
 *                         [--tensor-parallel-size N] [--replicas N] [--dtype D]
 *                         [--worker ID] [--gpus 0,1] [--extra-arg=ARG]... [--spread] [--wait]
 *                         [--routing least_loaded|prefix_affinity|session|round_robin]
 *   fleet models wait ALIAS [--timeout S] | fleet models ls | fleet models rm ALIAS
 *   fleet instances ls [ALIAS] | fleet instances restart ID|ALIAS [--worker ID] [--reason R] [--wait]
 *   fleet workers ls | fleet workers show ID | fleet workers rotate ID | fleet workers rm ID
 *   fleet workers add ID [--public-url URL] [--worker-url URL]
 *   fleet routes ls
 *   fleet keys create [--name NAME] | fleet keys ls | fleet keys revoke ID
 *   fleet routers create NAME | fleet routers ls | fleet routers revoke ID
 *   fleet logs ALIAS [--tail N] [--worker ID] [--follow]
 *
 * Global: --url (FLEET_URL, default http://127.0.0.1:18000), --token (ADMIN_TOKEN), --json.
 * Exit status: 0 done, 1 a failed request or wait, 2 a usage mistake.
 */
import { hostname, userInfo } from "node:os";
import { parseArgs } from "node:util";
import { z } from "zod";
import { EnvError, parseEnv } from "../kit/env.ts";
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
  models wait ALIAS             follow a model's launch until ready (phase, percent, ETA); a
                                failure shows its last log lines once, then the retry is followed
  models ls                     registered models and their status
  models rm ALIAS               stop a model's engines and remove its routes
  instances ls [ALIAS]          each engine: instance id, worker, GPUs, port, state, restarts
  instances restart ID|ALIAS    stop an engine and launch it again on the same worker, GPUs and
                                port; its route is unserved until it is ready again (an ALIAS
                                on several workers needs --worker; --wait follows it to ready)
  workers add ID                the line that installs the agent on a GPU host, join token included
                                (--public-url its port mapping, --worker-url on this network, or both)
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
  --dtype D  --worker ID  --gpus 0,1  --spread  --wait
  --extra-arg=ARG  one vLLM argument, repeatable; a flag with a value is one argument:
                   --extra-arg=--enforce-eager --extra-arg=--max-num-seqs=8
  --routing least_loaded|prefix_affinity|session|round_robin (default prefix_affinity; docs/router.md)
  --timeout SECONDS (for --wait and models wait; default 1800)
waiting (register --wait, models wait, instances restart --wait):
  exits 0 once ready; 1 when --timeout passes, or on a failure the manager will not retry
  before then (no retry coming, or its next retry falls after --timeout). A failure the manager
  retries sooner is shown once (its last log lines, when the retry comes) and the retry followed.
  A manager that cannot be reached for a while (a restart) is said once and polled until it answers.
restart options:
  --worker ID (which replica of an ALIAS)  --reason TEXT (kept in the event)  --wait  --timeout S
logs options:
  --tail N (default 100)  --worker ID  --follow (until Ctrl-C or the instance goes away; a
  manager that cannot be reached for a while is said once and polled until it answers)

exit status: 0 done, 1 a failed request or wait, 2 a usage mistake`;

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

/** No answer at all from the manager (refused, timed out): a failed request, worth retrying. */
class ManagerUnreachable extends CliError {
  constructor(message: string) {
    super(message, 1);
  }
}

// Empty counts as unset: `FLEET_URL= fleet …` is how a shell clears a variable for one command.
const emptyAsUnset = (value: unknown) => (value === "" ? undefined : value);
const fleetUrlEnv = z.object({
  FLEET_URL: z.preprocess(emptyAsUnset, baseUrlSchema.default("http://127.0.0.1:18000")),
});
const adminTokenEnv = z.object({ ADMIN_TOKEN: z.string().optional() });

/**
 * Read when a command needs it, not at load: a bad value is then a usage error like any other
 * (exit 2, one line), and `--url` wins over a FLEET_URL it makes irrelevant.
 */
function readEnv<S extends z.ZodType>(schema: S): z.infer<S> {
  try {
    return parseEnv(schema, process.env);
  } catch (error) {
    if (error instanceof EnvError) throw new CliError(error.message);
    throw error;
  }
}

const int = (name: string) =>
  z.coerce.number().int(`--${name} must be a whole number`).positive(`--${name} must be positive`);

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
  dtype: z
    .enum(dtypeSchema.options, { error: `--dtype is one of ${dtypeSchema.options.join(", ")}` })
    .optional(),
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

/** Every flag; values are checked by `flagsSchema`, which says what each must be. */
const options = {
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
} as const;

/** parseArgs, with its mistakes (unknown flag, missing value) as one-line usage errors. */
function parseArgv(argv: string[]) {
  try {
    return parseArgs({ args: joinExtraArgs(argv), allowPositionals: true, options });
  } catch (error) {
    const code = (error as { code?: unknown }).code;
    if (typeof code !== "string" || !code.startsWith("ERR_PARSE_ARGS_")) throw error;
    throw new CliError(argvProblem(code, error instanceof Error ? error.message : String(error)));
  }
}

/**
 * `--extra-arg --enforce-eager`: parseArgs refuses a value that starts with a dash (it cannot
 * tell it from a forgotten value), yet every engine argument does; `--extra-arg` always takes
 * the next word, so it is joined to it as `--extra-arg=--enforce-eager`.
 */
function joinExtraArgs(argv: string[]): string[] {
  const joined: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] ?? "";
    if (arg === "--") return [...joined, ...argv.slice(i)];
    const next = argv[i + 1];
    if (arg === "--extra-arg" && next !== undefined) {
      joined.push(`--extra-arg=${next}`);
      i++;
    } else joined.push(arg);
  }
  return joined;
}

/** parseArgs' several-line messages, said in one line that names the flag. */
function argvProblem(code: string, message: string): string {
  const flag = /'(-[^' ]+)/.exec(message)?.[1] ?? "an option";
  const help = "(fleet --help lists the options)";
  if (code === "ERR_PARSE_ARGS_UNKNOWN_OPTION") return `unknown option ${flag} ${help}`;
  if (message.includes("argument missing")) return `${flag} needs a value ${help}`;
  if (message.includes("does not take an argument")) return `${flag} takes no value`;
  if (message.includes("ambiguous")) {
    return `${flag} needs a value; one that starts with a dash is written ${flag}=VALUE`;
  }
  return message.split("\n")[0] ?? message;
}

/**
 * A zod issue of the flags, naming the flag and, for a number, what was given; messages the
 * schema words itself already start with the flag.
 */
function flagProblem(issue: z.core.$ZodIssue, values: Record<string, unknown>): string {
  const name = String(issue.path[0] ?? "");
  if (issue.code === "invalid_type" && issue.expected === "number") {
    return `--${name}: expected a number, got ${String(values[name])}`;
  }
  return issue.message.startsWith("--") ? issue.message : `--${name}: ${issue.message}`;
}

async function main(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgv(argv);
  if (values.help || positionals.length === 0) {
    console.log(usage);
    return positionals.length === 0 && !values.help ? 2 : 0;
  }
  const parsed = flagsSchema.safeParse(values);
  if (!parsed.success) {
    throw new CliError(parsed.error.issues.map((issue) => flagProblem(issue, values)).join("; "));
  }
  const flags = parsed.data;
  const api = new ManagerApi(
    flags.url ?? readEnv(fleetUrlEnv).FLEET_URL,
    flags.token ?? readEnv(adminTokenEnv).ADMIN_TOKEN,
  );
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
      throw new ManagerUnreachable(
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
  // Most likely an engine flag's value that came loose (`--extra-arg --max-num-seqs 8`):
  // dropping it would launch the engine without it.
  if (args.length > 2) {
    throw new CliError(
      `unexpected ${args.slice(2).join(" ")} after MODEL (an engine flag with a value is one --extra-arg: --extra-arg=--max-num-seqs=8)`,
    );
  }
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

/** What `waitForModel` carries from one poll to the next. */
type Waiting = {
  api: ManagerApi;
  flags: Flags;
  alias: string;
  deadline: number;
  view: LaunchView;
  /** Failures already explained, by instance and when it failed (`failureKey`). */
  explained: Set<string>;
};

/**
 * Follows a model until it is ready (exit 0). Each failure of an engine is explained once
 * (its error, last log lines, when the manager retries it) and the retry followed; it ends
 * (exit 1) when the model has failed with no retry coming before the timeout, or when the
 * timeout passes. A manager that goes away for a while (a restart) is said once and polled
 * until it answers, within the timeout; one that never answered is an error at once.
 */
async function waitForModel(api: ManagerApi, flags: Flags, alias: string): Promise<number> {
  const view = new LaunchView({
    write: (text) => process.stdout.write(text),
    columns: () => process.stdout.columns,
    isTTY: !flags.json && Boolean(process.stdout.isTTY),
  });
  const waiting: Waiting = {
    api,
    flags,
    alias,
    deadline: Date.now() + flags.timeout * 1000,
    view,
    explained: new Set(),
  };
  const outage = new Outage(() => view.finish());
  const path = `/v1/models/${encodeURIComponent(alias)}`;
  let model: ModelInfo | undefined = await api.request<ModelInfo>("GET", path);
  for (;;) {
    if (model) {
      const code = await waitStep(waiting, model);
      if (code !== undefined) return code;
    }
    if (Date.now() > waiting.deadline) {
      view.finish();
      console.error(
        `${alias} is still ${model?.status ?? "unknown (the manager does not answer)"} after ${flags.timeout} s`,
      );
      return 1;
    }
    await Bun.sleep(500);
    model = await api.request<ModelInfo>("GET", path).then(
      (answer) => {
        outage.over();
        return answer;
      },
      (error: unknown) => {
        if (!isTransient(error)) throw error;
        outage.begin(error);
        return undefined;
      },
    );
  }
}

/**
 * No answer, or a gateway's in front of a manager that is away (502, 503, 504): what a manager
 * restart looks like from here, worth polling through.
 */
function isTransient(error: unknown): error is CliError {
  if (error instanceof ManagerUnreachable) return true;
  return error instanceof CliError && [502, 503, 504].includes(error.status ?? 0);
}

/** One poll of `waitForModel`: the exit code once the wait is over, else undefined. */
async function waitStep(w: Waiting, model: ModelInfo): Promise<number | undefined> {
  if (!w.flags.json) w.view.update(model);
  if (model.status === "ready") {
    w.view.finish();
    if (w.flags.json) printJson(model);
    else printRoutes(model.routes.map((route) => ({ ...route, routing: model.routing })));
    return 0;
  }
  const failed = model.instances.filter((i) => i.status === "failed");
  for (const instance of failed.filter((i) => !w.explained.has(failureKey(i)))) {
    w.explained.add(failureKey(instance));
    w.view.finish();
    await explainFailure(w.api, w.alias, instance);
    console.error(retryNote(w, instance));
  }
  // A retry after the timeout is not worth waiting for; one before it is what the wait follows.
  const retrySoon = failed.some((i) => retryAt(i) <= w.deadline);
  if (model.status === "failed" && !retrySoon) {
    w.view.finish();
    if (w.flags.json) printJson(model);
    return 1;
  }
  return undefined;
}

/** A failure, told apart from the same instance's next one (each failure moves `updated_at`). */
const failureKey = (instance: InstanceRecord) => `${instance.id}@${instance.updated_at}`;

/** When the manager retries a failed instance (ms since the epoch); NaN when it does not say. */
const retryAt = (instance: InstanceRecord) =>
  instance.next_retry_at ? Date.parse(instance.next_retry_at) : Number.NaN;

/** What comes after a failure: a retry the wait follows, one after --timeout, or none said. */
function retryNote(w: Waiting, instance: InstanceRecord): string {
  const giveUp = `fleet models rm ${w.alias} to give up`;
  const at = retryAt(instance);
  if (!Number.isFinite(at)) return `the manager does not say when it retries; ${giveUp}`;
  const inS = Math.max(0, Math.round((at - Date.now()) / 1000));
  const when = `the manager will retry it ${inS > 0 ? `in about ${duration(inS)}` : "now"}`;
  if (at > w.deadline) {
    return `${when}, after --timeout (${w.flags.timeout} s): fleet models wait ${w.alias} --timeout SECONDS to follow it, ${giveUp}`;
  }
  return `${when} (it keeps retrying, backing off, while ${w.alias} is registered); following the retry (Ctrl-C stops watching, ${giveUp})`;
}

/** A failed engine: the error's first line and the engine's last log lines. */
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
}

/**
 * Polling through a manager that stops answering for a while (a restart, a network blip):
 * says so once when it starts and once when it ends, instead of on every poll.
 */
class Outage {
  #since: number | undefined;

  /** `interrupt`: what to do before printing (a terminal's live lines stop redrawing in place). */
  constructor(private readonly interrupt: () => void = () => {}) {}

  begin(error: CliError): void {
    if (this.#since !== undefined) return;
    this.#since = Date.now();
    this.interrupt();
    console.error(`fleet: ${error.message}; still trying (Ctrl-C to stop)`);
  }

  over(): void {
    if (this.#since === undefined) return;
    const seconds = (Date.now() - this.#since) / 1000;
    this.#since = undefined;
    this.interrupt();
    console.error(`fleet: answered again after ${duration(seconds)}`);
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
  // Neither URL answered the manager: launches, stops and logs fail. Not said of an offline
  // worker, whose agent is gone (its STATUS says so): no URL would answer for it.
  (w) =>
    w.status !== "offline" &&
    w.paths.internal.reachable === false &&
    (w.paths.public?.reachable ?? false) === false
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
  if (reply.warning) console.log(`note: ${reply.warning}\n`);
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
 * instance is left. A new engine process (a restart) starts its log over. The manager (or an
 * agent) not answering for a while is said once and polled through; the first lookup of the
 * alias is not retried, so a wrong --url fails at once.
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
  // The manager (restarting) or an agent away for a moment: said once, and polled until back.
  const outage = new Outage();
  while (!interrupted && cursors.some((c) => !c.gone)) {
    let answered = true;
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
      } catch (error) {
        if (!(error instanceof CliError) || error.code !== 1) throw error;
        if (error.status === 404) {
          say(cursor.worker, `[fleet] ${alias} is gone from ${cursor.worker}`);
          cursor.gone = true;
        } else {
          answered = false;
          outage.begin(error);
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
    // Over only when every worker's log answered: one still away keeps it on.
    if (answered) outage.over();
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
