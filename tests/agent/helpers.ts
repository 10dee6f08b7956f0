import { readFileSync } from "node:fs";
import { freePort, waitForHttp } from "../../devkit/net.ts";
import { bunBin, repoRoot, type Service, startProcess } from "../../devkit/proc.ts";
import type {
  Heartbeat,
  InstanceReport,
  OpenAiError,
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
 */
export class StubManager {
  readonly registrations: Recorded<WorkerRegistration>[] = [];
  readonly heartbeats: Recorded<Heartbeat>[] = [];
  heartbeatIntervalS = 0.2;
  /** When true, heartbeats answer 404 until the worker registers again. */
  forgetWorker = false;
  port = 0;
  #server: ReturnType<typeof Bun.serve> | null = null;

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
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
          this.registrations.push({ body, authorization, at: Date.now() });
          this.forgetWorker = false;
          return Response.json({
            worker_id: body.worker_id,
            status: "online",
            heartbeat_interval_s: this.heartbeatIntervalS,
            registered_at: new Date().toISOString(),
          });
        }
        const beat = /^\/v1\/workers\/([^/]+)\/heartbeat$/.exec(url.pathname);
        if (req.method === "POST" && beat) {
          if (this.forgetWorker) {
            return Response.json(
              {
                error: {
                  message: "unknown worker",
                  type: "not_found_error",
                  param: null,
                  code: "worker_not_found",
                },
              },
              { status: 404 },
            );
          }
          this.heartbeats.push({
            body: (await req.json()) as Heartbeat,
            authorization,
            at: Date.now(),
          });
          return Response.json({ heartbeat_interval_s: this.heartbeatIntervalS });
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

export type AgentProcess = Service & { url: string; port: number };

/** Starts `bun agent/main.ts` with `env` and waits until it listens. */
export async function startAgent(env: Record<string, string | undefined>): Promise<AgentProcess> {
  const port = Number(env.WORKER_PORT ?? (await freePort()));
  const service = startProcess([bunBin, "agent/main.ts"], {
    env: { LOG_LEVEL: "info", ...env, WORKER_PORT: String(port) },
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
