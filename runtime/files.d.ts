// Files imported with `with { type: "file" }` (runtime/pglite-files.ts): Bun gives their path.
declare module "*.wasm" {
  const path: string;
  export default path;
}
declare module "*.data" {
  const path: string;
  export default path;
}
