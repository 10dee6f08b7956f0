import { LOAD_HEADER, type RouteEntry } from "../protocol/index.ts";
import { checkHead, malformedAnswer } from "./answer-check.ts";
import type { Choice, ReplicaState } from "./balancer.ts";
import type { ForwardRequest, ProxyConfig } from "./proxy-types.ts";

/**
 * One try of a request on one replica, up to the commit point (the first body byte). Until
 * then nothing has reached the client, so whatever goes wrong is a `Failure` that `forward`
 * may retry elsewhere. The steps: send, check the answer's head (answer-check.ts), classify
 * the status, wait for the first byte (or the whole of a small answer), commit.
 *
 * Not an async function: each step is a `then` handler of the `Attempt`, which settles the
 * promise handed back once (no async frame to suspend and resume at every step; measured
 * with bench/router-js.ts). An exception in a step rejects it, as a throw in an async
 * function would.
 */
export function attempt(
  config: ProxyConfig,
  request: ForwardRequest,
  choice: Choice,
  headers: Record<string, string>,
): Promise<AttemptResult> {
  return new Promise((resolve, reject) => {
    new Attempt(config, request, choice).start(headers, resolve, reject);
  });
}

export type ReadResult = Awaited<
  ReturnType<ReadableStreamDefaultReader<Uint8Array<ArrayBuffer>>["read"]>
>;

/** Before the commit point; `reply` is a 502/503/504 to pass through if no replica is left. */
export type Failure = {
  kind: "failed";
  /** `malformed`: the answer broke HTTP or the limits of answer-check.ts. */
  reason: "connect" | "timeout" | "reset" | "status" | "redirect" | "malformed" | "unresponsive";
  workerId: string;
  /** Why, for the log: the transport error with its cause, or the status. */
  cause: string;
  reply?: { status: number; text: string; headers: Headers };
};

/** The replica answered and its first byte (or its whole small answer) is here. */
export type Committed = {
  kind: "committed";
  attempt: Attempt;
  response: Response;
  /** Arrival until the first body byte from the agent. */
  ttftMs: number;
  /** A small non-streamed answer, read whole (the attempt is already released). */
  bytes?: Uint8Array<ArrayBuffer>;
  /** Otherwise the body's reader and its first read, to relay. */
  reader?: ReadableStreamDefaultReader<Uint8Array<ArrayBuffer>>;
  first?: ReadResult;
};

export type AttemptResult = Committed | { kind: "client-gone" } | Failure;

const maxErrorBody = 64 * 1024;
/** Non-streamed answers up to this size (with a Content-Length) are read whole. */
const maxBufferedBody = 1024 * 1024;
/**
 * An attempt starts watching its client's connection once it has run this long, or once it
 * commits to relaying an answer (every stream): a quick whole answer (almost every
 * non-streamed request) never reads the request's abort signal, which the runtime makes on
 * first read, nor adds and removes a listener on it. A client that hangs up sooner has its
 * request stopped on the engine when the watch starts (the signal, read late, says it was
 * aborted), or is sent an answer nobody reads if the answer comes first (docs/router.md
 * "Forwarding").
 */
export const CLIENT_WATCH_AFTER_MS = 1000;

/**
 * The state of one attempt: its abort controller (the client's disconnect, the router's
 * timeouts and a failed replica check all abort it), its timers (the client watch, then the
 * replica check and the first-byte deadline) and the replica's in-flight count. A class and
 * an `EventListener` object rather than closures: this runs for every request.
 */
export class Attempt {
  readonly upstream = new AbortController();
  readonly route: RouteEntry;
  readonly state: ReplicaState;
  /** When this attempt was sent (monotonic ms). */
  readonly startedAt: number;
  /** When it was sent and this router's requests in flight on the replica then (itself included). */
  readonly sent: { at: number; inflight: number };
  /** The first-byte timer fired (the abort that follows is ours, not a transport failure). */
  timedOut = false;
  /**
   * Why the replica failed its health check while this attempt waited for the first byte
   * (the abort that follows is ours, and the replica is ejected at once).
   */
  unresponsive: string | undefined;
  /** The answer's header fields that never reach the client (answer-check.ts `checkHead`). */
  dropped: readonly string[] | undefined;
  private released = false;
  /** Committed or failed: a check that settles later changes nothing. */
  private settled = false;
  /** The client's signal has been read and (unless already aborted) listened to. */
  private watching = false;
  private firstByteTimer: ReturnType<typeof setTimeout> | undefined;
  /** The client watch's timer, then the replica check's. */
  private checkTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(
    readonly config: ProxyConfig,
    readonly request: ForwardRequest,
    choice: Choice,
  ) {
    this.route = choice.route;
    this.state = choice.state;
    this.startedAt = config.clock.now();
    this.state.inflight++;
    this.sent = { at: this.startedAt, inflight: this.state.inflight };
    // One timer while the answer is quick (almost always): the client watch's, which arms
    // the check's (or the first-byte deadline's, when it comes first).
    const firstDue = Math.min(
      config.check?.afterMs ?? Number.POSITIVE_INFINITY,
      config.firstByteMs,
    );
    this.checkTimer = setTimeout(watchDue, Math.min(CLIENT_WATCH_AFTER_MS, firstDue), this);
  }

  /** The client's signal (the runtime makes it on first read: only read when needed). */
  get clientSignal(): AbortSignal {
    return this.request.c.req.raw.signal;
  }

  /**
   * From now on the attempt is aborted when the client leaves, and at once if it already
   * has. A listener removed when the attempt ends, not AbortSignal.any, whose links outlive
   * the request.
   */
  watchClient(): void {
    if (this.watching) return;
    this.watching = true;
    const signal = this.clientSignal;
    if (signal.aborted) this.upstream.abort(signal.reason);
    else signal.addEventListener("abort", this);
  }

  /** `CLIENT_WATCH_AFTER_MS` (or the first check) is due: watch, then arm what comes next. */
  watchDue(): void {
    this.checkTimer = undefined;
    if (this.settled) return;
    this.watchClient();
    const { check, clock, firstByteMs } = this.config;
    const elapsed = clock.now() - this.startedAt;
    if (check && check.afterMs < firstByteMs) {
      this.checkTimer = setTimeout(checkDue, Math.max(0, check.afterMs - elapsed), this);
    } else {
      this.firstByteTimer = setTimeout(firstByteTimeout, Math.max(0, firstByteMs - elapsed), this);
    }
  }

  /**
   * Waited `check.afterMs` without a first byte: asks whether the replica still answers
   * (sharing the check with every request waiting there). A replica that answers keeps this
   * request waiting, since vLLM queues and long first bytes are legitimate, and is asked
   * again after another `afterMs`; one that does not is ejected and this attempt aborted,
   * to be retried elsewhere: nothing has reached the client yet.
   */
  checkReplica(): void {
    this.checkTimer = undefined;
    const { check, clock, firstByteMs } = this.config;
    if (!check || this.settled) return;
    if (this.firstByteTimer === undefined) {
      const left = Math.max(0, firstByteMs - (clock.now() - this.startedAt));
      this.firstByteTimer = setTimeout(firstByteTimeout, left, this);
    }
    void check.checker.check(this.route).then((verdict) => {
      if (this.settled) return;
      if (verdict.alive) {
        this.checkTimer = setTimeout(checkDue, check.afterMs, this);
        return;
      }
      this.unresponsive = verdict.cause;
      this.upstream.abort(new Error(`replica unresponsive: ${verdict.cause}`));
    });
  }

  /** The client went away: stop the agent (and so vLLM) from working for nobody. */
  handleEvent(): void {
    this.upstream.abort(this.clientSignal.reason);
  }

  private resolve: (result: AttemptResult) => void = noop;
  private reject: (error: unknown) => void = noop;

  /** Sends the request; the steps below take it from there and settle the attempt once. */
  start(
    headers: Record<string, string>,
    resolve: (result: AttemptResult) => void,
    reject: (error: unknown) => void,
  ): void {
    this.resolve = resolve;
    this.reject = reject;
    let sent: Promise<Response>;
    try {
      sent = send(this, headers);
    } catch (error) {
      this.sendFailed(error);
      return;
    }
    sent.then(
      (response) => this.answered(response),
      (error: unknown) => this.sendFailed(error),
    );
  }

  private sendFailed(error: unknown): void {
    this.end(() => this.fail(malformedAnswer(error) ? "malformed" : "connect", error));
  }

  /** The answer's head is here: check it, classify the status, then read on. */
  private answered(response: Response): void {
    try {
      this.config.balancer.observe(this.state, response.headers.get(LOAD_HEADER), this.sent);
      const head = checkHead(response);
      if (head.problem !== undefined) {
        this.afterDiscarding(response, "malformed", head.problem);
        return;
      }
      this.dropped = head.dropped;
      // An agent only ever answers /proxy itself: a redirect would send the prompt and the
      // agent's credential elsewhere, so it is never followed (every client here is asked for
      // `redirect: "manual"`) and the replica counts as failed.
      if (response.status >= 300 && response.status < 400) {
        const location = response.headers.get("location");
        const to = location ? ` to ${location.slice(0, 200)}` : "";
        const cause = `HTTP ${response.status} redirect${to} (never followed)`;
        this.afterDiscarding(response, "redirect", cause);
        return;
      }
      if (retryable(response.status)) {
        replyOf(response).then(
          (reply) => this.end(() => this.fail("status", `HTTP ${response.status}`, reply)),
          this.reject,
        );
        return;
      }
      if (readWhole(response)) {
        response.bytes().then(
          (bytes) => this.whole(response, bytes),
          (error: unknown) =>
            this.end(() => this.fail(malformedAnswer(error) ? "malformed" : "reset", error)),
        );
        return;
      }
      const reader = response.body?.getReader();
      if (!reader) {
        this.resolve(this.commit(response, { reader, first: undefined }));
        return;
      }
      reader.read().then(
        (first) => this.end(() => this.commit(response, { reader, first })),
        (error: unknown) => this.end(() => this.fail("reset", error)),
      );
    } catch (error) {
      this.reject(error);
    }
  }

  /** A small answer read whole: nothing is left to relay, the attempt ends here. */
  private whole(response: Response, bytes: Uint8Array<ArrayBuffer>): void {
    try {
      // A client that hands over fewer (or more) bytes than Content-Length promised must
      // not make the router repeat the promise to its own client.
      const declared = Number(response.headers.get("content-length"));
      if (bytes.byteLength !== declared) {
        const cause = `body of ${bytes.byteLength} bytes where Content-Length said ${declared}`;
        this.resolve(this.fail("malformed", cause));
        return;
      }
      this.release();
      this.resolve(this.commit(response, { bytes }));
    } catch (error) {
      this.reject(error);
    }
  }

  /** Fails the attempt once the answer's body is cancelled (it is never read). */
  private afterDiscarding(response: Response, reason: Failure["reason"], cause: string): void {
    const cancelled = response.body ? response.body.cancel().catch(noop) : Promise.resolve();
    cancelled.then(() => this.end(() => this.fail(reason, cause)), this.reject);
  }

  /** Settles the attempt with what `step` decides (a throw rejects it). */
  private end(step: () => AttemptResult): void {
    try {
      this.resolve(step());
    } catch (error) {
      this.reject(error);
    }
  }

  /** Ends the attempt's hold on the replica and on the client's signal (once). */
  release(): void {
    if (this.released) return;
    this.released = true;
    this.state.inflight--;
    if (this.watching) this.clientSignal.removeEventListener("abort", this);
  }

  fail(reason: Failure["reason"], error: unknown, reply?: Failure["reply"]): AttemptResult {
    this.settle();
    this.release();
    if (!reply && this.clientSignal.aborted) {
      this.config.balancer.released(this.state);
      return { kind: "client-gone" };
    }
    if (this.unresponsive !== undefined && !reply) {
      this.config.balancer.eject(this.route, this.state);
      const waited = Math.round(this.config.clock.now() - this.startedAt);
      const cause = `no first byte after ${waited} ms and ${this.unresponsive}`;
      return { kind: "failed", reason: "unresponsive", workerId: this.route.worker_id, cause };
    }
    this.config.balancer.failed(this.route, this.state);
    if (this.timedOut) {
      const cause = `no first byte within ${this.config.firstByteMs} ms`;
      return { kind: "failed", reason: "timeout", workerId: this.route.worker_id, cause, reply };
    }
    const cause = typeof error === "string" ? error : transportCause(error);
    return { kind: "failed", reason, workerId: this.route.worker_id, cause, reply };
  }

  commit(
    response: Response,
    body: Partial<Pick<Committed, "bytes" | "reader" | "first">>,
  ): Committed {
    this.settle();
    // A whole answer is a success now, and so is a half-open probe's first byte (it brings
    // the replica back). Any other relayed answer is one when it ends cleanly (relay.ts):
    // a replica whose streams all break mid-way must still reach its ejection.
    if (body.bytes || this.state.ejectedUntil !== 0) this.config.balancer.succeeded(this.state);
    // A relayed answer holds the attempt until it ends: watch the client all along.
    if (body.reader) this.watchClient();
    const ttftMs = this.config.clock.now() - this.request.startedAt;
    const { bytes, reader, first } = body;
    return { kind: "committed", attempt: this, response, ttftMs, bytes, reader, first };
  }

  private settle(): void {
    this.settled = true;
    if (this.firstByteTimer !== undefined) clearTimeout(this.firstByteTimer);
    if (this.checkTimer !== undefined) clearTimeout(this.checkTimer);
  }
}

function noop(): void {}

function checkDue(attempt: Attempt): void {
  attempt.checkReplica();
}

function watchDue(attempt: Attempt): void {
  attempt.watchDue();
}

function firstByteTimeout(attempt: Attempt): void {
  attempt.timedOut = true;
  attempt.upstream.abort(new Error("first byte timeout"));
}

function send(run: Attempt, headers: Record<string, string>): Promise<Response> {
  const { config, request } = run;
  const client = request.stream ? config.streamFetch : config.fetch;
  return client(`${run.route.worker_url}/proxy/${request.alias}${request.path}`, {
    method: "POST",
    headers,
    body: request.body,
    signal: run.upstream.signal,
    redirect: "manual",
  });
}

function retryable(status: number): boolean {
  return status === 502 || status === 503 || status === 504;
}

/**
 * A small non-streamed answer (a chat completion, a few embeddings) is read whole: the
 * client cannot use half a JSON document anyway, and one native read plus a byte response
 * costs far less than relaying it through a JS stream. Streams never come here.
 */
function readWhole(response: Response): boolean {
  const declared = Number(response.headers.get("content-length") ?? Number.NaN);
  if (!(declared <= maxBufferedBody)) return false;
  return !(response.headers.get("content-type") ?? "").includes("text/event-stream");
}

/** A retryable answer's body (up to 64 KiB), kept to pass through if no replica is left. */
async function replyOf(response: Response): Promise<Failure["reply"]> {
  const text = await readSmall(response).catch(() => "");
  return { status: response.status, text, headers: response.headers };
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
 * A transport error as an operator needs it: the message, its cause's message (a connect
 * timeout, a TLS verification error) and the system code when there is one.
 */
export function transportCause(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  let text = error.message;
  const cause = error.cause;
  if (cause instanceof Error && !text.includes(cause.message)) text += `: ${cause.message}`;
  const code = (error as { code?: unknown }).code ?? (cause as { code?: unknown } | null)?.code;
  if (typeof code === "string" && !text.includes(code)) text += ` (${code})`;
  return text;
}
