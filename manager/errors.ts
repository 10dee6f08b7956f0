import type { Context } from "hono";
import { HTTPException } from "hono/http-exception";
import type { ContentfulStatusCode } from "hono/utils/http-status";
import type { z } from "zod";
import { type ErrorCode, errorBody, errorStatus } from "../protocol/index.ts";
import type { Log } from "./deps.ts";

/** The one error handlers throw; `onError` renders it in OpenAI's shape. */
export class AppError extends HTTPException {
  readonly code: ErrorCode;
  readonly param: string | null;
  /** Extra machine-readable detail placed next to `message` (e.g. per-worker reasons). */
  readonly detail: Record<string, unknown> | undefined;

  constructor(
    code: ErrorCode,
    message: string,
    options: { param?: string | null; detail?: Record<string, unknown> } = {},
  ) {
    super(errorStatus[code] as ContentfulStatusCode, { message });
    this.code = code;
    this.param = options.param ?? null;
    this.detail = options.detail;
  }
}

/** A zod failure → 400 naming the first failing field (dotted path) in `param`. */
export function validationError(error: z.ZodError, where = "body"): AppError {
  const issue = error.issues[0];
  const path = issue?.path.map(String).join(".") ?? "";
  const param = path === "" ? null : path;
  const message = issue ? `${param ?? where}: ${issue.message}` : `invalid ${where}`;
  return new AppError("invalid_request", message, { param });
}

export function parseWith<S extends z.ZodType>(
  schema: S,
  value: unknown,
  where = "body",
): z.infer<S> {
  const result = schema.safeParse(value);
  if (!result.success) throw validationError(result.error, where);
  return result.data;
}

/** Reads a JSON body, turning a malformed one into a 400 instead of a crash. */
export async function readJson(c: Context): Promise<unknown> {
  const text = await c.req.text();
  if (text.trim() === "") throw new AppError("invalid_json", "request body must be a JSON object");
  try {
    return JSON.parse(text);
  } catch {
    throw new AppError("invalid_json", "request body is not valid JSON");
  }
}

export function renderError(error: Error, c: Context, log: Log): Response {
  if (error instanceof AppError) {
    const body = errorBody({
      message: error.message,
      status: error.status,
      code: error.code,
      param: error.param,
    });
    return c.json({ error: { ...body.error, ...error.detail } }, error.status);
  }
  if (error instanceof HTTPException) {
    const code = error.status === 401 ? "unauthorized" : error.status === 404 ? "not_found" : null;
    return c.json(
      errorBody({ message: error.message || "request failed", status: error.status, code }),
      error.status,
    );
  }
  const requestId = c.req.header("x-request-id") ?? crypto.randomUUID();
  log.error("unhandled error", { requestId, path: c.req.path, error: describeError(error) });
  return c.json(
    errorBody({
      message: `internal error (request ${requestId})`,
      status: 500,
      code: "internal_error",
    }),
    500,
  );
}

export function describeError(error: unknown): string {
  if (error instanceof Error) {
    const cause = error.cause instanceof Error ? `: ${error.cause.message}` : "";
    return `${error.message}${cause}`;
  }
  return String(error);
}
