import { z } from "zod";

/**
 * OpenAI's error body. Every HTTP surface of vllm-fleet (manager, router, agent) answers
 * errors in this shape so that OpenAI SDKs surface the message as-is.
 */
export const openAiErrorSchema = z.object({
  error: z.object({
    message: z.string(),
    type: z.string(),
    param: z.string().nullable(),
    // OpenAI uses string codes; vLLM (>= 0.10.1) puts the HTTP status as an integer here.
    code: z.union([z.string(), z.number()]).nullable(),
  }),
});
export type OpenAiError = z.infer<typeof openAiErrorSchema>;

/** The closed set of error codes vllm-fleet itself emits, with their HTTP status. */
export const errorStatus = {
  invalid_request: 400,
  invalid_json: 400,
  unauthorized: 401,
  invalid_api_key: 401,
  forbidden: 403,
  not_found: 404,
  model_not_found: 404,
  worker_not_found: 404,
  instance_not_found: 404,
  method_not_allowed: 405,
  request_timeout: 408,
  conflict: 409,
  alias_taken: 409,
  no_capacity: 409,
  payload_too_large: 413,
  headers_too_large: 431,
  internal_error: 500,
  bad_environment: 500,
  upstream_error: 502,
  no_ready_replica: 503,
  not_ready: 503,
  unavailable: 503,
  /** Too many request bodies in flight (the router's MAX_BODY_MEMORY_BYTES). */
  overloaded: 503,
  upstream_timeout: 504,
} as const;
export type ErrorCode = keyof typeof errorStatus;

/** OpenAI's `type` for a status: what the SDKs switch on. */
export function errorTypeFor(status: number): string {
  if (status === 401) return "authentication_error";
  if (status === 403) return "permission_error";
  if (status === 404) return "not_found_error";
  if (status === 409) return "conflict_error";
  if (status === 429) return "rate_limit_error";
  if (status >= 500) return "server_error";
  return "invalid_request_error";
}

export function errorBody(options: {
  message: string;
  status: number;
  code: string | null;
  param?: string | null;
}): OpenAiError {
  return {
    error: {
      message: options.message,
      type: errorTypeFor(options.status),
      param: options.param ?? null,
      code: options.code,
    },
  };
}
