/**
 * Who an agent is. A worker joins once with the join token (FLEET_TOKEN, or ADMIN_TOKEN) and
 * receives its own credential; from then on its registrations and heartbeats must present
 * that credential, which the manager knows only as a SHA-256 (`workers.credential_hash`, or
 * `pending_credential_hash` during a rotation). The checks run as route middleware, before
 * the body is read, and leave what they found for the handler.
 *
 * Open mode (no FLEET_TOKEN): nothing is checked and no credential is issued, as before.
 */
import { eq, or } from "drizzle-orm";
import type { Context, MiddlewareHandler } from "hono";
import { schema } from "../db/index.ts";
import {
  bearerToken,
  constantTimeEqual,
  randomToken,
  sameSecret,
  sha256Hex,
} from "../kit/crypto.ts";
import { AppError, parseWith } from "../kit/errors.ts";
import { type WorkerCredentials, workerIdParamsSchema } from "../protocol/index.ts";
import type { ManagerContext } from "./context.ts";

/** Who is registering. */
export type RegistrationCaller =
  /** No join token configured: nothing checked, nothing issued. */
  | { kind: "open" }
  /** The join token (or ADMIN_TOKEN): only a worker_id without a credential may join. */
  | { kind: "join" }
  /** A worker's own credential (current or pending): only that worker_id. */
  | { kind: "worker"; workerId: string; credentialHash: string };

/**
 * Who is heartbeating: open mode, or a caller presenting this credential for the worker.
 * The heartbeat's own UPDATE is the authoritative check (it writes only when the hash is the
 * worker's current or pending one); the middleware's check keeps strangers from learning
 * anything about the body before it.
 */
export type HeartbeatCaller = { kind: "open" } | { kind: "worker"; credentialHash: string };

const registrationCallers = new WeakMap<Request, RegistrationCaller>();
const heartbeatCallers = new WeakMap<Request, HeartbeatCaller>();

/** Whether workers join with a token and then hold credentials (FLEET_TOKEN is set). */
export function credentialsRequired(ctx: Pick<ManagerContext, "config">): boolean {
  return ctx.config.fleetToken !== undefined;
}

/**
 * `POST /v1/workers/register`: the join token (or ADMIN_TOKEN), or some worker's credential.
 * Which worker the credential belongs to is checked against the body by the handler.
 */
export function requireRegistrationCaller(ctx: ManagerContext): MiddlewareHandler {
  return async (c, next) => {
    registrationCallers.set(
      c.req.raw,
      await registrationCaller(ctx, c.req.header("authorization")),
    );
    await next();
  };
}

async function registrationCaller(
  ctx: ManagerContext,
  header: string | undefined,
): Promise<RegistrationCaller> {
  const { fleetToken, adminToken } = ctx.config;
  if (fleetToken === undefined) return { kind: "open" };
  const presented = bearerToken(header);
  if (presented === "") {
    throw new AppError(
      "unauthorized",
      "registration needs Authorization: Bearer with the worker's own credential (kept in its agent's data directory), or the join token (FLEET_TOKEN) for a worker that has not joined yet",
    );
  }
  if (constantTimeEqual(presented, fleetToken)) return { kind: "join" };
  if (adminToken !== undefined && constantTimeEqual(presented, adminToken)) return { kind: "join" };
  const credentialHash = await ctx.credentials.hashOf(presented);
  const [row] = await ctx.db
    .select({ workerId: schema.workers.workerId })
    .from(schema.workers)
    .where(
      or(
        eq(schema.workers.credentialHash, credentialHash),
        eq(schema.workers.pendingCredentialHash, credentialHash),
      ),
    )
    .limit(1);
  if (!row) {
    throw new AppError(
      "unauthorized",
      "unknown credential: neither the join token nor the credential of a registered worker (a removed worker, or a manager whose database was reset, joins again with FLEET_TOKEN)",
    );
  }
  return { kind: "worker", workerId: row.workerId, credentialHash };
}

/** What `requireRegistrationCaller` found for this request. */
export function registrationCallerOf(c: Context): RegistrationCaller {
  const caller = registrationCallers.get(c.req.raw);
  if (!caller) throw new Error("requireRegistrationCaller did not run for this route");
  return caller;
}

/**
 * `POST /v1/workers/{worker_id}/heartbeat`: only that worker's own credential, current or
 * pending. The join token is not enough. An unknown worker is 404, which tells its agent to
 * register again.
 */
export function requireHeartbeatCaller(ctx: ManagerContext): MiddlewareHandler {
  // (the lookup is skipped when this worker's credential was verified before: see
  // CredentialMemo)
  return async (c, next) => {
    const workerId = validWorkerId(c.req.param("worker_id"));
    heartbeatCallers.set(
      c.req.raw,
      await heartbeatCaller(ctx, workerId, c.req.header("authorization")),
    );
    await next();
  };
}

/**
 * The path's worker id, checked as the route's own validation would check it (the same 400,
 * naming `worker_id`), whatever the token: the middleware runs first, and an id Postgres
 * cannot store (a NUL from `%00`) would fail its lookup with a 500.
 */
function validWorkerId(raw: string | undefined): string {
  return parseWith(workerIdParamsSchema, { worker_id: raw ?? "" }, "path").worker_id;
}

async function heartbeatCaller(
  ctx: ManagerContext,
  workerId: string,
  header: string | undefined,
): Promise<HeartbeatCaller> {
  if (!credentialsRequired(ctx)) return { kind: "open" };
  const presented = bearerToken(header);
  if (presented === "") {
    throw new AppError(
      "unauthorized",
      "heartbeats and drains need Authorization: Bearer with the worker's own credential",
    );
  }
  const credentialHash = await ctx.credentials.hashOf(presented);
  if (sameSecret(ctx.credentials.verified(workerId), credentialHash)) {
    return { kind: "worker", credentialHash };
  }
  const [row] = await ctx.db
    .select({
      credentialHash: schema.workers.credentialHash,
      pendingCredentialHash: schema.workers.pendingCredentialHash,
    })
    .from(schema.workers)
    .where(eq(schema.workers.workerId, workerId));
  if (!row) throw workerNotFound(workerId);
  const current =
    row.credentialHash !== null && constantTimeEqual(credentialHash, row.credentialHash);
  const pending =
    row.pendingCredentialHash !== null &&
    constantTimeEqual(credentialHash, row.pendingCredentialHash);
  if (!current && !pending) throw notThisWorker(workerId);
  if (current) ctx.credentials.remember(workerId, credentialHash);
  return { kind: "worker", credentialHash };
}

export function workerNotFound(workerId: string): AppError {
  return new AppError("worker_not_found", `worker ${workerId} is not registered; register again`);
}

export function notThisWorker(workerId: string): AppError {
  return new AppError(
    "unauthorized",
    `heartbeats and drains for worker ${workerId} need that worker's own credential (the join token only joins new workers)`,
  );
}

/** What `requireHeartbeatCaller` found for this request. */
export function heartbeatCallerOf(c: Context): HeartbeatCaller {
  const caller = heartbeatCallers.get(c.req.raw);
  if (!caller) throw new Error("requireHeartbeatCaller did not run for this route");
  return caller;
}

/**
 * What the manager remembers to keep a heartbeat at one statement: the SHA-256 of recently
 * presented tokens (bounded), and per worker the credential hash last verified against the
 * database. A remembered hash only spares the middleware its lookup: the heartbeat's UPDATE
 * checks the hash again, so a credential removed or rotated by another manager replica stops
 * working all the same (the memo is then forgotten).
 */
export class CredentialMemo {
  private readonly hashes = new Map<string, string>();
  private readonly workers = new Map<string, string>();

  constructor(private readonly maxTokens = 100_000) {}

  async hashOf(token: string): Promise<string> {
    const known = this.hashes.get(token);
    if (known !== undefined) return known;
    const hash = await sha256Hex(token);
    this.seed(token, hash);
    return hash;
  }

  /** A token whose hash is known already (one this manager just issued). */
  seed(token: string, hash: string): void {
    // A flood of made-up tokens must not grow memory without bound: start over.
    if (this.hashes.size >= this.maxTokens) this.hashes.clear();
    this.hashes.set(token, hash);
  }

  verified(workerId: string): string | undefined {
    return this.workers.get(workerId);
  }

  remember(workerId: string, credentialHash: string): void {
    this.workers.set(workerId, credentialHash);
  }

  forget(workerId: string): void {
    this.workers.delete(workerId);
  }
}

/** A fresh pair for one worker, and the hash the manager keeps of its worker credential. */
export async function newCredentials(): Promise<{
  credentials: WorkerCredentials;
  credentialHash: string;
}> {
  const credentials = { worker_credential: randomToken("fw_"), agent_token: randomToken("fa_") };
  return { credentials, credentialHash: await sha256Hex(credentials.worker_credential) };
}
