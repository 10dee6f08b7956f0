/**
 * The router's HTTP surface, one definition per route: `createApp` registers its handlers at
 * these paths, and the manager (which mounts the router) puts the same definitions in its
 * `/openapi.json`. Only types come from `@hono/zod-openapi`, so neither the generator nor a
 * validator lands in the router's bundle or on its hot path: the documented request schemas
 * are descriptions; the router checks only the fields it reads (`inferenceBodySchema` in
 * body.ts, which these schemas extend) and leaves the rest to the engine.
 */
import type { RouteConfig } from "@hono/zod-openapi";
import { z } from "zod";
import { openAiErrorSchema } from "../protocol/index.ts";
import { inferenceBodySchema } from "./body.ts";

/** `Authorization: Bearer <API key>`; not needed on a loopback router before the first key. */
const apiKey = [{ apiKey: [] }];

const errors = (statuses: readonly number[]) =>
  Object.fromEntries(
    statuses.map((status) => [
      status,
      {
        description: errorDescriptions[status] ?? "error",
        content: { "application/json": { schema: openAiErrorSchema } },
      },
    ]),
  );

const errorDescriptions: Record<number, string> = {
  400: "`invalid_json`, or `invalid_request` with `param` (e.g. `model`)",
  401: "`invalid_api_key`",
  404: "`model_not_found`: the alias is not in the route table",
  408: "`request_timeout`: the body did not arrive within BODY_TIMEOUT_S",
  413: "`payload_too_large` (MAX_BODY_BYTES)",
  502: "`upstream_error`: no replica reachable, or the engine's own 502 passed through",
  503: "`no_ready_replica`, `unavailable` (route table not loaded) or `overloaded` (bodies in flight fill MAX_BODY_MEMORY_BYTES), with Retry-After",
  504: "`upstream_timeout`: no first byte within FIRST_BYTE_TIMEOUT_MS",
};
const inferenceErrors = errors([400, 401, 404, 408, 413, 502, 503, 504]);

const passthrough =
  "The router itself checks `model`, `stream`, `stream_options` and `user`; every other field, those described here included, is passed to vLLM unchanged (sampling parameters, guided decoding, …), which judges it: its 400 comes back as it sent it.";

const usageSchema = z.object({
  prompt_tokens: z.number().int(),
  completion_tokens: z.number().int().optional(),
  total_tokens: z.number().int(),
});

const messageSchema = z.looseObject({
  role: z.enum(["system", "developer", "user", "assistant", "tool"]),
  content: z
    .union([z.string(), z.array(z.looseObject({ type: z.string() }))])
    .nullish()
    .describe("text, or content parts (`text`, `image_url`, … as the model supports)"),
  name: z.string().optional(),
  tool_call_id: z.string().optional(),
});

const samplingFields = {
  max_tokens: z.number().int().min(1).nullish(),
  temperature: z.number().min(0).nullish(),
  top_p: z.number().gt(0).lte(1).nullish(),
  n: z.number().int().min(1).nullish(),
  stop: z.union([z.string(), z.array(z.string())]).nullish(),
  seed: z.number().int().nullish(),
  presence_penalty: z.number().nullish(),
  frequency_penalty: z.number().nullish(),
};

export const chatCompletionRequestSchema = inferenceBodySchema
  .extend({
    messages: z.array(messageSchema).min(1),
    ...samplingFields,
    max_completion_tokens: z.number().int().min(1).nullish(),
    logprobs: z.boolean().nullish(),
    top_logprobs: z.number().int().min(0).nullish(),
    tools: z.array(z.looseObject({ type: z.literal("function") })).nullish(),
    tool_choice: z.union([z.string(), z.looseObject({})]).nullish(),
    response_format: z.looseObject({ type: z.string() }).nullish(),
  })
  .describe(`\`model\` is the alias registered with the manager. ${passthrough}`);

export const completionRequestSchema = inferenceBodySchema
  .extend({
    prompt: z.union([
      z.string(),
      z.array(z.string()),
      z.array(z.number().int()),
      z.array(z.array(z.number().int())),
    ]),
    ...samplingFields,
    echo: z.boolean().nullish(),
    logprobs: z.number().int().min(0).nullish(),
  })
  .describe(`\`model\` is the alias registered with the manager. ${passthrough}`);

export const embeddingRequestSchema = inferenceBodySchema
  .omit({ stream: true, stream_options: true })
  .extend({
    input: z.union([
      z.string(),
      z.array(z.string()),
      z.array(z.number().int()),
      z.array(z.array(z.number().int())),
    ]),
    encoding_format: z.enum(["float", "base64"]).nullish(),
    dimensions: z.number().int().min(1).nullish(),
  })
  .describe(`\`model\` is the alias of an embedding model. ${passthrough}`);

/** OpenAI's Responses API, as vLLM serves it (stateless unless its response store is on). */
export const responsesRequestSchema = inferenceBodySchema
  .omit({ stream_options: true })
  .extend({
    input: z
      .union([z.string(), z.array(z.looseObject({ type: z.string().optional() }))])
      .describe("a prompt, or input items (messages with `role` and `content`, tool results)"),
    instructions: z.string().nullish().describe("the system message"),
    max_output_tokens: z.number().int().min(1).nullish(),
    temperature: z.number().min(0).nullish(),
    top_p: z.number().gt(0).lte(1).nullish(),
    previous_response_id: z
      .string()
      .nullish()
      .describe("needs vLLM's response store, which is per engine: see docs/router.md"),
  })
  .describe(`\`model\` is the alias registered with the manager. ${passthrough}`);

/** vLLM's rerank (Jina's and Cohere's shape): the documents ordered by relevance to the query. */
export const rerankRequestSchema = inferenceBodySchema
  .omit({ stream: true, stream_options: true })
  .extend({
    query: z.string(),
    documents: z.array(z.union([z.string(), z.looseObject({ text: z.string() })])).min(1),
    top_n: z.number().int().min(0).nullish().describe("the best this many; 0 or absent: all"),
  })
  .describe(`\`model\` is the alias of a reranker (a cross-encoder). ${passthrough}`);

/** vLLM's score: a relevance score for each pair of texts. */
export const scoreRequestSchema = inferenceBodySchema
  .omit({ stream: true, stream_options: true })
  .extend({
    text_1: z
      .union([z.string(), z.array(z.string()).min(1)])
      .describe("one text, scored against each of text_2, or as many as text_2, pair by pair"),
    text_2: z.union([z.string(), z.array(z.string()).min(1)]),
  })
  .describe(`\`model\` is the alias of a reranker (a cross-encoder). ${passthrough}`);

const chatCompletionSchema = z.looseObject({
  id: z.string(),
  object: z.literal("chat.completion"),
  created: z.number().int(),
  model: z.string(),
  choices: z.array(
    z.looseObject({
      index: z.number().int(),
      message: z.looseObject({
        role: z.literal("assistant"),
        content: z.string().nullable(),
        tool_calls: z.array(z.looseObject({ id: z.string(), type: z.string() })).optional(),
      }),
      finish_reason: z.string().nullable(),
      logprobs: z.looseObject({}).nullish(),
    }),
  ),
  usage: usageSchema,
});

const completionSchema = z.looseObject({
  id: z.string(),
  object: z.literal("text_completion"),
  created: z.number().int(),
  model: z.string(),
  choices: z.array(
    z.looseObject({
      index: z.number().int(),
      text: z.string(),
      finish_reason: z.string().nullable(),
      logprobs: z.looseObject({}).nullish(),
    }),
  ),
  usage: usageSchema,
});

const embeddingListSchema = z.looseObject({
  object: z.literal("list"),
  model: z.string(),
  data: z.array(
    z.object({
      object: z.literal("embedding"),
      index: z.number().int(),
      embedding: z.union([z.array(z.number()), z.string()]),
    }),
  ),
  usage: usageSchema,
});

const responseSchema = z.looseObject({
  id: z.string(),
  object: z.literal("response"),
  created_at: z.number().int(),
  status: z.string(),
  model: z.string(),
  output: z.array(z.looseObject({ type: z.string() })),
  usage: z
    .looseObject({
      input_tokens: z.number().int(),
      output_tokens: z.number().int(),
      total_tokens: z.number().int(),
    })
    .nullish(),
});

const rerankResultSchema = z.looseObject({
  id: z.string(),
  model: z.string(),
  usage: z.looseObject({ total_tokens: z.number().int() }),
  results: z.array(
    z.looseObject({
      index: z.number().int().describe("the document's position in the request"),
      document: z.looseObject({ text: z.string() }).nullish(),
      relevance_score: z.number(),
    }),
  ),
});

const scoreListSchema = z.looseObject({
  id: z.string(),
  object: z.literal("list"),
  model: z.string(),
  data: z.array(
    z.looseObject({ index: z.number().int(), object: z.literal("score"), score: z.number() }),
  ),
  usage: usageSchema,
});

const eventStream = (chunk: string) => ({
  "text/event-stream": {
    schema: z
      .string()
      .describe(
        `With \`"stream": true\`: \`data: {${chunk}}\` events, flushed as the engine writes them, then \`data: [DONE]\`. A usage chunk (\`choices: []\`) comes only when \`stream_options.include_usage\` asked for it.`,
      ),
  },
});

/**
 * A route that forwards a JSON body to a ready replica of the alias in `model`: its request
 * schema and what a 200 carries (vLLM's answer, byte for byte), behind an API key.
 */
function inferenceRoute<const P extends string>(
  path: P,
  summary: string,
  body: z.ZodType,
  answer: Record<string, { schema: z.ZodType }>,
) {
  return {
    method: "post",
    path,
    tags: ["OpenAI"],
    summary,
    security: apiKey,
    request: { body: { required: true, content: { "application/json": { schema: body } } } },
    responses: {
      200: { description: "vLLM's answer, byte for byte", content: answer },
      ...inferenceErrors,
    },
  } as const satisfies RouteConfig;
}

const chatCompletions = inferenceRoute(
  "/v1/chat/completions",
  "Chat completion, forwarded to a ready replica of the alias named in model",
  chatCompletionRequestSchema,
  {
    "application/json": { schema: chatCompletionSchema },
    ...eventStream("chat.completion.chunk"),
  },
);

const completions = inferenceRoute(
  "/v1/completions",
  "Text completion, forwarded to a ready replica of the alias named in model",
  completionRequestSchema,
  { "application/json": { schema: completionSchema }, ...eventStream("text_completion") },
);

const embeddings = inferenceRoute(
  "/v1/embeddings",
  "Embeddings, forwarded to a ready replica of the alias named in model",
  embeddingRequestSchema,
  { "application/json": { schema: embeddingListSchema } },
);

const responses = inferenceRoute(
  "/v1/responses",
  "A model response (OpenAI's Responses API), forwarded to a ready replica of the alias",
  responsesRequestSchema,
  {
    "application/json": { schema: responseSchema },
    "text/event-stream": {
      schema: z
        .string()
        .describe(
          'With `"stream": true`: `event:`/`data:` pairs from `response.created` to `response.completed` (which carries the usage), flushed as the engine writes them.',
        ),
    },
  },
);

const rerank = inferenceRoute(
  "/v1/rerank",
  "Rerank documents for a query (vLLM's rerank), forwarded to a ready replica of the alias",
  rerankRequestSchema,
  { "application/json": { schema: rerankResultSchema } },
);

const score = inferenceRoute(
  "/v1/score",
  "Score pairs of texts (vLLM's score), forwarded to a ready replica of the alias",
  scoreRequestSchema,
  { "application/json": { schema: scoreListSchema } },
);

export const servedModelListSchema = z.object({
  object: z.literal("list"),
  data: z.array(
    z.object({
      id: z.string().describe("the alias"),
      object: z.literal("model"),
      created: z.number().int(),
      owned_by: z.string(),
      root: z.string().describe("the model name vLLM serves"),
      parent: z.null(),
      max_model_len: z
        .number()
        .int()
        .optional()
        .describe(
          "the context length, as vLLM's card says it, when the model was registered with one",
        ),
    }),
  ),
});

const models = {
  method: "get",
  path: "/v1/models",
  tags: ["OpenAI"],
  summary: "The aliases that have at least one ready replica (OpenAI's list shape)",
  security: apiKey,
  responses: {
    200: {
      description: "served models",
      content: { "application/json": { schema: servedModelListSchema } },
    },
    ...errors([401, 503]),
  },
} satisfies RouteConfig;

const metrics = {
  method: "get",
  path: "/metrics",
  tags: ["Operations"],
  summary: "The router's Prometheus metrics (docs/router.md, Metrics)",
  description:
    "A standalone router takes METRICS_TOKEN; without it /metrics is open only while the router runs open (no ROUTER_TOKEN, API keys not required). On the manager's port: ADMIN_TOKEN or the manager's METRICS_TOKEN, open when neither is set (loopback).",
  security: [{ metricsToken: [] }],
  responses: {
    200: {
      description: "Prometheus text exposition format 0.0.4",
      content: { "text/plain": { schema: z.string() } },
    },
    ...errors([401]),
  },
} satisfies RouteConfig;

const healthz = {
  method: "get",
  path: "/healthz",
  tags: ["Operations"],
  summary:
    "Router health: 200 once a route table is loaded (degraded while its source is down), 503 before",
  description:
    "`degraded` while the table's source does not answer (a standalone router's manager; the mounted router's database): the router keeps serving the table it has, so the status stays 200 and an orchestrator keeps it. `routes_age_s` is the time since the source last confirmed the table.",
  security: [],
  responses: {
    200: {
      description: "a route table is loaded",
      content: {
        "application/json": {
          schema: z.object({
            status: z.enum(["ok", "degraded"]),
            routes_version: z.string(),
            routes_age_s: z.number().nullable().optional(),
            reason: z.string().optional(),
          }),
        },
      },
    },
    503: {
      description: "no route table yet",
      content: {
        "application/json": {
          schema: z.object({
            status: z.literal("no_routes"),
            routes_version: z.null(),
            routes_age_s: z.number().nullable().optional(),
            reason: z.string().optional(),
          }),
        },
      },
    },
  },
} satisfies RouteConfig;

/** Every route of the router, by name. */
export const routerRoutes = {
  chatCompletions,
  completions,
  embeddings,
  responses,
  rerank,
  score,
  models,
  metrics,
  healthz,
};

/** The routes that proxy a request body to an engine. */
export const inferenceRoutes = [
  chatCompletions,
  completions,
  embeddings,
  responses,
  rerank,
  score,
] as const;
export type InferencePath = (typeof inferenceRoutes)[number]["path"];

/** The paths whose answer may be an event stream (`"stream": true`); the others never are. */
export const streamingPaths: ReadonlySet<InferencePath> = new Set([
  chatCompletions.path,
  completions.path,
  responses.path,
]);

/**
 * The streams that carry usage only when `stream_options.include_usage` asks (the router asks
 * on a client's behalf and hides it again); a Responses stream always ends with it.
 */
export const includeUsagePaths: ReadonlySet<InferencePath> = new Set([
  chatCompletions.path,
  completions.path,
]);
