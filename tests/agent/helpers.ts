import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { joinedAgentDataDir } from "../../devkit/fleet.ts";
import { freePort, waitForHttp } from "../../devkit/net.ts";
import { bunBin, repoRoot, type Service, startProcess } from "../../devkit/proc.ts";
import type {
  Heartbeat,
  InstanceReport,
  OpenAiError,
  WorkerCredentials,
  WorkerRegistration,
} from "../../protocol/index.ts";

export const simDir = `${repoRoot}/agent/sim`;
export const simVllm = `${simDir}/vllm`;
/** PATH with the simulator's nvidia-smi first, as on a GPU host with the driver installed. */
export const simPath = `${simDir}:${process.env.PATH ?? ""}`;
export const twoH100 = "2x NVIDIA H100 80GB HBM3:81559";

/** A few free ports in a row for one agent's engines, away from other tests' ports. */
export async function enginePortRange(size = 20): Promise<{ min: number; max: number }> {
  const min = 20_000 + Math.floor(Math.random() * 40_000);
  return { min, max: min + size - 1 };
}

type Recorded<T> = { body: T; authorization: string | null; at: number };

/**
 * A stand-in manager: records registrations and heartbeats, answers the heartbeat interval
 * it is told, can answer 404 to heartbeats (a manager that lost this worker) and can go
 * down and come back on the same port.
 *
 * With `joinToken` it plays the identity rules: the join token registers a worker that has
 * not joined and the reply carries its pair; after that only the worker credential opens its
 * registrations and heartbeats; `rotate()` hands a new pair out in the next heartbeat reply.
 */
export class StubManager {
  readonly registrations: Recorded<WorkerRegistration>[] = [];
  readonly heartbeats: Recorded<Heartbeat>[] = [];
  /** Every pair handed out (joins and rotations), in order. */
  readonly issued: WorkerCredentials[] = [];
  heartbeatIntervalS = 0.2;
  /** When true, heartbeats answer 404 until the worker registers again. */
  forgetWorker = false;
  /** When set, answers a join with this 409 message (a worker_id that holds a credential). */
  conflict: string | null = null;
  port = 0;
  /** The worker credential each worker presents now (its current pair). */
  readonly #current = new Map<string, WorkerCredentials>();
  readonly #rotate = new Set<string>();
  #server: ReturnType<typeof Bun.serve> | null = null;

  constructor(readonly joinToken?: string) {}

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** The pair a worker holds now (after a join or a completed rotation). */
  current(workerId: string): WorkerCredentials | undefined {
    return this.#current.get(workerId);
  }

  /** The next heartbeat of `workerId` gets a new pair. */
  rotate(workerId: string): void {
    this.#rotate.add(workerId);
  }

  /** Forgets every credential (a manager whose database was reset). */
  forgetCredentials(): void {
    this.#current.clear();
  }

  #issue(workerId: string): WorkerCredentials {
    const pair = {
      worker_credential: `fw_stub-${workerId}-${this.issued.length}-${crypto.randomUUID()}`,
      agent_token: `fa_stub-${workerId}-${this.issued.length}-${crypto.randomUUID()}`,
    };
    this.issued.push(pair);
    return pair;
  }

  async start(port?: number): Promise<this> {
    // Restarting keeps the port, as a manager coming back after an outage would.
    this.port = port ?? (this.port || (await freePort()));
    this.#server = Bun.serve({
      hostname: "127.0.0.1",
      port: this.port,
      fetch: async (req) => {
        const url = new URL(req.url);
        const authorization = req.headers.get("authorization");
        if (req.method === "POST" && url.pathname === "/v1/workers/register") {
          const body = (await req.json()) as WorkerRegistration;
          const held = this.#current.get(body.worker_id);
          let credentials: WorkerCredentials | undefined;
          if (this.joinToken) {
            if (authorization === `Bearer ${this.joinToken}`) {
              if (this.conflict) return stubError(409, "conflict", this.conflict);
              if (held)
                return stubError(409, "conflict", `worker ${body.worker_id} is already registered`);
              credentials = this.#issue(body.worker_id);
              this.#current.set(body.worker_id, credentials);
            } else if (!held || authorization !== `Bearer ${held.worker_credential}`) {
              return stubError(401, "unauthorized", "unknown credential");
            }
          }
          this.registrations.push({ body, authorization, at: Date.now() });
          this.forgetWorker = false;
          return Response.json({
            worker_id: body.worker_id,
            status: "online",
            heartbeat_interval_s: this.heartbeatIntervalS,
            registered_at: new Date().toISOString(),
            ...(credentials ? { credentials } : {}),
          });
        }
        const beat = /^\/v1\/workers\/([^/]+)\/heartbeat$/.exec(url.pathname);
        if (req.method === "POST" && beat) {
          const workerId = decodeURIComponent(beat[1] ?? "");
          if (this.forgetWorker) {
            return stubError(404, "worker_not_found", "unknown worker");
          }
          const held = this.#current.get(workerId);
          if (this.joinToken && authorization !== `Bearer ${held?.worker_credential}`) {
            return stubError(401, "unauthorized", "not this worker's credential");
          }
          this.heartbeats.push({
            body: (await req.json()) as Heartbeat,
            authorization,
            at: Date.now(),
          });
          let credentials: WorkerCredentials | undefined;
          if (this.#rotate.delete(workerId)) {
            // Promoted at once here: the real manager waits for the agent to present it.
            credentials = this.#issue(workerId);
            this.#current.set(workerId, credentials);
          }
          return Response.json({
            heartbeat_interval_s: this.heartbeatIntervalS,
            ...(credentials ? { credentials } : {}),
          });
        }
        return new Response("not found", { status: 404 });
      },
    });
    return this;
  }

  async stop(): Promise<void> {
    await this.#server?.stop(true);
    this.#server = null;
  }

  lastRegistration(): WorkerRegistration | undefined {
    return this.registrations.at(-1)?.body;
  }
}

function stubError(status: number, code: string, message: string): Response {
  return Response.json({ error: { message, type: "error", param: null, code } }, { status });
}

/** A data directory with the credentials of an agent that joined (devkit/fleet.ts). */
export const joinedDataDir = joinedAgentDataDir;

export type AgentProcess = Service & { url: string; port: number };

/**
 * Starts `bun agent/main.ts` with `env` and waits until it listens. Its data directory is a
 * fresh one unless `AGENT_DATA_DIR` is given (a restart passes the same one again).
 */
export async function startAgent(env: Record<string, string | undefined>): Promise<AgentProcess> {
  const port = Number(env.WORKER_PORT ?? (await freePort()));
  const service = startProcess([bunBin, "agent/main.ts"], {
    env: {
      LOG_LEVEL: "info",
      AGENT_DATA_DIR: mkdtempSync(join(tmpdir(), "agent-data-")),
      ...env,
      WORKER_PORT: String(port),
    },
  });
  await service.waitFor("agent listening", 20_000);
  const url = `http://127.0.0.1:${port}`;
  await waitForHttp(`${url}/health`);
  return Object.assign(service, { url, port });
}

/** A JSON call to an agent, with the bearer token when given. */
export async function call<T = InstanceReport & OpenAiError>(
  url: string,
  options: { method?: string; body?: unknown; token?: string; raw?: string } = {},
): Promise<{ status: number; json: T; headers: Headers; text: string }> {
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (options.token) headers.authorization = `Bearer ${options.token}`;
  const response = await fetch(url, {
    method:
      options.method ?? (options.body === undefined && options.raw === undefined ? "GET" : "POST"),
    headers,
    body: options.raw ?? (options.body === undefined ? undefined : JSON.stringify(options.body)),
  });
  const text = await response.text();
  let json: unknown = null;
  try {
    json = JSON.parse(text);
  } catch {
    // Plain-text answers (logs) keep json null.
  }
  return { status: response.status, json: json as T, headers: response.headers, text };
}

/** The argv a process was started with, from /proc. */
export function procArgv(pid: number): string[] {
  return readFileSync(`/proc/${pid}/cmdline`, "utf8")
    .split("\0")
    .filter((part) => part !== "");
}

/** The environment a process was started with, from /proc. */
export function procEnv(pid: number): Record<string, string> {
  const env: Record<string, string> = {};
  for (const entry of readFileSync(`/proc/${pid}/environ`, "utf8").split("\0")) {
    const eq = entry.indexOf("=");
    if (eq > 0) env[entry.slice(0, eq)] = entry.slice(eq + 1);
  }
  return env;
}

/** Whether any process of the group led by `pid` is still alive. */
export function groupAlive(pid: number): boolean {
  try {
    process.kill(-pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Whether a single process is alive (and not a zombie). */
export function processAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return !/^\d+ \(.*\) Z/.test(stat);
  } catch {
    return false;
  }
}
