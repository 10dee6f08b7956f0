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
