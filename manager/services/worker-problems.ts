/**
 * What is wrong with a worker that an operator should fix: each a sentence for
 * `WorkerInfo.problems` (`GET /v1/workers`, `fleet workers ls` and `show`).
 */
import type { WorkerRow } from "../../db/schema/workers.ts";
import { type IpRange, inRange, parseCidr, parseIp } from "../../kit/ip.ts";
import { isLoopbackHost } from "../../kit/net.ts";
import { plainHttpProblemText } from "../../protocol/index.ts";

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
