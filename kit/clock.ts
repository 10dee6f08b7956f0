/** Wall-clock time: timestamps that are stored or compared with the database's. */
export type Clock = { now(): Date };
export const systemClock: Clock = { now: () => new Date() };

/** Milliseconds from an arbitrary origin that never go backwards: durations and deadlines. */
export type MonotonicClock = { now(): number };
export const monotonicClock: MonotonicClock = { now: () => performance.now() };

/**
 * `new Date(ms).toISOString()` for whole milliseconds, with the part up to the second
 * formatted once per second: a router stamps every request's usage record with one.
 */
export function isoTimestamps(): (ms: number) => string {
  let second = Number.NaN;
  let prefix = "";
  return (ms) => {
    const at = Math.floor(ms / 1000);
    const millis = ms - at * 1000;
    // Fractions, and years a 24-character ISO string does not hold, take the long way.
    if (!Number.isInteger(millis) || at < 0 || at >= 253402300800) {
      return new Date(ms).toISOString();
    }
    if (at !== second) {
      second = at;
      prefix = new Date(at * 1000).toISOString().slice(0, 20);
    }
    return `${prefix}${millis < 10 ? "00" : millis < 100 ? "0" : ""}${millis}Z`;
  };
}
