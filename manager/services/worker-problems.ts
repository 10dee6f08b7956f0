/**
 * What an operator should fix about a worker, in sentences that name the variable to set:
 * `WorkerInfo.problems` (`GET /v1/workers[/{id}]`, `fleet workers ls` and `show`). Each check
 * looks at the worker row and names at most one problem; a new problem is one more entry in
 * `checks`.
 */
import type { WorkerRow } from "../../db/schema/workers.ts";
import { type IpRange, inRange, parseCidr, parseIp } from "../../kit/ip.ts";
import { isLoopbackHost } from "../../kit/net.ts";
import { plainHttpProblemText } from "../../protocol/index.ts";

/** The columns the checks read. */
export type ProblemInput = Pick<
  WorkerRow,
  | "workerId"
  | "status"
  | "lastHeartbeat"
  | "probedAt"
  | "workerUrl"
  | "publicWorkerUrl"
  | "internalReachable"
  | "internalProbeError"
  | "publicReachable"
  | "publicProbeError"
>;

type Check = (worker: ProblemInput) => string | undefined;

const checks: Check[] = [silent, noPathReaches, publicPathFails, plainHttpProblem];

/** The worker's problems, most serious first; empty when nothing needs doing. */
export function workerProblems(worker: ProblemInput): string[] {
  return checks.flatMap((check) => check(worker) ?? []);
}

const setWorkerUrl = "WORKER_URL to an address the manager can dial";
const checkMapping =
  "check that the port mapping forwards to the agent's WORKER_PORT and that PUBLIC_URL is the mapping's URL";

/** Offline: no heartbeat for WORKER_TIMEOUT_S, whatever its URLs did before. */
function silent(worker: ProblemInput): string | undefined {
  if (worker.status !== "offline") return undefined;
  return `not heard from since ${worker.lastHeartbeat.toISOString()}: its agent stopped or its host is down. Start the agent again, or remove the worker: fleet workers rm ${worker.workerId}`;
}

/**
 * Neither URL answered the last probe: launches, stops and logs cannot reach the agent.
 * Said of an offline worker only when that probe ran while the agent still heartbeated: one
 * that failed after the agent went silent says only that it stopped (`silent`), not that a
 * URL needs changing (offline workers are not probed, so that result stays).
 */
function noPathReaches(worker: ProblemInput): string | undefined {
  if (worker.internalReachable !== false) return undefined;
  if (worker.status === "offline" && !probedWhileHeard(worker)) return undefined;
  const internal = `the manager cannot dial ${worker.workerUrl} (${internalWhy(worker)})`;
  if (worker.publicWorkerUrl === null) {
    return `no path reaches this worker: ${internal}. Set PUBLIC_URL on the agent to its port-forwarding URL, or ${setWorkerUrl}`;
  }
  if (worker.publicReachable !== false) return undefined;
  const publicPart = `nor its public URL ${worker.publicWorkerUrl} (${worker.publicProbeError ?? "no answer"})`;
  return `no path reaches this worker: ${internal} ${publicPart}. On the agent, ${checkMapping}, or set ${setWorkerUrl}`;
}

/**
 * Management works over the internal URL but the public one fails: routes send clients'
 * requests to the public URL, so they fail while the worker looks healthy.
 */
function publicPathFails(worker: ProblemInput): string | undefined {
  if (worker.internalReachable !== true) return undefined;
  if (worker.publicWorkerUrl === null || worker.publicReachable !== false) return undefined;
  return `the public URL ${worker.publicWorkerUrl} does not answer the manager (${worker.publicProbeError ?? "no answer"}), and routes send requests there. On the agent, ${checkMapping}; leave PUBLIC_URL unset when routers reach the worker on ${worker.workerUrl}`;
}

/** The last probe began no later than the last heartbeat: the agent was running then. */
function probedWhileHeard(worker: ProblemInput): boolean {
  return worker.probedAt !== null && worker.probedAt <= worker.lastHeartbeat;
}

function internalWhy(worker: ProblemInput): string {
  const error = worker.internalProbeError ?? "no answer";
  // The default advertised URL: the agent's own loopback, which the manager reads as its own.
  return isLoopbackUrl(worker.workerUrl) ? `its loopback: ${error}` : error;
}

function isLoopbackUrl(url: string): boolean {
  try {
    return isLoopbackHost(new URL(url).hostname);
  } catch {
    return false;
  }
}

/**
 * Networks where plain http does not cross the internet: private ranges (RFC 1918, IPv6
 * unique-local) and the shared range of carrier NAT and tailnets (100.64.0.0/10, where
 * WireGuard already encrypts). Loopback is checked by `isLoopbackHost`.
 */
const privateRanges = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7"]
  .map((text) => parseCidr(text))
  .filter((range): range is IpRange => range !== undefined);

/**
 * A public URL over plain `http` to a host on the internet: prompts, completions and the
 * agent credential cross it in clear. Accepted (some port-forwarding providers offer only
 * http), but flagged. Undefined for https, for no public URL, and for loopback or private
 * addresses.
 */
export function plainHttpProblem(worker: Pick<WorkerRow, "publicWorkerUrl">): string | undefined {
  const url = worker.publicWorkerUrl;
  if (!url?.startsWith("http:")) return undefined;
  const host = new URL(url).hostname;
  if (isLoopbackHost(host)) return undefined;
  const ip = parseIp(host);
  if (ip && privateRanges.some((range) => inRange(ip, range))) return undefined;
  return plainHttpProblemText;
}
