import { describe, expect, test } from "bun:test";
import { reachabilityWarning } from "../../agent/lib/net.ts";
import { WorkerService } from "../../agent/service.ts";
import { silentLogger } from "../../kit/log.ts";

/**
 * The agent warns at startup when a manager on another host could not dial it: MANAGER_URL
 * is not this host, PUBLIC_URL is unset and the URL it advertises is its own loopback.
 */
describe("agent reachability warning", () => {
  const local = new Set(["gpu-box-1", "10.0.0.12", "fe80::1"]);
  const warning = (fields: Partial<Parameters<typeof reachabilityWarning>[0]>) =>
    reachabilityWarning({
      managerUrl: "http://manager.example.com:18000",
      publicUrl: null,
      workerUrl: "http://127.0.0.1:6006",
      localHosts: local,
      ...fields,
    });

  test("a remote manager, no PUBLIC_URL and a loopback worker URL: names both fixes", () => {
    expect(warning({})).toBe(
      "MANAGER_URL (http://manager.example.com:18000) is on another host, but this agent advertises http://127.0.0.1:6006 (its own loopback) and no PUBLIC_URL: the manager cannot reach it, so launches, stops and logs would fail. Set PUBLIC_URL to this host's port-forwarding URL, or WORKER_URL to an address the manager can dial",
    );
    expect(warning({ workerUrl: "http://[::1]:6006" })).toBeString();
  });

  test("silent when the manager is on this host, or when the manager has a way in", () => {
    for (const managerUrl of [
      "http://localhost:18000",
      "http://127.0.0.1:18000",
      "http://[::1]:18000",
      "http://10.0.0.12:18000",
      "http://GPU-BOX-1:18000",
    ]) {
      expect({ managerUrl, warning: warning({ managerUrl }) }).toEqual({
        managerUrl,
        warning: undefined,
      });
    }
    expect(warning({ publicUrl: "https://u557149-9507-6992150f.bjb2.seetacloud.com:8443" })).toBe(
      undefined,
    );
    expect(warning({ workerUrl: "http://10.0.0.12:6006" })).toBeUndefined();
  });

  test("an agent built with a remote manager and the default worker URL carries the warning", () => {
    const options = {
      workerId: "w1",
      listenHost: "0.0.0.0",
      listenPort: 6006,
      fleetToken: "a-fleet-token",
      managerUrl: "http://manager.example.com:18000",
      log: silentLogger,
    };
    expect(new WorkerService(options).unreachableWarning).toContain(
      "advertises http://127.0.0.1:6006 (its own loopback) and no PUBLIC_URL",
    );
    const mapped = new WorkerService({ ...options, publicUrl: "https://box.example:8443" });
    expect(mapped.unreachableWarning).toBeUndefined();
    const dialled = new WorkerService({ ...options, workerUrl: "http://10.0.0.12:6006" });
    expect(dialled.unreachableWarning).toBeUndefined();
  });
});
