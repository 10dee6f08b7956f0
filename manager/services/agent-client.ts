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

/** Manager → agent calls on the agent's internal `worker_url`, bearer FLEET_TOKEN. */
export class AgentClient {
  constructor(
    private readonly options: { fetch: FetchLike; token: string | undefined; timeoutMs: number },
  ) {}

  /** `POST /v1/instances`; the agent answers 202 with the instance (port leased by it). */
  launch(
    workerUrl: string,
    spec: InstanceSpecInput,
  ): Promise<AgentCallResult<InstanceReport | null>> {
    return this.call(
      workerUrl,
      "/v1/instances",
      { method: "POST", body: JSON.stringify(spec) },
      (body) => {
        const parsed = instanceReportSchema.safeParse(body);
        return parsed.success ? parsed.data : null;
      },
    );
  }

  list(workerUrl: string): Promise<AgentCallResult<InstanceReport[]>> {
    return this.call(workerUrl, "/v1/instances", { method: "GET" }, (body) => {
      const parsed = instanceListSchema.safeParse(body);
      return parsed.success ? parsed.data.instances : [];
    });
  }

  /** `DELETE /v1/instances/{alias}`; a 404 counts as stopped (nothing to stop). */
  async stop(workerUrl: string, alias: string): Promise<AgentCallResult<null>> {
    const result = await this.call(
      workerUrl,
      `/v1/instances/${encodeURIComponent(alias)}`,
      { method: "DELETE" },
      () => null,
    );
    if (!result.ok && result.status === 404) return { ok: true, value: null };
    return result;
  }

  /** `GET /v1/instances/{alias}/logs?tail=N`: the engine's last log lines, as plain text. */
  logs(workerUrl: string, alias: string, tail: number): Promise<AgentCallResult<string>> {
    return this.call(
      workerUrl,
      `/v1/instances/${encodeURIComponent(alias)}/logs?tail=${tail}`,
      { method: "GET" },
      (_body, text) => text,
    );
  }

  private async call<T>(
    workerUrl: string,
    path: string,
    init: RequestInit,
    parse: (body: unknown, text: string) => T,
  ): Promise<AgentCallResult<T>> {
    const headers: Record<string, string> = { accept: "application/json, text/plain" };
    if (init.body) headers["content-type"] = "application/json";
    if (this.options.token) headers.authorization = `Bearer ${this.options.token}`;
    let response: Response;
    try {
      response = await this.options.fetch(`${workerUrl}${path}`, {
        ...init,
        headers,
        signal: AbortSignal.timeout(this.options.timeoutMs),
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
