import { z } from "zod";
import {
  aliasSchema,
  apiKeyCreatedSchema,
  apiKeyCreateSchema,
  apiKeyInfoSchema,
  apiKeyListSchema,
  heartbeatReplySchema,
  heartbeatSchema,
  modelInfoSchema,
  modelRegistrationSchema,
  openAiErrorSchema,
  openAiModelListSchema,
  routeEntrySchema,
  routeSnapshotSchema,
  usageBatchSchema,
  workerIdSchema,
  workerInfoSchema,
  workerListSchema,
  workerRegistrationReplySchema,
  workerRegistrationSchema,
} from "../protocol/index.ts";

type Operation = {
  method: "get" | "post" | "delete";
  path: string;
  summary: string;
  auth: "admin" | "fleet" | "none";
  body?: z.ZodType;
  status: number;
  response?: z.ZodType;
  params?: Record<string, z.ZodType>;
  query?: Record<string, z.ZodType>;
  /** Media type of a 2xx body other than JSON. */
  produces?: "text/plain";
  errors: number[];
};

const modelDeletedSchema = z.object({
  id: z.string(),
  object: z.literal("model"),
  deleted: z.literal(true),
  stopped: z.array(
    z.object({ worker_id: z.string(), ok: z.boolean(), error: z.string().optional() }),
  ),
});

/** Every endpoint of the manager, described from the same zod schemas that validate it. */
export const operations: Operation[] = [
  {
    method: "post",
    path: "/v1/workers/register",
    summary: "Register (or re-register) a worker; idempotent per worker_id",
    auth: "fleet",
    body: workerRegistrationSchema,
    status: 200,
    response: workerRegistrationReplySchema,
    errors: [400, 401],
  },
  {
    method: "post",
    path: "/v1/workers/{worker_id}/heartbeat",
    summary: "Heartbeat: GPU stats and instance states; 404 means register again",
    auth: "fleet",
    params: { worker_id: workerIdSchema },
    body: heartbeatSchema,
    status: 200,
    response: heartbeatReplySchema,
    errors: [400, 401, 404],
  },
  {
    method: "get",
    path: "/v1/workers",
    summary: "List workers (WorkerInfo)",
    auth: "admin",
    status: 200,
    response: workerListSchema,
    errors: [401],
  },
  {
    method: "get",
    path: "/v1/workers/{worker_id}",
    summary: "One worker (WorkerInfo)",
    auth: "admin",
    params: { worker_id: workerIdSchema },
    status: 200,
    response: workerInfoSchema,
    errors: [401, 404],
  },
  {
    method: "post",
    path: "/v1/models/register",
    summary: "Register a model: place its replicas on GPUs and launch them",
    auth: "admin",
    body: modelRegistrationSchema,
    status: 201,
    response: modelInfoSchema,
    errors: [400, 401, 409],
  },
  {
    method: "get",
    path: "/v1/models",
    summary:
      "OpenAI model list of registered models, with status (admin; others get the router's list)",
    auth: "admin",
    status: 200,
    response: openAiModelListSchema,
    errors: [401],
  },
  {
    method: "get",
    path: "/v1/models/{alias}",
    summary: "A model, its instances and routing records",
    auth: "admin",
    params: { alias: aliasSchema },
    status: 200,
    response: modelInfoSchema,
    errors: [401, 404],
  },
  {
    method: "get",
    path: "/v1/models/{alias}/logs",
    summary: "The engines' last log lines, fetched from the agents (plain text)",
    auth: "admin",
    params: { alias: aliasSchema },
    query: {
      tail: z.number().int().min(1).max(10_000).default(100),
      worker_id: z.string().optional(),
    },
    status: 200,
    produces: "text/plain",
    errors: [401, 404],
  },
  {
    method: "delete",
    path: "/v1/models/{alias}",
    summary: "Delete a model: routes removed, engines stopped",
    auth: "admin",
    params: { alias: aliasSchema },
    status: 200,
    response: modelDeletedSchema,
    errors: [401, 404],
  },
  {
    method: "get",
    path: "/v1/routes",
    summary: "Route snapshot for routers; ETag = quoted version, If-None-Match gives 304",
    auth: "fleet",
    status: 200,
    response: routeSnapshotSchema,
    errors: [401],
  },
  {
    method: "get",
    path: "/v1/routes/{alias}",
    summary: "Routes of one alias",
    auth: "fleet",
    params: { alias: aliasSchema },
    status: 200,
    response: z.object({
      alias: z.string(),
      version: z.string(),
      routes: z.array(routeEntrySchema),
    }),
    errors: [401, 404],
  },
  {
    method: "post",
    path: "/v1/usage",
    summary: "A router's batch of usage records → request_logs",
    auth: "fleet",
    body: usageBatchSchema,
    status: 202,
    response: z.object({ accepted: z.number().int() }),
    errors: [400, 401],
  },
  {
    method: "post",
    path: "/v1/keys",
    summary: "Create an API key (the key is shown once)",
    auth: "admin",
    body: apiKeyCreateSchema,
    status: 201,
    response: apiKeyCreatedSchema,
    errors: [400, 401],
  },
  {
    method: "get",
    path: "/v1/keys",
    summary: "List API keys (never the keys themselves)",
    auth: "admin",
    status: 200,
    response: apiKeyListSchema,
    errors: [401],
  },
  {
    method: "delete",
    path: "/v1/keys/{id}",
    summary: "Revoke an API key",
    auth: "admin",
    params: { id: z.string() },
    status: 200,
    response: apiKeyInfoSchema,
    errors: [401, 404],
  },
  {
    method: "get",
    path: "/openapi.json",
    summary: "This document",
    auth: "none",
    status: 200,
    errors: [],
  },
  {
    method: "get",
    path: "/docs",
    summary: "A readable listing of the API",
    auth: "none",
    status: 200,
    errors: [],
  },
];

const jsonSchema = (schema: z.ZodType, io: "input" | "output") =>
  z.toJSONSchema(schema, { io, unrepresentable: "any", target: "openapi-3.0" });

let cached: Record<string, unknown> | undefined;

export function openApiDocument(): Record<string, unknown> {
  if (cached) return cached;
  const paths: Record<string, Record<string, unknown>> = {};
  for (const op of operations) {
    const responses: Record<string, unknown> = {
      [op.status]: {
        description: "success",
        ...(op.response
          ? { content: { "application/json": { schema: jsonSchema(op.response, "output") } } }
          : {}),
        ...(op.produces ? { content: { [op.produces]: { schema: { type: "string" } } } } : {}),
      },
    };
    for (const status of op.errors) {
      responses[status] = {
        description: "error in OpenAI's shape",
        content: { "application/json": { schema: jsonSchema(openAiErrorSchema, "output") } },
      };
    }
    paths[op.path] ??= {};
    const entry = paths[op.path];
    if (!entry) continue;
    entry[op.method] = {
      summary: op.summary,
      ...(op.auth === "none"
        ? { security: [] }
        : { security: [{ [op.auth === "admin" ? "adminToken" : "fleetToken"]: [] }] }),
      ...(op.params
        ? {
            parameters: [
              ...Object.entries(op.params).map(([name, schema]) => ({
                name,
                in: "path",
                required: true,
                schema: jsonSchema(schema, "input"),
              })),
              ...Object.entries(op.query ?? {}).map(([name, schema]) => ({
                name,
                in: "query",
                required: false,
                schema: jsonSchema(schema, "input"),
              })),
            ],
          }
        : {}),
      ...(op.body
        ? {
            requestBody: {
              required: true,
              content: { "application/json": { schema: jsonSchema(op.body, "input") } },
            },
          }
        : {}),
      responses,
    };
  }
  cached = {
    openapi: "3.0.3",
    info: {
      title: "vllm-fleet manager",
      version: "0.1.0",
      description:
        "Worker registry, model placement, routes, API keys and usage. The OpenAI surface (/v1/chat/completions, ...) is served by the router mounted on the same port.",
    },
    components: {
      securitySchemes: {
        adminToken: { type: "http", scheme: "bearer", description: "ADMIN_TOKEN" },
        fleetToken: {
          type: "http",
          scheme: "bearer",
          description: "FLEET_TOKEN (ADMIN_TOKEN also accepted)",
        },
      },
    },
    paths,
  };
  return cached;
}

export function docsPage(): string {
  const rows = operations
    .map(
      (op) =>
        `<tr><td><code>${op.method.toUpperCase()}</code></td><td><code>${escapeHtml(op.path)}</code></td><td>${op.auth === "none" ? "-" : op.auth === "admin" ? "ADMIN_TOKEN" : "FLEET_TOKEN or ADMIN_TOKEN"}</td><td>${escapeHtml(op.summary)}</td></tr>`,
    )
    .join("\n");
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>vllm-fleet manager API</title>
<style>body{font-family:system-ui,sans-serif;max-width:70rem;margin:2rem auto;padding:0 1rem}table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:.4rem;text-align:left;vertical-align:top}code{font-size:.95em}</style>
</head><body>
<h1>vllm-fleet manager API</h1>
<p>Machine-readable: <a href="/openapi.json">/openapi.json</a> (OpenAPI 3.0, generated from the zod schemas that validate every request). Errors use OpenAI's shape <code>{"error":{"message","type","param","code"}}</code>.</p>
<table><thead><tr><th>method</th><th>path</th><th>auth (Bearer)</th><th>what it does</th></tr></thead><tbody>
${rows}
</tbody></table>
<p>On this port the mounted router also answers <code>/v1/chat/completions</code>, <code>/v1/completions</code> and <code>/v1/embeddings</code>.</p>
</body></html>`;
}

function escapeHtml(text: string): string {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}
