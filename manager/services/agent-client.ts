import { schema } from "../../db/index.ts";
import type { WorkerRow } from "../../db/schema/workers.ts";
import { describeError } from "../../kit/errors.ts";
import type { FetchLike } from "../../kit/fetch.ts";
import {
  type InstanceReport,
  type InstanceSpecInput,
  instanceListSchema,
  instanceReportSchema,
} from "../../protocol/index.ts";

export type AgentCallResult<T> =
  | { ok: true; value: T }
  | { ok: false; status: number | null; error: string };

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

/** Where and with which credential one management call goes. */
export type AgentTarget = { url: string; token: string | undefined };

/**
 * Manager → agent calls (launch, list, stop, logs). Each goes to the worker's management
 * target (`target()`): the path the probes found answering and the worker's own agent
 * credential.
 */
export class AgentClient {
  constructor(
    private readonly options: {
      fetch: FetchLike;
      /** The cluster token, for agents that joined before per-worker credentials. */
      token: string | undefined;
      timeoutMs: number;
    },
  ) {}

  /** The URL and credential a management call to `worker` uses. */
  target(worker: AgentAddress): AgentTarget {
    return { url: worker.workerUrl, token: worker.agentToken ?? this.options.token };
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

  /** `GET /v1/instances/{alias}/logs?tail=N`: the engine's last log lines, as plain text. */
  logs(worker: AgentAddress, alias: string, tail: number): Promise<AgentCallResult<string>> {
    return this.call(
      worker,
      `/v1/instances/${encodeURIComponent(alias)}/logs?tail=${tail}`,
      { method: "GET" },
      (_body, text) => text,
    );
  }

  private async call<T>(
    worker: AgentAddress,
    path: string,
    init: RequestInit,
    parse: (body: unknown, text: string) => T,
  ): Promise<AgentCallResult<T>> {
    const { url: workerUrl, token } = this.target(worker);
    const headers: Record<string, string> = { accept: "application/json, text/plain" };
    if (init.body) headers["content-type"] = "application/json";
    if (token) headers.authorization = `Bearer ${token}`;
    let response: Response;
    try {
      response = await this.options.fetch(`${workerUrl}${path}`, {
        ...init,
        headers,
        signal: AbortSignal.timeout(this.options.timeoutMs),
        // Never follow: a redirect would carry the credential and the body to another host.
        redirect: "manual",
      });
    } catch (error) {
      return {
        ok: false,
        status: null,
        error: `agent at ${workerUrl} unreachable: ${describeError(error)}`,
      };
    }
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
