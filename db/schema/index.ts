export { apiKeys } from "./api-keys.ts";
export { events } from "./events.ts";
export { fleetState } from "./fleet-state.ts";
export { type InstanceRow, instanceStatuses, instances } from "./instances.ts";
export { type ModelRow, models } from "./models.ts";
export { requestLogs } from "./request-logs.ts";
export { routeTable } from "./route-table.ts";
export { type RouteRow, routes } from "./routes.ts";
export { type GpuRow, gpus, type WorkerRow, workers } from "./workers.ts";
