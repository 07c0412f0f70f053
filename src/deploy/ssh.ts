import { type ChildProcess, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { IteraError } from "../errors.js";
import { remoteCommand } from "./shell-quote.js";

export interface SshTarget {
  /** user@host (or host): checked so it can never be read as an ssh option. */
  destination: string;
  port?: number;
  identity?: string;
  /** known_hosts file; ssh's own default (~/.ssh/known_hosts) when absent. */
  knownHosts?: string;
  /** First contact: accept and record an unknown host key (never a changed one). */
  acceptNewHostKey?: boolean;
  /** Run the device-side commands through `sudo -n` (a non-root login such as a Pi's default user). */
  sudo?: boolean;
  connectTimeoutS?: number;
}

export interface ExecResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** user@host, host or an IPv6 literal; never starting with '-' (it would be read as an ssh option). */
const DESTINATION = /^(?:[A-Za-z0-9_][A-Za-z0-9._-]*@)?[A-Za-z0-9][A-Za-z0-9.:-]*$/;

export function checkDestination(destination: string): string {
  if (!DESTINATION.test(destination)) {
    throw new IteraError(`invalid ssh destination '${destination}'`, {
      fix: "give user@host, e.g. pi@raspberrypi.local or root@192.168.1.20",
    });
  }
  return destination;
}

/** The ssh options every call uses: host keys always checked, never a password prompt. */
export function sshOptions(t: SshTarget): string[] {
  const o = [
    "-T",
    "-o",
    "BatchMode=yes",
    "-o",
    `StrictHostKeyChecking=${t.acceptNewHostKey ? "accept-new" : "yes"}`,
    "-o",
    `ConnectTimeout=${t.connectTimeoutS ?? 10}`,
    "-o",
    "ServerAliveInterval=10",
    "-o",
    "ServerAliveCountMax=3",
  ];
  if (t.knownHosts) o.push("-o", `UserKnownHostsFile=${t.knownHosts}`);
  if (t.identity) o.push("-i", t.identity, "-o", "IdentitiesOnly=yes");
  if (t.port !== undefined) o.push("-p", String(t.port));
  return o;
}

function sshMissing(): IteraError {
  return new IteraError("the ssh client is not installed on this machine", {
    fix: "install OpenSSH's client (apt-get install openssh-client)",
  });
}

/** Turn ssh's own failure (exit 255) into one clear error. */
export function sshError(stderr: string, t: SshTarget): IteraError {
  const where = `${t.destination}${t.port ? ` port ${t.port}` : ""}`;
  const last = stderr.trim().split("\n").filter(Boolean).at(-1) ?? "ssh failed";
  if (
    /Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED|host key for .* has changed/i.test(
      stderr,
    )
  ) {
    const changed = /HAS CHANGED|has changed/.test(stderr);
    return new IteraError(
      changed ? "the device's host key has CHANGED" : "the device's host key is not known",
      {
        where,
        fix: changed
          ? "if the device was re-imaged, remove its old key with `ssh-keygen -R HOST` and flash with --accept-new-host-key; otherwise do not connect"
          : "add its key to known_hosts (ssh-keyscan, checked by hand) or, on first contact, pass --accept-new-host-key",
        exitCode: 3,
      },
    );
  }
  if (/Permission denied|Too many authentication failures|no matching host key type/i.test(stderr)) {
    return new IteraError("ssh authentication failed (wrong user or key)", {
      where,
      fix: "check the user and --identity; the key's .pub must be in the device's ~/.ssh/authorized_keys",
      exitCode: 3,
    });
  }
  if (
    /Connection refused|Connection timed out|No route to host|Network is unreachable|Could not resolve|Operation timed out|Connection closed by|Connection reset/i.test(
      stderr,
    )
  ) {
    return new IteraError(`cannot reach the device: ${last}`, {
      where,
      fix: "check that the device is on, on the network, and runs sshd on that port (--port)",
      exitCode: 3,
    });
  }
  return new IteraError(`ssh failed: ${last}`, {
    where,
    fix: "run `ssh -v` with the same options to see why",
    exitCode: 3,
  });
}

/** Exit code of the hold script when the device's flash lock is taken. */
const LOCK_BUSY = 75;

/**
 * What the shared connection's own session runs on the device: take the flash lock (when asked and
 * when `flock` exists), say it is ready, then wait for the end of stdin (close(), or the connection
 * gone) and remove the lock file while still holding the lock, so no file is left in the device's
 * /tmp. A flash that starts just as another ends may have opened the file that one is removing:
 * after locking, it checks that the path still names the file it locked (/proc/$$/fd/9), else it
 * opens the path again; without /proc the lock is taken as it is.
 */
const HOLD_SCRIPT = `lock=$1
if [ -n "$lock" ] && command -v flock >/dev/null 2>&1; then
  for try in 1 2 3; do
    exec 9>>"$lock"
    flock -n 9 || exit ${LOCK_BUSY}
    if [ ! -d /proc/$$/fd ] || [ /proc/$$/fd/9 -ef "$lock" ]; then
      trap 'rm -f "$lock"' EXIT
      trap 'exit 1' HUP INT TERM
      echo itera-ready
      cat >/dev/null
      exit 0
    fi
    exec 9>&-
  done
  exit ${LOCK_BUSY}
fi
echo itera-ready
exec cat >/dev/null`;

/**
 * The device-side lock file of flashes into one root ("/" on a real device): in /tmp, which every
 * login can write (the lock is taken before --sudo's steps), and removed when the flash ends.
 */
export function flashLockPath(prefix: string): string {
  return `/tmp/itera-flash-${createHash("sha256").update(prefix).digest("hex").slice(0, 12)}.lock`;
}

/**
 * One ssh connection to a device, shared by every step through a control socket (ControlMaster)
 * so the many small steps of a flash cost one handshake. The master is a child process we own: it
 * runs `cat` on the device until close() ends its stdin, so no background ssh outlives the flash.
 */
export class SshSession {
  private constructor(
    readonly target: SshTarget,
    private readonly controlDir: string,
    private master: ChildProcess | undefined,
  ) {}

  /** The ssh argv for a device-side argv (also what --dry-run prints). */
  static argv(t: SshTarget, remoteArgv: readonly string[], controlPath?: string): string[] {
    const mux = controlPath ? ["-o", `ControlPath=${controlPath}`, "-o", "ControlMaster=no"] : [];
    const argv = t.sudo ? ["sudo", "-n", ...remoteArgv] : [...remoteArgv];
    return [...sshOptions(t), ...mux, "--", t.destination, remoteCommand(argv)];
  }

  /**
   * Open the shared connection. With `lockPath`, its session holds `flock` on that file on the device
   * for as long as the flash runs, so two flashes to one device cannot interleave; the lock goes away
   * with the connection, so a flash that was killed never leaves a stale lock behind.
   */
  static async open(target: SshTarget, lockPath?: string): Promise<SshSession> {
    const controlDir = await mkdtemp(join(tmpdir(), "itera-ssh-"));
    const controlPath = join(controlDir, "cm");
    const master = spawn(
      "ssh",
      [
        ...sshOptions(target),
        "-o",
        "ControlMaster=yes",
        "-o",
        `ControlPath=${controlPath}`,
        "--",
        target.destination,
        remoteCommand(["sh", "-c", HOLD_SCRIPT, "sh", lockPath ?? ""]),
      ],
      { stdio: ["pipe", "pipe", "pipe"] },
    );
    let stderr = "";
    master.stderr!.on("data", (d: Buffer) => {
      stderr += d.toString();
    });
    let exitCode: number | null = null;
    let spawnError: NodeJS.ErrnoException | undefined;
    master.on("exit", (code) => {
      exitCode = code;
    });
    const ready = await new Promise<boolean>((resolve) => {
      let out = "";
      master.stdout!.on("data", (d: Buffer) => {
        out += d.toString();
        if (out.includes("itera-ready")) resolve(true);
      });
      master.on("close", () => resolve(false));
      master.on("error", (e) => {
        spawnError = e as NodeJS.ErrnoException;
        resolve(false);
      });
    });
    if (!ready) {
      await rm(controlDir, { recursive: true, force: true });
      if (spawnError?.code === "ENOENT") throw sshMissing();
      if (exitCode === LOCK_BUSY) {
        throw new IteraError("another itera flash to this device is running", {
          where: `${target.destination}:${lockPath}`,
          fix: "wait for it to finish, then flash again",
          exitCode: 3,
        });
      }
      throw sshError(stderr, target);
    }
    return new SshSession(target, controlDir, master);
  }

  get controlPath(): string {
    return join(this.controlDir, "cm");
  }

  /** Run an argv on the device; stdin may stream data (an upload). Never throws for a remote exit code. */
  exec(
    remoteArgv: readonly string[],
    opts: { stdin?: Readable | string; signal?: AbortSignal } = {},
  ): Promise<ExecResult> {
    const child = spawn("ssh", SshSession.argv(this.target, remoteArgv, this.controlPath), {
      stdio: ["pipe", "pipe", "pipe"],
      ...(opts.signal ? { signal: opts.signal } : {}),
    });
    let stdout = "";
    let stderr = "";
    child.stdout!.on("data", (d: Buffer) => {
      stdout += d.toString();
    });
    child.stderr!.on("data", (d: Buffer) => {
      stderr += d.toString();
    });
    // A device that hangs up mid-upload makes our writes fail with EPIPE: the exit code says what happened.
    child.stdin!.on("error", () => {});
    if (typeof opts.stdin === "string") child.stdin!.end(opts.stdin);
    else if (opts.stdin) {
      // A local read error must not leave the device waiting for the rest of the stream.
      opts.stdin.on("error", (e) => {
        stderr += `reading the local file failed: ${e.message}\n`;
        child.kill("SIGTERM");
      });
      opts.stdin.pipe(child.stdin!);
    } else child.stdin!.end();
    return new Promise((resolve, reject) => {
      child.on("error", (e) => {
        if ((e as NodeJS.ErrnoException).code === "ENOENT") reject(sshMissing());
        else if (e.name === "AbortError") {
          if (opts.stdin && typeof opts.stdin !== "string") opts.stdin.destroy();
          reject(e);
        } else reject(e);
      });
      child.on("close", (code, signal) => {
        if (signal && opts.signal?.aborted) return; // the AbortError handler above reports it
        resolve({ code: code ?? 1, stdout, stderr });
      });
    });
  }

  /** Run a fixed POSIX sh script on the device; values only ever arrive as quoted positional arguments. */
  async script(script: string, args: readonly string[]): Promise<ExecResult> {
    const r = await this.exec(["sh", "-s", "--", ...args], { stdin: script });
    if (r.code === 255) throw sshError(r.stderr, this.target);
    if (this.target.sudo && r.code === 1 && /sudo: a (password|terminal) is required/.test(r.stderr)) {
      throw new IteraError("sudo on the device asks for a password", {
        where: this.target.destination,
        fix: "allow the user passwordless sudo (NOPASSWD) or log in as root",
        exitCode: 3,
      });
    }
    return r;
  }

  async close(): Promise<void> {
    const master = this.master;
    this.master = undefined;
    if (master && master.exitCode === null && master.signalCode === null) {
      const exited = new Promise<void>((resolve) => master.on("close", () => resolve()));
      master.stdin!.end();
      // A device that vanished never answers the end of the session: do not wait on it forever.
      const stuck = setTimeout(() => master.kill("SIGTERM"), 15_000);
      await exited;
      clearTimeout(stuck);
    }
    await rm(this.controlDir, { recursive: true, force: true });
  }
}
