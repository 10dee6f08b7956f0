import { HTTPException } from "hono/http-exception";
import type { ContentfulStatusCode } from "hono/utils/http-status";
import { type ErrorCode, errorBody, errorStatus } from "../protocol/index.ts";

/**
 * The router's one error class: a closed `code`, its HTTP status from protocol/errors.ts,
 * and optional response headers (Retry-After on 503). Handlers throw; `onError` renders
 * OpenAI's `{"error":{...}}` shape.
 */
export class AppError extends HTTPException {
  readonly code: ErrorCode;
  readonly param: string | null;
  readonly extraHeaders: Record<string, string> | undefined;

  constructor(
    code: ErrorCode,
    message: string,
    options: { param?: string | null; headers?: Record<string, string>; cause?: unknown } = {},
  ) {
    super(errorStatus[code] as ContentfulStatusCode, { message, cause: options.cause });
    this.code = code;
    this.param = options.param ?? null;
    this.extraHeaders = options.headers;
  }
}

/** A JSON error response in OpenAI's shape. */
export function errorResponse(options: {
  status: number;
  code: string | null;
  message: string;
  param?: string | null;
  headers?: Record<string, string>;
}): Response {
  const headers = new Headers(options.headers);
  headers.set("content-type", "application/json");
  return new Response(JSON.stringify(errorBody(options)), { status: options.status, headers });
}
