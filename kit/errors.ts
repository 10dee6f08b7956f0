import { HTTPException } from "hono/http-exception";
import type { ContentfulStatusCode } from "hono/utils/http-status";
import type { z } from "zod";
import { type ErrorCode, errorBody, errorStatus } from "../protocol/errors.ts";
import { describeError, type Logger } from "./log.ts";

export type ErrorOptions = {
  /** The request field at fault (`model`, `messages.0.content`), OpenAI's `param`. */
  param?: string | null;
  /** Response headers that belong with this error (`Retry-After` on 503, `Allow` on 405). */
  headers?: Record<string, string>;
  /** Machine-readable detail placed next to `message` (e.g. per-worker placement reasons). */
  detail?: Record<string, unknown>;
  cause?: unknown;
};

/**
 * The one error class of every service: a code from the closed set in protocol/errors.ts,
 * whose HTTP status comes from there too. Handlers throw it; `renderError` answers in
 * OpenAI's `{"error":{"message","type","param","code"}}` shape.
 */
export class AppError extends HTTPException {
  readonly code: ErrorCode;
  readonly param: string | null;
  readonly headers: Record<string, string> | undefined;
  readonly detail: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message: string, options: ErrorOptions = {}) {
    super(errorStatus[code] as ContentfulStatusCode, { message, cause: options.cause });
    this.code = code;
    this.param = options.param ?? null;
    this.headers = options.headers;
    this.detail = options.detail;
  }
}

/** An OpenAI-shaped error response, for hot paths that answer without throwing. */
export function errorResponse(
  code: ErrorCode,
  message: string,
  options: ErrorOptions = {},
): Response {
  const status = errorStatus[code];
  const body = errorBody({ message, status, code, param: options.param ?? null });
  const payload = options.detail ? { error: { ...body.error, ...options.detail } } : body;
  const headers = new Headers(options.headers);
  headers.set("content-type", "application/json");
  return new Response(JSON.stringify(payload), { status, headers });
}

/**
 * Renders anything thrown by a handler: an `AppError` as itself, Hono's own exceptions by
 * status, and anything else as a logged 500 that names the request id (never the cause).
 */
export function renderError(
  error: unknown,
  context: { log: Logger; requestId?: string; path?: string },
): Response {
  const requestHeaders: Record<string, string> = context.requestId
    ? { "x-request-id": context.requestId }
    : {};
  if (error instanceof AppError) {
    return errorResponse(error.code, error.message, {
      param: error.param,
      detail: error.detail,
      headers: { ...error.headers, ...requestHeaders },
    });
  }
  if (error instanceof HTTPException && error.status < 500) {
    const code: ErrorCode =
      error.status === 401
        ? "unauthorized"
        : error.status === 404
          ? "not_found"
          : error.status === 413
            ? "payload_too_large"
            : "invalid_request";
    return errorResponse(code, error.message || "request failed", { headers: requestHeaders });
  }
  context.log.error("unhandled error", {
    request_id: context.requestId,
    path: context.path,
    error: error instanceof Error ? (error.stack ?? describeError(error)) : String(error),
  });
  const suffix = context.requestId ? ` (request ${context.requestId})` : "";
  return errorResponse("internal_error", `internal error${suffix}`, { headers: requestHeaders });
}

/** How many characters of a client's value an error message quotes. */
export const maxQuoted = 256;

/**
 * A value the client sent, as an error message may quote it: whole up to 256 characters,
 * else its first 256 and an ellipsis. Every message that echoes input (a model name, a
 * field, a path) goes through this, so a 1 MB `model` is not sent back whole.
 */
export function quote(value: string, max = maxQuoted): string {
  if (value.length <= max) return value;
  // Never cut a surrogate pair in half: the message must stay valid UTF-16.
  const end = /[\uD800-\uDBFF]/.test(value.charAt(max - 1)) ? max - 1 : max;
  return `${value.slice(0, end)}…`;
}

/** A zod failure → 400 naming the first failing field (dotted path) in `param`. */
export function validationError(error: z.ZodError, where = "body"): AppError {
  const issue = error.issues[0];
  const path = quote(issue?.path.map(String).join(".") ?? "");
  const param = path === "" ? null : path;
  const what =
    issue?.code === "unrecognized_keys"
      ? `unknown field(s) ${quote(issue.keys.join(", "))}`
      : issue?.message;
  const message = issue ? `${param ?? where}: ${what}` : `invalid ${where}`;
  return new AppError("invalid_request", message, { param });
}

/** Parses `value` with `schema`, throwing the 400 of `validationError` on failure. */
export function parseWith<S extends z.ZodType>(
  schema: S,
  value: unknown,
  where = "body",
): z.infer<S> {
  const result = schema.safeParse(value);
  if (!result.success) throw validationError(result.error, where);
  return result.data;
}

/** Reads a JSON body, turning an empty or malformed one into a 400 instead of a crash. */
export async function readJson(request: Request): Promise<unknown> {
  const text = await request.text();
  if (text.trim() === "") throw new AppError("invalid_json", "request body must be a JSON object");
  try {
    return JSON.parse(text);
  } catch {
    throw new AppError("invalid_json", "request body is not valid JSON");
  }
}

export { describeError } from "./log.ts";
