import { Command } from "commander";
import { describe, expect, it } from "vitest";
import { agentCommands, commandsFor } from "../src/cli/agent-commands/index.js";

/** itera-agent loads only the command at hand (issue #18): which commands each command line registers. */
describe("commandsFor", () => {
  const all = Object.keys(agentCommands);

  it("registers only the command named first, or after help", () => {
    expect(commandsFor(["run", "--prompt", "x"])).toEqual(["run"]);
    expect(commandsFor(["serve", "--help"])).toEqual(["serve"]);
    expect(commandsFor(["help", "agent"])).toEqual(["agent"]);
  });

  it("registers none for --version alone, every one for help or anything unknown", () => {
    expect(commandsFor(["--version"])).toEqual([]);
    expect(commandsFor(["-V"])).toEqual([]);
    for (const args of [[], ["--help"], ["help"], ["nope"], ["toString"], ["--version", "run"]]) {
      expect(commandsFor(args)).toEqual(all);
    }
  });

  it("every entry loads a module that registers a command of that name", async () => {
    for (const [name, load] of Object.entries(agentCommands)) {
      const program = new Command();
      (await load())(program);
      expect(program.commands.map((c) => c.name())).toEqual([name]);
    }
  });
});
