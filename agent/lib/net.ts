import { createServer } from "node:net";

/** True for addresses that only this host can reach. */
export function isLoopbackHost(host: string): boolean {
  const h = host
    .trim()
    .toLowerCase()
    .replace(/^\[|\]$/g, "");
  return h === "localhost" || h === "::1" || /^127(\.\d{1,3}){3}$/.test(h);
}

/** True for addresses that mean "every interface". */
export function isWildcardHost(host: string): boolean {
  const h = host.trim().replace(/^\[|\]$/g, "");
  return h === "0.0.0.0" || h === "::" || h === "";
}

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
