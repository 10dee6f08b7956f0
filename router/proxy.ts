import type { Context } from "hono";
import type { MonotonicClock } from "../kit/clock.ts";
import { errorResponse } from "../kit/errors.ts";
import type { Logger } from "../kit/log.ts";
import type { RouteEntry } from "../protocol/index.ts";
import type { Balancer, Pick } from "./balancer.ts";
import { downstreamHeaders, upstreamHeaders } from "./headers.ts";
import type { BoundSeries, Metrics } from "./metrics.ts";
import type { FetchLike } from "./types.ts";
import { JsonUsageTail, SseUsageFilter, type Usage } from "./usage-scan.ts";

export type ProxyConfig = {
  fetch: FetchLike;
  fleetToken: string | undefined;
  firstByteMs: number;
  idleMs: number;
  maxAttempts: number;
  budgetMs: number;
  balancer: Balancer;
  metrics: Metrics;
  clock: MonotonicClock;
  log: Logger;
};

export type Outcome = {
  /** The status the client saw; 499 when the client went away first. */
  status: number;
  ttftMs: number | null;
  usage: Usage | undefined;
  workerId: string | null;
};

export type ForwardRequest = {
  c: Context;
  alias: string;
  /** The alias's `fleet_router_in_flight` series. */
  inFlight: BoundSeries;
  path: string;
  candidates: readonly RouteEntry[];
  body: Uint8Array<ArrayBuffer> | string;
  stream: boolean;
  hideUsage: boolean;
  sessionKey: string | undefined;
  requestId: string;
  clientAddress: string | undefined;
  startedAt: number;
  onDone: (outcome: Outcome) => void;
};

type Failure = {
  kind: "failed";
  reason: "connect" | "timeout" | "reset" | "status";
  workerId: string;
  /** A 502/503/504 from the agent, kept to pass through if no replica is left. */
  reply?: { status: number; text: string; headers: Headers };
};
type AttemptResult = { kind: "response"; response: Response } | { kind: "client-gone" } | Failure;

/** Client closed request (nginx's convention); recorded, never sent. */
type ReadResult = Awaited<ReturnType<ReadableStreamDefaultReader<Uint8Array<ArrayBuffer>>["read"]>>;

const clientClosed = 499;
const maxErrorBody = 64 * 1024;
/** Non-streamed answers up to this size (with a Content-Length) are read whole. */
const maxBufferedBody = 1024 * 1024;

function retryable(status: number): boolean {
  return status === 502 || status === 503 || status === 504;
}

async function readSmall(response: Response): Promise<string> {
  if (!response.body) return "";
  const reader = response.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    size += value.byteLength;
    if (size >= maxErrorBody) {
      await reader.cancel().catch(() => {});
      break;
    }
  }
  const decoder = new TextDecoder();
  return chunks.map((chunk) => decoder.decode(chunk, { stream: true })).join("") + decoder.decode();
}

/**
 * Sends one client request to a replica of its alias, retrying on another replica while
 * nothing has reached the client yet: connect errors, resets and timeouts before the first
 * body byte, and 502/503/504 from the agent. The first body byte is the commit point: from
 * then on bytes stream through as they come and failures end the response instead.
 */
export async function forward(config: ProxyConfig, request: ForwardRequest): Promise<Response> {
  const { metrics, balancer, clock } = config;
  const { c, alias } = request;
  request.inFlight.add(1);
  let finished = false;
  const done = (outcome: Outcome) => {
    if (finished) return;
    finished = true;
    request.inFlight.add(-1);
    request.onDone(outcome);
  };

  const headers = upstreamHeaders({
    incoming: c.req.raw.headers,
    fleetToken: config.fleetToken,
    requestId: request.requestId,
    clientAddress: request.clientAddress,
    proto: c.req.url.startsWith("https:") ? "https" : "http",
    host: c.req.header("host") ?? null,
  });

  const tried = new Set<string>();
  let last: Failure | undefined;
  for (let attempt = 0; attempt < config.maxAttempts; attempt++) {
    if (attempt > 0 && clock.now() - request.startedAt > config.budgetMs) break;
    const pick = balancer.pick(request.candidates, tried, request.sessionKey);
    if (!pick) break;
    tried.add(pick.state.key);
    if (last) metrics.inc("fleet_router_retries_total", { alias, reason: last.reason });
    const result = await tryReplica(config, request, pick, headers, done);
    if (result.kind === "response") return result.response;
    if (result.kind === "client-gone") {
      done({
        status: clientClosed,
        ttftMs: null,
        usage: undefined,
        workerId: pick.route.worker_id,
      });
      return new Response(null, { status: clientClosed });
    }
    last = result;
    config.log.warn("upstream attempt failed", {
      request_id: request.requestId,
      alias,
      worker_id: pick.route.worker_id,
      reason: result.reason,
      status: result.reply?.status,
    });
  }

  const requestIdHeader = { "x-request-id": request.requestId };
  if (!last) {
    // Nothing was tried: no ready replica, or every one is ejected or being probed.
    const waitMs =
      request.candidates.length === 0 ? 5000 : balancer.retryAfterMs(request.candidates);
    done({ status: 503, ttftMs: null, usage: undefined, workerId: null });
    return errorResponse(
      "no_ready_replica",
      `no ready replica for model \`${alias}\` right now; retry shortly`,
      {
        headers: {
          "retry-after": String(Math.max(1, Math.ceil(waitMs / 1000))),
          ...requestIdHeader,
        },
      },
    );
  }
  done({
    status: last.reply?.status ?? (last.reason === "timeout" ? 504 : 502),
    ttftMs: null,
    usage: undefined,
    workerId: last.workerId,
  });
  if (last.reply) {
    const replyHeaders = downstreamHeaders(last.reply.headers, true);
    replyHeaders.set("x-request-id", request.requestId);
    if (last.reply.status === 503 && !replyHeaders.has("retry-after")) {
      replyHeaders.set("retry-after", "1");
    }
    return new Response(last.reply.text, { status: last.reply.status, headers: replyHeaders });
  }
  if (last.reason === "timeout") {
    return errorResponse("upstream_timeout", `model \`${alias}\` did not start answering in time`, {
      headers: requestIdHeader,
    });
  }
  return errorResponse("upstream_error", `could not reach a replica of model \`${alias}\``, {
    headers: requestIdHeader,
  });
}

async function tryReplica(
  config: ProxyConfig,
  request: ForwardRequest,
  pick: Pick,
  headers: Record<string, string>,
  done: (outcome: Outcome) => void,
): Promise<AttemptResult> {
  const { balancer, clock } = config;
  const { route, state } = pick;
  const clientSignal = request.c.req.raw.signal;
  // One controller per attempt: the client's disconnect and our timeouts both abort it.
  // (A listener removed at the end, not AbortSignal.any, whose links outlive the request.)
  const upstream = new AbortController();
  const onClientGone = () => upstream.abort(clientSignal.reason);
  if (clientSignal.aborted) onClientGone();
  else clientSignal.addEventListener("abort", onClientGone, { once: true });

  state.inflight++;
  let released = false;
  const release = () => {
    if (released) return;
    released = true;
    state.inflight--;
    clientSignal.removeEventListener("abort", onClientGone);
  };
  let timedOut = false;
  const firstByteTimer = setTimeout(() => {
    timedOut = true;
    upstream.abort(new Error("first byte timeout"));
  }, config.firstByteMs);

  const fail = (reason: Failure["reason"], reply?: Failure["reply"]): AttemptResult => {
    clearTimeout(firstByteTimer);
    release();
    if (!reply && clientSignal.aborted) {
      balancer.released(state);
      return { kind: "client-gone" };
    }
    balancer.failed(route, state);
    return {
      kind: "failed",
      reason: timedOut ? "timeout" : reason,
      workerId: route.worker_id,
      reply,
    };
  };

  let response: Response;
  try {
    response = await config.fetch(`${route.worker_url}/proxy/${request.alias}${request.path}`, {
      method: "POST",
      headers,
      body: request.body,
      signal: upstream.signal,
      redirect: "manual",
    });
  } catch {
    return fail("connect");
  }

  if (retryable(response.status)) {
    const text = await readSmall(response).catch(() => "");
    return fail("status", { status: response.status, text, headers: response.headers });
  }

  // A small non-streamed answer (a chat completion, a few embeddings) is read whole: the
  // client cannot use half a JSON document anyway, and one native read plus a byte
  // response costs far less than relaying it through a JS stream. Streams never come here.
  const declaredLength = Number(response.headers.get("content-length") ?? Number.NaN);
  const isSse = (response.headers.get("content-type") ?? "").includes("text/event-stream");
  if (declaredLength <= maxBufferedBody && !isSse) {
    let bytes: Uint8Array<ArrayBuffer>;
    try {
      bytes = new Uint8Array(await response.arrayBuffer());
    } catch {
      return fail("reset");
    }
    clearTimeout(firstByteTimer);
    balancer.succeeded(state);
    release();
    const tail = new JsonUsageTail();
    tail.push(bytes.subarray(Math.max(0, bytes.byteLength - 16 * 1024)));
    const headersOut = downstreamHeaders(response.headers, false);
    headersOut.set("x-request-id", request.requestId);
    done({
      status: response.status,
      ttftMs: clock.now() - request.startedAt,
      usage: tail.usage(),
      workerId: route.worker_id,
    });
    return {
      kind: "response",
      response: new Response(bytes.byteLength ? bytes : null, {
        status: response.status,
        headers: headersOut,
      }),
    };
  }

  const reader = response.body?.getReader();
  let first: ReadResult | undefined;
  if (reader) {
    try {
      first = await reader.read();
    } catch {
      return fail("reset");
    }
  }
  clearTimeout(firstByteTimer);
  balancer.succeeded(state);
  const ttftMs = clock.now() - request.startedAt;

  const filter = isSse ? new SseUsageFilter(request.hideUsage) : undefined;
  const tail = isSse ? undefined : new JsonUsageTail();
  const responseHeaders = downstreamHeaders(
    response.headers,
    filter !== undefined && request.hideUsage,
  );
  responseHeaders.set("x-request-id", request.requestId);
  if (isSse) {
    responseHeaders.set("x-accel-buffering", "no");
    responseHeaders.set("cache-control", "no-cache");
  }

  const status = response.status;
  let watchdog: ReturnType<typeof setInterval> | undefined;
  const finish = (finalStatus: number) => {
    clearInterval(watchdog);
    release();
    done({
      status: finalStatus,
      ttftMs,
      usage: filter ? filter.usage : tail?.usage(),
      workerId: route.worker_id,
    });
  };

  if (!reader || !first || first.done) {
    finish(status);
    return { kind: "response", response: new Response(null, { status, headers: responseHeaders }) };
  }

  const pass = (chunk: Uint8Array): Uint8Array | undefined => {
    if (filter) return filter.push(chunk);
    tail?.push(chunk);
    return chunk;
  };

  let closed = false;
  let idleFired = false;
  // One watchdog per stream rather than a timer per chunk (chunks arrive every few ms and
  // 1,000 streams would churn 100k timers a second); it fires within idleMs × 1.1.
  let lastChunkAt = clock.now();
  watchdog = setInterval(
    () => {
      if (clock.now() - lastChunkAt < config.idleMs) return;
      idleFired = true;
      clearInterval(watchdog);
      upstream.abort(new Error("idle timeout"));
    },
    Math.max(50, Math.min(config.idleMs / 10, 10_000)),
  );
  const broke = (controller: ReadableStreamDefaultController<Uint8Array>, error: unknown) => {
    closed = true;
    if (clientSignal.aborted) {
      finish(clientClosed);
      controller.error(error);
      return;
    }
    // The response already started: never retry (it would duplicate text). SSE clients get
    // vLLM's own mid-stream error shape so SDKs raise instead of hanging.
    const statusSeen = idleFired ? 504 : 502;
    config.log.warn("upstream broke mid-response", {
      request_id: request.requestId,
      alias: request.alias,
      worker_id: route.worker_id,
      reason: idleFired ? "idle timeout" : "reset",
    });
    if (isSse) {
      const message = idleFired
        ? "the model went idle mid-stream"
        : "the connection to the model was lost mid-stream";
      const event = JSON.stringify({
        error: { message, type: "server_error", param: null, code: statusSeen },
      });
      controller.enqueue(new TextEncoder().encode(`data: ${event}\n\ndata: [DONE]\n\n`));
      controller.close();
    } else {
      controller.error(error);
    }
    finish(statusSeen);
  };
  const firstChunk = first.value;
  const body = new ReadableStream<Uint8Array>({
    start(controller) {
      const out = pass(firstChunk);
      if (out) controller.enqueue(out);
    },
    async pull(controller) {
      // Loop until something is enqueued: a pull that enqueues nothing is not called again.
      for (;;) {
        let result: ReadResult;
        try {
          result = await reader.read();
        } catch (error) {
          if (!closed) broke(controller, error);
          return;
        }
        lastChunkAt = clock.now();
        if (closed) return;
        if (result.done) {
          closed = true;
          const rest = filter?.finish();
          if (rest) controller.enqueue(rest);
          controller.close();
          finish(status);
          return;
        }
        const out = pass(result.value);
        if (out) {
          controller.enqueue(out);
          return;
        }
      }
    },
    cancel() {
      // The client went away: stop the agent (and so vLLM) from generating for nobody.
      if (closed) return;
      closed = true;
      upstream.abort(new Error("client disconnected"));
      reader.cancel().catch(() => {});
      finish(clientClosed);
    },
  });
  return { kind: "response", response: new Response(body, { status, headers: responseHeaders }) };
}
