import { describe, expect, test } from "bun:test";
import { silentLogger } from "../../kit/log.ts";
import { type ClosingServer, shutDown } from "../../kit/shutdown.ts";

/** A server whose requests finish when the test says (or never), recording what was asked. */
function fakeServer(options: { drainsAfter?: Promise<void> } = {}) {
  const calls: string[] = [];
  let cut: () => void = () => {};
  const cutDone = new Promise<void>((resolve) => {
    cut = resolve;
  });
  const server: ClosingServer = {
    close: () => {
      calls.push("close");
      // In-flight requests end on their own, or when the connections are cut.
      return Promise.race([options.drainsAfter ?? new Promise<void>(() => {}), cutDone]);
    },
    closeAll: () => {
      calls.push("closeAll");
      cut();
    },
  };
  return { server, calls };
}

function run(options: Omit<Parameters<typeof shutDown>[0], "log" | "exit">) {
  return new Promise<number>((resolve) => {
    void shutDown({ ...options, log: silentLogger, exit: resolve });
  });
}

describe("kit/shutdown", () => {
  test("in-flight work that ends in time: nothing is cut, the steps run in order, exit 0", async () => {
    const { server, calls } = fakeServer({ drainsAfter: Promise.resolve() });
    const code = await run({
      timeoutMs: 10_000,
      server,
      after: [
        { name: "flush", run: () => calls.push("flush") },
        { name: "db", run: async () => calls.push("db") },
      ],
    });
    expect(code).toBe(0);
    expect(calls).toEqual(["close", "flush", "db"]);
  });

  test("work that never ends is cut before the deadline, then the steps run, exit 0", async () => {
    const { server, calls } = fakeServer();
    const code = await run({
      timeoutMs: 400,
      server,
      after: [{ name: "flush", run: () => calls.push("flush") }],
    });
    expect(code).toBe(0);
    expect(calls).toEqual(["close", "closeAll", "flush"]);
  });

  test("a step that hangs cannot keep the process past the deadline: exit 1", async () => {
    const { server, calls } = fakeServer({ drainsAfter: Promise.resolve() });
    const code = await run({
      timeoutMs: 400,
      server,
      after: [
        { name: "database", run: () => new Promise(() => {}) },
        { name: "never reached", run: () => calls.push("never") },
      ],
    });
    expect(code).toBe(1);
    expect(calls).toEqual(["close"]);
  });

  test("a step that fails is logged and the rest still run: exit 1", async () => {
    const { server, calls } = fakeServer({ drainsAfter: Promise.resolve() });
    const code = await run({
      timeoutMs: 10_000,
      server,
      after: [
        {
          name: "flush",
          run: () => {
            throw new Error("manager unreachable");
          },
        },
        { name: "db", run: () => calls.push("db") },
      ],
    });
    expect(code).toBe(1);
    expect(calls).toEqual(["close", "db"]);
  });
});
