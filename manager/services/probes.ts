/**
 * Which of a worker's URLs the manager can reach. A probe is `GET {url}/health` on the
 * internal `worker_url` and, when the worker has one, the public `public_worker_url`; a path
 * counts as reachable only when the agent answers as that worker (and, when the worker has
 * an agent credential, confirms it). Results land on the worker row (`*_reachable`,
 * `*_rtt_ms`, `*_probe_error`, `probed_at`), which `AgentClient.target()` reads to choose
 * the management path, and a change of a path's reachability is a `worker.path_changed`
 * event. A path is recorded unreachable only after two failed probes in a row, a second
 * apart (one blip does not move anything). When the path routers take (the route URL: public
 * when the worker has one) becomes unreachable, its routes leave the snapshot for every
 * router, and come back once it answers again (`Lifecycle`, `routeReady`).
 *
 * Several managers share the work without a lock: a probe first claims its worker by
 * moving `probed_at` forward (an UPDATE whose WHERE the other managers' UPDATEs re-check),
 * and records its result only if `probed_at` is still its claim and the URLs are still the
 * ones it probed. A claimed worker is due again PROBE_INTERVAL_S later.
 */
import { and, eq, isNull, lte, or } from "drizzle-orm";
import { type Db, schema } from "../../db/index.ts";
import type { WorkerRow } from "../../db/schema/workers.ts";
import type { Clock } from "../../kit/clock.ts";
import { describeError } from "../../kit/errors.ts";
import type { FetchLike } from "../../kit/fetch.ts";
import type { Logger } from "../../kit/log.ts";
import type { ManagementPath } from "../../protocol/index.ts";
import { type AgentAddress, agentAddressColumns } from "./agent-client.ts";
import type { EventInput } from "./events.ts";
import { type Lifecycle, routedPathDown } from "./lifecycle.ts";
import type { ManagerMetrics } from "./metrics.ts";

/** Workers probed at once in one round. */
const ROUND_CONCURRENCY = 32;
/**
 * A failed path is probed once more this much later before it is recorded: a path that was
 * answering is marked unreachable (and, as the routed path, withdrawn from routers) only
 * after two failures in a row, and an agent that has just joined may still be storing the
 * credential the registration reply gave it.
 */
const CONFIRM_RETRY_MS = 1000;
/** `/health` is a few dozen bytes; anything much larger is not the agent. */
const MAX_ANSWER_BYTES = 64 * 1024;

export type ProbeResult = { reachable: boolean; rttMs: number | null; error: string | null };

/** One probe of one URL: `GET {url}/health`, which must be `workerId`'s agent answering. */
export async function probeUrl(options: {
  fetch: FetchLike;
  url: string;
  workerId: string;
  /** The worker's agent credential; when set, the agent must answer `authenticated: true`. */
  agentToken: string | null;
  timeoutMs: number;
  signal?: AbortSignal;
}): Promise<ProbeResult> {
  const headers: Record<string, string> = { accept: "application/json" };
  if (options.agentToken) headers.authorization = `Bearer ${options.agentToken}`;
  const timeout = AbortSignal.timeout(options.timeoutMs);
  const signal = options.signal ? AbortSignal.any([timeout, options.signal]) : timeout;
  const started = performance.now();
  let response: Response;
  let text: string | undefined;
  try {
    // Never follow: a redirect would carry the credential to another host.
    response = await options.fetch(`${options.url}/health`, {
      headers,
      signal,
      redirect: "manual",
    });
    text = await readCapped(response, MAX_ANSWER_BYTES);
  } catch (error) {
    return failed(
      timeout.aborted
        ? `no answer within ${options.timeoutMs} ms (PROBE_TIMEOUT_MS)`
        : describeError(error),
    );
  }
  const rttMs = Math.max(0, Math.round(performance.now() - started));
  if (response.status >= 300 && response.status < 400) {
    return failed(`answered a redirect (${response.status}); probes never follow redirects`);
  }
  if (!response.ok) return failed(`answered HTTP ${response.status}`);
  if (text === undefined) return failed(`answered more than ${MAX_ANSWER_BYTES} bytes`);
  const body = parseObject(text);
  const answered = body?.worker_id;
  if (typeof answered !== "string") {
    return failed(
      "answered without a worker_id: not a vllm-fleet agent, or one older than the manager",
    );
  }
  if (answered !== options.workerId) {
    return failed(`another agent answered: worker ${answered}, not ${options.workerId}`);
  }
  if (options.agentToken && body?.authenticated !== true) {
    return failed(`the agent did not accept worker ${options.workerId}'s agent credential`);
  }
  return { reachable: true, rttMs, error: null };
}

function failed(error: string): ProbeResult {
  return { reachable: false, rttMs: null, error };
}

/** The body as text, or undefined when it is longer than `limit` bytes. */
async function readCapped(response: Response, limit: number): Promise<string | undefined> {
  const declared = Number(response.headers.get("content-length"));
  if (Number.isFinite(declared) && declared > limit) {
    await response.body?.cancel();
    return undefined;
  }
  if (!response.body) return "";
  const reader = response.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > limit) {
      await reader.cancel();
      return undefined;
    }
    chunks.push(value);
  }
  const bytes = new Uint8Array(size);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return new TextDecoder().decode(bytes);
}

function parseObject(text: string): Record<string, unknown> | undefined {
  try {
    const value: unknown = JSON.parse(text);
    return typeof value === "object" && value !== null && !Array.isArray(value)
      ? (value as Record<string, unknown>)
      : undefined;
  } catch {
    return undefined;
  }
}

/**
 * What a re-registration resets: the probe results of a URL that changed describe the old
 * one, and the management path must not keep trusting them until the next probe.
 */
export function staleProbeResults(
  before: Pick<WorkerRow, "workerUrl" | "publicWorkerUrl"> | undefined,
  after: { workerUrl: string; publicWorkerUrl: string | null },
): Partial<WorkerRow> {
  if (!before) return {};
  const internal =
    before.workerUrl === after.workerUrl
      ? {}
      : { internalReachable: null, internalRttMs: null, internalProbeError: null };
  const external =
    before.publicWorkerUrl === after.publicWorkerUrl
      ? {}
      : { publicReachable: null, publicRttMs: null, publicProbeError: null };
  return { ...internal, ...external };
}

export type ProberDeps = {
  db: Db;
  clock: Clock;
  fetch: FetchLike;
  log: Logger;
  config: { probeIntervalS: number; probeTimeoutMs: number };
  /** Writes the routes that follow a change of the routed path (the one writer of routes). */
  lifecycle: Lifecycle;
  /** Counts probes and route withdrawals on `/metrics`. */
  instruments?: Pick<ManagerMetrics, "probe" | "routedPath">;
};

type Claimed = AgentAddress & {
  probedAt: Date | null;
  internalReachable: boolean | null;
  publicReachable: boolean | null;
};

const claimColumns = {
  ...agentAddressColumns,
  probedAt: schema.workers.probedAt,
  internalReachable: schema.workers.internalReachable,
  publicReachable: schema.workers.publicReachable,
};

/**
 * Runs the probes of this manager process: a round over the workers that are due (started
 * by `tick()`), and one probe right after each registration. Owns what it has in flight, so
 * that `close()` can cut it short.
 */
export class Prober {
  readonly #abort = new AbortController();
  readonly #inFlight = new Set<Promise<unknown>>();
  #round: Promise<number> | undefined;

  constructor(private readonly deps: ProberDeps) {}

  /** PROBE_INTERVAL_S=0: probing is off. */
  get #off(): boolean {
    return this.deps.config.probeIntervalS === 0;
  }

  /**
   * Probes every online worker whose last probe began PROBE_INTERVAL_S ago or more (or
   * never). Resolves with how many workers this round probed; a round already running is
   * joined, not doubled. Never rejects: failures are logged.
   */
  round(): Promise<number> {
    if (this.#abort.signal.aborted || this.#off) return Promise.resolve(0);
    this.#round ??= this.#track(this.#runRound(), 0).finally(() => {
      this.#round = undefined;
    });
    return this.#round;
  }

  /** Probes a worker that has just registered, without holding up the registration's reply. */
  afterRegistration(workerId: string): void {
    if (this.#abort.signal.aborted || this.#off) return;
    void this.#track(this.probe(workerId, { atRegistration: true }), false);
  }

  /**
   * Probes one worker now, whatever its last probe. Resolves true once the result is
   * recorded; false when the worker is unknown, or a newer probe or new URLs superseded it.
   */
  async probe(workerId: string, options: { atRegistration?: boolean } = {}): Promise<boolean> {
    const claimedAt = this.deps.clock.now();
    const [worker] = await this.deps.db
      .update(schema.workers)
      .set({ probedAt: claimedAt })
      .where(eq(schema.workers.workerId, workerId))
      .returning(claimColumns);
    if (!worker) return false;
    return this.#probeClaimed(worker, claimedAt, options.atRegistration ?? false);
  }

  /** Resolves once the probes in flight now have settled (their results recorded or dropped). */
  async idle(): Promise<void> {
    await Promise.allSettled([...this.#inFlight]);
  }

  /** Aborts the probes in flight and waits for them to settle (nothing more is recorded). */
  async close(): Promise<void> {
    this.#abort.abort();
    await Promise.allSettled([...this.#inFlight]);
  }

  async #runRound(): Promise<number> {
    const { db, clock, config } = this.deps;
    const claimedAt = clock.now();
    const due = new Date(claimedAt.getTime() - config.probeIntervalS * 1000);
    const claimed = await db
      .update(schema.workers)
      .set({ probedAt: claimedAt })
      .where(
        and(
          eq(schema.workers.status, "online"),
          or(isNull(schema.workers.probedAt), lte(schema.workers.probedAt, due)),
        ),
      )
      .returning(claimColumns);
    const queue = [...claimed];
    const lanes = Array.from({ length: Math.min(ROUND_CONCURRENCY, queue.length) }, async () => {
      for (let worker = queue.shift(); worker; worker = queue.shift()) {
        await this.#track(this.#probeClaimed(worker, claimedAt), false);
      }
    });
    await Promise.all(lanes);
    return claimed.length;
  }

  async #probeClaimed(worker: Claimed, claimedAt: Date, atRegistration = false): Promise<boolean> {
    const probe = (url: string) =>
      probeUrl({
        fetch: this.deps.fetch,
        url,
        workerId: worker.workerId,
        agentToken: worker.agentToken,
        timeoutMs: this.deps.config.probeTimeoutMs,
        signal: this.#abort.signal,
      });
    const publicUrl = worker.publicWorkerUrl;
    let [internal, external] = await Promise.all([
      probe(worker.workerUrl),
      publicUrl === null ? undefined : probe(publicUrl),
    ]);
    // A failure that would change what is recorded is confirmed by a second probe (a path
    // already recorded unreachable is not probed twice); at registration, every failure is.
    const confirm = (result: ProbeResult | undefined, was: boolean | null) =>
      result !== undefined && !result.reachable && (atRegistration || was !== false);
    const again = {
      internal: confirm(internal, worker.internalReachable),
      external: publicUrl !== null && confirm(external, worker.publicReachable),
    };
    if (again.internal || again.external) {
      await abortableSleep(CONFIRM_RETRY_MS, this.#abort.signal);
      [internal, external] = await Promise.all([
        again.internal ? probe(worker.workerUrl) : internal,
        again.external && publicUrl !== null ? probe(publicUrl) : external,
      ]);
    }
    if (this.#abort.signal.aborted) return false;
    const recorded = await this.#record(worker, claimedAt, internal, external);
    if (recorded) {
      this.deps.instruments?.probe("internal", internal.reachable);
      if (external) this.deps.instruments?.probe("public", external.reachable);
    }
    return recorded;
  }

  async #record(
    worker: Claimed,
    claimedAt: Date,
    internal: ProbeResult,
    external: ProbeResult | undefined,
  ): Promise<boolean> {
    const { clock, log, lifecycle } = this.deps;
    const w = schema.workers;
    const now = clock.now();
    const changes: { path: ManagementPath; url: string; result: ProbeResult }[] = [];
    /** Set when the routed path went down (true) or came back (false) in this record. */
    let routedDown: boolean | undefined;
    const recorded = await lifecycle.write(now, async (writer) => {
      const { tx } = writer;
      const [before] = await tx
        .select({ internal: w.internalReachable, public: w.publicReachable })
        .from(w)
        .where(
          and(
            eq(w.workerId, worker.workerId),
            eq(w.probedAt, claimedAt),
            eq(w.workerUrl, worker.workerUrl),
            worker.publicWorkerUrl === null
              ? isNull(w.publicWorkerUrl)
              : eq(w.publicWorkerUrl, worker.publicWorkerUrl),
          ),
        )
        .for("update");
      if (!before) return false;
      const [row] = await tx
        .update(w)
        .set({
          internalReachable: internal.reachable,
          internalRttMs: internal.rttMs,
          internalProbeError: internal.error,
          publicReachable: external?.reachable ?? null,
          publicRttMs: external?.rttMs ?? null,
          publicProbeError: external?.error ?? null,
        })
        .where(eq(w.workerId, worker.workerId))
        .returning();
      if (!row) return false;
      const events: EventInput[] = [];
      const paths = [
        {
          path: "internal" as const,
          url: worker.workerUrl,
          was: before.internal,
          result: internal,
        },
        {
          path: "public" as const,
          url: worker.publicWorkerUrl,
          was: before.public,
          result: external,
        },
      ];
      for (const { path, url, was, result } of paths) {
        if (!result || url === null || was === result.reachable) continue;
        changes.push({ path, url, result });
        // The first probe of a path finds a state; only a change of a known one is an event.
        if (was === null) continue;
        events.push({
          kind: "worker.path_changed",
          workerId: worker.workerId,
          fromStatus: was ? "reachable" : "unreachable",
          toStatus: result.reachable ? "reachable" : "unreachable",
          message: result.reachable
            ? `${path} path ${url} answers again`
            : `${path} path ${url} stopped answering: ${result.error}`,
          detail: { path, url, reachable: result.reachable, error: result.error },
        });
      }
      for (const event of events) writer.event(event);
      const wasDown = routedPathDown({
        publicWorkerUrl: worker.publicWorkerUrl,
        internalReachable: before.internal,
        publicReachable: before.public,
      });
      if (routedPathDown(row) !== wasDown) {
        const routed = worker.publicWorkerUrl === null ? internal : external;
        await writer.routedPathChanged(row, routed?.error ?? null);
        routedDown = !wasDown;
      }
      return true;
    });
    if (recorded && routedDown !== undefined) this.deps.instruments?.routedPath(routedDown);
    for (const { path, url, result } of changes) {
      const fields = { worker_id: worker.workerId, path, url };
      if (result.reachable) log.info("worker path reachable", { ...fields, rtt_ms: result.rttMs });
      else log.warn("worker path unreachable", { ...fields, error: result.error });
    }
    return recorded;
  }

  /** Keeps `promise` in the in-flight set until it settles; a failure is logged, not thrown. */
  #track<T>(promise: Promise<T>, onError: T): Promise<T> {
    const tracked = promise.catch((error: unknown) => {
      if (!this.#abort.signal.aborted) {
        this.deps.log.warn("worker probe failed", { error: describeError(error) });
      }
      return onError;
    });
    this.#inFlight.add(tracked);
    void tracked.finally(() => this.#inFlight.delete(tracked));
    return tracked;
  }
}

function abortableSleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done, { once: true });
  });
}
