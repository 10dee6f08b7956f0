import { afterAll, describe, expect, test } from "bun:test";
import OpenAI from "openai";
import { eventually, freePort } from "../../devkit/net.ts";
import { bunBin, startProcess, stopAll } from "../../devkit/proc.ts";

afterAll(stopAll);

describe("npm run demo", () => {
  test("brings up a manager, a simulated worker and a model; Ctrl-C stops all of it", async () => {
    const [port, workerPort] = [await freePort(), await freePort()];
    const demo = startProcess([bunBin, "bin/demo.ts"], {
      env: { PORT: String(port), DEMO_WORKER_PORT: String(workerPort), DATABASE_URL: "" },
    });
    await demo.waitFor("vllm-fleet demo is up", 60_000);
    const manager = `http://127.0.0.1:${port}`;
    expect(demo.output()).toContain(`curl ${manager}/v1/chat/completions`);

    // The SDK lines it prints work as printed.
    const client = new OpenAI({ baseURL: `${manager}/v1`, apiKey: "unused", maxRetries: 0 });
    const reply = await eventually(async () =>
      client.chat.completions.create({
        model: "qwen-vl-2b",
        messages: [{ role: "user", content: "Hello!" }],
      }),
    );
    expect(reply.choices[0]?.message.content).toBe("Hello!");

    // Ctrl-C: the demo stops the agent (and so the engine) and the manager, then exits.
    demo.proc.kill("SIGINT");
    expect(await demo.proc.exited).toBe(0);
    const down = async (url: string) =>
      fetch(url, { signal: AbortSignal.timeout(1000) }).then(
        () => false,
        () => true,
      );
    expect(await down(`${manager}/health`)).toBe(true);
    expect(await down(`http://127.0.0.1:${workerPort}/health`)).toBe(true);
  });
});
