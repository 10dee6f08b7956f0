import { z } from "zod";

/** Request bodies as vLLM accepts them; unknown fields pass (vLLM ignores most sampling knobs). */
const contentPart = z.looseObject({ type: z.string(), text: z.string().optional() });
const message = z.looseObject({
  role: z.string(),
  content: z.union([z.string(), z.array(contentPart), z.null()]).optional(),
});
const streamOptions = z
  .looseObject({
    include_usage: z.boolean().nullable().optional(),
    continuous_usage_stats: z.boolean().nullable().optional(),
  })
  .nullable()
  .optional();
const positive = z.number().int().min(1).nullable().optional();

export const chatRequestSchema = z.looseObject({
  model: z.string().nullable().optional(),
  messages: z.array(message).min(1),
  max_tokens: positive,
  max_completion_tokens: positive,
  stream: z.boolean().nullable().optional(),
  stream_options: streamOptions,
  ignore_eos: z.boolean().nullable().optional(),
  seed: z.number().int().nullable().optional(),
  n: z.literal(1, "the simulator supports n=1 only").nullable().optional(),
});
export type ChatRequest = z.infer<typeof chatRequestSchema>;

const tokenIds = z.array(z.number().int().min(0));
export const completionRequestSchema = z.looseObject({
  model: z.string().nullable().optional(),
  prompt: z.union([
    z.string(),
    z.array(z.string()).length(1, "the simulator supports one prompt per request"),
    tokenIds.min(1),
    z.array(tokenIds.min(1)).length(1, "the simulator supports one prompt per request"),
  ]),
  max_tokens: positive,
  stream: z.boolean().nullable().optional(),
  stream_options: streamOptions,
  ignore_eos: z.boolean().nullable().optional(),
  echo: z.boolean().nullable().optional(),
  seed: z.number().int().nullable().optional(),
  n: z.literal(1, "the simulator supports n=1 only").nullable().optional(),
});
export type CompletionRequest = z.infer<typeof completionRequestSchema>;

export const embeddingRequestSchema = z.looseObject({
  model: z.string().nullable().optional(),
  input: z.union([
    z.string(),
    z.array(z.string()).min(1),
    tokenIds.min(1),
    z.array(tokenIds.min(1)).min(1),
  ]),
  encoding_format: z.enum(["float", "base64"]).nullable().optional(),
  dimensions: z.number().int().min(1).max(8192).nullable().optional(),
});
export type EmbeddingRequest = z.infer<typeof embeddingRequestSchema>;

/** One item of a Responses `input` list: a message (other item types carry no prompt text here). */
const responseItem = z.looseObject({
  type: z.string().optional(),
  role: z.string().optional(),
  content: z.union([z.string(), z.array(contentPart), z.null()]).optional(),
});

/** vLLM's `POST /v1/responses` (OpenAI's Responses API), stateless: no stored responses. */
export const responsesRequestSchema = z.looseObject({
  model: z.string().nullable().optional(),
  input: z.union([z.string(), z.array(responseItem).min(1)]),
  instructions: z.string().nullable().optional(),
  max_output_tokens: positive,
  stream: z.boolean().nullable().optional(),
  previous_response_id: z
    .null({ error: "previous_response_id needs the response store (off, as vLLM's default)" })
    .optional(),
  seed: z.number().int().nullable().optional(),
});

/** vLLM's `POST /v1/rerank` (Jina's and Cohere's shape). */
export const rerankRequestSchema = z.looseObject({
  model: z.string().nullable().optional(),
  query: z.string(),
  documents: z.array(z.union([z.string(), z.looseObject({ text: z.string() })])).min(1),
  top_n: z.number().int().min(0).nullable().optional(),
});

const scoreTexts = z.union([z.string(), z.array(z.string()).min(1)]);
/** vLLM's `POST /v1/score`: `text_1` against each `text_2`, or pair by pair. */
export const scoreRequestSchema = z.looseObject({
  model: z.string().nullable().optional(),
  text_1: scoreTexts,
  text_2: scoreTexts,
});

export const tokenizeRequestSchema = z.union([
  z.looseObject({ model: z.string().nullable().optional(), prompt: z.string() }),
  z.looseObject({ model: z.string().nullable().optional(), messages: z.array(message).min(1) }),
]);
