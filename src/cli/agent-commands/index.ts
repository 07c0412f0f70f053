import type { Register } from "../run.js";

/**
 * Every `itera-agent` subcommand (the on-device agent inside a bundle), one module each here.
 * Add a command by writing its module and listing it here. Each module is imported only when its
 * command runs (src/cli/itera-agent.ts): `run` must not pay for Fastify, MQTT, SQLite or
 * systeminformation, nor `--version` for any of them (docs/packaging.md, "Memory and start-up").
 */
export const agentCommands: Record<string, () => Promise<Register>> = {
  info: async () => (await import("./info.js")).registerInfo,
  run: async () => (await import("./run.js")).registerRun,
  agent: async () => (await import("./agent.js")).registerAgent,
  bench: async () => (await import("./bench.js")).registerAgentBench,
  meters: async () => (await import("./meters.js")).registerAgentMeters,
  serve: async () => (await import("./serve.js")).registerServe,
  tune: async () => (await import("./tune.js")).registerAgentTune,
};

/**
 * The commands to register for these arguments (without node and the script): only the one named
 * first (or after `help`; the program's own options, -V and -h, end the parse, so a command comes
 * first); none for `--version` alone; every one otherwise (help, or an unknown command, which
 * commander then reports with the known ones).
 */
export function commandsFor(args: string[]): string[] {
  const all = Object.keys(agentCommands);
  const name = args[0] === "help" ? args[1] : args[0];
  if (name !== undefined && Object.hasOwn(agentCommands, name)) return [name];
  return args.length === 1 && (name === "--version" || name === "-V") ? [] : all;
}
