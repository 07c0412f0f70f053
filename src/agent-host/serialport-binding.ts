import { loadEmbeddedAddon } from "./native.js";

/**
 * Stands in for @serialport/bindings-cpp's dist/serialport-bindings.js inside a bundle (resolved
 * by the esbuild plugin in src/package/agent-script.ts): the original finds its prebuilt add-on
 * with node-gyp-build relative to its own folder, which a single executable does not have; the
 * bundle embeds the target's prebuild as native/serialport.node instead (INA219 meters need it).
 *
 * The add-on is loaded on first use, not when serialport's JavaScript is evaluated: bindings-cpp
 * reads every function off the binding at load time, and loading it then would extract the bundle
 * and dlopen the add-on for commands that never open a serial port (`info`, `bench` without INA219).
 */
// biome-ignore lint/suspicious/noExplicitAny: the native binding is untyped, as in @serialport/bindings-cpp itself
let loaded: any;
// biome-ignore lint/suspicious/noExplicitAny: as above
const real = (): any => {
  loaded ??= loadEmbeddedAddon("serialport.node");
  return loaded;
};

// What bindings-cpp's load-bindings.js and poller.js take from the binding (linux, darwin and win32).
const functions = [
  "close",
  "drain",
  "flush",
  "get",
  "getBaudRate",
  "list",
  "open",
  "set",
  "update",
  "read",
  "write",
] as const;

// biome-ignore lint/suspicious/noExplicitAny: as above
export const binding: any = Object.fromEntries(
  functions.map((name) => [name, (...args: unknown[]) => real()[name](...args)]),
);
// A constructor (`new PollerBindings(fd, cb)`): returning the add-on's object from it is what `new` gives.
binding.Poller = function Poller(...args: unknown[]) {
  return new (real().Poller)(...args);
};
