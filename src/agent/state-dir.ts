import { homedir } from "node:os";
import { join } from "node:path";

/**
 * The agent's state folder when no --state-dir is given: systemd's StateDirectory= (STATE_DIRECTORY),
 * else the XDG state folder. `itera-agent agent` and `itera-agent serve` share it, so feedback that
 * serve stores is sent by the agent (docs/fleet.md, "Feedback and retraining").
 */
export function defaultStateDir(): string {
  if (process.env.STATE_DIRECTORY) return process.env.STATE_DIRECTORY.split(":")[0]!;
  const base = process.env.XDG_STATE_HOME || join(homedir(), ".local", "state");
  return join(base, "itera-agent");
}
