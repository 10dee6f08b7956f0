import { z } from "zod";

const MiB = 1024 * 1024;

const seconds = (fallback: number) =>
  z.coerce.number({ error: "must be a number of seconds" }).positive().max(3600).default(fallback);

/**
 * What a client may cost the router: the same variables for a standalone router and for the
 * manager, whose port serves the mounted router (docs/operations.md "Slow clients").
 */
export const clientLimitsEnvShape = {
  /** The request line and headers must arrive within this (Node; Bun's is fixed, see docs). */
  HEADER_TIMEOUT_S: seconds(10),
  /** An inference request's whole body must arrive within this after its headers; else 408. */
  BODY_TIMEOUT_S: seconds(60),
  /** An idle connection between requests is closed after this. Bun counts it in whole seconds, 255 at most. */
  KEEPALIVE_TIMEOUT_S: z.coerce
    .number({ error: "must be a whole number of seconds (1-255)" })
    .int()
    .min(1)
    .max(255)
    .default(10),
  /** Largest accepted request body; larger ones get 413. */
  MAX_BODY_BYTES: z.coerce
    .number()
    .int()
    .min(1024)
    .default(32 * MiB),
  /** Bodies being received, all connections together; past it new ones get 503 and Retry-After. */
  MAX_BODY_MEMORY_BYTES: z.coerce
    .number()
    .int()
    .min(1024)
    .default(128 * MiB),
};

type ClientLimitsEnv = {
  HEADER_TIMEOUT_S: number;
  BODY_TIMEOUT_S: number;
  KEEPALIVE_TIMEOUT_S: number;
  MAX_BODY_BYTES: number;
  MAX_BODY_MEMORY_BYTES: number;
};

/** The limits as the servers and the router app take them. */
export type ClientLimits = {
  headerTimeoutMs: number;
  bodyTimeoutMs: number;
  /** Whole seconds: Bun's idle timer takes nothing finer. */
  keepAliveS: number;
  maxBodyBytes: number;
  maxBodyMemoryBytes: number;
};

export function clientLimitsFromEnv(env: ClientLimitsEnv): ClientLimits {
  return {
    headerTimeoutMs: Math.round(env.HEADER_TIMEOUT_S * 1000),
    bodyTimeoutMs: Math.round(env.BODY_TIMEOUT_S * 1000),
    keepAliveS: env.KEEPALIVE_TIMEOUT_S,
    maxBodyBytes: env.MAX_BODY_BYTES,
    maxBodyMemoryBytes: env.MAX_BODY_MEMORY_BYTES,
  };
}

/**
 * A memory cap below the largest body would answer every such body "busy, retry" forever;
 * the entries refuse to start with it instead. Undefined when the pair is consistent.
 */
export function clientLimitsProblem(env: ClientLimitsEnv): string | undefined {
  if (env.MAX_BODY_MEMORY_BYTES >= env.MAX_BODY_BYTES) return undefined;
  return `MAX_BODY_MEMORY_BYTES (${env.MAX_BODY_MEMORY_BYTES}) must be at least MAX_BODY_BYTES (${env.MAX_BODY_BYTES}): a body that may be accepted must fit in memory`;
}

/**
 * The idle timer of a client's connection, where the runtime's server keeps one that would
 * close a connection whose response is quiet (Bun.serve's `server.timeout`).
 */
export type ClientIdleTimer = {
  /** No idle limit on this request's connection until `release`. */
  hold(request: Request): void;
  /** The response has been handed over whole or its stream ended: keep-alive timing again. */
  release(request: Request): void;
};
