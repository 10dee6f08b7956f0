import type { RouteEntry } from "../protocol/index.ts";
import type { Committed, ReadResult } from "./attempt.ts";
import { downstreamResponse } from "./headers.ts";
import type { OpenStream } from "./open-streams.ts";
import {
  clientClosed,
  type ForwardRequest,
  type Outcome,
  type ProxyConfig,
} from "./proxy-types.ts";
import {
  checkUsage,
  JsonUsageTail,
  type RawUsage,
  SseUsageFilter,
  usageInJsonBody,
} from "./usage-scan.ts";

type Done = (outcome: Outcome) => void;

/**
 * After the commit point: hands the agent's answer to the client and accounts for it. A
 * small answer read whole goes out as bytes; anything else is relayed chunk by chunk under
 * an idle watchdog, with its usage read on the way. Nothing is retried from here: a break
 * ends the response (`done` is called exactly once either way).
 */
export function relay(
  config: ProxyConfig,
  request: ForwardRequest,
  committed: Committed,
  done: Done,
): Response {
  if (committed.bytes) return respondWhole(request, committed, committed.bytes, done);
  return relayStream(config, request, committed, done);
}

/** The replica's token counts, bounded by its model's context and the request's shape. */
function checked(raw: RawUsage | undefined, route: RouteEntry, request: ForwardRequest) {
  const { inputs, choices } = request.shape;
  return checkUsage(raw, { maxModelLen: route.max_model_len, inputs, choices });
}

function respondWhole(
  request: ForwardRequest,
  committed: Committed,
  bytes: Uint8Array<ArrayBuffer>,
  done: Done,
): Response {
  const { response } = committed;
  const { usage, rejected } = checked(usageInJsonBody(bytes), committed.attempt.route, request);
  done({
    status: response.status,
    ttftMs: committed.ttftMs,
    usage,
    rejected,
    workerId: committed.attempt.route.worker_id,
  });
  return downstreamResponse(bytes.byteLength ? bytes : null, response.status, response.headers, {
    bodyRewritten: false,
    set: { "x-request-id": request.requestId },
    dropped: committed.attempt.dropped,
  });
}

function relayStream(
  config: ProxyConfig,
  request: ForwardRequest,
  committed: Committed,
  done: Done,
): Response {
  const { clock, log } = config;
  const { response, reader, first, attempt, ttftMs } = committed;
  const { upstream, clientSignal, route } = attempt;
  const status = response.status;
  const isSse = (response.headers.get("content-type") ?? "").includes("text/event-stream");
  const filter = isSse ? new SseUsageFilter(request.hideUsage) : undefined;
  const tail = isSse ? undefined : new JsonUsageTail();
  // The router frames what it relays itself (chunked): the agent's Content-Length is checked
  // against the bytes that came (below), never repeated to the client, where a lying one
  // would promise bytes that never come.
  const answer = (body: ReadableStream<Uint8Array> | null) =>
    downstreamResponse(body, status, response.headers, {
      bodyRewritten: true,
      dropped: attempt.dropped,
      set: isSse
        ? {
            "x-request-id": request.requestId,
            "x-accel-buffering": "no",
            "cache-control": "no-cache",
          }
        : { "x-request-id": request.requestId },
    });
  const declaredHeader = response.headers.get("content-length");
  const declared = declaredHeader === null ? null : Number(declaredHeader);
  let received = 0;

  let watchdog: ReturnType<typeof setInterval> | undefined;
  /** This response in the router's open streams, which a shutdown ends (open-streams.ts). */
  let open: OpenStream | undefined;
  /** The stream is over (ended, broke or abandoned): free its hold, then account for it. */
  const stop = (finalStatus: number): Outcome => {
    clearInterval(watchdog);
    if (open) config.streams.delete(open);
    attempt.release();
    const usage = checked(filter ? filter.usage : tail?.usage(), route, request);
    return { status: finalStatus, ttftMs, ...usage, workerId: route.worker_id };
  };
  /** Ended cleanly: the replica's failures are no longer consecutive (an ejection stands). */
  const completed = () => {
    if (attempt.state.ejectedUntil === 0) config.balancer.succeeded(attempt.state);
  };
  if (!reader || !first || first.done) {
    completed();
    done(stop(status));
    return answer(null);
  }

  const pass = (chunk: Uint8Array): Uint8Array | undefined => {
    received += chunk.byteLength;
    if (filter) return filter.push(chunk);
    tail?.push(chunk);
    return chunk;
  };
  let closed = false;
  let idleFired = false;
  /** The last bytes handed to the client: an error event must not be glued to half an event. */
  let lastOut: Uint8Array | undefined;
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
  const broke = (
    controller: ReadableStreamDefaultController<Uint8Array>,
    error: unknown,
    malformed?: string,
  ) => {
    closed = true;
    if (clientSignal.aborted) {
      done(stop(clientClosed));
      controller.error(error);
      return;
    }
    // The response already started: never retry (it would duplicate text). SSE clients get
    // vLLM's own mid-stream error shape so SDKs raise instead of hanging.
    const statusSeen = idleFired ? 504 : 502;
    const reason = idleFired ? "idle timeout" : malformed ? "malformed" : "reset";
    const shortBy =
      declared !== null && received < declared ? ` after ${received} of ${declared} bytes` : "";
    log.warn("upstream broke mid-response", {
      request_id: request.requestId,
      alias: request.alias,
      worker_id: route.worker_id,
      reason,
      cause: idleFired
        ? `no body byte for ${config.idleMs} ms`
        : (malformed ?? `${String(error)}${shortBy}`),
    });
    // A replica whose answers break off counts toward its ejection like one that fails
    // before the first byte: the next request should not meet the same fate.
    config.balancer.failed(route, attempt.state);
    if (malformed)
      config.metrics.inc("fleet_router_malformed_answers_total", {
        alias: request.alias,
        worker_id: route.worker_id,
      });
    if (isSse) {
      const message = idleFired
        ? "the model went idle mid-stream"
        : "the connection to the model was lost mid-stream";
      controller.enqueue(streamErrorEvent(message, statusSeen, lastOut));
      controller.close();
    } else {
      controller.error(error);
    }
    done(stop(statusSeen));
  };
  const firstChunk = first.value;
  let streamController: ReadableStreamDefaultController<Uint8Array> | undefined;
  const body = new ReadableStream<Uint8Array>({
    start(controller) {
      streamController = controller;
      const out = pass(firstChunk);
      if (out) {
        controller.enqueue(out);
        lastOut = out;
      }
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
          if (declared !== null && received !== declared) {
            // The client said the body ended where Content-Length says it did not: the
            // answer is cut (or padded), and the client must not take it as whole.
            const cause = `body ended after ${received} of ${declared} declared bytes`;
            broke(controller, new Error(cause), cause);
            return;
          }
          closed = true;
          const rest = filter?.finish();
          if (rest) controller.enqueue(rest);
          controller.close();
          completed();
          done(stop(status));
          return;
        }
        if (declared !== null && received + result.value.byteLength > declared) {
          const cause = `body longer than its Content-Length of ${declared} bytes`;
          upstream.abort(new Error(cause));
          reader.cancel().catch(() => {});
          broke(controller, new Error(cause), cause);
          return;
        }
        const out = pass(result.value);
        if (out) {
          controller.enqueue(out);
          lastOut = out;
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
      done(stop(clientClosed));
    },
  });
  open = {
    // The router is shutting down: end this response the way a broken one ends, as 503, and
    // stop the agent (and so vLLM) from generating for a response that will not go on.
    end(message) {
      const controller = streamController;
      if (closed || !controller) return;
      closed = true;
      upstream.abort(new Error("the router is shutting down"));
      reader.cancel().catch(() => {});
      try {
        if (isSse) {
          controller.enqueue(streamErrorEvent(message, 503, lastOut));
          controller.close();
        } else {
          controller.error(new Error(message));
        }
      } catch {
        // the client's side of the stream is already gone
      }
      done(stop(503));
    },
  };
  config.streams.add(open);
  return answer(body);
}

const encoder = new TextEncoder();

/**
 * The end of an event stream that cannot go on: an error event in the shape vLLM itself
 * sends mid-stream (OpenAI's error object, the HTTP status as `code`), then `[DONE]`, so an
 * SDK raises the error instead of waiting or taking the text as complete.
 */
export function streamErrorEvent(
  message: string,
  status: number,
  /** What the client got last: when it ended mid-event, that event is closed first. */
  lastOut?: Uint8Array,
): Uint8Array {
  const event = JSON.stringify({
    error: { message, type: "server_error", param: null, code: status },
  });
  const boundary = lastOut && !endsEvent(lastOut) ? "\n\n" : "";
  return encoder.encode(`${boundary}data: ${event}\n\ndata: [DONE]\n\n`);
}

/** Whether `bytes` end with a blank line (`\n\n` or `\r\n\r\n`): an event is complete. */
function endsEvent(bytes: Uint8Array): boolean {
  const n = bytes.byteLength;
  return n >= 2 && bytes[n - 1] === 10 && (bytes[n - 2] === 10 || bytes[n - 3] === 10);
}
