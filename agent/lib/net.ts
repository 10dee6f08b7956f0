import { createServer } from "node:net";
import { hostname, networkInterfaces } from "node:os";
import { isLoopbackHost, isWildcardHost } from "../../kit/net.ts";

/**
 * The URL the manager dials: `http://127.0.0.1:{port}` when listening on every interface or
 * on loopback (the manager usually runs on the same host or reaches it through a tunnel),
 * else `http://{host}:{port}`.
 */
export function defaultWorkerUrl(host: string, port: number): string {
  if (isWildcardHost(host) || isLoopbackHost(host)) return `http://127.0.0.1:${port}`;
  const bare = host.replace(/^\[|\]$/g, "");
  return bare.includes(":") ? `http://[${bare}]:${port}` : `http://${bare}:${port}`;
}

/** Whether `port` can be bound on `host` right now (the engine binds it a moment later). */
export function canBind(port: number, host = "127.0.0.1"): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.unref();
    server.once("error", () => resolve(false));
    server.listen({ port, host, exclusive: true }, () => {
      server.close(() => resolve(true));
    });
  });
}

/**
 * Why a manager on another host could not dial this agent: MANAGER_URL is neither loopback
 * nor one of this host's own names or addresses, PUBLIC_URL is unset, and the advertised
 * worker URL is loopback (the default on 0.0.0.0), which the manager reads as itself.
 * Undefined when nothing looks wrong.
 */
export function reachabilityWarning(options: {
  managerUrl: string;
  publicUrl: string | null;
  workerUrl: string;
  /** This host's names and interface addresses (a manager on one of them is local). */
  localHosts: ReadonlySet<string>;
}): string | undefined {
  if (options.publicUrl) return undefined;
  const manager = hostnameOf(options.managerUrl);
  const worker = hostnameOf(options.workerUrl);
  if (manager === undefined || worker === undefined) return undefined;
  if (isLoopbackHost(manager) || options.localHosts.has(manager)) return undefined;
  if (!isLoopbackHost(worker)) return undefined;
  return `MANAGER_URL (${options.managerUrl}) is on another host, but this agent advertises ${options.workerUrl} (its own loopback) and no PUBLIC_URL: the manager cannot reach it, so launches, stops and logs would fail. Set PUBLIC_URL to this host's port-forwarding URL, or WORKER_URL to an address the manager can dial`;
}

/** This host's name and the addresses of its interfaces, lower-cased, IPv6 without brackets. */
export function localHosts(): Set<string> {
  const hosts = new Set<string>([hostname().toLowerCase()]);
  for (const addresses of Object.values(networkInterfaces())) {
    for (const address of addresses ?? []) hosts.add(address.address.toLowerCase());
  }
  return hosts;
}

function hostnameOf(url: string): string | undefined {
  try {
    return new URL(url).hostname.toLowerCase().replace(/^\[|\]$/g, "");
  } catch {
    return undefined;
  }
}
