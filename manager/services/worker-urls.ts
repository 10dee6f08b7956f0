/**
 * What a worker may advertise beyond `workerUrlSchema` (protocol/common.ts), checked at
 * registration against this manager's own settings: never the manager's own listen address
 * (the router would send prompts and credentials to the manager's API), and, when
 * `WORKER_URL_ALLOW` is set, only hosts on that list.
 */
import { AppError, quote } from "../../kit/errors.ts";
import { type HostAllowlist, hostAllowed } from "../../kit/host-allowlist.ts";
import { embeddedIpv4, type IpAddress, parseIp } from "../../kit/ip.ts";
import { isLoopbackHost, isWildcardHost } from "../../kit/net.ts";
import type { WorkerRegistration } from "../../protocol/index.ts";

/** Where this manager listens: the configured host, the bound port, and (on a wildcard) its interfaces' addresses. */
export type ListenAddress = {
  host: string;
  port: number;
  /** The host's own addresses and names; only consulted when `host` is a wildcard. */
  localAddresses: readonly string[];
};

export type AdvertiseRules = {
  listen: ListenAddress;
  /** `WORKER_URL_ALLOW`; undefined: every host. */
  allow: HostAllowlist | undefined;
};

/**
 * Refuses a registration whose `worker_url` or `public_worker_url` breaks the rules: 400
 * `invalid_request` with the field in `param`.
 */
export function checkAdvertisedUrls(
  registration: Pick<WorkerRegistration, "worker_url" | "public_worker_url">,
  rules: AdvertiseRules,
): void {
  const fields = [
    ["worker_url", registration.worker_url],
    ["public_worker_url", registration.public_worker_url],
  ] as const;
  for (const [field, url] of fields) {
    if (url === null) continue;
    const problem = advertisedUrlProblem(url, rules);
    if (problem) throw new AppError("invalid_request", `${field} ${problem}`, { param: field });
  }
}

/** Why this manager will not store `url` (already normalised by `workerUrlSchema`), or undefined. */
export function advertisedUrlProblem(url: string, rules: AdvertiseRules): string | undefined {
  const parsed = new URL(url);
  const host = parsed.hostname;
  if (pointsAtListenAddress(parsed, rules.listen)) {
    return `${quote(url)} points at this manager's own address (${rules.listen.host}:${rules.listen.port}); advertise the agent's address (WORKER_URL, PUBLIC_URL)`;
  }
  if (rules.allow && !hostAllowed(rules.allow, host)) {
    return `${quote(url)}: host ${quote(host)} is not allowed by the manager's WORKER_URL_ALLOW (${rules.allow.entries.join(",")})`;
  }
  return undefined;
}

/**
 * Same port, and a host that reaches the listener: every loopback spelling when the manager
 * listens on loopback or on every interface, one of the host's own addresses on a wildcard,
 * else the very host it listens on.
 */
export function pointsAtListenAddress(url: URL, listen: ListenAddress): boolean {
  const port = url.port ? Number(url.port) : url.protocol === "https:" ? 443 : 80;
  if (port !== listen.port) return false;
  const host = url.hostname;
  const wildcard = isWildcardHost(listen.host);
  if (wildcard || isLocalHost(listen.host)) {
    if (isLocalHost(host)) return true;
    if (wildcard) return listen.localAddresses.some((address) => sameHost(address, host));
    return false;
  }
  return sameHost(listen.host, host);
}

/** Loopback (`localhost`, 127.0.0.0/8, `::1`, an IPv6 spelling of 127.x) or a wildcard. */
function isLocalHost(host: string): boolean {
  if (isLoopbackHost(host) || isWildcardHost(host)) return true;
  const ip = parseIp(host);
  if (ip?.version !== 6) return false;
  const v4 = embeddedIpv4(ip.value);
  return v4 !== undefined && v4 >>> 24 === 127;
}

function sameHost(a: string, b: string): boolean {
  const ipA = parseIp(a);
  const ipB = parseIp(b);
  if (ipA && ipB) return ipKey(ipA) === ipKey(ipB);
  if (ipA || ipB) return false;
  const name = (host: string) => host.toLowerCase().replace(/\.$/, "");
  return name(a) === name(b);
}

/** An IPv6 spelling of an IPv4 address counts as that IPv4 address. */
function ipv4Of(ip: IpAddress): number | undefined {
  return ip.version === 4 ? ip.value : embeddedIpv4(ip.value);
}

function ipKey(ip: IpAddress): string {
  const v4 = ipv4Of(ip);
  return v4 !== undefined ? `4:${v4}` : `6:${ip.value}`;
}
