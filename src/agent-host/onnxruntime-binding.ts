import { isMainThread } from "node:worker_threads";
import { env, Tensor } from "onnxruntime-common";
import { loadEmbeddedAddon } from "./native.js";

/**
 * Stands in for onnxruntime-node's dist/binding.js inside a bundle (the esbuild plugin in
 * src/package/agent-script.ts resolves `./binding` to this file). The original requires
 * `../bin/napi-v6/<platform>/<arch>/onnxruntime_binding.node`, which does not exist in a single
 * executable; this loads the binding extracted from the bundle instead. The binding's RUNPATH is
 * $ORIGIN (Linux) and Windows searches the loading DLL's folder, so the onnxruntime shared library
 * extracted next to it is found. Same exports as the original: `binding` and `initOrt`.
 */
// biome-ignore lint/suspicious/noExplicitAny: the native binding is untyped, as in onnxruntime-node itself
export const binding: any = loadEmbeddedAddon("onnxruntime_binding.node");

const logLevels: Record<string, number> = { verbose: 0, info: 1, warning: 2, error: 3, fatal: 4 };

let ortInitialized = false;

export function initOrt(): void {
  if (ortInitialized) return;
  ortInitialized = true;
  const level = env.logLevel ? logLevels[env.logLevel] : 2;
  if (level === undefined) throw new Error(`Unsupported log level: ${env.logLevel}`);
  binding.initOrtOnce(level, Tensor, isMainThread);
}
