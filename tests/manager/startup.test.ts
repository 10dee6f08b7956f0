import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePort } from "../../devkit/net.ts";
import { bunBin, startProcess, stopAll } from "../../devkit/proc.ts";

const dirs: string[] = [];
afterAll(async () => {
  await stopAll();
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

function dataDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "fleet-manager-"));
  dirs.push(dir);
  return dir;
}

describe("manager startup", () => {
  test("refuses a non-loopback HOST without both tokens, naming what to set", async () => {
    const manager = startProcess([bunBin, "manager/main.ts"], {
      env: {
        HOST: "0.0.0.0",
        PORT: String(await freePort()),
        FLEET_DATA_DIR: dataDir(),
        FLEET_TOKEN: "a-fleet-token",
        ADMIN_TOKEN: "",
      },
    });
    expect(await manager.exited()).toBe(1);
    expect(manager.output()).toContain("refusing to start");
    expect(manager.output()).toContain("ADMIN_TOKEN");
    expect(manager.output()).not.toContain("a-fleet-token");
  }, 30_000);

  test("a bad value stops it and names the variable", async () => {
    const manager = startProcess([bunBin, "manager/main.ts"], {
      env: { PORT: "eighteen-thousand", FLEET_DATA_DIR: dataDir() },
    });
    expect(await manager.exited()).toBe(1);
    expect(manager.output()).toContain("PORT must be a port number");
  }, 30_000);

  test("a WORKER_URL_ALLOW it cannot read stops it, naming the variable and the entry", async () => {
    const manager = startProcess([bunBin, "manager/main.ts"], {
      env: {
        PORT: String(await freePort()),
        FLEET_DATA_DIR: dataDir(),
        WORKER_URL_ALLOW: ".rent.example,10.0.0.0/33",
      },
    });
    expect(await manager.exited()).toBe(1);
    expect(manager.output()).toMatch(/WORKER_URL_ALLOW entry "10\.0\.0\.0\/33" is not/);
  }, 30_000);

  test("on loopback without tokens it runs open and says so", async () => {
    const port = await freePort();
    const manager = startProcess([bunBin, "manager/main.ts"], {
      env: {
        HOST: "127.0.0.1",
        PORT: String(port),
        FLEET_DATA_DIR: dataDir(),
        ADMIN_TOKEN: "",
        FLEET_TOKEN: "",
      },
    });
    await manager.waitFor("running OPEN", 30_000);
    expect(manager.output()).toContain(`manager listening on http://127.0.0.1:${port}`);
    const response = await fetch(`http://127.0.0.1:${port}/v1/workers`);
    expect(response.status).toBe(200);
    expect(await manager.stop()).toBe(0);
  }, 45_000);
});
