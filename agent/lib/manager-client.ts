import type { Logger } from "../../kit/log.ts";
import {
  type Heartbeat,
  heartbeatReplySchema,
  type WorkerCredentials,
  type WorkerDrainInput,
  type WorkerDrainReply,
  type WorkerRegistrationInput,
  workerDrainReplySchema,
  workerRegistrationReplySchema,
} from "../../protocol/index.ts";
import type { AgentIdentity } from "./identity.ts";

export type ManagerClientOptions = {
  managerUrl: string;
  workerId: string;
  /** What to present (worker credential or join token) and where to keep what is issued. */
  identity: Pick<
    AgentIdentity,
    "joinToken" | "workerCredential" | "managerToken" | "joined" | "rotated" | "discard"
  >;
  log: Logger;
  /** Builds the registration body (GPUs re-read, instances as they are now). */
  registration: () => Promise<WorkerRegistrationInput>;
  heartbeat: () => Promise<Heartbeat>;
  retryBaseMs?: number;
  retryMaxMs?: number;
  requestTimeoutMs?: number;
};

type Outcome =
  | { ok: true; intervalS: number; credentials?: WorkerCredentials }
  | { ok: false; status: number | null; why: string };

/**
 * Keeps this agent registered with the manager: registers with capped, jittered backoff
 * while the manager is down, heartbeats at the interval the manager asks for, and
 * registers again (reporting its running instances) when a heartbeat answers 404. Nothing
 * here ever stops an engine or the proxy: a manager outage only delays reports.
 */
export class ManagerClient {
  readonly #options: Required<ManagerClientOptions>;
  #running = false;
  #registered = false;
  #intervalMs = 10_000;
  #wake: (() => void) | null = null;
  #nudged = false;
  #failing = false;
  #loop: Promise<void> | null = null;
  registrations = 0;

  constructor(options: ManagerClientOptions) {
    this.#options = {
      retryBaseMs: 500,
      retryMaxMs: 30_000,
      requestTimeoutMs: 10_000,
      ...options,
    };
  }

  get registered(): boolean {
    return this.#registered;
  }

  start(): void {
    if (this.#running) return;
    this.#running = true;
    this.#loop = this.#run();
  }

  async stop(): Promise<void> {
    this.#running = false;
    this.#wake?.();
    await this.#loop;
  }

  /**
   * Tells the manager this agent is stopping (`POST /v1/workers/{id}/drain`): its routes
   * leave the snapshot at once. Resolves with the reply, or with why it failed; never throws.
   */
  async drain(
    body: WorkerDrainInput,
    timeoutMs: number,
  ): Promise<{ ok: true; reply: WorkerDrainReply } | { ok: false; why: string }> {
    let reply: WorkerDrainReply | undefined;
    const path = `/v1/workers/${encodeURIComponent(this.#options.workerId)}/drain`;
    const outcome = await this.#post(
      path,
      body,
      this.#options.identity.managerToken(),
      (json) => {
        const parsed = workerDrainReplySchema.safeParse(json);
        if (!parsed.success) return null;
        reply = parsed.data;
        return { intervalS: this.#intervalMs / 1000 };
      },
      timeoutMs,
    );
    if (outcome.ok && reply) return { ok: true, reply };
    return { ok: false, why: outcome.ok ? "unexpected reply from manager" : outcome.why };
  }

  /** Sends a heartbeat now instead of at the next tick (an instance changed state). */
  nudge(): void {
    this.#nudged = true;
    this.#wake?.();
  }

  async #run(): Promise<void> {
    let retryMs = this.#options.retryBaseMs;
    while (this.#running) {
      if (!this.#registered) {
        const outcome = await this.#register();
        if (!this.#running) return;
        if (!outcome.ok) {
          this.#reportFailure("registration", outcome);
          // Full jitter: a fleet of agents must not hammer a manager that just came back.
          await this.#sleep(retryMs / 2 + Math.random() * (retryMs / 2), false);
          retryMs = Math.min(retryMs * 2, this.#options.retryMaxMs);
          continue;
        }
        retryMs = this.#options.retryBaseMs;
        this.#registered = true;
        this.#intervalMs = outcome.intervalS * 1000;
        this.#failing = false;
        this.#options.log.info("registered with the manager", {
          manager: this.#options.managerUrl,
          heartbeat_interval_s: outcome.intervalS,
        });
      }
      await this.#sleep(this.#intervalMs, true);
      if (!this.#running) return;
      const outcome = await this.#heartbeat();
      if (outcome.ok) {
        this.#intervalMs = outcome.intervalS * 1000;
        this.#reportRecovery("manager reachable again");
        if (outcome.credentials && this.#options.identity.rotated(outcome.credentials)) {
          this.#options.log.info("credentials rotated: the new pair is stored and in use");
          // Present the new credential at once, so the manager promotes the pair.
          this.#nudged = true;
        }
      } else if (outcome.status === 404) {
        this.#options.log.info("manager does not know this worker; registering again");
        this.#registered = false;
      } else if (outcome.status === 401 && this.#options.identity.workerCredential) {
        this.#options.log.warn("the manager refused this worker's credential; registering again", {
          why: outcome.why,
        });
        this.#registered = false;
      } else {
        this.#reportFailure("heartbeat", outcome);
      }
    }
  }

  /**
   * Registers with the worker credential when the agent holds one; if the manager no longer
   * accepts it (401: the worker was removed; 404), the agent forgets it and joins again with
   * the join token, as a new identity. A join's reply carries the pair, which is stored.
   */
  async #register(): Promise<Outcome> {
    let body: WorkerRegistrationInput;
    try {
      body = await this.#options.registration();
    } catch (error) {
      return { ok: false, status: null, why: `could not build registration: ${String(error)}` };
    }
    const { identity, log } = this.#options;
    const held = identity.workerCredential;
    if (held) {
      const outcome = await this.#registerWith(body, held);
      if (outcome.ok || (outcome.status !== 401 && outcome.status !== 404)) return outcome;
      log.warn(
        "the manager no longer accepts this worker's credential (the worker was removed, or the manager's database was reset): joining again with FLEET_TOKEN",
        { why: outcome.why },
      );
      identity.discard();
      if (!identity.joinToken) {
        return {
          ok: false,
          status: outcome.status,
          why: "the stored credential was refused and FLEET_TOKEN is not set: set it so this agent can join again",
        };
      }
    }
    const outcome = await this.#registerWith(body, identity.joinToken);
    if (!outcome.ok) return outcome;
    if (outcome.credentials) {
      identity.joined(outcome.credentials);
      log.info("joined the fleet: credentials stored", { worker_id: this.#options.workerId });
    } else if (identity.joinToken) {
      log.warn(
        "the manager issued no credentials (it runs without FLEET_TOKEN): this agent refuses every call until it has them; set the same FLEET_TOKEN on the manager, or run this agent without it on loopback",
      );
    }
    return outcome;
  }

  async #registerWith(body: WorkerRegistrationInput, token: string | undefined): Promise<Outcome> {
    const outcome = await this.#post("/v1/workers/register", body, token, (json) => {
      const reply = workerRegistrationReplySchema.safeParse(json);
      return reply.success
        ? { intervalS: reply.data.heartbeat_interval_s, credentials: reply.data.credentials }
        : null;
    });
    if (outcome.ok) this.registrations++;
    return outcome;
  }

  async #heartbeat(): Promise<Outcome> {
    let body: Heartbeat;
    try {
      body = await this.#options.heartbeat();
    } catch (error) {
      return { ok: false, status: null, why: `could not build heartbeat: ${String(error)}` };
    }
    const path = `/v1/workers/${encodeURIComponent(this.#options.workerId)}/heartbeat`;
    return this.#post(path, body, this.#options.identity.managerToken(), (json) => {
      const reply = heartbeatReplySchema.safeParse(json);
      return reply.success
        ? { intervalS: reply.data.heartbeat_interval_s, credentials: reply.data.credentials }
        : { intervalS: this.#intervalMs / 1000 };
    });
  }

  async #post(
    path: string,
    body: unknown,
    token: string | undefined,
    read: (json: unknown) => { intervalS: number; credentials?: WorkerCredentials } | null,
    timeoutMs = this.#options.requestTimeoutMs,
  ): Promise<Outcome> {
    const headers: Record<string, string> = { "content-type": "application/json" };
    if (token) headers.authorization = `Bearer ${token}`;
    try {
      const response = await fetch(`${this.#options.managerUrl}${path}`, {
        method: "POST",
        headers,
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(timeoutMs),
        // The credential goes to the manager's URL and nowhere else.
        redirect: "manual",
      });
      const text = await response.text();
      if (!response.ok) {
        return {
          ok: false,
          status: response.status,
          why: `HTTP ${response.status}: ${errorText(text)}`,
        };
      }
      let json: unknown = null;
      try {
        json = JSON.parse(text);
      } catch {
        // Handled below as a bad reply.
      }
      const reply = read(json);
      if (reply === null)
        return { ok: false, status: response.status, why: "unexpected reply from manager" };
      // Never spin: a manager that asks for 0.01 s still gets at most 10 heartbeats a second.
      return { ...reply, ok: true, intervalS: Math.max(0.1, reply.intervalS) };
    } catch (error) {
      return {
        ok: false,
        status: null,
        why: error instanceof Error ? error.message : String(error),
      };
    }
  }

  #reportFailure(what: string, outcome: Extract<Outcome, { ok: false }>): void {
    const fields = { manager: this.#options.managerUrl, status: outcome.status, why: outcome.why };
    // Warn once per outage, then only at debug level: an outage is not an emergency here.
    // Refusals (a wrong token, a worker_id that belongs to another host) need a person: always.
    if (
      !this.#failing ||
      outcome.status === 401 ||
      outcome.status === 403 ||
      outcome.status === 409
    ) {
      this.#options.log.warn(`${what} failed; engines and proxy keep running`, fields);
    } else {
      this.#options.log.debug(`${what} failed`, fields);
    }
    this.#failing = true;
  }

  #reportRecovery(message: string): void {
    if (this.#failing) this.#options.log.info(message, { manager: this.#options.managerUrl });
    this.#failing = false;
  }

  /** Sleeps `ms`, or less when stopped or (if `nudgeable`) nudged. */
  async #sleep(ms: number, nudgeable: boolean): Promise<void> {
    if (nudgeable && this.#nudged) {
      this.#nudged = false;
      return;
    }
    await new Promise<void>((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this.#wake = () => {
        if (!this.#running || (nudgeable && this.#nudged)) done();
      };
    });
    this.#wake = null;
    if (nudgeable) this.#nudged = false;
  }
}

/** The message of an OpenAI-shaped error body, else the start of the text. */
function errorText(text: string): string {
  try {
    const message = (JSON.parse(text) as { error?: { message?: unknown } }).error?.message;
    if (typeof message === "string") return message;
  } catch {
    // Not JSON.
  }
  return text.slice(0, 300);
}
