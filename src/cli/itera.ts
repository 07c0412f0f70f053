#!/usr/bin/env node
import { Command } from "commander";
import { VERSION } from "../version.js";
import { commands } from "./commands/index.js";

const program = new Command()
  .name("itera")
  .description("Inspect, quantize, package and benchmark small language models for edge devices")
  .version(VERSION)
  // Program options only before the subcommand: `itera build --version 9.9.9` is build's option,
  // not the program's --version (which printed the tool's version and built nothing).
  .enablePositionalOptions()
  .showHelpAfterError();

for (const register of commands) register(program);

await program.parseAsync(process.argv);
