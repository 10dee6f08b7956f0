import { errorResponse } from "../kit/errors.ts";
import type { RouteEntry } from "../protocol/index.ts";
import { attempt, type Failure } from "./attempt.ts";
import { authorizeFor, downstreamHeaders, upstreamHeaders } from "./headers.ts";
import {
  clientClosed,
  type ForwardRequest,
  type Outcome,
  type ProxyConfig,
} from "./proxy-types.ts";
import { relay } from "./relay.ts";

export type { ForwardRequest, Outcome, ProxyConfig } from "./proxy-types.ts";

/**
 * Sends one client request to a replica of its alias, retrying on another replica while
 * nothing has reached the client yet: connect errors, resets and timeouts before the first
 * body byte, 502/503/504 from the agent, and redirects (never followed). The first body
 * byte is the commit point: from then on bytes stream through as they come and failures end
 * the response instead.
 *
 * The steps: `attempt` (attempt.ts: send, classify, wait for the first byte) on the replica
 * the balancer picks, then either `relay` (relay.ts: stream, watchdog, usage) or the next
 * replica, and when none is left, the answer that says why.
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
    requestId: request.requestId,
    clientAddress: request.clientAddress,
    proto: c.req.url.startsWith("https:") ? "https" : "http",
    host: c.req.header("host") ?? null,
  });

  const retries = new RetryState(config, request);
  while (retries.attempts < config.maxAttempts) {
    if (retries.attempts > 0 && clock.now() - request.startedAt > config.budgetMs) break;
    const choice = balancer.pick(request.candidates, retries.excluded(), request.affinityKey);
    if (!choice) break;
    if (retries.last)
      metrics.inc("fleet_router_retries_total", { alias, reason: retries.last.reason });
    retries.begin(choice.state.key);
    // Fetch reads the headers when called: each attempt sends its own worker's credential.
    authorizeFor(headers, choice.route);
    const result = await attempt(config, request, choice, headers);
    if (result.kind === "committed") return relay(config, request, result, done);
    if (result.kind === "client-gone") {
      done({
        status: clientClosed,
        ttftMs: null,
        usage: undefined,
        workerId: choice.route.worker_id,
      });
      return new Response(null, { status: clientClosed });
    }
    retries.record(result);
  }
  return noReplicaAnswered(config, request, retries.last, done);
}

const noneTried: ReadonlySet<string> = new Set();

/**
 * One request's attempts, after vLLM production-stack's `RetryState`: the replicas tried
 * (each at most once), and every failure with its cause, logged as it happens, so that the
 * reason a request moved on (a refused connection, a TLS error, a connect timeout) is never
 * lost when the next replica answers.
 */
class RetryState {
  attempts = 0;
  last: Failure | undefined;
  /** The first replica tried; a set of them only once a second attempt is due (rare). */
  private first: string | undefined;
  private tried: Set<string> | undefined;

  constructor(
    private readonly config: ProxyConfig,
    private readonly request: ForwardRequest,
  ) {}

  /** The replicas tried so far, for the balancer to skip. */
  excluded(): ReadonlySet<string> {
    if (this.first === undefined) return noneTried;
    this.tried ??= new Set([this.first]);
    return this.tried;
  }

  begin(replicaKey: string): void {
    if (this.first === undefined) this.first = replicaKey;
    else (this.excluded() as Set<string>).add(replicaKey);
    this.attempts++;
  }

  record(failure: Failure): void {
    this.last = failure;
    this.config.log.warn("upstream attempt failed", {
      request_id: this.request.requestId,
      alias: this.request.alias,
      attempt: this.attempts,
      worker_id: failure.workerId,
      reason: failure.reason,
      status: failure.reply?.status,
      cause: failure.cause,
    });
    if (failure.reason === "malformed") {
      this.config.metrics.inc("fleet_router_malformed_answers_total", {
        alias: this.request.alias,
        worker_id: failure.workerId,
      });
    }
  }
}

/** Every attempt failed (or none could start): say why, in OpenAI's error shape. */
function noReplicaAnswered(
  config: ProxyConfig,
  request: ForwardRequest,
  last: Failure | undefined,
  done: (outcome: Outcome) => void,
): Response {
  const { alias } = request;
  const requestIdHeader = { "x-request-id": request.requestId };
  if (!last) {
    // Nothing was tried: no ready replica, or every one is ejected or being probed.
    const candidates: readonly RouteEntry[] = request.candidates;
    const waitMs = candidates.length === 0 ? 5000 : config.balancer.retryAfterMs(candidates);
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
  if (last.reason === "malformed") {
    return errorResponse(
      "upstream_error",
      `a replica of model \`${alias}\` sent a malformed answer (see the router's log)`,
      { headers: requestIdHeader },
    );
  }
  if (last.reason === "redirect") {
    return errorResponse(
      "upstream_error",
      `a replica of model \`${alias}\` answered with a redirect, which the router never follows`,
      { headers: requestIdHeader },
    );
  }
  return errorResponse("upstream_error", `could not reach a replica of model \`${alias}\``, {
    headers: requestIdHeader,
  });
}
