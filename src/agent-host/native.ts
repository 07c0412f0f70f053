import { join } from "node:path";
import { extractBundle } from "./extract.js";

/**
 * Load a native add-on embedded in the bundle (asset native/<file>) from where it was extracted:
 * a single executable cannot dlopen from its own memory, so the file must exist on disk.
 */
export function loadEmbeddedAddon(file: string): unknown {
  const mod = { exports: {} as unknown };
  process.dlopen(mod, join(extractBundle().nativeDir, file));
  return mod.exports;
}
