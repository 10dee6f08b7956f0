import packageJson from "../package.json" with { type: "json" };

/**
 * The release every service reports: the agent in its registration, the manager beside it
 * (a worker on another version is warned about), and `--version` of each executable.
 */
export const fleetVersion: string = packageJson.version;
