#!/usr/bin/env node
import { Command } from "commander";
import { VERSION } from "../version.js";
import { agentCommands, commandsFor } from "./agent-commands/index.js";

// No top-level await: this file is also bundled into CommonJS for the single executable.
async function main(): Promise<void> {
  const program = new Command()
    .name("itera-agent")
    .description("On-device agent: generate, benchmark, measure energy, report over MQTT")
    .version(VERSION)
    .showHelpAfterError();

  // Only the command at hand is loaded: each one's dependencies cost start-up time and memory.
  for (const name of commandsFor(process.argv.slice(2))) (await agentCommands[name]!())(program);

  await program.parseAsync(process.argv);
}

main().catch((e: unknown) => {
  process.stderr.write(
    `internal error (please report): ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`,
  );
  process.exitCode = 70;
});
