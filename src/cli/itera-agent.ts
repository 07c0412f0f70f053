#!/usr/bin/env node
import { Command } from "commander";
import { VERSION } from "../version.js";
import { agentCommands } from "./agent-commands/index.js";

const program = new Command()
  .name("itera-agent")
  .description("On-device agent: generate, benchmark, measure energy, report over MQTT")
  .version(VERSION)
  .showHelpAfterError();

for (const register of agentCommands) register(program);

await program.parseAsync(process.argv);
