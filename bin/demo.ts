#!/usr/bin/env bun
/**
 * `npm run demo`: the whole fleet on this machine, no GPU needed. Starts the manager (with
 * the router mounted), one agent whose engines are the simulator kit (agent/sim/vllm and a
 * simulated nvidia-smi), registers a model, waits for it, and prints what to try.
 * Ctrl-C stops all of it.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { z } from "zod";
import { parseEnv } from "../kit/env.ts";

const root = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const env = parseEnv(
  z.object({
    PORT: z.coerce.number().int().min(0).max(65535).default(18000),
    /** The agent's port: 6006 as on a rental host, or a free one when that is taken. */
    DEMO_WORKER_PORT: z.coerce.number().int().min(0).max(65535).default(6006),
    DEMO_ALIAS: z.string().default("qwen-vl-2b"),
    DEMO_MODEL: z.string().default("Qwen/Qwen2-VL-2B-Instruct"),
  }),
  process.env,
);

const children: Array<{ name: string; proc: ReturnType<typeof Bun.spawn> }> = [];
const dataDir = mkdtempSync(join(tmpdir(), "fleet-demo-"));
let stopping = false;

async function shutdown(code: number): Promise<never> {
  if (!stopping) {
    stopping = true;
    console.log("\nstopping the demo…");
    // The agent first, so that it stops its engines while the manager is still there.
    for (const child of [...children].reverse()) {
      child.proc.kill("SIGTERM");
      await Promise.race([child.proc.exited, Bun.sleep(5000)]);
      child.proc.kill("SIGKILL");
    }
    rmSync(dataDir, { recursive: true, force: true });
  }
  process.exit(code);
}
process.on("SIGINT", () => void shutdown(0));
process.on("SIGTERM", () => void shutdown(0));

/**
 * Bun's fetch reads its in-flight cap only at startup: the children get what `npm start` and
 * `npm run agent` give theirs (package.json), unless the caller set one.
 */
function fetchCap(scriptDefault: string): string {
  return process.env.BUN_CONFIG_MAX_HTTP_REQUESTS || scriptDefault;
}

function start(name: string, argv: string[], childEnv: Record<string, string>) {
  const proc = Bun.spawn(argv, {
    cwd: root,
    env: { ...process.env, ...childEnv },
    stdout: "pipe",
    stderr: "pipe",
  });
  children.push({ name, proc });
  const prefix = `[${name}] `;
  for (const stream of [proc.stdout, proc.stderr]) {
    void (async () => {
      const decoder = new TextDecoder();
      let buffered = "";
      const reader = stream.getReader();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        buffered += decoder.decode(value, { stream: true });
        const lines = buffered.split("\n");
        buffered = lines.pop() ?? "";
        for (const line of lines) console.log(prefix + line);
      }
    })();
  }
  void proc.exited.then((code) => {
    if (!stopping) {
      console.error(`${name} exited unexpectedly (code ${code})`);
      void shutdown(1);
    }
  });
  return proc;
}

async function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once("error", () => resolve(false));
    server.listen(port, "127.0.0.1", () => server.close(() => resolve(true)));
  });
}

async function anyPort(): Promise<number> {
  return new Promise((resolve) => {
    const server = createServer();
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => resolve(typeof address === "object" && address ? address.port : 0));
    });
  });
}

async function waitFor(url: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    try {
      const response = await fetch(url, { signal: AbortSignal.timeout(1000) });
      if (response.ok) return;
    } catch {}
    await Bun.sleep(200);
  }
  throw new Error(`${url} did not come up within ${timeoutMs / 1000} s`);
}

const managerPort = (await portFree(env.PORT)) ? env.PORT : await anyPort();
if (managerPort !== env.PORT)
  console.log(`port ${env.PORT} is busy; the manager takes ${managerPort}`);
const workerPort = (await portFree(env.DEMO_WORKER_PORT)) ? env.DEMO_WORKER_PORT : await anyPort();
const manager = `http://127.0.0.1:${managerPort}`;

start("manager", [process.execPath, "manager/main.ts"], {
  HOST: "127.0.0.1",
  PORT: String(managerPort),
  FLEET_DATA_DIR: dataDir,
  DATABASE_URL: "",
  BUN_CONFIG_MAX_HTTP_REQUESTS: fetchCap("65000"),
});
await waitFor(`${manager}/health`, 60_000).catch(async (error) => {
  console.error(String(error));
  await shutdown(1);
});

start("agent", [process.execPath, "agent/main.ts"], {
  WORKER_ID: "demo-worker",
  WORKER_HOST: "127.0.0.1",
  WORKER_PORT: String(workerPort),
  MANAGER_URL: manager,
  VLLM_BIN: join(root, "agent/sim/vllm"),
  // The simulated nvidia-smi: one 24 GiB GPU.
  PATH: `${join(root, "agent/sim")}:${process.env.PATH ?? ""}`,
  SIM_STARTUP_DELAY_MS: "1500",
  BUN_CONFIG_MAX_HTTP_REQUESTS: fetchCap("4096"),
});

// Wait until the worker has registered, then register the model.
const deadline = Date.now() + 30_000;
for (;;) {
  const workers = await fetch(`${manager}/v1/workers`)
    .then((r) => r.json())
    .catch(() => null);
  const list = Array.isArray(workers)
    ? workers
    : (workers as { workers?: unknown[] } | null)?.workers;
  if (Array.isArray(list) && list.length > 0) break;
  if (Date.now() > deadline) {
    console.error("the agent did not register within 30 s");
    await shutdown(1);
  }
  await Bun.sleep(200);
}

const registered = await fetch(`${manager}/v1/models/register`, {
  method: "POST",
  headers: { "content-type": "application/json" },
  body: JSON.stringify({
    alias: env.DEMO_ALIAS,
    model_name: env.DEMO_MODEL,
    max_model_len: 4096,
    gpu_memory_utilization: 0.8,
  }),
});
if (!registered.ok) {
  console.error(
    `registering ${env.DEMO_ALIAS} failed: HTTP ${registered.status} ${await registered.text()}`,
  );
  await shutdown(1);
}
console.log(`registered ${env.DEMO_ALIAS}; waiting for the engine to load…`);
for (;;) {
  const model = (await fetch(`${manager}/v1/models/${env.DEMO_ALIAS}`).then((r) => r.json())) as {
    status?: string;
  };
  if (model.status === "ready") break;
  if (model.status === "failed") {
    console.error(`${env.DEMO_ALIAS} failed to start: ${JSON.stringify(model)}`);
    await shutdown(1);
  }
  await Bun.sleep(250);
}

console.log(`
vllm-fleet demo is up: manager + router on ${manager}, one simulated GPU worker.

Try it:

  curl ${manager}/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model": "${env.DEMO_ALIAS}", "messages": [{"role": "user", "content": "Hello!"}]}'

  curl -N ${manager}/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model": "${env.DEMO_ALIAS}", "stream": true, "messages": [{"role": "user", "content": "Tell me a story"}]}'

  # with the openai SDK (npm install openai)
  import OpenAI from "openai";
  const client = new OpenAI({ baseURL: "${manager}/v1", apiKey: "unused" });
  const reply = await client.chat.completions.create({
    model: "${env.DEMO_ALIAS}", messages: [{ role: "user", content: "Hello!" }] });
  console.log(reply.choices[0].message.content);

  FLEET_URL=${manager} npm run fleet -- routes ls
  FLEET_URL=${manager} npm run fleet -- workers ls

Ctrl-C stops everything.
`);
await new Promise(() => {});
