import { execFile, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { copyFile, mkdir, readdir, readFile, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { IteraError } from "../src/errors.js";
import { flashOverSsh, type SshFlashOptions } from "../src/deploy/flash-ssh.js";
import { flashRootfs } from "../src/deploy/rootfs.js";
import { appendArgv } from "../src/deploy/remote-scripts.js";
import { flashLockPath, SshSession } from "../src/deploy/ssh.js";
import { makeFixtureBundle, signingKeys } from "./fixtures/deploy/bundle.js";
import { newDevice as newTestDevice, sshFlashOptions } from "./fixtures/deploy/device.js";
import { freePort, startSshd, type TestSshd } from "./fixtures/deploy/sshd.js";
import { listTree } from "./fixtures/deploy/tree.js";
import { tempDir } from "./temp-dir.js";

const run = promisify(execFile);

let sshd: TestSshd;
let work: string;
const keys = signingKeys();
const bundles: Record<string, string> = {};

beforeAll(async () => {
  work = await tempDir("itera-deploy-ssh-");
  const out = join(work, "bundles");
  const [server] = await Promise.all([
    startSshd(),
    (async () => {
      bundles.v1 = await makeFixtureBundle(out, { version: "0.1.0", signWith: keys.privatePem });
      // Large enough for several 256 KiB upload chunks, so a copy can be cut in the middle.
      bundles.v2 = await makeFixtureBundle(out, {
        version: "0.2.0",
        padBytes: 1_500_000,
        signWith: keys.privatePem,
      });
      bundles.broken = await makeFixtureBundle(out, {
        version: "0.3.0",
        healthy: false,
        signWith: keys.privatePem,
      });
      bundles.arm64 = await makeFixtureBundle(out, {
        version: "0.4.0",
        arch: "arm64",
        profile: "rpi5",
        signWith: keys.privatePem,
      });
      // The unit as `itera build` writes it by default: the MQTT agent, its broker read from agent.json.
      bundles.agent = await makeFixtureBundle(join(out, "agent"), {
        version: "0.8.0",
        serviceArgs: "agent --config /etc/itera/agent.json",
        signWith: keys.privatePem,
      });
      bundles.unsigned = await makeFixtureBundle(join(out, "unsigned"), { version: "0.5.0", signWith: null });
      bundles.tamperedFile = await makeFixtureBundle(join(out, "t1"), {
        version: "0.6.0",
        signWith: keys.privatePem,
      });
      await writeFile(join(bundles.tamperedFile, "README.txt"), "changed after signing\n");
      bundles.tamperedManifest = await makeFixtureBundle(join(out, "t2"), {
        version: "0.7.0",
        signWith: keys.privatePem,
      });
      const mPath = join(bundles.tamperedManifest, "manifest.json");
      const m = JSON.parse(await readFile(mPath, "utf8"));
      m.target.arch = "arm64";
      await writeFile(mPath, JSON.stringify(m));
    })(),
  ]);
  sshd = server;
});

afterAll(async () => {
  await sshd?.stop();
});

const newDevice = (name: string) => newTestDevice(work, name);

function options(
  bundle: string,
  device: { prefix: string; systemctl: string },
  extra: Partial<SshFlashOptions> = {},
) {
  return sshFlashOptions(sshd, bundle, device, extra);
}

async function flashError(o: SshFlashOptions): Promise<IteraError> {
  const e = await flashOverSsh(o).then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(IteraError);
  return e as IteraError;
}

const releaseFiles = (v: string, agentBytes: number) => [
  `d opt/itera/releases/${v} 755`,
  `f opt/itera/releases/${v}/README.txt 644 ${`fixture bundle fixture-${v}-laptop-x64-4c\n`.length}`,
  `f opt/itera/releases/${v}/install.sh 755 64`,
  `f opt/itera/releases/${v}/itera-agent 755 ${agentBytes}`,
  `f opt/itera/releases/${v}/itera-agent.service 644`,
  `f opt/itera/releases/${v}/manifest.json 644`,
];

/** The listing with file sizes of unit and manifest left out (they vary with the bundle id). */
async function shape(prefix: string): Promise<string[]> {
  return (await listTree(prefix)).map((l) =>
    /(itera-agent\.service|manifest\.json) \d+ \d+$/.test(l) ? l.replace(/ \d+$/, "") : l,
  );
}

async function agentBytes(bundle: string) {
  return (await stat(join(bundle, "itera-agent"))).size;
}

describe("itera flash over ssh (real sshd on loopback, a prefix as the device's root)", () => {
  it("installs a release, then the next one, switching `current` and keeping the previous", async () => {
    const dev = await newDevice("install");
    const r1 = await flashOverSsh(options(bundles.v1!, dev));
    expect(r1).toMatchObject({ ok: true, result: "installed", previous: null, current: "0.1.0" });
    expect(r1.copy).toMatchObject({ bytes_resumed: 0 });
    expect(r1.copy!.bytes_sent).toBe(r1.copy!.bytes_total);
    expect(r1.health).toMatchObject({ ok: true, info: { manifest: { version: "0.1.0" } } });

    const r2 = await flashOverSsh(options(bundles.v2!, dev));
    expect(r2).toMatchObject({ ok: true, result: "installed", previous: "0.1.0", current: "0.2.0" });
    expect(await shape(dev.prefix)).toEqual([
      "d etc 755",
      "d etc/systemd 755",
      "d etc/systemd/system 755",
      "f etc/systemd/system/itera-agent.service 644",
      "d opt 755",
      "d opt/itera 755",
      "l opt/itera/current -> releases/0.2.0",
      "l opt/itera/previous -> releases/0.1.0",
      "d opt/itera/releases 755",
      ...releaseFiles("0.1.0", await agentBytes(bundles.v1!)),
      ...releaseFiles("0.2.0", await agentBytes(bundles.v2!)),
    ]);
    expect(await readFile(join(dev.prefix, "etc/systemd/system/itera-agent.service"), "utf8")).toContain(
      "fixture-0.2.0",
    );
    const once = [
      "daemon-reload",
      "enable itera-agent.service",
      "restart itera-agent.service",
      "is-active --quiet itera-agent.service",
    ];
    expect(await dev.calls()).toEqual([...once, ...once]);
  });

  it("rolls back by itself when the new release fails its health check", async () => {
    const dev = await newDevice("rollback");
    await flashOverSsh(options(bundles.v1!, dev));
    const before = await listTree(dev.prefix);
    const r = await flashOverSsh(options(bundles.broken!, dev));
    expect(r).toMatchObject({
      ok: false,
      result: "rolled-back",
      previous: "0.1.0",
      current: "0.1.0",
      rollback: { to: "0.1.0", healthy: true },
    });
    expect(r.health?.error).toMatch(/exit 1: itera-agent 0.3.0: cannot load the model/);
    expect(r.error?.error).toMatch(/release 0.3.0 failed its health check .* rolled back to 0.1.0/);
    // The device is exactly as before: current -> 0.1.0, its unit back, the failed release gone.
    expect(await listTree(dev.prefix)).toEqual(before);
    const calls = await dev.calls();
    expect(calls.slice(4)).toEqual([
      "daemon-reload",
      "enable itera-agent.service",
      "restart itera-agent.service",
      "is-active --quiet itera-agent.service",
      "daemon-reload",
      "restart itera-agent.service",
      "is-active --quiet itera-agent.service",
    ]);
  });

  it("still rolls back when an earlier flash of the same release was cut off before its health check", async () => {
    const dev = await newDevice("cut-off");
    await flashOverSsh(options(bundles.v1!, dev));
    // What such a flash leaves: 0.3.0 installed and current, never checked (the rootfs mode writes exactly that).
    await mkdir(join(dev.prefix, "bin"));
    await copyFile("/bin/dash", join(dev.prefix, "bin/sh"));
    await flashRootfs({ bundle: bundles.broken!, rootfs: dev.prefix });
    expect(await listTree(dev.prefix)).toContain("l opt/itera/previous -> releases/0.1.0");
    const r = await flashOverSsh(options(bundles.broken!, dev));
    expect(r).toMatchObject({
      result: "rolled-back",
      previous: "0.3.0",
      current: "0.1.0",
      rollback: { to: "0.1.0", healthy: true },
    });
    // The release was already there, identical: nothing was sent, its files were checked in place.
    expect(r.copy?.bytes_sent).toBe(0);
    expect(r.steps.filter((x) => x.status === "skipped").map((x) => x.id)).toEqual(["copy", "install"]);
    expect(r.steps.find((x) => x.id === "verify-device")?.status).toBe("done");
    const tree = await listTree(dev.prefix);
    expect(tree).toContain("l opt/itera/current -> releases/0.1.0");
    expect(tree.filter((l) => l.includes("0.3.0") || l.includes("previous"))).toEqual([]);
  });

  it("refuses to switch to an installed release whose files were damaged on the device", async () => {
    const dev = await newDevice("damaged");
    await mkdir(join(dev.prefix, "etc"), { recursive: true });
    await mkdir(join(dev.prefix, "bin"));
    await copyFile("/bin/dash", join(dev.prefix, "bin/sh"));
    await flashRootfs({ bundle: bundles.v1!, rootfs: dev.prefix });
    await writeFile(join(dev.prefix, "opt/itera/releases/0.1.0/README.txt"), "bit rot\n");
    const before = await listTree(dev.prefix);
    const e = await flashError(options(bundles.v1!, dev));
    expect(e.message).toBe("the installed release 0.1.0 is damaged on the device: README.txt");
    expect(await listTree(dev.prefix)).toEqual(before);
  });

  it("removes a failed first install completely (nothing to roll back to)", async () => {
    const dev = await newDevice("first-fail");
    const r = await flashOverSsh(options(bundles.broken!, dev));
    expect(r).toMatchObject({
      ok: false,
      result: "rolled-back",
      previous: null,
      current: null,
      rollback: { to: null },
    });
    expect(await listTree(dev.prefix)).toEqual([
      "d etc 755",
      "d etc/systemd 755",
      "d etc/systemd/system 755",
      "d opt 755",
      "d opt/itera 755",
      "d opt/itera/releases 755",
    ]);
    expect((await dev.calls()).slice(-2)).toEqual(["disable --now itera-agent.service", "daemon-reload"]);
  });

  it("resumes an interrupted copy instead of starting again", async () => {
    const dev = await newDevice("resume");
    await flashOverSsh(options(bundles.v1!, dev));
    const abort = new AbortController();
    const chunkBytes = 256 * 1024;
    const cut = flashOverSsh(
      options(bundles.v2!, dev, {
        chunkBytes,
        signal: abort.signal,
        // Cut the connection in the middle of the third chunk: two chunks are surely on the device.
        onProgress: (sent) => {
          if (sent > 2 * chunkBytes + 100_000) abort.abort();
        },
      }),
    );
    await expect(cut).rejects.toThrow(/abort/i);
    // The cut flash ended its connection, and with it its lock and the lock's file in the device's /tmp.
    expect(existsSync(flashLockPath(dev.prefix))).toBe(false);
    expect(await readFile(join(dev.prefix, "opt/itera/current").concat("/manifest.json"), "utf8")).toContain(
      '"version": "0.1.0"',
    );
    const r = await flashOverSsh(options(bundles.v2!, dev, { chunkBytes }));
    expect(r).toMatchObject({ ok: true, result: "installed", previous: "0.1.0", current: "0.2.0" });
    const { bytes_total, bytes_sent, bytes_resumed, bytes_linked } = r.copy!;
    expect(bytes_resumed).toBeGreaterThanOrEqual(2 * chunkBytes);
    // install.sh is the same in both fixture releases: linked from the current one, not sent.
    expect(r.copy!.linked).toEqual(["install.sh"]);
    expect(bytes_sent).toBe(bytes_total - bytes_resumed - bytes_linked);
    expect(bytes_sent).toBeLessThan(bytes_total);
    expect(r.steps.find((s) => s.id === "copy")?.detail).toMatch(/resumed after \d+ bytes/);
    // The resumed file is whole: the device checked every sha256 before installing it.
    expect(r.steps.find((s) => s.id === "verify-device")?.status).toBe("done");
  });

  it("refuses a bundle for the wrong architecture before copying anything", async () => {
    const dev = await newDevice("arch");
    await flashOverSsh(options(bundles.v1!, dev));
    const before = await listTree(dev.prefix);
    const e = await flashError(options(bundles.arm64!, dev));
    expect(e.message).toMatch(
      /wrong architecture: the bundle is for arm64 but the device is x86_64; nothing was copied/,
    );
    expect(await listTree(dev.prefix)).toEqual(before);
  });

  it("refuses when the device's disk is too small, before copying, and stays on its release", async () => {
    const dev = await newDevice("full");
    await run("mount", ["-t", "tmpfs", "-o", "size=1m", "tmpfs", dev.prefix]);
    try {
      await flashOverSsh(options(bundles.v1!, dev));
      const before = await listTree(dev.prefix);
      const e = await flashError(options(bundles.v2!, dev));
      expect(e.message).toMatch(/not enough free space on the device: \d+ KiB free under .*, \d+ KiB needed/);
      expect(await listTree(dev.prefix)).toEqual(before);
    } finally {
      await run("umount", [dev.prefix]);
    }
  });

  it("gives one clear error for an unreachable host, a wrong key and an unknown or changed host key", async () => {
    const dev = await newDevice("ssh-errors");
    await flashOverSsh(options(bundles.v1!, dev));
    const before = await listTree(dev.prefix);
    const next = options(bundles.v2!, dev);
    const port = await freePort(); // nothing listens there
    let e = await flashError({ ...next, target: { ...next.target, port } });
    expect(e.message).toMatch(/cannot reach the device: .*Connection refused/);
    e = await flashError({ ...next, target: { ...next.target, identity: sshd.wrongIdentity } });
    expect(e.message).toBe("ssh authentication failed (wrong user or key)");
    const empty = join(dev.dir, "known_hosts");
    await writeFile(empty, "");
    const unknown = { ...next, target: { ...next.target, knownHosts: empty } };
    e = await flashError(unknown);
    expect(e.message).toBe("the device's host key is not known");
    expect(e.fix).toMatch(/--accept-new-host-key/);
    const other = (await readFile(`${sshd.wrongIdentity}.pub`, "utf8")).split(" ").slice(0, 2).join(" ");
    const changed = join(dev.dir, "known_hosts_changed");
    await writeFile(changed, `[127.0.0.1]:${sshd.port} ${other}\n`);
    e = await flashError({
      ...next,
      target: { ...next.target, knownHosts: changed, acceptNewHostKey: true },
    });
    expect(e.message).toBe("the device's host key has CHANGED");
    // Every refusal left the device exactly on its previous release.
    expect(await listTree(dev.prefix)).toEqual(before);
    // First contact, explicitly accepted: the key is recorded and the flash goes through.
    const r = await flashOverSsh({ ...unknown, target: { ...unknown.target, acceptNewHostKey: true } });
    expect(r).toMatchObject({ ok: true, previous: "0.1.0", current: "0.2.0" });
    // ssh may hash the name (HashKnownHosts): ask ssh-keygen whether the host is in the file now.
    const found = await run("ssh-keygen", ["-F", `[127.0.0.1]:${sshd.port}`, "-f", empty]);
    expect(found.stdout).toMatch(/ssh-ed25519 /);
  });

  it("says so when this machine has no ssh client", async () => {
    const dev = await newDevice("no-ssh");
    const path = process.env.PATH;
    process.env.PATH = join(dev.dir, "empty-bin");
    try {
      expect((await flashError(options(bundles.v1!, dev))).message).toBe(
        "the ssh client is not installed on this machine",
      );
    } finally {
      process.env.PATH = path;
    }
  });

  it("sends a file again when its staged copy on the device is corrupt", async () => {
    const dev = await newDevice("corrupt");
    await flashOverSsh(options(bundles.v1!, dev));
    const abort = new AbortController();
    const chunkBytes = 256 * 1024;
    await expect(
      flashOverSsh(
        options(bundles.v2!, dev, {
          chunkBytes,
          signal: abort.signal,
          onProgress: (sent) => {
            if (sent > chunkBytes + 1000) abort.abort();
          },
        }),
      ),
    ).rejects.toThrow(/abort/i);
    // A bad sector in the partial upload: one byte flipped.
    const [stagingDir] = await readdir(join(dev.prefix, "opt/itera/.staging"));
    const staged = join(dev.prefix, "opt/itera/.staging", stagingDir!, "itera-agent");
    const bytes = await readFile(staged);
    bytes[100] = bytes[100]! ^ 0xff;
    await writeFile(staged, bytes);
    const r = await flashOverSsh(options(bundles.v2!, dev, { chunkBytes }));
    expect(r).toMatchObject({ ok: true, current: "0.2.0" });
    const agentBytes = (await stat(join(bundles.v2!, "itera-agent"))).size;
    expect(r.copy!.bytes_resumed).toBeGreaterThanOrEqual(chunkBytes);
    // The resumed tail, then the whole agent once more after the device's sha256 check failed.
    expect(r.copy!.bytes_sent).toBe(
      r.copy!.bytes_total - r.copy!.bytes_resumed - r.copy!.bytes_linked + agentBytes,
    );
    expect(
      (await readFile(join(dev.prefix, "opt/itera/current/itera-agent"))).equals(
        await readFile(join(bundles.v2!, "itera-agent")),
      ),
    ).toBe(true);
  });

  it("refuses unsigned and tampered bundles and a signer other than --key, before connecting", async () => {
    const dev = await newDevice("bad-bundles");
    await flashOverSsh(options(bundles.v1!, dev));
    const before = await listTree(dev.prefix);
    expect((await flashError(options(bundles.unsigned!, dev))).message).toBe("the bundle is not signed");
    expect((await flashError(options(bundles.tamperedFile!, dev))).message).toMatch(
      /^the bundle does not match its manifest \(tampered or corrupted\): README.txt has sha256 /,
    );
    expect((await flashError(options(bundles.tamperedManifest!, dev))).message).toMatch(
      /the signature does not match the manifest \(it was changed after signing\)/,
    );
    const stranger = signingKeys().publicPem;
    expect((await flashError(options(bundles.v2!, dev, { trustedKey: stranger }))).message).toMatch(
      /not signed by the trusted key/,
    );
    expect(await listTree(dev.prefix)).toEqual(before);
    const pinned = await flashOverSsh(options(bundles.v2!, dev, { trustedKey: keys.publicPem }));
    expect(pinned).toMatchObject({ ok: true, signer_pinned: true, current: "0.2.0" });
  });

  it("refuses to run while another flash holds the device's lock, and the lock dies with its connection", async () => {
    const dev = await newDevice("locked");
    // Another flash in progress, as the device sees it: a process holding the same flock.
    const holder = spawn(
      "flock",
      ["-n", flashLockPath(dev.prefix), "sh", "-c", "echo held; exec cat >/dev/null"],
      {
        stdio: ["pipe", "pipe", "inherit"],
      },
    );
    await new Promise((resolve) => holder.stdout!.once("data", resolve));
    try {
      const e = await flashError(options(bundles.v1!, dev));
      expect(e.message).toBe("another itera flash to this device is running");
      expect(await listTree(dev.prefix)).toEqual([]);
    } finally {
      const gone = new Promise((resolve) => holder.once("close", resolve));
      holder.stdin!.end();
      await gone;
    }
    expect(existsSync(flashLockPath(dev.prefix))).toBe(true);
    expect((await flashOverSsh(options(bundles.v1!, dev))).ok).toBe(true);
    // Released and removed: a flash leaves no lock file behind in the device's /tmp (here, this machine's).
    expect(existsSync(flashLockPath(dev.prefix))).toBe(false);
  });

  it("--sudo runs every device-side step through sudo -n", async () => {
    const dev = await newDevice("sudo");
    const o = options(bundles.v1!, dev);
    const target = { ...o.target, sudo: true };
    const r = await flashOverSsh({ ...o, target });
    expect(r).toMatchObject({ ok: true, current: "0.1.0" });
    // sudo sets SUDO_USER for what it runs: the stand-in systemctl and the agent's health check saw it.
    expect(await dev.calls()).toEqual([
      "sudo:root daemon-reload",
      "sudo:root enable itera-agent.service",
      "sudo:root restart itera-agent.service",
      "sudo:root is-active --quiet itera-agent.service",
    ]);
    expect(r.health?.info).toMatchObject({ sudo_user: "root" });
    // Uploads go through the same argv builder as the scripts.
    expect(SshSession.argv(target, appendArgv("/x")).at(-1)).toMatch(/^sudo -n sh -c /);
  });

  it("passes hostile paths to the device as data, never as shell code", async () => {
    const dev = await newDevice("quoting");
    const prefix = join(dev.dir, "a dir with 'quotes' and $(touch pwned) `touch pwned2`");
    await mkdir(prefix);
    const r = await flashOverSsh(options(bundles.v1!, { ...dev, prefix }));
    expect(r.ok).toBe(true);
    expect((await stat(join(prefix, "opt/itera/current/itera-agent"))).isFile()).toBe(true);
    await expect(stat(join(dev.dir, "pwned"))).rejects.toThrow();
    await expect(stat("pwned")).rejects.toThrow();
    await expect(stat(join(process.env.HOME ?? "/root", "pwned"))).rejects.toThrow();
  });

  it("--dry-run checks the bundle and lists every step without touching the device", async () => {
    const dev = await newDevice("dry");
    const r = await flashOverSsh(options(bundles.v1!, dev, { dryRun: true }));
    expect(r).toMatchObject({ ok: true, dry_run: true, result: "planned" });
    expect(r.steps.map((s) => `${s.id}:${s.status}`)).toEqual([
      "verify-local:done",
      "connect:planned",
      "probe:planned",
      "copy:planned",
      "verify-device:planned",
      "install:planned",
      "switch:planned",
      "unit:planned",
      "restart:planned",
      "health:planned",
      "rollback:planned",
      "cleanup:planned",
    ]);
    expect(r.steps.find((s) => s.id === "probe")?.detail).toMatch(/StrictHostKeyChecking=yes/);
    expect(await listTree(dev.prefix)).toEqual([]);
  });

  it("refuses a bundle whose agent would have no MQTT broker, before copying anything", async () => {
    const where = (dev: { prefix: string }) => `root@127.0.0.1:${join(dev.prefix, "etc/itera/agent.json")}`;
    const dev = await newDevice("no-broker");
    const e = await flashError(options(bundles.agent!, dev));
    expect(e.message).toBe(
      "the bundle's service runs the MQTT agent, which needs a broker, but /etc/itera/agent.json on the device has none; nothing was copied",
    );
    expect(e.where).toBe(where(dev));
    expect(e.fix).toMatch(/^pass --broker mqtt:\/\/HOST:1883 \(and --fleet NAME --device-id ID\), or write/);
    expect(e.exitCode).not.toBe(0);
    expect(await listTree(dev.prefix)).toEqual([]);
    expect(await dev.calls()).toEqual([""]);

    // A config the agent cannot use is no better: one without a broker, and one that is not JSON.
    for (const [name, text] of [
      ["fleet-only", '{"schema":"itera.agent-config/v1","fleet":"lab"}\n'],
      ["garbage", "{broker: mqtt://x}\n"],
    ] as const) {
      const d = await newDevice(`no-broker-${name}`);
      await mkdir(join(d.prefix, "etc/itera"), { recursive: true });
      await writeFile(join(d.prefix, "etc/itera/agent.json"), text);
      const before = await listTree(d.prefix);
      expect((await flashError(options(bundles.agent!, d))).where, name).toBe(where(d));
      expect(await listTree(d.prefix), name).toEqual(before);
    }

    // --fleet alone would replace the device's config (which has a broker) with one that has none.
    const replaced = await newDevice("no-broker-replaced");
    await mkdir(join(replaced.prefix, "etc/itera"), { recursive: true });
    const good = '{\n  "schema": "itera.agent-config/v1",\n  "broker": "mqtt://10.0.0.2:1883"\n}\n';
    await writeFile(join(replaced.prefix, "etc/itera/agent.json"), good);
    const fleetOnly = { schema: "itera.agent-config/v1", fleet: "lab" } as const;
    const e2 = await flashError(options(bundles.agent!, replaced, { config: fleetOnly }));
    expect(e2.message).toMatch(/has none and no --broker was given; nothing was copied$/);
    expect(await readFile(join(replaced.prefix, "etc/itera/agent.json"), "utf8")).toBe(good);
  });

  it("flashes the agent bundle when the device's agent.json has a broker, or with --broker", async () => {
    const configured = await newDevice("broker-on-device");
    await mkdir(join(configured.prefix, "etc/itera"), { recursive: true });
    // Written by hand over several lines: the probe reads it back on one line.
    const own =
      '{\n  "schema": "itera.agent-config/v1",\n  "broker": "mqtts://hub.lan:8883",\n  "device_id": "pi-9"\n}\n';
    await writeFile(join(configured.prefix, "etc/itera/agent.json"), own);
    const r1 = await flashOverSsh(options(bundles.agent!, configured));
    expect(r1).toMatchObject({ ok: true, result: "installed", current: "0.8.0" });
    expect(await readFile(join(configured.prefix, "etc/itera/agent.json"), "utf8")).toBe(own);

    const fresh = await newDevice("broker-given");
    const config = { schema: "itera.agent-config/v1", broker: "mqtt://10.0.0.2:1883", fleet: "lab" } as const;
    const r2 = await flashOverSsh(options(bundles.agent!, fresh, { config }));
    expect(r2).toMatchObject({ ok: true, result: "installed", current: "0.8.0" });
    expect(JSON.parse(await readFile(join(fresh.prefix, "etc/itera/agent.json"), "utf8"))).toEqual(config);

    // --dry-run connects to nothing; its probe step says what the check will need.
    const dry = await flashOverSsh(options(bundles.agent!, await newDevice("broker-dry"), { dryRun: true }));
    expect(dry.steps.find((s) => s.id === "probe")?.title).toMatch(
      /the agent's broker: .*etc\/itera\/agent\.json must have a "broker", else the flash is refused before copying$/,
    );
    const dryGiven = await flashOverSsh(options(bundles.agent!, fresh, { config, dryRun: true }));
    expect(dryGiven.steps.find((s) => s.id === "probe")?.title).toMatch(/the agent's broker: --broker/);
  });
});
