import { loadEmbeddedAddon } from "./native.js";

/**
 * Stands in for @serialport/bindings-cpp's dist/serialport-bindings.js inside a bundle (resolved
 * by the esbuild plugin in src/package/agent-script.ts): the original finds its prebuilt add-on
 * with node-gyp-build relative to its own folder, which a single executable does not have; the
 * bundle embeds the target's prebuild as native/serialport.node instead (INA219 meters need it).
 */
// biome-ignore lint/suspicious/noExplicitAny: the native binding is untyped, as in @serialport/bindings-cpp itself
export const binding: any = loadEmbeddedAddon("serialport.node");
