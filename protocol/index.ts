/**
 * Wire contracts: the zod schemas and types of every message that crosses a process
 * boundary. Services import this module, never each other's internals.
 */
export * from "./common.ts";
export * from "./errors.ts";
export * from "./gpus.ts";
export * from "./instances.ts";
export * from "./keys.ts";
export * from "./load.ts";
export * from "./models.ts";
export * from "./routers.ts";
export * from "./routes.ts";
export * from "./usage.ts";
export * from "./workers.ts";
