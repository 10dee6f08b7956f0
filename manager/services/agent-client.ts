import { schema } from "../../db/index.ts";
import type { WorkerRow } from "../../db/schema/workers.ts";
import { describeError } from "../../kit/errors.ts";
import type { FetchLike } from "../../kit/fetch.ts";
import {
  type InstanceReport,
  type InstanceSpecInput,
  instanceListSchema,
  instanceReportSchema,
  type LogLines,
  logLinesSchema,
  type ManagementPath,
} from "../../protocol/index.ts";

export type AgentCallResult<T> =
  | { ok: true; value: T }
  | {
      ok: false;
      status: number | null;
      error: string;
      /** The `error.code` of the agent's answer, when it sent one (`instance_not_found`, `not_found`). */
      code?: string;
    };

/** What the manager knows of a worker to call its agent: its URLs, what answers, its credential. */
export type AgentAddress = Pick<
  WorkerRow,
  | "workerId"
  | "workerUrl"
  | "publicWorkerUrl"
  | "agentToken"
  | "internalReachable"
  | "publicReachable"
>;

/** The columns of `AgentAddress`, for selects that feed the agent client. */
export const agentAddressColumns = {
  workerId: schema.workers.workerId,
  workerUrl: schema.workers.workerUrl,
  publicWorkerUrl: schema.workers.publicWorkerUrl,
  agentToken: schema.workers.agentToken,
  internalReachable: schema.workers.internalReachable,
  publicReachable: schema.workers.publicReachable,
};

/**
 * Where and with which credential one management call goes. `fallback` is set when no
 * path is known to answer: the call then tries `url` (internal) first and `fallback`
 * (public) when that gets no answer at all.
 */
export type AgentTarget = { url: string; fallback: string | undefined; token: string | undefined };

/**
 * The path the probes found answering: internal first (closer, and not through the
 * provider's mapping), else public; null when neither answered (or none was probed yet).
 */
export function managementPath(
  worker: Pick<AgentAddress, "publicWorkerUrl" | "internalReachable" | "publicReachable">,
): ManagementPath | null {
  if (worker.internalReachable === true) return "internal";
  if (worker.publicWorkerUrl !== null && worker.publicReachable === true) return "public";
  return null;
}

/**
 * Manager → agent calls (launch, list, stop, logs). Each goes to the worker's management
 * target (`target()`): the path the probes found answering and the worker's own agent
 * credential.
 */
export class AgentClient {
  constructor(
    private readonly options: {
      fetch: FetchLike;
      timeoutMs: number;
    },
  ) {}

  /**
   * The URL and credential a management call to `worker` uses. The credential is that
   * worker's own agent credential, never a fleet-wide secret; a worker without one (open
   * mode: the manager issued none) is called without a token.
   */
  target(worker: AgentAddress): AgentTarget {
    const path = managementPath(worker);
    const publicUrl = worker.publicWorkerUrl;
    const url = path === "public" && publicUrl ? publicUrl : worker.workerUrl;
    const fallback =
      path === null && publicUrl !== null && publicUrl !== worker.workerUrl ? publicUrl : undefined;
    return { url, fallback, token: worker.agentToken ?? undefined };
  }

  /** `POST /v1/instances`; the agent answers 202 with the instance (port leased by it). */
  launch(
    worker: AgentAddress,
    spec: InstanceSpecInput,
  ): Promise<AgentCallResult<InstanceReport | null>> {
    return this.call(
      worker,
      "/v1/instances",
      { method: "POST", body: JSON.stringify(spec) },
      (body) => {
        const parsed = instanceReportSchema.safeParse(body);
        return parsed.success ? parsed.data : null;
      },
    );
  }

  list(worker: AgentAddress): Promise<AgentCallResult<InstanceReport[]>> {
    return this.call(worker, "/v1/instances", { method: "GET" }, (body) => {
      const parsed = instanceListSchema.safeParse(body);
      return parsed.success ? parsed.data.instances : [];
    });
  }

  /** `DELETE /v1/instances/{alias}`; a 404 counts as stopped (nothing to stop). */
  async stop(worker: AgentAddress, alias: string): Promise<AgentCallResult<null>> {
    const result = await this.call(
      worker,
      `/v1/instances/${encodeURIComponent(alias)}`,
      { method: "DELETE" },
      () => null,
    );
    if (!result.ok && result.status === 404) return { ok: true, value: null };
    return result;
  }

  /**
   * `POST /v1/instances/{alias}/restart`: the agent stops the engine and launches it again on
   * the same GPUs and port; 202 with its report as the restart begins (`stopping`).
   */
  restart(worker: AgentAddress, alias: string): Promise<AgentCallResult<InstanceReport | null>> {
    return this.call(
      worker,
      `/v1/instances/${encodeURIComponent(alias)}/restart`,
      { method: "POST" },
      (body) => {
        const parsed = instanceReportSchema.safeParse(body);
        return parsed.success ? parsed.data : null;
      },
    );
  }

  /** `GET /v1/instances/{alias}/logs?tail=N`: the engine's last log lines, as plain text. */
  logs(worker: AgentAddress, alias: string, tail: number): Promise<AgentCallResult<string>> {
    return this.call(
      worker,
      `/v1/instances/${encodeURIComponent(alias)}/logs?tail=${tail}`,
      { method: "GET" },
      (_body, text) => text,
    );
  }

  /** `GET /v1/instances/{alias}/logs/lines`: the engine's log from a line number on. */
  logLines(
    worker: AgentAddress,
    alias: string,
    query: { after: number; limit: number },
  ): Promise<AgentCallResult<LogLines | null>> {
    return this.call(
      worker,
      `/v1/instances/${encodeURIComponent(alias)}/logs/lines?after=${query.after}&limit=${query.limit}`,
      { method: "GET" },
      (body) => {
        const parsed = logLinesSchema.safeParse(body);
        return parsed.success ? parsed.data : null;
      },
    );
  }

  private async call<T>(
    worker: AgentAddress,
    path: string,
    init: RequestInit,
    parse: (body: unknown, text: string) => T,
  ): Promise<AgentCallResult<T>> {
    const target = this.target(worker);
    const headers: Record<string, string> = { accept: "application/json, text/plain" };
    if (init.body) headers["content-type"] = "application/json";
    if (target.token) headers.authorization = `Bearer ${target.token}`;
    let workerUrl = target.url;
    let response: Response | undefined;
    const failures: string[] = [];
    // Without a path known to answer: internal, then public. The agent's instance API is
    // idempotent per alias (a repeated launch answers the existing engine, a repeated stop
    // 404), so a call that reached the agent without its answer reaching us is safe to repeat.
    for (const url of target.fallback ? [target.url, target.fallback] : [target.url]) {
      workerUrl = url;
      try {
        response = await this.options.fetch(`${url}${path}`, {
          ...init,
          headers,
          signal: AbortSignal.timeout(this.options.timeoutMs),
          // Never follow: a redirect would carry the credential and the body to another host.
          redirect: "manual",
        });
        break;
      } catch (error) {
        failures.push(`agent at ${url} unreachable: ${describeError(error)}`);
      }
    }
    if (!response) return { ok: false, status: null, error: failures.join("; ") };
    const text = await response.text().catch(() => "");
    let body: unknown = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch {
      body = null;
    }
    if (response.status >= 300 && response.status < 400) {
      return {
        ok: false,
        status: response.status,
        error: `agent at ${workerUrl} answered a redirect (${response.status}); calls to agents never follow redirects`,
      };
    }
    if (!response.ok) {
      return {
        ok: false,
        status: response.status,
        error: `agent at ${workerUrl} answered ${response.status}: ${errorMessage(body) ?? (text.slice(0, 300) || response.statusText)}`,
        ...errorCode(body),
      };
    }
    return { ok: true, value: parse(body, text) };
  }
}

function errorMessage(body: unknown): string | undefined {
  if (typeof body !== "object" || body === null || !("error" in body)) return undefined;
  const error = (body as { error: unknown }).error;
  if (typeof error === "string") return error;
  if (typeof error === "object" && error !== null && "message" in error) {
    const message = (error as { message: unknown }).message;
    return typeof message === "string" ? message : undefined;
  }
  return undefined;
}

function errorCode(body: unknown): { code?: string } {
  if (typeof body !== "object" || body === null || !("error" in body)) return {};
  const error = (body as { error: unknown }).error;
  if (typeof error !== "object" || error === null || !("code" in error)) return {};
  const code = (error as { code: unknown }).code;
  return typeof code === "string" ? { code } : {};
}
