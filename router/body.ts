import { z } from "zod";
import { AppError, quote } from "../kit/errors.ts";

/**
 * The fields the router reads from an OpenAI request body; everything else passes through
 * untouched. The documented request schemas (router/routes.ts) extend this one, so the
 * fields the router acts on are defined once.
 */
export const inferenceBodySchema = z.looseObject({
  model: z
    .string({ error: "`model` is required and must be a string" })
    .min(1, "`model` must not be empty"),
  stream: z.boolean().nullish(),
  user: z.string().nullish(),
  stream_options: z.looseObject({ include_usage: z.boolean().nullish() }).nullish(),
});
export type InferenceBody = z.infer<typeof inferenceBodySchema>;

const encoder = new TextEncoder();
// One per module: every inference request decodes its body once on the hot path.
const decoder = new TextDecoder();

/** Reads the whole body, refusing (413) past `limit` bytes without buffering the excess. */
export async function readBody(request: Request, limit: number): Promise<Uint8Array<ArrayBuffer>> {
  const tooLarge = () =>
    new AppError("payload_too_large", `request body exceeds the limit of ${limit} bytes`);
  const declared = request.headers.get("content-length");
  if (declared !== null && Number(declared) > limit) {
    // Tell the runtime the body will not be read, so it can close the connection cleanly
    // (workerd otherwise resets it under the client's next request on the same socket).
    await request.body?.cancel().catch(() => {});
    throw tooLarge();
  }
  // With a declared length, read it whole without touching `request.body`: on Bun, making
  // the body a stream first sends arrayBuffer() through the stream machinery.
  if (declared !== null) return new Uint8Array(await request.arrayBuffer());
  if (!request.body) return new Uint8Array(0);
  const reader = request.body.getReader();
  const chunks: Uint8Array<ArrayBuffer>[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > limit) {
      await reader.cancel().catch(() => {});
      throw tooLarge();
    }
    chunks.push(value);
  }
  if (chunks.length === 1 && chunks[0]) return chunks[0];
  const body = new Uint8Array(size);
  let offset = 0;
  for (const chunk of chunks) {
    body.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return body;
}

/**
 * Parses the body once and checks only the fields the router reads (`inferenceBodySchema`):
 * the rest of an OpenAI request is the engine's to judge, and validating it here would cost
 * every request a full schema walk. `json` is the whole parsed object, for the include_usage
 * rewrite.
 */
export function parseInferenceBody(raw: Uint8Array<ArrayBuffer>): {
  json: Record<string, unknown>;
  body: InferenceBody;
} {
  let json: unknown;
  try {
    json = JSON.parse(decoder.decode(raw));
  } catch {
    throw new AppError("invalid_json", "the request body is not valid JSON");
  }
  const parsed = inferenceBodySchema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const param = quote(issue?.path.join(".") ?? "") || null;
    throw new AppError(
      "invalid_request",
      typeof json === "object" && json !== null && !Array.isArray(json)
        ? `${param ?? "body"}: ${issue?.message ?? "invalid"}`
        : "the request body must be a JSON object",
      { param },
    );
  }
  return { json: json as Record<string, unknown>, body: parsed.data };
}

/**
 * Streams that did not ask for usage get `stream_options.include_usage: true` upstream so
 * the router can account tokens; the usage chunk is then hidden from them. When the body
 * has no `stream_options` the field is spliced in front of the original bytes (no
 * re-serialisation, so numbers and key order stay exactly as the client sent them).
 */
export function withIncludeUsage(
  body: Uint8Array<ArrayBuffer>,
  parsed: Record<string, unknown>,
): Uint8Array<ArrayBuffer> | string {
  if (parsed.stream_options === undefined) {
    const open = body.indexOf(0x7b);
    if (open !== -1) {
      const insert = encoder.encode('"stream_options":{"include_usage":true},');
      const hasMembers = body.slice(open + 1).some((byte) => byte > 0x20 && byte !== 0x7d);
      const spliced = hasMembers
        ? insert
        : encoder.encode('"stream_options":{"include_usage":true}');
      const out = new Uint8Array(body.byteLength + spliced.byteLength);
      out.set(body.subarray(0, open + 1), 0);
      out.set(spliced, open + 1);
      out.set(body.subarray(open + 1), open + 1 + spliced.byteLength);
      return out;
    }
  }
  const options =
    typeof parsed.stream_options === "object" && parsed.stream_options !== null
      ? parsed.stream_options
      : {};
  return JSON.stringify({ ...parsed, stream_options: { ...options, include_usage: true } });
}

/** vLLM semantics: `stream_options` present means usage unless include_usage is false. */
export function clientAskedForUsage(streamOptions: unknown): boolean {
  if (typeof streamOptions !== "object" || streamOptions === null) return false;
  return (streamOptions as { include_usage?: unknown }).include_usage !== false;
}

/**
 * How many prompts and choices one request asks for, which bound its token counts
 * (usage-scan.ts `checkUsage`): a batch of completion prompts or embedding inputs counts each
 * (a flat list of token ids is one prompt), and `n` completions per prompt.
 */
export function requestShape(
  json: Record<string, unknown>,
  path: string,
): { inputs: number; choices: number } {
  const batch = path === "/v1/embeddings" ? json.input : json.prompt;
  const inputs =
    Array.isArray(batch) && batch.length > 0 && typeof batch[0] !== "number" ? batch.length : 1;
  const n = json.n;
  const choices = typeof n === "number" && Number.isInteger(n) && n > 1 ? n : 1;
  return { inputs, choices };
}
