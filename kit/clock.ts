/** Wall-clock time: timestamps that are stored or compared with the database's. */
export type Clock = { now(): Date };
export const systemClock: Clock = { now: () => new Date() };

/** Milliseconds from an arbitrary origin that never go backwards: durations and deadlines. */
export type MonotonicClock = { now(): number };
export const monotonicClock: MonotonicClock = { now: () => performance.now() };
