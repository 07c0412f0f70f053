/**
 * vitest globalSetup: the whole run gets its own temp folder, so what a test (or the code under test)
 * forgets in the temp folder is seen and removed instead of piling up in the machine's /tmp.
 *
 * TMPDIR is set before vitest starts its worker processes, which inherit it, as do their children
 * (the CLI, brokers, ssh, python): os.tmpdir() is then the run's folder, the same code path as for a
 * user. What does not follow TMPDIR keeps its real place: the flash lock in a device's /tmp (sshd gives
 * its sessions a fresh environment), tested against the real /tmp in deploy-ssh.test.ts.
 *
 * At the end the run lists what is left in its folder on stderr (a test that does not remove what it
 * made; test/temp-dir.ts is the way to) and removes it. It does not fail the run: a worker that was
 * killed mid-test leaves its files too, and that is reported by the test that failed. A run that was
 * itself killed leaves its folder; the next run removes those whose process is gone. It also turns
 * ONNX Runtime's telemetry off for the tests that open sessions directly (see below).
 */
import { chmodSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const PREFIX = "itera-vitest-";

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Folders of earlier runs that were killed before their teardown (their vitest process is gone). */
function removeAbandoned(root: string): void {
  for (const name of readdirSync(root)) {
    const pid = Number(name.slice(PREFIX.length).split("-")[0]);
    if (!name.startsWith(PREFIX) || !Number.isInteger(pid) || pid <= 0 || alive(pid)) continue;
    rmSync(join(root, name), { recursive: true, force: true });
    process.stderr.write(`test temp folder: removed ${join(root, name)}, left by a run that was killed\n`);
  }
}

export default function setup(): () => void {
  const outer = process.env.TMPDIR;
  const outerOrt = process.env.ORT_DISABLE_TELEMETRY;
  const root = tmpdir();
  removeAbandoned(root);
  const dir = mkdtempSync(join(root, `${PREFIX}${process.pid}-`));
  // mkdtemp makes it 0700; like /tmp, other users must reach into it: Mosquitto started as root runs
  // as `mosquitto` and reads its config and writes its database in the folders the tests give it.
  chmodSync(dir, 0o755);
  process.env.TMPDIR = dir;
  // Tests that open ONNX Runtime sessions themselves (not through src/runtime, which turns its
  // telemetry off) would leave its mat-debug-<pid>.log and ~/.cache/Microsoft queue; the switch
  // itself is tested in ort-telemetry.test.ts, whose child runs without this variable.
  process.env.ORT_DISABLE_TELEMETRY ??= "1";
  return () => {
    const left = readdirSync(dir).sort();
    if (left.length > 0) {
      process.stderr.write(
        `\ntest temp folder: ${left.length} entr${left.length === 1 ? "y" : "ies"} left behind by the tests ` +
          `(make them with tempDir() from test/temp-dir.ts), now removed:\n${left.map((f) => `  ${f}\n`).join("")}`,
      );
    }
    rmSync(dir, { recursive: true, force: true, maxRetries: 5 });
    if (outer === undefined) delete process.env.TMPDIR;
    else process.env.TMPDIR = outer;
    if (outerOrt === undefined) delete process.env.ORT_DISABLE_TELEMETRY;
  };
}
