import type { Register } from "../run.js";
import { registerBench } from "./bench.js";
import { registerBenchReport } from "./bench-report.js";
import { registerBroker } from "./broker.js";
import { registerBuild } from "./build.js";
import { registerDevices } from "./devices.js";
import { registerEval } from "./eval.js";
import { registerFlash } from "./flash.js";
import { registerFleet } from "./fleet.js";
import { registerInspect } from "./inspect.js";
import { registerKeygen } from "./keygen.js";
import { registerProfiles } from "./profiles.js";
import { registerQuantize } from "./quantize.js";
import { registerRun } from "./run.js";
import { registerTune } from "./tune.js";
import { registerVerify } from "./verify.js";

/**
 * Every `itera` subcommand, one module each under src/cli/commands/.
 * Add a command by writing its module and listing its register function here.
 */
export const commands: Register[] = [
  registerProfiles,
  registerBuild,
  registerKeygen,
  registerVerify,
  registerFlash,
  registerDevices,
  registerRun,
  registerEval,
  registerBroker,
  registerFleet,
  registerBench,
  registerBenchReport,
  registerInspect,
  registerQuantize,
  registerTune,
];
