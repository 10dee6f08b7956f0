import type { FleetDb } from "../db/index.ts";
import type { ManagerConfig } from "./env.ts";

export type Clock = { now(): Date };
export type Log = {
  info(message: string, fields?: Record<string, unknown>): void;
  warn(message: string, fields?: Record<string, unknown>): void;
  error(message: string, fields?: Record<string, unknown>): void;
};
export type Fetch = (input: string | URL | Request, init?: RequestInit) => Promise<Response>;

/** What the manager needs from the outside world; entries pass real ones, tests their own. */
export type ManagerDeps = {
  db: FleetDb;
  config: ManagerConfig;
  clock?: Clock;
  fetch?: Fetch;
  log?: Log;
};

export type Resolved = Required<ManagerDeps>;

export const systemClock: Clock = { now: () => new Date() };

/** One JSON line per message on stderr/stdout: greppable, and quiet unless something happens. */
export function consoleLog(prefix = "manager"): Log {
  const line = (level: string, message: string, fields?: Record<string, unknown>) =>
    `${prefix} ${level} ${message}${fields && Object.keys(fields).length > 0 ? ` ${JSON.stringify(fields)}` : ""}`;
  return {
    info: (message, fields) => console.log(line("info", message, fields)),
    warn: (message, fields) => console.warn(line("warn", message, fields)),
    error: (message, fields) => console.error(line("error", message, fields)),
  };
}

export const silentLog: Log = { info() {}, warn() {}, error() {} };
