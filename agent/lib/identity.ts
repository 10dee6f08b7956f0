/**
 * Who this agent is to the fleet, and who may call it.
 *
 * With FLEET_TOKEN (the join token) the agent joins once: the manager's reply carries its
 * worker credential (what it presents to the manager from then on) and its agent credential
 * (what the manager and routers present to it). Both are kept in the credentials file, so a
 * restarted agent registers with its own credential and keeps its identity. Every
 * authenticated endpoint takes the agent credential alone (during a rotation also the
 * previous one, for a grace period); until the agent has one, they all answer 401.
 *
 * Once joined, the join token is no longer needed: an agent that finds its credentials file
 * runs with them even without FLEET_TOKEN, so a host need not keep a fleet-wide secret after
 * its first start. Only without FLEET_TOKEN and without credentials (allowed on loopback only)
 * is the agent open: it presents nothing, stores nothing and checks nothing, as before.
 */
import type { Logger } from "../../kit/log.ts";
import type { WorkerCredentials } from "../../protocol/index.ts";
import { bearerChecker } from "./auth.ts";
import { CredentialStore, type CredentialsFile } from "./credentials.ts";

type Checker = (authorization: string | null | undefined) => boolean;

export type AgentIdentityOptions = {
  workerId: string;
  managerUrl: string;
  /** FLEET_TOKEN; undefined runs the agent open. */
  joinToken: string | undefined;
  /** AGENT_DATA_DIR: where the credentials file lives. */
  dataDir: string;
  /** How long the previous agent credential still works after a rotation. */
  graceMs: number;
  log: Logger;
  now?: () => number;
};

export class AgentIdentity {
  readonly joinToken: string | undefined;
  readonly store: CredentialStore;
  readonly #open: boolean;
  readonly #options: AgentIdentityOptions;
  readonly #now: () => number;
  #file: CredentialsFile | undefined;
  #current: Checker | undefined;
  #previous: Checker | undefined;
  #previousUntil = 0;

  constructor(options: AgentIdentityOptions) {
    this.#options = options;
    this.#now = options.now ?? Date.now;
    this.joinToken = options.joinToken || undefined;
    this.store = new CredentialStore(options.dataDir);
    const loaded = this.store.load({ workerId: options.workerId, managerUrl: options.managerUrl });
    if (loaded.ok) {
      this.#use(loaded.value);
      options.log.info("credentials loaded", { file: this.store.path });
    } else if (loaded.why && this.joinToken) {
      options.log.warn("credentials file not used; the agent joins with FLEET_TOKEN", {
        why: loaded.why,
      });
    }
    // Decided once: an agent that holds (or held) credentials never falls back to open.
    this.#open = !this.joinToken && !loaded.ok;
  }

  /** No join token and no credentials: nothing presented, stored or checked (loopback only). */
  get open(): boolean {
    return this.#open;
  }

  /** The worker credential, once the agent has joined. */
  get workerCredential(): string | undefined {
    return this.#file?.worker_credential;
  }

  /** What the agent presents to the manager: its own credential, else the join token. */
  managerToken(): string | undefined {
    return this.#file?.worker_credential ?? this.joinToken;
  }

  /**
   * Whether a request to an authenticated endpoint may pass: open mode, the agent credential,
   * or the previous one within its grace. Constant time in the token's content; no
   * allocation on the proxy's hot path.
   */
  authorized(authorization: string | null | undefined): boolean {
    if (this.#open) return true;
    if (this.#current?.(authorization)) return true;
    return (
      this.#previous !== undefined &&
      this.#now() < this.#previousUntil &&
      this.#previous(authorization)
    );
  }

  /** Whether the caller presented this agent's credential (open mode has none to present). */
  authenticated(authorization: string | null | undefined): boolean {
    return !this.#open && this.authorized(authorization);
  }

  /** The manager let this worker join: keep the pair (file first, then memory). */
  joined(credentials: WorkerCredentials): void {
    const file: CredentialsFile = {
      worker_id: this.#options.workerId,
      manager_url: this.#options.managerUrl,
      worker_credential: credentials.worker_credential,
      agent_token: credentials.agent_token,
    };
    try {
      this.store.save(file);
    } catch (error) {
      // The pair still works until this process ends; a restart will have to join again,
      // which the manager refuses (409) until the worker is removed. Say so loudly.
      this.#options.log.error(
        "could not store the credentials: after a restart this worker cannot register until it is removed (fleet workers rm)",
        { file: this.store.path, error: String(error) },
      );
    }
    this.#use(file);
  }

  /**
   * A rotation: the new pair replaces the old one, and the old agent credential keeps working
   * for the grace period (routers switch within one snapshot refresh of the manager promoting
   * the pair). Only a stored pair is used: one lost in a crash would lock the agent out, so
   * if the disk refuses, the old pair stays and the manager hands out a fresh one next time.
   */
  rotated(credentials: WorkerCredentials): boolean {
    const old = this.#file;
    if (!old) return false;
    const validUntil = this.#now() + this.#options.graceMs;
    const file: CredentialsFile = {
      worker_id: this.#options.workerId,
      manager_url: this.#options.managerUrl,
      worker_credential: credentials.worker_credential,
      agent_token: credentials.agent_token,
      previous_agent_token: old.agent_token,
      previous_valid_until: new Date(validUntil).toISOString(),
    };
    try {
      this.store.save(file);
    } catch (error) {
      this.#options.log.error("could not store rotated credentials; keeping the current ones", {
        file: this.store.path,
        error: String(error),
      });
      return false;
    }
    this.#use(file);
    return true;
  }

  /** The manager refused the stored credential (worker removed, database reset): forget it. */
  discard(): void {
    try {
      this.store.clear();
    } catch (error) {
      this.#options.log.warn("could not remove the credentials file", { error: String(error) });
    }
    this.#file = undefined;
    this.#current = undefined;
    this.#previous = undefined;
    this.#previousUntil = 0;
  }

  #use(file: CredentialsFile): void {
    this.#file = file;
    this.#current = bearerChecker(file.agent_token);
    const until = file.previous_valid_until ? Date.parse(file.previous_valid_until) : 0;
    if (file.previous_agent_token && until > this.#now()) {
      this.#previous = bearerChecker(file.previous_agent_token);
      this.#previousUntil = until;
    } else {
      this.#previous = undefined;
      this.#previousUntil = 0;
    }
  }
}
