import { createRequire } from "node:module";

/** The package version, read once from package.json (bundles inline it at build time). */
export const VERSION: string =
  typeof process.env.ITERA_VERSION === "string" && process.env.ITERA_VERSION !== ""
    ? process.env.ITERA_VERSION
    : (createRequire(import.meta.url)("../package.json") as { version: string }).version;
