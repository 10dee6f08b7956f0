import type { z } from "zod";
import { formatLoadHeader, LOAD_HEADER } from "../../protocol/load.ts";
import type { SimConfig } from "./config.ts";
import { Engine, type FinishReason, type Seq } from "./engine.ts";
import { blockHashes, GENERATION_CUE, renderMessage } from "./kv-cache.ts";
import {
  type ChatRequest,
  chatRequestSchema,
  completionRequestSchema,
  embeddingRequestSchema,
  rerankRequestSchema,
  responsesRequestSchema,
  scoreRequestSchema,
  tokenizeRequestSchema,
} from "./schemas.ts";
import {
  CHAT_TOKENS_PER_MESSAGE,
  CHAT_TOKENS_PER_PROMPT,
  countTokens,
  embed,
  fillerTokens,
  hash32,
  prng,
  relevance,
  splitTokens,
} from "./text.ts";

export type SimDeps = {
  /** Access-log sink; only called when `config.accessLog` is on. */
  log?: (line: string) => void;
  /** Source of injected failures (0 ≤ x < 1); tests pass a fixed one. */
  random?: () => number;
};

export type SimApp = {
  fetch(
    request: Request,
    server?: { requestIP(request: Request): { address: string; port: number } | null },
  ): Response | Promise<Response>;
  engine: Engine;
};

const JSON_HEADERS = { "content-type": "application/json" };
const SSE_HEADERS = {
  "content-type": "text/event-stream; charset=utf-8",
  "cache-control": "no-cache",
};
const TEXT_HEADERS = { "content-type": "text/plain; version=0.0.4; charset=utf-8" };

/** tsconfig's DOM lib hides Bun's `type: "direct"` constructor overload; same constructor. */
const DirectStream = ReadableStream as unknown as new (
  source: Bun.DirectUnderlyingSource,
) => ReadableStream<Uint8Array>;

const ERROR_TYPES: Record<number, string> = {
  400: "BadRequestError",
  401: "UnauthorizedError",
  404: "NotFoundError",
  429: "RateLimitError",
  500: "InternalServerError",
  503: "ServiceUnavailableError",
};

/** vLLM (≥ 0.10.1) error body: nested, integer `code` = HTTP status. */
export function vllmError(status: number, message: string, param: string | null = null): Response {
  const body = {
    error: { message, type: ERROR_TYPES[status] ?? "InternalServerError", param, code: status },
  };
  return new Response(JSON.stringify(body), { status, headers: JSON_HEADERS });
}

function json(body: unknown, status = 200): Response {
  return new Response(JSON.stringify(body), { status, headers: JSON_HEADERS });
}

/** FastAPI's answer for routes that do not exist. */
const notFound = () => json({ detail: "Not Found" }, 404);
const methodNotAllowed = () => json({ detail: "Method Not Allowed" }, 405);

function randomId(): string {
  return crypto.randomUUID().replaceAll("-", "");
}

type Parsed<T> = { ok: true; value: T } | { ok: false; response: Response };

async function readBody<T>(request: Request, schema: z.ZodType<T>): Promise<Parsed<T>> {
  let raw: unknown;
  try {
    raw = JSON.parse(await request.text());
  } catch {
    return { ok: false, response: vllmError(400, "Invalid JSON in request body", null) };
  }
  const result = schema.safeParse(raw);
  if (result.success) return { ok: true, value: result.data };
  const issue = result.error.issues[0];
  const param = issue && issue.path.length > 0 ? issue.path.join(".") : null;
  const message = issue ? `${param ? `${param}: ` : ""}${issue.message}` : "invalid request";
  return { ok: false, response: vllmError(400, message, param) };
}

type ChatContent = ChatRequest["messages"][number]["content"];

function contentText(content: ChatContent): string {
  if (typeof content === "string") return content;
  if (!content) return "";
  let text = "";
  for (const part of content) if (typeof part.text === "string") text += part.text;
  return text;
}

function usage(prompt: unknown, completion: number) {
  return {
    prompt_tokens: prompt,
    total_tokens: typeof prompt === "number" ? prompt + completion : completion,
    completion_tokens: completion,
    prompt_tokens_details: null,
  };
}

/**
 * The simulated vLLM OpenAI server as a plain `fetch` handler (Bun.serve directly: see
 * docs/simulator.md for why not Hono here).
 */
export function createSimApp(config: SimConfig, deps: SimDeps = {}): SimApp {
  const modelName = config.servedModelNames[0] ?? config.model;
  const modelJson = JSON.stringify(modelName);
  const names = new Set(config.servedModelNames);
  const bearer = new Set(config.apiKeys.map((key) => `Bearer ${key}`));
  const random = deps.random ?? Math.random;
  let answered = 0;
  /** What an answer reports as `prompt_tokens` (SIM_USAGE_PROMPT_TOKENS, else the count). */
  const reported = (promptTokens: number): unknown => {
    const cycle = config.reportedPromptTokens;
    if (cycle.length === 0) return promptTokens;
    return cycle[answered++ % cycle.length] ?? promptTokens;
  };
  const engine = new Engine({
    modelName,
    maxNumSeqs: config.maxNumSeqs,
    maxModelLen: config.maxModelLen,
    ttftMs: config.ttftMs,
    itlMs: config.itlMs,
    kvCacheTokens: config.kvCacheTokens,
    prefillTokensPerS: config.prefillTokensPerS,
    prefixCaching: config.prefixCaching,
  });
  const started = Math.floor(Date.now() / 1000);

  const modelCheck = (model: string | null | undefined): Response | null => {
    if (model === undefined || model === null || names.has(model)) return null;
    return vllmError(404, `The model \`${model}\` does not exist.`, "model");
  };

  const contextCheck = (promptTokens: number, maxTokens: number | null): Response | null => {
    const requested = maxTokens ?? 0;
    if (promptTokens + requested <= config.maxModelLen && promptTokens < config.maxModelLen) {
      return null;
    }
    const message =
      maxTokens === null
        ? `This model's maximum context length is ${config.maxModelLen} tokens. However, your prompt contains ${promptTokens} input tokens. Please reduce the length of the input prompt. (parameter=input_tokens, value=${promptTokens})`
        : `This model's maximum context length is ${config.maxModelLen} tokens. However, you requested ${maxTokens} output tokens and your prompt contains ${promptTokens} input tokens, for a total of ${promptTokens + maxTokens} tokens. Please reduce the length of the input prompt or the number of requested output tokens. (parameter=input_tokens, value=${promptTokens})`;
    return vllmError(400, message, "input_tokens");
  };

  const injected = (request: Request): Response | null => {
    const forced = request.headers.get("x-sim-error");
    if (forced) {
      const status = Number(forced);
      if (Number.isInteger(status) && status >= 400 && status <= 599) {
        return vllmError(status, `Simulated error ${status} (x-sim-error)`);
      }
    }
    if (config.failureRate > 0 && random() * 100 < config.failureRate) {
      return vllmError(500, "Simulated internal server error (failure injection)");
    }
    return null;
  };

  /** The output tokens for a prompt: echo (the input back) or seeded filler. */
  const generate = (options: {
    echoText: string;
    promptText: string;
    maxTokens: number;
    ignoreEos: boolean;
    seed: number | null | undefined;
  }): { output: string[]; finishReason: FinishReason } => {
    const { maxTokens, ignoreEos } = options;
    const rand = prng(hash32(options.promptText, (options.seed ?? 0) ^ 0x811c9dc5));
    let output: string[];
    if (config.mode === "echo") {
      output = splitTokens(options.echoText);
      if (output.length === 0) output = fillerTokens(1, rand);
    } else {
      const cap = Math.min(maxTokens, 256);
      output = fillerTokens(1 + Math.floor(rand() * cap), rand);
    }
    if (ignoreEos && output.length < maxTokens) {
      const base = output;
      output = new Array<string>(maxTokens);
      for (let i = 0; i < maxTokens; i++) output[i] = base[i % base.length] as string;
    }
    // Hitting max_tokens is "length" even when the text would have ended there, as in vLLM.
    if (output.length >= maxTokens)
      return { output: output.slice(0, maxTokens), finishReason: "length" };
    return { output, finishReason: "stop" };
  };

  /** Runs `seq` to completion (non-stream); resolves with the response the finish builds. */
  const runToEnd = (
    request: Request,
    seq: Seq,
    build: () => Response,
  ): Promise<Response> | Response => {
    let resolve: (response: Response) => void = () => {};
    let settled: Response | null = null;
    seq.listener = {
      done: () => {
        settled = build();
        resolve(settled);
      },
    };
    engine.submit(seq);
    if (settled) return settled;
    return new Promise<Response>((res) => {
      resolve = res;
      request.signal.addEventListener("abort", () => {
        engine.abort(seq);
        res(new Response(null, { status: 499 }));
      });
    });
  };

  const newSeq = (
    promptTokens: number,
    output: string[],
    finishReason: FinishReason,
    stream: boolean,
  ): Seq => ({
    promptTokens,
    output,
    finishReason,
    stream,
    listener: { done: () => {} },
    arrivedAt: 0,
    admittedAt: 0,
    emitted: 0,
    state: "waiting",
    timer: null,
    prefixBlocks: [],
    finalBlocks: null,
    prefillMs: 0,
    cachedTokens: 0,
  });

  /** SSE stream for a sequence; `chunk(i, last)` renders one token event. */
  const streamSeq = (options: {
    request: Request;
    seq: Seq;
    first: string;
    chunk: (index: number, finishReason: FinishReason | null) => string;
    tail: () => string;
    /** What ends the stream after the tail (chat and completions: `data: [DONE]`). */
    end?: string;
  }): Response => {
    const { request, seq } = options;
    // Bun's "direct" stream writes strings straight to the socket: no per-chunk encoding
    // or queueing, which is what lets one core feed 1,000 streams at 10 ms per token.
    let controller: ReadableStreamDirectController | null = null;
    let pending = "";
    let ended = false;
    let release: () => void = () => {};
    const push = (text: string) => {
      if (!controller) {
        pending += text;
        return;
      }
      controller.write(text);
      controller.flush();
    };
    seq.listener = {
      tokens: (from, to) => {
        let text = from === 0 ? options.first : "";
        const last = seq.output.length - 1;
        for (let i = from; i < to; i++)
          text += options.chunk(i, i === last ? seq.finishReason : null);
        push(text);
      },
      done: () => {
        push(`${options.tail()}${options.end ?? "data: [DONE]\n\n"}`);
        ended = true;
        if (controller) {
          controller.close();
          release();
        }
      },
    };
    const source: Bun.DirectUnderlyingSource = {
      type: "direct",
      pull(c: ReadableStreamDirectController) {
        controller = c;
        if (pending) {
          c.write(pending);
          c.flush();
          pending = "";
        }
        if (ended) {
          c.close();
          return;
        }
        return new Promise<void>((resolve) => {
          release = resolve;
        });
      },
      cancel() {
        engine.abort(seq);
        release();
      },
    };
    const body = new DirectStream(source);
    engine.submit(seq);
    if (seq.state === "running" || seq.state === "waiting") {
      request.signal.addEventListener("abort", () => engine.abort(seq));
    }
    return new Response(body, { headers: SSE_HEADERS });
  };

  /**
   * What every generating request goes through before it is queued: the context check (its
   * prompt and the output it asks for, `requested`, or the rest of the context when null),
   * failure injection, then its output. A Response when it is refused.
   */
  const admit = (
    request: Request,
    prompt: { promptTokens: number; promptText: string; echoText: string },
    options: { requested: number | null; ignoreEos: boolean; seed: number | null | undefined },
  ): Response | { output: string[]; finishReason: FinishReason } => {
    const { promptTokens } = prompt;
    const tooLong = contextCheck(promptTokens, options.requested);
    if (tooLong) return tooLong;
    const failure = injected(request);
    if (failure) return failure;
    return generate({
      echoText: prompt.echoText,
      promptText: prompt.promptText,
      maxTokens: options.requested ?? config.maxModelLen - promptTokens,
      ignoreEos: options.ignoreEos,
      seed: options.seed,
    });
  };

  /**
   * A conversation as the engine reads it: its tokens (the template's overhead included), its
   * text (the seed of filler output), the last user message (what echo mode answers) and, with
   * the prefix cache on, the template as text (kv-cache.ts renderMessage).
   */
  const chatPrompt = (messages: { role?: string; content?: ChatContent }[]) => {
    let promptTokens = CHAT_TOKENS_PER_PROMPT;
    let promptText = "";
    let echoText = "";
    let rendered = "";
    for (const message of messages) {
      const text = contentText(message.content ?? null);
      promptTokens += CHAT_TOKENS_PER_MESSAGE + countTokens(text);
      promptText += text;
      if (engine.cache) rendered += renderMessage(message.role ?? "user", text);
      if (message.role === "user") echoText = text;
    }
    return { promptTokens, promptText, echoText, rendered };
  };

  const chat = async (request: Request): Promise<Response> => {
    const parsed = await readBody(request, chatRequestSchema);
    if (!parsed.ok) return parsed.response;
    const body = parsed.value;
    const wrongModel = modelCheck(body.model);
    if (wrongModel) return wrongModel;
    const prompt = chatPrompt(body.messages);
    const { promptTokens, rendered } = prompt;
    const generated = admit(request, prompt, {
      requested: body.max_completion_tokens ?? body.max_tokens ?? null,
      ignoreEos: body.ignore_eos === true,
      seed: body.seed,
    });
    if (generated instanceof Response) return generated;
    const { output, finishReason } = generated;
    const id = `chatcmpl-${randomId()}`;
    const created = Math.floor(Date.now() / 1000);
    const seq = newSeq(promptTokens, output, finishReason, body.stream === true);
    const reportedTokens = reported(promptTokens);
    if (engine.cache) {
      seq.prefixBlocks = blockHashes(rendered + GENERATION_CUE);
      // The next turn's prompt starts with this one's messages and this answer.
      seq.finalBlocks = () => blockHashes(rendered + renderMessage("assistant", output.join("")));
    }
    if (body.stream !== true) {
      return runToEnd(request, seq, () =>
        json({
          id,
          object: "chat.completion",
          created,
          model: modelName,
          choices: [
            {
              index: 0,
              message: {
                role: "assistant",
                content: output.join(""),
                refusal: null,
                annotations: null,
                audio: null,
                function_call: null,
                tool_calls: [],
                reasoning_content: null,
              },
              logprobs: null,
              finish_reason: finishReason,
              stop_reason: null,
            },
          ],
          service_tier: null,
          system_fingerprint: null,
          usage: usage(reportedTokens, output.length),
          prompt_logprobs: null,
          kv_transfer_params: null,
        }),
      );
    }
    const includeUsage = body.stream_options ? body.stream_options.include_usage !== false : false;
    const continuous = includeUsage && body.stream_options?.continuous_usage_stats === true;
    const head = `data: {"id":"${id}","object":"chat.completion.chunk","created":${created},"model":${modelJson},"choices":[`;
    const usageJson = (completion: number) => JSON.stringify(usage(reportedTokens, completion));
    const withUsage = (completion: number) =>
      continuous ? `,"usage":${usageJson(completion)}` : "";
    return streamSeq({
      request,
      seq,
      first: `${head}{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]${withUsage(0)}}\n\n`,
      chunk: (index, reason) =>
        `${head}{"index":0,"delta":{"content":${JSON.stringify(output[index])}},"logprobs":null,"finish_reason":${reason ? `"${reason}","stop_reason":null` : "null"}}]${withUsage(index + 1)}}\n\n`,
      tail: () => (includeUsage ? `${head}],"usage":${usageJson(output.length)}}\n\n` : ""),
    });
  };

  /**
   * OpenAI's Responses API as vLLM serves it without its response store: `input` (a string or
   * message items) after `instructions`, one message of output text, `usage` with input and
   * output tokens. A stream is `event:`/`data:` pairs from `response.created` to
   * `response.completed` (which carries the usage), with no `[DONE]`.
   */
  const responses = async (request: Request): Promise<Response> => {
    const parsed = await readBody(request, responsesRequestSchema);
    if (!parsed.ok) return parsed.response;
    const body = parsed.value;
    const wrongModel = modelCheck(body.model);
    if (wrongModel) return wrongModel;
    const messages =
      typeof body.input === "string"
        ? [{ role: "user", content: body.input }]
        : body.input.filter((item) => item.type === undefined || item.type === "message");
    if (body.instructions) messages.unshift({ role: "system", content: body.instructions });
    const prompt = chatPrompt(messages);
    const { promptTokens } = prompt;
    const requested = body.max_output_tokens ?? null;
    const generated = admit(request, prompt, { requested, ignoreEos: false, seed: body.seed });
    if (generated instanceof Response) return generated;
    const { output, finishReason } = generated;
    const id = `resp_${randomId()}`;
    const itemId = `msg_${randomId()}`;
    const createdAt = Math.floor(Date.now() / 1000);
    const seq = newSeq(promptTokens, output, finishReason, body.stream === true);
    const text = output.join("");
    const usageOf = (outputTokens: number) => ({
      input_tokens: promptTokens,
      input_tokens_details: { cached_tokens: 0 },
      output_tokens: outputTokens,
      output_tokens_details: { reasoning_tokens: 0 },
      total_tokens: promptTokens + outputTokens,
    });
    const message = (status: "in_progress" | "completed", parts: unknown[]) => ({
      id: itemId,
      type: "message",
      role: "assistant",
      status,
      content: parts,
    });
    const part = (partText: string) => ({ type: "output_text", text: partText, annotations: [] });
    const response = (status: "in_progress" | "completed" | "incomplete", done: boolean) => ({
      id,
      object: "response",
      created_at: createdAt,
      status,
      incomplete_details: status === "incomplete" ? { reason: "max_output_tokens" } : null,
      instructions: body.instructions ?? null,
      max_output_tokens: requested,
      model: modelName,
      output: done ? [message("completed", [part(text)])] : [],
      parallel_tool_calls: true,
      previous_response_id: null,
      temperature: 1,
      tool_choice: "auto",
      tools: [],
      top_p: 1,
      truncation: "disabled",
      usage: done ? usageOf(output.length) : null,
      user: null,
    });
    const final = finishReason === "length" ? "incomplete" : "completed";
    if (body.stream !== true) return runToEnd(request, seq, () => json(response(final, true)));
    let sequence = 0;
    const event = (type: string, fields: Record<string, unknown>) =>
      `event: ${type}\ndata: ${JSON.stringify({ type, sequence_number: sequence++, ...fields })}\n\n`;
    const at = { item_id: itemId, output_index: 0, content_index: 0 };
    return streamSeq({
      request,
      seq,
      first:
        event("response.created", { response: response("in_progress", false) }) +
        event("response.in_progress", { response: response("in_progress", false) }) +
        event("response.output_item.added", {
          output_index: 0,
          item: message("in_progress", []),
        }) +
        event("response.content_part.added", { ...at, part: part("") }),
      chunk: (index) =>
        event("response.output_text.delta", { ...at, delta: output[index], logprobs: [] }),
      tail: () =>
        event("response.output_text.done", { ...at, text, logprobs: [] }) +
        event("response.content_part.done", { ...at, part: part(text) }) +
        event("response.output_item.done", {
          output_index: 0,
          item: message("completed", [part(text)]),
        }) +
        event(`response.${final}`, { response: response(final, true) }),
      end: "",
    });
  };

  const completions = async (request: Request): Promise<Response> => {
    const parsed = await readBody(request, completionRequestSchema);
    if (!parsed.ok) return parsed.response;
    const body = parsed.value;
    const wrongModel = modelCheck(body.model);
    if (wrongModel) return wrongModel;
    const prompt = Array.isArray(body.prompt) ? body.prompt[0] : body.prompt;
    let promptText: string;
    let promptTokens: number;
    if (typeof prompt === "string") {
      promptText = prompt;
      promptTokens = countTokens(prompt);
    } else {
      // Token ids: one list (`prompt` is then its first id) or the first of several lists.
      const ids = typeof prompt === "number" ? (body.prompt as number[]) : (prompt ?? []);
      promptText = ids.join(" ");
      promptTokens = ids.length;
    }
    // vLLM's completions default is 16 output tokens, not "the rest of the context".
    const generated = admit(
      request,
      { promptTokens, promptText, echoText: promptText },
      { requested: body.max_tokens ?? 16, ignoreEos: body.ignore_eos === true, seed: body.seed },
    );
    if (generated instanceof Response) return generated;
    const { output, finishReason } = generated;
    const echoPrefix = body.echo === true ? promptText : "";
    const id = `cmpl-${randomId()}`;
    const created = Math.floor(Date.now() / 1000);
    const seq = newSeq(promptTokens, output, finishReason, body.stream === true);
    const reportedTokens = reported(promptTokens);
    if (engine.cache && typeof prompt === "string") {
      seq.prefixBlocks = blockHashes(prompt);
      seq.finalBlocks = () => blockHashes(prompt + output.join(""));
    }
    if (body.stream !== true) {
      return runToEnd(request, seq, () =>
        json({
          id,
          object: "text_completion",
          created,
          model: modelName,
          choices: [
            {
              index: 0,
              text: echoPrefix + output.join(""),
              logprobs: null,
              finish_reason: finishReason,
              stop_reason: null,
              prompt_logprobs: null,
            },
          ],
          service_tier: null,
          system_fingerprint: null,
          usage: usage(reportedTokens, output.length),
          kv_transfer_params: null,
        }),
      );
    }
    const includeUsage = body.stream_options ? body.stream_options.include_usage !== false : false;
    const head = `data: {"id":"${id}","object":"text_completion","created":${created},"model":${modelJson},"choices":[`;
    const textChunk = (text: string, reason: FinishReason | null) =>
      `${head}{"index":0,"text":${JSON.stringify(text)},"logprobs":null,"finish_reason":${reason ? `"${reason}"` : "null"},"stop_reason":null}]}\n\n`;
    return streamSeq({
      request,
      seq,
      first: echoPrefix ? textChunk(echoPrefix, null) : "",
      chunk: (index, reason) => textChunk(output[index] as string, reason),
      tail: () =>
        includeUsage
          ? `${head}],"usage":${JSON.stringify(usage(reportedTokens, output.length))}}\n\n`
          : "",
    });
  };

  const embeddings = async (request: Request): Promise<Response> => {
    const parsed = await readBody(request, embeddingRequestSchema);
    if (!parsed.ok) return parsed.response;
    const body = parsed.value;
    const wrongModel = modelCheck(body.model);
    if (wrongModel) return wrongModel;
    const input = body.input;
    let inputs: string[];
    let promptTokens = 0;
    if (typeof input === "string") inputs = [input];
    else if (input.length > 0 && typeof input[0] === "number")
      inputs = [(input as number[]).join(" ")];
    else
      inputs = (input as (string | number[])[]).map((item) =>
        typeof item === "string" ? item : item.join(" "),
      );
    for (let i = 0; i < inputs.length; i++) {
      const item = typeof input === "string" ? input : input[i];
      const tokens = Array.isArray(item)
        ? item.length
        : typeof item === "number"
          ? (input as number[]).length
          : countTokens(inputs[i] as string);
      const tooLong = contextCheck(tokens, 0);
      if (tooLong) return tooLong;
      promptTokens += tokens;
    }
    const failure = injected(request);
    if (failure) return failure;
    const dim = body.dimensions ?? config.embeddingDim;
    const seq = newSeq(promptTokens, [], "stop", false);
    const created = Math.floor(Date.now() / 1000);
    return runToEnd(request, seq, () =>
      json({
        id: `embd-${randomId()}`,
        object: "list",
        created,
        model: modelName,
        data: inputs.map((text, index) => {
          const vector = embed(text, dim);
          return {
            index,
            object: "embedding",
            embedding:
              body.encoding_format === "base64"
                ? Buffer.from(new Float32Array(vector).buffer).toString("base64")
                : vector,
          };
        }),
        usage: usage(promptTokens, 0),
      }),
    );
  };

  /**
   * Pairs read as one input each (a rerank's query with each document, a score's pairs): the
   * tokens of each, or the 400 vLLM answers when one is over the context.
   */
  const pairTokens = (pairs: [string, string][]): number[] | Response => {
    const tokens: number[] = [];
    for (const [first, second] of pairs) {
      const count = countTokens(first) + countTokens(second);
      const tooLong = contextCheck(count, null);
      if (tooLong) return tooLong;
      tokens.push(count);
    }
    return tokens;
  };
  const sum = (values: number[]) => values.reduce((total, value) => total + value, 0);

  const rerank = async (request: Request): Promise<Response> => {
    const parsed = await readBody(request, rerankRequestSchema);
    if (!parsed.ok) return parsed.response;
    const body = parsed.value;
    const wrongModel = modelCheck(body.model);
    if (wrongModel) return wrongModel;
    const texts = body.documents.map((document) =>
      typeof document === "string" ? document : document.text,
    );
    const tokens = pairTokens(texts.map((text) => [body.query, text]));
    if (tokens instanceof Response) return tokens;
    const failure = injected(request);
    if (failure) return failure;
    const total = sum(tokens);
    const ranked = texts
      .map((text, index) => ({
        index,
        document: { text },
        relevance_score: relevance(body.query, text),
      }))
      .sort((a, b) => b.relevance_score - a.relevance_score || a.index - b.index);
    const topN = body.top_n ? Math.min(body.top_n, ranked.length) : ranked.length;
    return runToEnd(request, newSeq(total, [], "stop", false), () =>
      // vLLM's RerankResponse: `usage` (total_tokens alone) comes before the results.
      json({
        id: `rerank-${randomId()}`,
        model: modelName,
        usage: { total_tokens: total },
        results: ranked.slice(0, topN),
      }),
    );
  };

  const score = async (request: Request): Promise<Response> => {
    const parsed = await readBody(request, scoreRequestSchema);
    if (!parsed.ok) return parsed.response;
    const body = parsed.value;
    const wrongModel = modelCheck(body.model);
    if (wrongModel) return wrongModel;
    const seconds = typeof body.text_2 === "string" ? [body.text_2] : body.text_2;
    let pairs: [string, string][];
    if (typeof body.text_1 === "string") {
      const first = body.text_1;
      pairs = seconds.map((second) => [first, second]);
    } else if (body.text_1.length === seconds.length) {
      pairs = body.text_1.map((first, index) => [first, seconds[index] as string]);
    } else {
      return vllmError(
        400,
        `text_1 has ${body.text_1.length} texts and text_2 ${seconds.length}: a list of text_1 is scored pair by pair, so the two lists must be as long`,
      );
    }
    const tokens = pairTokens(pairs);
    if (tokens instanceof Response) return tokens;
    const failure = injected(request);
    if (failure) return failure;
    const total = sum(tokens);
    return runToEnd(request, newSeq(total, [], "stop", false), () =>
      json({
        id: `score-${randomId()}`,
        object: "list",
        created: Math.floor(Date.now() / 1000),
        model: modelName,
        data: pairs.map(([first, second], index) => ({
          index,
          object: "score",
          score: relevance(first, second),
        })),
        usage: usage(total, 0),
      }),
    );
  };

  const tokenize = async (request: Request): Promise<Response> => {
    const parsed = await readBody(request, tokenizeRequestSchema);
    if (!parsed.ok) return parsed.response;
    const body = parsed.value;
    const wrongModel = modelCheck(body.model);
    if (wrongModel) return wrongModel;
    let text: string;
    let extra = 0;
    if ("prompt" in body && typeof body.prompt === "string") text = body.prompt;
    else {
      const messages = (body as { messages: ChatRequest["messages"] }).messages;
      text = "";
      extra = CHAT_TOKENS_PER_PROMPT;
      for (const message of messages) {
        text += contentText(message.content);
        extra += CHAT_TOKENS_PER_MESSAGE;
      }
    }
    const pieces = splitTokens(text);
    const tokens = pieces.map((piece) => hash32(piece) % 32_000);
    for (let i = 0; i < extra; i++) tokens.unshift(32_000 + i);
    return json({
      count: tokens.length,
      max_model_len: config.maxModelLen,
      tokens,
      token_strs: null,
    });
  };

  const models = () =>
    json({
      object: "list",
      data: config.servedModelNames.map((name) => ({
        id: name,
        object: "model",
        created: started,
        owned_by: "vllm",
        root: config.model,
        parent: null,
        max_model_len: config.maxModelLen,
        permission: [
          {
            id: `modelperm-${randomId()}`,
            object: "model_permission",
            created: started,
            allow_create_engine: false,
            allow_sampling: true,
            allow_logprobs: true,
            allow_search_indices: false,
            allow_view: true,
            allow_fine_tuning: false,
            organization: "*",
            group: null,
            is_blocking: false,
          },
        ],
      })),
    });

  const cacheConfig = {
    block_size: "16",
    cache_dtype: "auto",
    enable_prefix_caching: config.prefixCaching ? "True" : "False",
    gpu_memory_utilization: String(config.gpuMemoryUtilization),
    num_gpu_blocks: String(Math.ceil(config.kvCacheTokens / 16)),
  };

  /** What an agent adds to a proxied answer (SIM_LOAD_HEADER), from the engine's live state. */
  const stampLoad = (response: Response): Response => {
    response.headers.set(
      LOAD_HEADER,
      formatLoadHeader({
        running: engine.running.size,
        waiting: engine.waiting,
        kv: engine.kvCacheUsage(),
        hit: null,
      }),
    );
    return response;
  };

  /** `/v1/...` routes shared by the plain and the `/proxy/{name}` surface. */
  const v1 = (request: Request, path: string): Response | Promise<Response> => {
    if (bearer.size > 0 && !bearer.has(request.headers.get("authorization") ?? "")) {
      // vLLM's AuthenticationMiddleware answers with this flat body, not the nested shape.
      return json({ error: "Unauthorized" }, 401);
    }
    const method = request.method;
    switch (path) {
      case "/v1/chat/completions":
        return method === "POST" ? chat(request) : methodNotAllowed();
      case "/v1/completions":
        return method === "POST" ? completions(request) : methodNotAllowed();
      case "/v1/embeddings":
        return method === "POST" ? embeddings(request) : methodNotAllowed();
      case "/v1/responses":
        return method === "POST" ? responses(request) : methodNotAllowed();
      case "/v1/rerank":
        return method === "POST" ? rerank(request) : methodNotAllowed();
      case "/v1/score":
        return method === "POST" ? score(request) : methodNotAllowed();
      case "/v1/models":
        return method === "GET" ? models() : methodNotAllowed();
      default:
        return notFound();
    }
  };

  const route = (request: Request, path: string): Response | Promise<Response> => {
    if (path.startsWith("/v1/")) return v1(request, path);
    const method = request.method;
    switch (path) {
      case "/health":
        return method === "GET" ? new Response(null, { status: 200 }) : methodNotAllowed();
      case "/ping":
        return method === "GET" || method === "POST"
          ? new Response(null, { status: 200 })
          : methodNotAllowed();
      case "/version":
        return json({ version: config.version });
      case "/load":
        return json({ server_load: engine.running.size + engine.waiting });
      case "/metrics":
        return new Response(engine.renderMetrics({ cacheConfig }), { headers: TEXT_HEADERS });
      case "/tokenize":
        return method === "POST" ? tokenize(request) : methodNotAllowed();
    }
    if (path.startsWith("/proxy/")) {
      // Simulator-only: stands in for a whole worker (agent + engine) at /proxy/{alias}/v1/*.
      const slash = path.indexOf("/", 7);
      const name = decodeURIComponent(slash < 0 ? path.slice(7) : path.slice(7, slash));
      if (!names.has(name)) return vllmError(404, `The model \`${name}\` does not exist.`, "model");
      const rest = slash < 0 ? "/" : path.slice(slash);
      if (rest.startsWith("/v1/")) {
        const answer = v1(request, rest);
        if (!config.loadHeader) return answer;
        return answer instanceof Promise ? answer.then(stampLoad) : stampLoad(answer);
      }
    }
    return notFound();
  };

  return {
    engine,
    fetch(request, server) {
      const url = request.url;
      const start = url.indexOf("/", url.indexOf("//") + 2);
      const query = url.indexOf("?", start);
      const path = query < 0 ? url.slice(start) : url.slice(start, query);
      if (!config.accessLog || !deps.log) return route(request, path);
      const log = deps.log;
      const peer = server?.requestIP(request);
      const done = (response: Response) => {
        log(
          `INFO:     ${peer?.address ?? "-"}:${peer?.port ?? 0} - "${request.method} ${path} HTTP/1.1" ${response.status}`,
        );
        return response;
      };
      const response = route(request, path);
      return response instanceof Promise ? response.then(done) : done(response);
    },
  };
}
