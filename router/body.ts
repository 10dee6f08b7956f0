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

/**
 * Bytes of request bodies being received, across every connection of this process, under
 * one cap: a client that sends its body slowly (or not at all) holds memory until its body
 * deadline, and this bounds how much all of them together can hold. A body declared with
 * `Content-Length` takes its whole length up front (the runtime buffers it on its own); a
 * chunked one takes each chunk as it arrives. Bytes are given back once the body has been
 * read (or refused): after that, the request is the upstream's to serve.
 */
export class BodyBudget {
  #held = 0;

  constructor(readonly capacity: number) {}

  /** Bytes taken by bodies being received now. */
  get held(): number {
    return this.#held;
  }

  /** Takes `bytes` when they fit under the cap; false (and nothing taken) otherwise. */
  take(bytes: number): boolean {
    if (this.#held + bytes > this.capacity) return false;
    this.#held += bytes;
    return true;
  }

  give(bytes: number): void {
    this.#held = Math.max(0, this.#held - bytes);
  }
}

export type BodyLimits = {
  /** Largest body; larger ones get 413. */
  maxBytes: number;
  /** The whole body must arrive within this after the handler started reading; else 408. */
  timeoutMs: number;
  /** Shared by every request of the process; a body that does not fit gets 503. */
  budget: BodyBudget;
};

/**
 * Why a body was refused, for the router's `fleet_router_body_refusals_total`. `incomplete`:
 * it broke off before its end (the client closed its connection mid-upload, or its chunked
 * framing broke), which no answer reaches and nothing needs to log above debug.
 */
export type BodyRefusal = "size" | "timeout" | "memory" | "incomplete";

/** A body refused by `readBody`: the error to answer with, and which limit it hit. */
export class BodyRefused extends AppError {
  readonly reason: BodyRefusal;

  constructor(reason: BodyRefusal, limits: BodyLimits, cause?: unknown) {
    // The rest of the body is never read: the connection closes after the answer, so the
    // runtime neither drains a slow body nor parses its bytes as the next request.
    const close = { connection: "close" };
    if (reason === "incomplete") {
      super("invalid_request", "the request body ended before it was complete", {
        headers: close,
        cause,
      });
    } else if (reason === "size") {
      super("payload_too_large", `request body exceeds the limit of ${limits.maxBytes} bytes`);
    } else if (reason === "timeout") {
      super(
        "request_timeout",
        `the request body did not arrive within ${limits.timeoutMs / 1000} s`,
        { headers: close },
      );
    } else {
      super("overloaded", "the router is receiving too many request bodies; retry shortly", {
        headers: { ...close, "retry-after": "1" },
      });
    }
    this.reason = reason;
  }
}

/**
 * Reads the whole body within `limits`: 413 past `maxBytes` (without buffering the excess),
 * 408 when it has not all arrived within `timeoutMs`, 503 when it does not fit in what the
 * `budget` has left. Rejects with `BodyRefused` for each.
 *
 * Not an async function: a body with a declared length (almost every request) is one native
 * read whose promise settles the one handed back, with no async frame, race or timeout
 * promise around it (each a few turns of the microtask queue per request).
 */
export function readBody(request: Request, limits: BodyLimits): Promise<Uint8Array<ArrayBuffer>> {
  const declared = request.headers.get("content-length");
  if (declared === null) {
    return request.body ? readChunked(request.body, limits) : Promise.resolve(new Uint8Array(0));
  }
  const declaredBytes = Number(declared);
  if (!(declaredBytes <= limits.maxBytes)) return refuse(request, "size", limits);
  if (declaredBytes === 0) return Promise.resolve(new Uint8Array(0));
  if (!limits.budget.take(declaredBytes)) return refuse(request, "memory", limits);
  return new Promise((resolve, reject) => {
    // With a declared length, read it whole without touching `request.body`: on Bun, making
    // the body a stream first sends arrayBuffer() through the stream machinery.
    new WholeRead(request, limits, declaredBytes, resolve, reject);
  });
}

/**
 * Refuses a body before reading it. Tells the runtime the body will not be read, so it can
 * close the connection cleanly (workerd otherwise resets it under the client's next request
 * on the same socket).
 */
async function refuse(
  request: Request,
  reason: BodyRefusal,
  limits: BodyLimits,
): Promise<Uint8Array<ArrayBuffer>> {
  await request.body?.cancel().catch(() => {});
  throw new BodyRefused(reason, limits);
}

/**
 * One body of a declared length being read whole, its bytes held in the budget until it has
 * arrived or its deadline passed (whichever comes first settles the read; the other changes
 * nothing).
 */
class WholeRead {
  private held = true;
  private readonly timer: ReturnType<typeof setTimeout>;

  constructor(
    request: Request,
    private readonly limits: BodyLimits,
    private readonly bytes: number,
    private readonly resolve: (body: Uint8Array<ArrayBuffer>) => void,
    private readonly reject: (error: unknown) => void,
  ) {
    this.timer = setTimeout(wholeReadExpired, limits.timeoutMs, this);
    // A body that times out is rejected when its connection closes: `arrived` and `failed`
    // then find the read settled and change nothing.
    request.arrayBuffer().then(
      (buffer) => this.arrived(buffer),
      (error: unknown) => this.failed(error),
    );
  }

  arrived(buffer: ArrayBuffer): void {
    if (this.free()) this.resolve(new Uint8Array(buffer));
  }

  failed(error: unknown): void {
    if (this.free()) this.reject(new BodyRefused("incomplete", this.limits, error));
  }

  expired(): void {
    if (this.free()) this.reject(new BodyRefused("timeout", this.limits));
  }

  /** Gives the bytes back (once); false when the read had already settled. */
  private free(): boolean {
    if (!this.held) return false;
    this.held = false;
    clearTimeout(this.timer);
    this.limits.budget.give(this.bytes);
    return true;
  }
}

function wholeReadExpired(read: WholeRead): void {
  read.expired();
}

/** A body without a declared length, read chunk by chunk under the size and budget caps. */
async function readChunked(
  stream: ReadableStream<Uint8Array>,
  limits: BodyLimits,
): Promise<Uint8Array<ArrayBuffer>> {
  const { budget } = limits;
  let taken = 0;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new BodyRefused("timeout", limits)), limits.timeoutMs);
  });
  expired.catch(() => {});
  try {
    const reader = (stream as ReadableStream<Uint8Array<ArrayBuffer>>).getReader();
    const chunks: Uint8Array<ArrayBuffer>[] = [];
    for (;;) {
      let result: Awaited<ReturnType<typeof reader.read>>;
      try {
        result = await Promise.race([reader.read(), expired]);
      } catch (error) {
        await reader.cancel().catch(() => {});
        throw error instanceof BodyRefused ? error : new BodyRefused("incomplete", limits, error);
      }
      if (result.done) break;
      const chunk = result.value;
      const refusal: BodyRefusal | undefined =
        taken + chunk.byteLength > limits.maxBytes
          ? "size"
          : budget.take(chunk.byteLength)
            ? undefined
            : "memory";
      if (refusal) {
        await reader.cancel().catch(() => {});
        throw new BodyRefused(refusal, limits);
      }
      taken += chunk.byteLength;
      chunks.push(chunk);
    }
    if (chunks.length === 1 && chunks[0]) return chunks[0];
    const body = new Uint8Array(taken);
    let offset = 0;
    for (const chunk of chunks) {
      body.set(chunk, offset);
      offset += chunk.byteLength;
    }
    return body;
  } finally {
    clearTimeout(timer);
    budget.give(taken);
  }
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
  // Almost every body passes: checked by hand, zod runs only to word a refusal (a catch-all
  // object schema walks every key of the body, messages and all).
  if (plainlyValid(json)) return { json, body: json };
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

const nullish = (value: unknown) => value === undefined || value === null;

/**
 * Whether `json` passes `inferenceBodySchema` for certain (a narrower test than the schema's:
 * anything it does not accept goes to the schema, which accepts or words the refusal).
 */
function plainlyValid(json: unknown): json is InferenceBody {
  if (typeof json !== "object" || json === null || Array.isArray(json)) return false;
  const { model, stream, user, stream_options } = json as Record<string, unknown>;
  if (typeof model !== "string" || model.length === 0) return false;
  if (!nullish(stream) && typeof stream !== "boolean") return false;
  if (!nullish(user) && typeof user !== "string") return false;
  if (nullish(stream_options)) return true;
  if (typeof stream_options !== "object" || Array.isArray(stream_options)) return false;
  const includeUsage = (stream_options as Record<string, unknown>).include_usage;
  return nullish(includeUsage) || typeof includeUsage === "boolean";
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
 * (a flat list of token ids is one prompt), a rerank each document and a score each pair (each
 * is read with the query, or its partner, as one input), and `n` completions per prompt.
 */
export function requestShape(
  json: Record<string, unknown>,
  path: string,
): { inputs: number; choices: number } {
  if (path === "/v1/rerank") return { inputs: listLength(json.documents), choices: 1 };
  if (path === "/v1/score") {
    return { inputs: Math.max(listLength(json.text_1), listLength(json.text_2)), choices: 1 };
  }
  const batch = path === "/v1/embeddings" ? json.input : json.prompt;
  const inputs =
    Array.isArray(batch) && batch.length > 0 && typeof batch[0] !== "number" ? batch.length : 1;
  const n = json.n;
  const choices = typeof n === "number" && Number.isInteger(n) && n > 1 ? n : 1;
  return { inputs, choices };
}

/** A list's length, at least 1 (a single value, or anything else, is one). */
function listLength(value: unknown): number {
  return Array.isArray(value) && value.length > 0 ? value.length : 1;
}
