import { errorResponse } from "../kit/errors.ts";
import type { RouteEntry } from "../protocol/index.ts";
import { type AttemptResult, attempt, type Failure } from "./attempt.ts";
import { authorizeFor, downstreamResponse, upstreamHeaders } from "./headers.ts";
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
 *
 * Not an async function: each attempt's result is taken in a `then` handler (`Forwarding`),
 * one async frame fewer to suspend and resume per request (measured with bench/router-js.ts).
 */
export function forward(config: ProxyConfig, request: ForwardRequest): Promise<Response> {
  const { c } = request;
  request.inFlight.add(1);
  const headers = upstreamHeaders({
    incoming: c.req.raw.headers,
    requestId: request.requestId,
    clientAddress: request.clientAddress,
    proto: c.req.url.startsWith("https:") ? "https" : "http",
    host: c.req.header("host") ?? null,
  });
  return new Forwarding(config, request, headers).next();
}

/** One request in `forward`: its attempts in turn until one commits or none is left. */
class Forwarding {
  private finished = false;
  private readonly retries: RetryState;
  /** Accounts for the request, once (handed to `relay`, which calls it when the answer ends). */
  readonly done = (outcome: Outcome): void => {
    if (this.finished) return;
    this.finished = true;
    this.request.inFlight.add(-1);
    this.request.onDone(outcome);
  };

  constructor(
    private readonly config: ProxyConfig,
    private readonly request: ForwardRequest,
    private readonly headers: Record<string, string>,
  ) {
    this.retries = new RetryState(config, request);
  }

  /** The next attempt on the replica the balancer picks, or the answer when none is left. */
  next(): Promise<Response> {
    const { config, request, retries, headers } = this;
    const withinBudget =
      retries.attempts === 0 || config.clock.now() - request.startedAt <= config.budgetMs;
    if (retries.attempts < config.maxAttempts && withinBudget) {
      const choice = config.balancer.pick(
        request.candidates,
        retries.excluded(),
        request.affinityKey,
        request.opening,
      );
      if (choice) {
        if (retries.last) {
          config.metrics.inc("fleet_router_retries_total", {
            alias: request.alias,
            reason: retries.last.reason,
          });
        }
        retries.begin(choice.state.key);
        // Fetch reads the headers when called: each attempt sends its own worker's credential.
        authorizeFor(headers, choice.route);
        return attempt(config, request, choice, headers).then((result) =>
          this.settled(result, choice.route.worker_id),
        );
      }
    }
    return Promise.resolve(noReplicaAnswered(config, request, retries.last, this.done));
  }

  private settled(result: AttemptResult, workerId: string): Response | Promise<Response> {
    if (result.kind === "committed") return relay(this.config, this.request, result, this.done);
    if (result.kind === "client-gone") {
      this.done({ status: clientClosed, ttftMs: null, usage: undefined, workerId });
      return new Response(null, { status: clientClosed });
    }
    this.retries.record(result);
    return this.next();
  }
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
    const reply = downstreamResponse(last.reply.text, last.reply.status, last.reply.headers, {
      bodyRewritten: true,
      set: requestIdHeader,
    });
    if (reply.status === 503 && !reply.headers.has("retry-after")) {
      reply.headers.set("retry-after", "1");
    }
    return reply;
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
