import { freePort, waitForHttp } from "../../devkit/net.ts";
import { bunBin, type Service, startProcess } from "../../devkit/proc.ts";

export type Sim = { base: string; port: number; service: Service };

/** Starts `agent/sim/main.ts serve MODEL --port P ...flags` and waits for /health. */
export async function startSim(
  flags: string[] = [],
  options: { env?: Record<string, string>; model?: string; wait?: boolean } = {},
): Promise<Sim> {
  const port = await freePort();
  const service = startProcess(
    [
      bunBin,
      "agent/sim/main.ts",
      "serve",
      options.model ?? "/models/sim-model",
      "--host",
      "127.0.0.1",
      "--port",
      String(port),
      ...flags,
    ],
    { env: options.env ?? {} },
  );
  const base = `http://127.0.0.1:${port}`;
  if (options.wait !== false) await waitForHttp(`${base}/health`, { timeoutMs: 20_000 });
  return { base, port, service };
}

/** Reads one sample from /metrics: `name` with all of `labels` (e.g. finished_reason). */
export async function metric(
  base: string,
  name: string,
  labels: Record<string, string> = {},
): Promise<number> {
  const text = await (await fetch(`${base}/metrics`)).text();
  for (const line of text.split("\n")) {
    if (!line.startsWith(`${name}{`)) continue;
    const close = line.lastIndexOf("}");
    const labelText = line.slice(name.length + 1, close);
    if (Object.entries(labels).every(([key, value]) => labelText.includes(`${key}="${value}"`))) {
      return Number(line.slice(close + 2));
    }
  }
  throw new Error(`metric ${name} ${JSON.stringify(labels)} not found`);
}
