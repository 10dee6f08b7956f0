import { shellQuote } from "./install-script.ts";

/** The join token in the line when it is hidden (not on a terminal). */
export const hiddenToken = "<the same token>";

/**
 * The one line that adds a GPU host: `curl -fsSL {base}/install.sh | FLEET_TOKEN=… WORKER_ID=…
 * PUBLIC_URL=… sh`. On a loopback manager the agent listens on loopback too (only this
 * machine can reach the manager anyway); beyond it the host needs a URL the fleet can dial:
 * its port mapping (`PUBLIC_URL`), an address on the manager's network (`WORKER_URL`), or both.
 */
export function installLine(options: {
  /** Where GPU hosts reach the manager (MANAGER_PUBLIC_URL, else the listen address). */
  base: string;
  /** The join token; undefined when the manager has none (the line then carries none). */
  fleetToken: string | undefined;
  /** Write `hiddenToken` in its place (stdout is not a terminal). */
  hideToken?: boolean;
  workerId?: string | undefined;
  publicUrl?: string | undefined;
  workerUrl?: string | undefined;
  loopback: boolean;
}): string {
  const words: string[] = [];
  if (options.fleetToken !== undefined) {
    words.push(`FLEET_TOKEN=${options.hideToken ? hiddenToken : shellWord(options.fleetToken)}`);
  }
  words.push(`WORKER_ID=${options.workerId ? shellWord(options.workerId) : "<name>"}`);
  words.push(...addressWords(options));
  // The base is a checked URL (or the `<this-host>` placeholder, to be replaced), never quoted.
  return `curl -fsSL ${options.base}/install.sh | ${words.join(" ")} sh`;
}

/**
 * How the fleet dials the host. Both URLs when both are given: a host on the manager's
 * network may have a port mapping too (the manager manages it over `WORKER_URL`, routers
 * send requests to `PUBLIC_URL`). Neither: the `PUBLIC_URL` placeholder, the usual case of a
 * rented box.
 */
function addressWords(options: {
  publicUrl?: string | undefined;
  workerUrl?: string | undefined;
  loopback: boolean;
}): string[] {
  if (options.loopback) return ["WORKER_HOST=127.0.0.1"];
  const words: string[] = [];
  if (options.workerUrl) words.push(`WORKER_URL=${shellWord(options.workerUrl)}`);
  if (options.publicUrl) words.push(`PUBLIC_URL=${shellWord(options.publicUrl)}`);
  return words.length > 0 ? words : ["PUBLIC_URL=<its port-forwarding URL>"];
}

/** A value as it can be pasted into a shell: bare when that is safe, else single-quoted. */
function shellWord(value: string): string {
  return /^[\w.~:/@%+=,-]+$/.test(value) ? value : shellQuote(value);
}
