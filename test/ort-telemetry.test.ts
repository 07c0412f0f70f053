import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { tempDirSync } from "./temp-dir.js";

/**
 * ONNX Runtime 1.30's official builds keep a telemetry queue under ~/.cache/Microsoft; itera turns
 * it off (src/runtime/ort-telemetry.ts) unless the user chose otherwise. Each run is a fresh process
 * with its own HOME: ONNX Runtime reads the setting once per process. ONNX Runtime also stays silent
 * on its own when it sees a CI service (CI, GITHUB_ACTIONS, ... as listed in its library) and moves
 * the queue with XDG_CACHE_HOME, so the child runs without those: otherwise, on a CI machine, the
 * control below could not tell itera's switch from ONNX Runtime's.
 */
const ORT_SILENCING_ENV = [
  "CI",
  "TF_BUILD",
  "GITHUB_ACTIONS",
  "GITLAB_CI",
  "CIRCLECI",
  "TRAVIS",
  "JENKINS_URL",
  "CODEBUILD_BUILD_ID",
  "BUILDKITE",
  "TEAMCITY_VERSION",
  "APPVEYOR",
  "BITBUCKET_BUILD_NUMBER",
  "XDG_CACHE_HOME",
  "ORT_DISABLE_TELEMETRY",
];
/**
 * The child's own HOME and temp folder (both removed with the test file's temp folders): with
 * telemetry on, ONNX Runtime's telemetry library also writes a mat-debug-<pid>.log into TMPDIR.
 */
function runWithHome(env: Record<string, string>): string {
  const home = tempDirSync("itera-ort-home-");
  mkdirSync(join(home, "tmp"));
  const rest = Object.fromEntries(
    Object.entries(process.env).filter(([name]) => !ORT_SILENCING_ENV.includes(name)),
  );
  const r = spawnSync(
    process.execPath,
    ["dist/cli/itera.js", "run", "models/itera-lite-micro", "--prompt", "ROMEO:", "-n", "2"],
    { env: { ...rest, HOME: home, TMPDIR: join(home, "tmp"), ...env }, encoding: "utf8" },
  );
  expect(r.status, r.stderr).toBe(0);
  return home;
}

describe("ONNX Runtime telemetry", () => {
  it("is off by default: nothing is written under ~/.cache/Microsoft, no log in the temp folder", () => {
    const home = runWithHome({});
    expect(existsSync(join(home, ".cache", "Microsoft"))).toBe(false);
    expect(readdirSync(join(home, "tmp"))).toEqual([]);
  });

  it("stays the user's choice: ORT_DISABLE_TELEMETRY=0 lets ONNX Runtime keep its queue", () => {
    expect(existsSync(join(runWithHome({ ORT_DISABLE_TELEMETRY: "0" }), ".cache", "Microsoft"))).toBe(true);
  });
});
