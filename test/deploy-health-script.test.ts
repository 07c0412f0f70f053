import { spawnSync } from "node:child_process";
import { chmod, mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { HEALTH } from "../src/deploy/remote-scripts.js";
import { tempDir } from "./temp-dir.js";

/**
 * The health check a flash runs on the device (src/deploy/remote-scripts.ts HEALTH), run here with
 * sh as ssh runs it (`sh -s -- ARGS`), a stand-in systemctl and a stand-in agent that prints the
 * cache it was given: with systemd, `info` uses the service's cache (what the service extracted on
 * its start), not a second copy in the ssh user's home.
 */
let work: string;
let base: string;
let systemctl: string;

beforeAll(async () => {
  work = await tempDir("itera-health-");
  base = join(work, "opt/itera");
  await mkdir(join(base, "current"), { recursive: true });
  const agent = join(base, "current", "itera-agent");
  await writeFile(agent, `#!/bin/sh\nprintf '{"cache":"%s"}\\n' "\${ITERA_AGENT_CACHE:-}"\n`);
  await chmod(agent, 0o755);
  systemctl = join(work, "systemctl");
  await writeFile(systemctl, "#!/bin/sh\nexit 0\n"); // is-active: yes
  await chmod(systemctl, 0o755);
});

function health(args: string[], env: NodeJS.ProcessEnv = {}): { code: number | null; cache: string } {
  const r = spawnSync("sh", ["-s", "--", ...args], {
    input: HEALTH,
    env: { PATH: "/usr/bin:/bin", ...env },
    encoding: "utf8",
  });
  return {
    code: r.status,
    cache: r.status === 0 ? (JSON.parse(r.stdout) as { cache: string }).cache : r.stderr,
  };
}

describe("the flash's health check", () => {
  it("runs info with the service's cache when the service made it, else as the user would", async () => {
    const serviceCache = join(work, "var/cache/itera-agent");
    expect(health([base, systemctl, "5", "0", serviceCache])).toEqual({ code: 0, cache: "" });
    await mkdir(serviceCache, { recursive: true });
    expect(health([base, systemctl, "5", "0", serviceCache])).toEqual({ code: 0, cache: serviceCache });
    // A cache the caller chose stays; without systemd there is no service cache to share.
    expect(health([base, systemctl, "5", "0", serviceCache], { ITERA_AGENT_CACHE: "/elsewhere" })).toEqual({
      code: 0,
      cache: "/elsewhere",
    });
    expect(health([base, "", "5", "0", serviceCache])).toEqual({ code: 0, cache: "" });
  });
});
