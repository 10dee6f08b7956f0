import { createServer } from "node:net";
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
