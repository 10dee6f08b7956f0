import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Server } from "bun";
import { type Executables, executables } from "../../devkit/executables.ts";
import { simDir } from "../../devkit/fleet.ts";
import { eventually, freePort, waitForHttp } from "../../devkit/net.ts";
import { type Service, startProcess } from "../../devkit/proc.ts";
import { fleetVersion } from "../../kit/version.ts";
import type { ModelInfo } from "../../protocol/index.ts";

/**
 * A GPU host joins with the one line the manager prints, with nothing of the project on it:
 * both executables run from an empty folder on a PATH without node or bun, the manager on
 * its embedded database; `curl …/install.sh | sh` installs the agent (background mode, into
 * the temporary folder), which registers and serves a model on the simulator kit; running it
 * again upgrades the agent and keeps the engine; a damaged download is refused.
 */
describe("one line to add a GPU host (single executables, install.sh)", () => {
  let bins: Executables;
  let home: string;
  let manager: Service & { url: string };
  let corrupter: Server<undefined> | undefined;
  const installDir = () => join(home, "agent");
  const launches = () => join(home, "launches");
  /** PATH for everything here: the system's tools, without node, npm or bun. */
  let path: string;
  const enginePids = new Set<number>();

  beforeAll(async () => {
    bins = await executables();
    home = mkdtempSync(join(tmpdir(), "fleet-install-"));
    path = toolsWithoutNodeOrBun(join(home, "tools"));
    // Counts engine launches, then runs the simulator (found by its absolute path: its
    // wrapper finds Bun beside itself, not on PATH).
    const vllm = join(home, "vllm");
    writeFileSync(vllm, `#!/bin/sh\necho "$$" >> '${launches()}'\nexec '${simDir}/vllm' "$@"\n`);
    chmodSync(vllm, 0o755);

    const port = await freePort();
    const cwd = join(home, "manager");
    mkdirSync(cwd);
    manager = Object.assign(
      startProcess([bins.manager], {
        cwd,
        env: {
          PATH: path,
          HOME: home,
          DATABASE_URL: "",
          HOST: "127.0.0.1",
          PORT: String(port),
          HEARTBEAT_INTERVAL_S: "0.5",
          WORKER_TIMEOUT_S: "5",
          RECONCILE_INTERVAL_S: "0.3",
          ROUTES_POLL_MS: "100",
          FLEET_TOKEN: "join-token-install-test",
          AGENT_BINARY: "",
        },
      }),
      { url: `http://127.0.0.1:${port}` },
    );
    await manager.waitFor("manager listening", 120_000);
    await waitForHttp(`${manager.url}/health`);
  }, 300_000);

  afterAll(async () => {
    const pid = agentPid();
    if (pid !== undefined) await stopPid(pid);
    // Engines lead their own process groups: whatever the agent left is stopped here.
    for (const pid of enginePids) killGroup(pid);
    await manager?.stop();
    await corrupter?.stop(true);
    if (home) rmSync(home, { recursive: true, force: true });
  });

  const agentPid = (): number | undefined => {
    const file = join(installDir(), "agent.pid");
    return existsSync(file) ? Number(readFileSync(file, "utf8").trim()) : undefined;
  };

  const install = async (base: string, workerPort: number) => {
    const run = startProcess(["sh", "-c", `curl -fsSL ${base}/install.sh | sh`], {
      cwd: home,
      env: {
        PATH: path,
        HOME: home,
        FLEET_INSTALL_DIR: installDir(),
        FLEET_SERVICE: "background",
        FLEET_TOKEN: "join-token-install-test",
        WORKER_ID: "gpu-1",
        WORKER_HOST: "127.0.0.1",
        WORKER_PORT: String(workerPort),
        VLLM_BIN: join(home, "vllm"),
        NVIDIA_SMI_BIN: `${simDir}/nvidia-smi`,
        ENGINE_PORT_MIN: String(workerPort + 1),
        ENGINE_PORT_MAX: String(workerPort + 20),
        ENGINE_HEALTH_POLL_MS: "100",
        ENGINE_STOP_GRACE_S: "2",
        MANAGER_RETRY_MAX_S: "1",
        SIM_STARTUP_DELAY_MS: "300",
        // Not an agent variable: must stay out of its env file.
        UNRELATED_SECRET: "do-not-copy",
      },
    });
    return { code: await run.exited(), output: run.output() };
  };

  const model = async () => {
    const response = await fetch(`${manager.url}/v1/models/tiny`);
    return (await response.json()) as ModelInfo;
  };
  const ready = () =>
    eventually(
      async () => {
        const info = await model();
        const instance = info.instances[0];
        return info.status === "ready" && instance?.status === "ready" && instance.pid
          ? instance
          : undefined;
      },
      { timeoutMs: 60_000, what: "model tiny ready" },
    );
  const chat = async () => {
    const response = await fetch(`${manager.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "tiny", messages: [{ role: "user", content: "hello there" }] }),
    });
    return { status: response.status, body: (await response.json()) as Record<string, unknown> };
  };

  let workerPort = 0;

  test("the manager executable started in an empty folder, on its embedded database", async () => {
    const health = await (await fetch(`${manager.url}/health`)).json();
    expect(health).toMatchObject({ status: "ok", database: "pglite", database_status: "ok" });
    expect(readdirSync(join(home, "manager"))).toEqual([".fleet"]);
    expect(manager.output()).toContain("creating the embedded database");
    // The console's pages and assets are in the executable (docs/console.md).
    const page = await fetch(`${manager.url}/`);
    expect(page.status).toBe(200);
    expect(await page.text()).toContain('href="/console/assets/console.css"');
    for (const asset of ["console.css", "console.js"]) {
      const reply = await fetch(`${manager.url}/console/assets/${asset}`);
      expect({ asset, status: reply.status }).toEqual({ asset, status: 200 });
      expect((await reply.text()).length).toBeGreaterThan(1000);
    }
    // What `npm start` prints to paste on a GPU host; not on a terminal, without the token.
    expect(manager.output()).toContain(
      `curl -fsSL ${manager.url}/install.sh | FLEET_TOKEN=<the same token> WORKER_ID=<name> WORKER_HOST=127.0.0.1 sh`,
    );
  });

  test("curl …/install.sh | sh installs and starts the agent, which joins; a model becomes ready and chat works through the manager", async () => {
    workerPort = 20_000 + Math.floor(Math.random() * 40_000);
    const { code, output } = await install(manager.url, workerPort);
    expect(code, output).toBe(0);
    expect(output).toContain("runs (background)");
    expect(output).toContain(`tail -f ${join(installDir(), "agent.log")}`);

    const envFile = join(installDir(), "agent.env");
    expect(statSync(envFile).mode & 0o777).toBe(0o600);
    const settings = readFileSync(envFile, "utf8");
    expect(settings).toContain("WORKER_ID='gpu-1'");
    expect(settings).toContain(`MANAGER_URL='${manager.url}'`);
    expect(settings).not.toContain("UNRELATED_SECRET");

    const worker = await eventually(async () => {
      const response = await fetch(`${manager.url}/v1/workers/gpu-1`);
      const body = (await response.json()) as { status?: string; agent_version?: string };
      return body.status === "online" ? body : undefined;
    });
    expect(worker.agent_version).toBe(fleetVersion);

    const registered = await fetch(`${manager.url}/v1/models/register`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ alias: "tiny", model_name: "sim/tiny", max_model_len: 2048 }),
    });
    expect(registered.status).toBe(201);
    const instance = await ready();
    if (instance.pid) enginePids.add(instance.pid);
    const answer = await eventually(async () => {
      const reply = await chat();
      return reply.status === 200 ? reply : undefined;
    });
    expect(JSON.stringify(answer.body)).toContain("hello there");
    expect(readFileSync(launches(), "utf8").trim().split("\n")).toHaveLength(1);
  }, 180_000);

  test("running the line again upgrades the agent in place and keeps the engine", async () => {
    const before = agentPid();
    const engine = await ready();
    const { code, output } = await install(manager.url, workerPort);
    expect(code, output).toBe(0);
    expect(output).toContain("the running engines were left for the new agent");
    expect(agentPid()).not.toBe(before);
    expect(before !== undefined && alive(before)).toBe(false);

    const after = await eventually(async () => {
      const instance = await ready();
      const worker = (await (await fetch(`${manager.url}/v1/workers/gpu-1`)).json()) as {
        status?: string;
      };
      return worker.status === "online" ? instance : undefined;
    });
    expect(after.pid).toBe(engine.pid);
    expect(readFileSync(launches(), "utf8").trim().split("\n")).toHaveLength(1);
    expect((await chat()).status).toBe(200);
  }, 180_000);

  test("a download damaged on the way is refused by its checksum and nothing changes", async () => {
    // A proxy in front of the manager that flips one byte of the executable it relays.
    corrupter = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      async fetch(request) {
        const url = new URL(request.url);
        // Sent on with its Host, so the script names this proxy as the place to download from.
        const upstream = await fetch(`${manager.url}${url.pathname}`, {
          headers: { host: url.host },
        });
        if (url.pathname !== "/downloads/fleet-agent") return upstream;
        const bytes = new Uint8Array(await upstream.arrayBuffer());
        bytes[bytes.length >> 1] = (bytes[bytes.length >> 1] ?? 0) ^ 0xff;
        return new Response(bytes, { headers: upstream.headers });
      },
    });
    const before = agentPid();
    const installed = readFileSync(join(installDir(), "bin", "fleet-agent"));
    const { code, output } = await install(`http://127.0.0.1:${corrupter.port}`, workerPort);
    expect(code).not.toBe(0);
    expect(output).toContain("checksum mismatch");
    expect(agentPid()).toBe(before);
    expect(before !== undefined && alive(before)).toBe(true);
    expect(readFileSync(join(installDir(), "bin", "fleet-agent")).equals(installed)).toBe(true);
    expect(readdirSync(join(installDir(), "bin"))).toEqual(["fleet-agent"]);
  }, 120_000);

  test("the join token never reached the manager's output", () => {
    expect(manager.output()).toContain("worker joined");
    expect(manager.output()).not.toContain("join-token-install-test");
  });
});

/** A folder of links to the system's tools except node, npm and bun; its path. */
function toolsWithoutNodeOrBun(dir: string): string {
  mkdirSync(dir, { recursive: true });
  const excluded = /^(node|nodejs|npm|npx|corepack|bun|bunx)$/;
  for (const system of ["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"]) {
    if (!existsSync(system)) continue;
    for (const name of readdirSync(system)) {
      if (excluded.test(name) || existsSync(join(dir, name))) continue;
      symlinkSync(join(system, name), join(dir, name));
    }
  }
  return dir;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function stopPid(pid: number): Promise<void> {
  if (!alive(pid)) return;
  process.kill(pid, "SIGTERM");
  await eventually(() => !alive(pid), { timeoutMs: 30_000, what: `pid ${pid} gone` }).catch(() =>
    process.kill(pid, "SIGKILL"),
  );
}

function killGroup(pid: number): void {
  try {
    process.kill(-pid, "SIGKILL");
  } catch {
    // already gone
  }
}
