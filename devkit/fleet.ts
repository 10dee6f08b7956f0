import { mkdtempSync, readFileSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CredentialStore } from "../agent/lib/credentials.ts";
import type { TestDatabase } from "./db.ts";
import { freePort, waitForHttp } from "./net.ts";
import { bunBin, repoRoot, type Service, startProcess } from "./proc.ts";

export const simDir = `${repoRoot}/agent/sim`;

export type Running = Service & { url: string; port: number };

/** `bun manager/main.ts` on a free loopback port, fast loops for tests; waits for /health. */
export async function startManager(options: {
  database: TestDatabase;
  env?: Record<string, string | undefined>;
  port?: number;
}): Promise<Running> {
  const port = options.port ?? (await freePort());
  const service = startProcess([bunBin, "manager/main.ts"], {
    env: {
      DATABASE_URL: "",
      ...options.database.env,
      HOST: "127.0.0.1",
      PORT: String(port),
      HEARTBEAT_INTERVAL_S: "0.5",
      WORKER_TIMEOUT_S: "3",
      RECONCILE_INTERVAL_S: "0.3",
      ROUTES_POLL_MS: "100",
      // What `npm start` sets (the mounted router's UPSTREAM_CLIENT=auto needs it).
      BUN_CONFIG_MAX_HTTP_REQUESTS: "65000",
      // Its own usage spool (with Postgres there is no FLEET_DATA_DIR to hold it); a restart
      // that must find the spool again passes the same USAGE_SPOOL_DIR.
      USAGE_SPOOL_DIR: mkdtempSync(join(tmpdir(), "fleet-manager-spool-")),
      ...options.env,
    },
  });
  const url = `http://127.0.0.1:${port}`;
  await service.waitFor("manager listening", 30_000);
  await waitForHttp(`${url}/health`);
  return Object.assign(service, { url, port });
}

/**
 * The environment of `bun agent/main.ts` on loopback whose engines (and nvidia-smi) are the
 * simulator kit, with a random range of engine ports; tests and benchmarks add their own.
 */
export function simAgentEnv(options: {
  workerId: string;
  port: number;
  managerUrl: string;
  fleetToken?: string;
}): Record<string, string> {
  const engineMin = 20_000 + Math.floor(Math.random() * 40_000);
  return {
    WORKER_ID: options.workerId,
    WORKER_HOST: "127.0.0.1",
    WORKER_PORT: String(options.port),
    MANAGER_URL: options.managerUrl,
    ...(options.fleetToken ? { FLEET_TOKEN: options.fleetToken } : {}),
    VLLM_BIN: `${simDir}/vllm`,
    PATH: `${simDir}:${process.env.PATH ?? ""}`,
    ENGINE_PORT_MIN: String(engineMin),
    ENGINE_PORT_MAX: String(engineMin + 20),
    // What `npm run agent` sets: Bun reads its in-flight fetch cap only at startup.
    BUN_CONFIG_MAX_HTTP_REQUESTS: "4096",
  };
}

/** A fresh AGENT_DATA_DIR: where an agent keeps the credentials it got when it joined. */
export function agentDataDir(): string {
  return mkdtempSync(join(tmpdir(), "fleet-agent-"));
}

/**
 * `bun agent/main.ts` on loopback with the simulator kit standing in for vLLM and
 * nvidia-smi; waits until it listens (registration happens in the background). It keeps its
 * credentials in a fresh data directory unless `env.AGENT_DATA_DIR` names one (a restart that
 * keeps its identity passes the same directory again).
 */
export async function startAgent(options: {
  managerUrl: string;
  workerId: string;
  /** WORKER_PORT; a free one when absent. */
  port?: number;
  env?: Record<string, string | undefined>;
}): Promise<RunningAgent> {
  const port = options.port ?? (await freePort());
  const dataDir = options.env?.AGENT_DATA_DIR ?? agentDataDir();
  const service = startProcess([bunBin, "agent/main.ts"], {
    env: {
      ...simAgentEnv({ workerId: options.workerId, port, managerUrl: options.managerUrl }),
      SIM_STARTUP_DELAY_MS: "300",
      ENGINE_HEALTH_POLL_MS: "100",
      ENGINE_STOP_GRACE_S: "2",
      MANAGER_RETRY_MAX_S: "1",
      // A test's SIGTERM need not wait 2 s for routers it does not run (docs/agent.md "Drain").
      DRAIN_QUIET_MS: "200",
      ...options.env,
      AGENT_DATA_DIR: dataDir,
    },
  });
  await service.waitFor("agent listening", 20_000);
  return Object.assign(service, {
    url: `http://127.0.0.1:${port}`,
    port,
    dataDir,
    credentials: () => readAgentCredentials(dataDir),
  });
}

export type RunningAgent = Running & {
  /** Its AGENT_DATA_DIR. */
  dataDir: string;
  /** What its credentials file holds now (undefined before it has joined). */
  credentials(): AgentCredentials | undefined;
};

export type AgentCredentials = {
  worker_id: string;
  worker_credential: string;
  agent_token: string;
  previous_agent_token?: string;
};

/**
 * A data directory holding the credentials of an agent that has joined, as an agent restarted
 * after joining finds it: for tests and benchmarks of an agent without a manager that could
 * issue them. Its API then takes `agentToken`.
 */
export function joinedAgentDataDir(options: {
  workerId: string;
  managerUrl: string;
  agentToken: string;
}): string {
  const dir = agentDataDir();
  new CredentialStore(dir).save({
    worker_id: options.workerId,
    manager_url: options.managerUrl,
    worker_credential: `fw_devkit-${options.workerId}`,
    agent_token: options.agentToken,
  });
  return dir;
}

/** The credentials file in an agent's data directory, as the agent wrote it. */
export function readAgentCredentials(dataDir: string): AgentCredentials | undefined {
  try {
    return JSON.parse(readFileSync(join(dataDir, "credentials.json"), "utf8")) as AgentCredentials;
  } catch {
    return undefined;
  }
}

export type TcpForwarder = {
  port: number;
  url: string;
  /** Connections accepted so far. */
  connections(): number;
  /** Bytes carried client → target so far (not those a black hole swallowed). */
  bytesIn(): number;
  /**
   * Black-holes the mapping: connections are still accepted (new and open ones alike), and
   * nothing they carry reaches either side; no reset, no answer, as a port mapping whose far
   * end is gone.
   */
  blackHole(): void;
  /** Forwards again; connections that lost bytes to the black hole are reset. */
  restore(): void;
  close(): Promise<void>;
};

/**
 * A TCP forwarder on its own loopback port: plays a rental host's port mapping
 * (`https://…seetacloud.com:8443` → the agent's `0.0.0.0:6006`) without leaving loopback.
 */
export async function startTcpForwarder(
  targetPort: number,
  listenHost = "127.0.0.1",
): Promise<TcpForwarder> {
  const { connect } = await import("node:net");
  const { Transform } = await import("node:stream");
  let connections = 0;
  let bytesIn = 0;
  let blackHoled = false;
  const sockets = new Set<Socket>();
  /** Client sockets that lost bytes to the black hole: their streams are broken. */
  const swallowed = new Set<Socket>();
  const server: Server = createServer((client) => {
    connections++;
    const upstream = connect(targetPort, "127.0.0.1");
    sockets.add(client);
    sockets.add(upstream);
    // Each direction passes through a gate that drops what it carries while black-holed.
    const gate = (counted: boolean) =>
      new Transform({
        transform(chunk: Buffer, _encoding, callback) {
          if (blackHoled) {
            swallowed.add(client);
            return callback();
          }
          if (counted) bytesIn += chunk.length;
          callback(null, chunk);
        },
      });
    client.pipe(gate(true)).pipe(upstream);
    upstream.pipe(gate(false)).pipe(client);
    const close = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
      swallowed.delete(client);
    };
    client.on("error", close);
    upstream.on("error", close);
    client.on("close", close);
    upstream.on("close", close);
  });
  const port = await new Promise<number>((resolve) => {
    server.listen(0, listenHost, () => {
      const address = server.address();
      resolve(typeof address === "object" && address ? address.port : 0);
    });
  });
  return {
    port,
    url: `http://${listenHost}:${port}`,
    connections: () => connections,
    bytesIn: () => bytesIn,
    blackHole() {
      blackHoled = true;
    },
    restore() {
      blackHoled = false;
      for (const client of swallowed) client.destroy();
      swallowed.clear();
    },
    close: () =>
      new Promise((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}
