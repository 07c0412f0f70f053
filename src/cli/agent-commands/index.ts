import type { Register } from "../run.js";
import { registerAgent } from "./agent.js";
import { registerAgentBench } from "./bench.js";
import { registerAgentMeters } from "./meters.js";
import { registerInfo } from "./info.js";
import { registerRun } from "./run.js";
import { registerServe } from "./serve.js";

/**
 * Every `itera-agent` subcommand (the on-device agent inside a bundle), one module each here.
 * Add a command by writing its module and listing its register function here.
 */
export const agentCommands: Register[] = [
  registerInfo,
  registerRun,
  registerAgent,
  registerAgentBench,
  registerAgentMeters,
  registerServe,
];
