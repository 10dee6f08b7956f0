export { apiKeys } from "./api-keys.ts";
export { events } from "./events.ts";
export { fleetState } from "./fleet-state.ts";
export { instanceStatuses, instances } from "./instances.ts";
export { models } from "./models.ts";
export { requestLogs } from "./request-logs.ts";
export { routeTable } from "./route-table.ts";
export { routes } from "./routes.ts";
export { gpus, workers } from "./workers.ts";
