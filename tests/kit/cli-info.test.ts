import { describe, expect, test } from "bun:test";
import { agentEnvSchema } from "../../agent/env.ts";
import { envDefaults, infoFlags } from "../../kit/cli-info.ts";
import { fleetVersion } from "../../kit/version.ts";
import { managerEnvSchema } from "../../manager/env.ts";

const info = {
  name: "fleet-agent",
  summary: "the agent",
  schema: agentEnvSchema,
  docs: "docs/agent.md",
  runtime: "bun test",
};

describe("cli-info", () => {
  test("--help lists every variable of the schema with the value it takes when unset", () => {
    const help = infoFlags(["--help"], info);
    expect(help?.exitCode).toBe(0);
    for (const name of Object.keys(agentEnvSchema.shape)) expect(help?.text).toContain(name);
    expect(help?.text).toMatch(/WORKER_PORT\s+\[6006\]/);
    expect(help?.text).toMatch(/MANAGER_URL\s+\[http:\/\/localhost:18000\]/);
    expect(help?.text).toMatch(/FLEET_TOKEN\s+\[unset\]/);
  });

  test("defaults come from the schemas themselves", () => {
    expect(Object.fromEntries(envDefaults(managerEnvSchema))).toMatchObject({
      PORT: "18000",
      HOST: "127.0.0.1",
      FLEET_DATA_DIR: ".fleet",
      DATABASE_URL: "unset",
    });
  });

  test("--version names the release; no arguments start the service; anything else is refused", () => {
    expect(infoFlags(["--version"], info)).toEqual({
      text: `fleet-agent ${fleetVersion} (bun test)`,
      exitCode: 0,
    });
    expect(infoFlags([], info)).toBeUndefined();
    expect(infoFlags(["--port=1"], info)?.exitCode).toBe(2);
  });
});
