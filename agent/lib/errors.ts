import type { Context } from "hono";
import { HTTPException } from "hono/http-exception";
import type { ContentfulStatusCode } from "hono/utils/http-status";
import { type ErrorCode, errorBody, errorStatus } from "../../protocol/index.ts";
import type { Logger } from "./log.ts";

type ErrorExtras = { param?: string | null; headers?: Record<string, string> };

/** The agent's one error type: a code from the closed set, rendered in OpenAI's shape. */
export class AppError extends HTTPException {
  readonly code: ErrorCode;
  readonly extras: ErrorExtras;

  constructor(code: ErrorCode, message: string, extras: ErrorExtras = {}) {
    super(errorStatus[code] as ContentfulStatusCode, { message });
    this.code = code;
    this.extras = extras;
  }
}

/** An OpenAI-shaped error response (the proxy's hot path returns these without throwing). */
export function errorResponse(
  code: ErrorCode,
  message: string,
  extras: ErrorExtras = {},
): Response {
  const status = errorStatus[code];
  const body = errorBody({ message, status, code, param: extras.param ?? null });
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json", ...extras.headers },
  });
}

export function onError(log: Logger) {
  return (error: Error, c: Context): Response => {
    if (error instanceof AppError) return errorResponse(error.code, error.message, error.extras);
    if (error instanceof HTTPException && error.status < 500) {
      const code: ErrorCode = error.status === 404 ? "not_found" : "invalid_request";
      const body = errorBody({ message: error.message, status: error.status, code });
      return c.json(body, error.status);
    }
    log.error("unhandled error", { path: c.req.path, error: error.stack ?? String(error) });
    return errorResponse("internal_error", "internal error");
  };
}
