import { copyFile, mkdir, readdir, readFile, symlink, writeFile } from "node:fs/promises";
import { execFile } from "node:child_process";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { beforeAll, describe, expect, it } from "vitest";
import { agentConfigFromOptions } from "../src/deploy/agent-config.js";
import { readElfArch, resolveInRoot } from "../src/deploy/elf.js";
import { flashRootfs } from "../src/deploy/rootfs.js";
import { IteraError } from "../src/errors.js";
import { makeFixtureBundle, signingKeys } from "./fixtures/deploy/bundle.js";
import { listTree } from "./fixtures/deploy/tree.js";
import { tempDir } from "./temp-dir.js";

const run = promisify(execFile);
const keys = signingKeys();
let work: string;
let x64: string;
let x64next: string;
let arm64: string;
let agentOnly: string;

beforeAll(async () => {
  work = await tempDir("itera-deploy-rootfs-");
  x64 = await makeFixtureBundle(join(work, "b"), { version: "0.1.0", signWith: keys.privatePem });
  x64next = await makeFixtureBundle(join(work, "b"), { version: "0.2.0", signWith: keys.privatePem });
  agentOnly = await makeFixtureBundle(join(work, "agent"), {
    version: "0.8.0",
    serviceArgs: "agent --config /etc/itera/agent.json",
    signWith: keys.privatePem,
  });
  arm64 = await makeFixtureBundle(join(work, "b"), {
    version: "0.1.0",
    arch: "arm64",
    profile: "rpi5",
    signWith: keys.privatePem,
  });
});

/**
 * A root file system as an SD card's root partition has it (merged /usr): bin -> usr/bin and
 * usr/bin/sh -> dash, where dash is a real ELF file of the card's architecture (this machine's
 * /bin/dash for x64; an aarch64 ELF from the arm64 cross libraries for arm64). The arm64 card's sh
 * link is absolute, as on many images: it must resolve inside the card, not on this machine.
 */
async function makeRootfs(name: string, arch: "x64" | "arm64"): Promise<string> {
  const root = join(work, name);
  await mkdir(join(root, "etc"), { recursive: true });
  await mkdir(join(root, "usr/bin"), { recursive: true });
  await writeFile(join(root, "etc/hostname"), "raspberrypi\n");
  await copyFile(
    arch === "x64" ? "/bin/dash" : "/usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1",
    join(root, "usr/bin/dash"),
  );
  await symlink("usr/bin", join(root, "bin"));
  await symlink(arch === "x64" ? "dash" : "/usr/bin/dash", join(root, "usr/bin/sh"));
  return root;
}

async function rootfsError(p: Promise<unknown>): Promise<IteraError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(IteraError);
  return e as IteraError;
}

const config = agentConfigFromOptions({
  fleet: "lab",
  broker: "mqtt://broker.local:1883",
  deviceId: "pi-7",
})!;

describe("itera flash --rootfs (a mounted SD-card root file system, offline)", () => {
  it("produces exactly the expected tree", async () => {
    const root = await makeRootfs("card-x64", "x64");
    const r = await flashRootfs({ bundle: x64, rootfs: root, config });
    expect(r).toMatchObject({
      ok: true,
      mode: "rootfs",
      result: "written-to-rootfs",
      previous: null,
      current: "0.1.0",
    });
    const size = async (p: string) => (await readFile(p)).length;
    const rel = (f: string) => `opt/itera/releases/0.1.0/${f}`;
    const configText = await readFile(join(root, "etc/itera/agent.json"), "utf8");
    expect(await listTree(root)).toEqual([
      "l bin -> usr/bin",
      "d etc 755",
      "f etc/hostname 644 12",
      "d etc/itera 755",
      `f etc/itera/agent.json 644 ${configText.length}`,
      "d etc/systemd 755",
      "d etc/systemd/system 755",
      `f etc/systemd/system/itera-agent.service 644 ${await size(join(x64, "itera-agent.service"))}`,
      "d etc/systemd/system/multi-user.target.wants 755",
      "l etc/systemd/system/multi-user.target.wants/itera-agent.service -> /etc/systemd/system/itera-agent.service",
      "d opt 755",
      "d opt/itera 755",
      "l opt/itera/current -> releases/0.1.0",
      "d opt/itera/releases 755",
      "d opt/itera/releases/0.1.0 755",
      `f ${rel("README.txt")} 644 ${await size(join(x64, "README.txt"))}`,
      `f ${rel("install.sh")} 755 ${await size(join(x64, "install.sh"))}`,
      `f ${rel("itera-agent")} 755 ${await size(join(x64, "itera-agent"))}`,
      `f ${rel("itera-agent.service")} 644 ${await size(join(x64, "itera-agent.service"))}`,
      `f ${rel("manifest.json")} 644 ${await size(join(x64, "manifest.json"))}`,
      "d usr 755",
      "d usr/bin 755",
      `f usr/bin/dash 755 ${await size("/bin/dash")}`,
      "l usr/bin/sh -> dash",
    ]);
    expect(JSON.parse(configText)).toEqual({
      schema: "itera.agent-config/v1",
      fleet: "lab",
      broker: "mqtt://broker.local:1883",
      device_id: "pi-7",
    });
    // The installed agent is the bundle's, byte for byte, and runs.
    const { stdout } = await run(join(root, "opt/itera/current/itera-agent"), ["info", "--json"]);
    expect(JSON.parse(stdout)).toMatchObject({ manifest: { version: "0.1.0" } });
  });

  it("keeps the previous release when the next one is written, and reuses an identical one", async () => {
    const root = await makeRootfs("card-upgrade", "x64");
    await flashRootfs({ bundle: x64, rootfs: root });
    const r = await flashRootfs({ bundle: x64next, rootfs: root });
    expect(r).toMatchObject({ previous: "0.1.0", current: "0.2.0" });
    const tree = await listTree(root);
    expect(tree).toContain("l opt/itera/current -> releases/0.2.0");
    expect(tree).toContain("l opt/itera/previous -> releases/0.1.0");
    expect(tree).toContain("d opt/itera/releases/0.1.0 755");
    expect(tree.filter((l) => l.includes(".tmp"))).toEqual([]);
    const again = await flashRootfs({ bundle: x64next, rootfs: root });
    expect(again.steps.find((s) => s.id === "install")?.detail).toMatch(/reused/);
    expect(await listTree(root)).toEqual(tree);
  });

  it("reads the card's architecture through its own symlinks and refuses a wrong one, writing nothing", async () => {
    const armCard = await makeRootfs("card-arm64", "arm64");
    const ok = await flashRootfs({ bundle: arm64, rootfs: armCard });
    expect(ok.steps.find((s) => s.id === "check-rootfs")?.detail).toMatch(
      /^aarch64 \(from \/bin\/sh\); broker: /,
    );
    const x64Card = await makeRootfs("card-x64-wrong", "x64");
    const before = await listTree(x64Card);
    const e = await rootfsError(flashRootfs({ bundle: arm64, rootfs: x64Card }));
    expect(e.message).toMatch(
      /wrong architecture: the bundle is for arm64 but the root file system is 64-bit x86_64/,
    );
    expect(await listTree(x64Card)).toEqual(before);
    const e2 = await rootfsError(flashRootfs({ bundle: x64, rootfs: armCard }));
    expect(e2.message).toMatch(/the root file system is 64-bit aarch64/);
  });

  it("refuses a 32-bit ARM card, a folder that is not a root file system, and a card without room", async () => {
    const arm32 = join(work, "card-arm32");
    await mkdir(join(arm32, "etc"), { recursive: true });
    await mkdir(join(arm32, "bin"));
    // An ELF header of a 32-bit little-endian ARM executable (e_machine 0x28), as on 32-bit Raspberry Pi OS.
    const header = Buffer.alloc(64);
    header.writeUInt32BE(0x7f454c46, 0);
    header[4] = 1;
    header[5] = 1;
    header.writeUInt16LE(0x28, 18);
    await writeFile(join(arm32, "bin/sh"), header);
    expect(await readElfArch(join(arm32, "bin/sh"))).toEqual({ bits: 32, machine: "arm", arch: undefined });
    const e = await rootfsError(flashRootfs({ bundle: arm64, rootfs: arm32 }));
    expect(e.message).toMatch(/32-bit arm/);
    expect(e.fix).toMatch(/64-bit OS/);

    const boot = join(work, "bootfs");
    await mkdir(boot);
    await writeFile(join(boot, "config.txt"), "arm_64bit=1\n");
    expect((await rootfsError(flashRootfs({ bundle: x64, rootfs: boot }))).message).toMatch(
      /not a mounted root file system/,
    );
    const noShell = join(work, "card-empty");
    await mkdir(join(noShell, "etc"), { recursive: true });
    expect((await rootfsError(flashRootfs({ bundle: x64, rootfs: noShell }))).message).toMatch(
      /cannot tell the root file system's architecture/,
    );

    const small = await makeRootfs("card-full", "x64");
    const big = await makeFixtureBundle(join(work, "big"), {
      version: "0.9.0",
      padBytes: 2_000_000,
      signWith: keys.privatePem,
    });
    await mkdir(join(small, "opt"));
    await run("mount", ["-t", "tmpfs", "-o", "size=1m", "tmpfs", join(small, "opt")]);
    try {
      const before = await listTree(small);
      const full = await rootfsError(flashRootfs({ bundle: big, rootfs: small }));
      expect(full.message).toMatch(
        /not enough free space on the card: \d+ KiB free, \d+ KiB needed; nothing was written/,
      );
      expect(await listTree(small)).toEqual(before);
    } finally {
      await run("umount", [join(small, "opt")]);
    }
  });

  it("resolves paths inside the root, never escaping it, and stops on link loops", async () => {
    const root = await makeRootfs("card-links", "arm64");
    expect(await resolveInRoot(root, "bin/sh")).toBe(join(root, "usr/bin/dash"));
    // ".." above the card's root stays at its root, as it would on the device.
    await writeFile(join(root, "etc/passwd"), "root:x:0:0::/root:/bin/sh\n");
    await symlink("../../../../../../etc/passwd", join(root, "usr/bin/escape"));
    expect(await resolveInRoot(root, "usr/bin/escape")).toBe(join(root, "etc/passwd"));
    await symlink("loop-b", join(root, "usr/bin/loop-a"));
    await symlink("loop-a", join(root, "usr/bin/loop-b"));
    expect(await resolveInRoot(root, "usr/bin/loop-a")).toBeUndefined();
  });

  it("flashes from a .tar.gz alone (unpacked into a temp folder, removed after) and refuses a broken archive", async () => {
    const dl = join(work, "download");
    await mkdir(dl);
    const archive = join(dl, "fixture-0.2.0-laptop-x64-4c.tar.gz");
    await run("tar", ["-czf", archive, "-C", join(work, "b"), "fixture-0.2.0-laptop-x64-4c"]);
    const temps = async () => (await readdir(tmpdir())).filter((n) => n.startsWith("itera-bundle-")).length;
    const before = await temps();
    const root = await makeRootfs("card-archive", "x64");
    const r = await flashRootfs({ bundle: archive, rootfs: root });
    expect(r).toMatchObject({ ok: true, current: "0.2.0" });
    expect(await temps()).toBe(before);
    const garbage = join(dl, "garbage.tar.gz");
    await writeFile(garbage, "not a tar archive");
    const e = await rootfsError(flashRootfs({ bundle: garbage, rootfs: root }));
    expect(e.message).toMatch(/cannot unpack the bundle archive/);
    expect(await temps()).toBe(before);
  });

  it("refuses a Windows bundle and a manifest naming a file outside the bundle", async () => {
    const root = await makeRootfs("card-bad-bundles", "x64");
    const before = await listTree(root);
    const win = await makeFixtureBundle(join(work, "win"), {
      version: "0.1.0",
      platform: "win32",
      signWith: keys.privatePem,
    });
    expect((await rootfsError(flashRootfs({ bundle: win, rootfs: root }))).message).toBe(
      "the bundle targets win32; flash installs Linux bundles only",
    );
    // Signed by whoever made it (no --key): the names must still stay inside the release folder.
    await mkdir(join(work, "evil", "sub"), { recursive: true });
    const evil = await makeFixtureBundle(join(work, "evil", "sub"), {
      version: "6.6.6",
      signWith: signingKeys().privatePem,
      extraFiles: { "../outside.txt": "written next to the bundle\n" },
    });
    expect((await rootfsError(flashRootfs({ bundle: evil, rootfs: root }))).message).toBe(
      "the manifest lists an unsafe file name '../outside.txt'",
    );
    expect(await listTree(root)).toEqual(before);
  });

  it("--dry-run checks the bundle and the card and writes nothing", async () => {
    const root = await makeRootfs("card-dry", "x64");
    const before = await listTree(root);
    const r = await flashRootfs({ bundle: x64, rootfs: root, config, dryRun: true });
    expect(r.steps.map((s) => `${s.id}:${s.status}`)).toEqual([
      "verify-local:done",
      "check-rootfs:done",
      "install:planned",
      "config:planned",
      "switch:planned",
      "unit:planned",
    ]);
    expect(await listTree(root)).toEqual(before);
  });
});

describe("itera flash --rootfs of a bundle whose unit runs the MQTT agent", () => {
  it("refuses it when the card has no agent.json with a broker and no --broker is given, writing nothing", async () => {
    const root = await makeRootfs("card-no-broker", "x64");
    const before = await listTree(root);
    const e = await rootfsError(flashRootfs({ bundle: agentOnly, rootfs: root }));
    expect(e.message).toBe(
      "the bundle's service runs the MQTT agent, which needs a broker, but /etc/itera/agent.json on the device has none; nothing was copied",
    );
    expect(e.where).toBe(join(root, "etc/itera/agent.json"));
    expect(e.fix).toMatch(/^pass --broker/);
    expect(await listTree(root)).toEqual(before);
    // --dry-run runs the same check.
    await rootfsError(flashRootfs({ bundle: agentOnly, rootfs: root, dryRun: true }));
    expect(await listTree(root)).toEqual(before);
  });

  it("writes it when the card's agent.json has a broker, or with --broker", async () => {
    const configured = await makeRootfs("card-broker", "x64");
    await mkdir(join(configured, "etc/itera"));
    const own = '{"schema":"itera.agent-config/v1","broker":"mqtt://hub.lan:1883"}\n';
    await writeFile(join(configured, "etc/itera/agent.json"), own);
    const r1 = await flashRootfs({ bundle: agentOnly, rootfs: configured });
    expect(r1).toMatchObject({ ok: true, result: "written-to-rootfs", current: "0.8.0" });
    expect(r1.steps.find((s) => s.id === "check-rootfs")?.detail).toBe(
      "x86_64 (from /bin/sh); broker: the device's /etc/itera/agent.json",
    );
    expect(await readFile(join(configured, "etc/itera/agent.json"), "utf8")).toBe(own);

    const fresh = await makeRootfs("card-broker-given", "x64");
    const r2 = await flashRootfs({ bundle: agentOnly, rootfs: fresh, config });
    expect(r2).toMatchObject({ ok: true, result: "written-to-rootfs", current: "0.8.0" });
    expect(JSON.parse(await readFile(join(fresh, "etc/itera/agent.json"), "utf8"))).toEqual(config);
  });
});

describe("flash option checks", () => {
  it("reads from the unit's ExecStart whether its MQTT agent needs a broker from the device", async () => {
    const { brokerNeedOfUnit } = await import("../src/deploy/broker-check.js");
    const unit = (exec: string) => `[Service]\nType=simple\nExecStart=${exec}\nRestart=on-failure\n`;
    const cases: [string, { configPath: string | null } | null][] = [
      [
        "/opt/itera/current/itera-agent agent --config /etc/itera/agent.json",
        { configPath: "/etc/itera/agent.json" },
      ],
      [
        "-/opt/itera/current/itera-agent agent --config=/srv/my.json --fleet lab",
        { configPath: "/srv/my.json" },
      ],
      ["/opt/itera/current/itera-agent agent --fleet lab", { configPath: null }],
      ["/opt/itera/current/itera-agent agent --config /etc/itera/agent.json --broker mqtt://h:1883", null],
      ["/opt/itera/current/itera-agent agent --broker=mqtt://h:1883", null],
      ["/opt/itera/current/itera-agent serve --port 8080", null],
    ];
    for (const [exec, need] of cases) expect(brokerNeedOfUnit(unit(exec)), exec).toEqual(need);
    expect(brokerNeedOfUnit("[Service]\nType=simple\n")).toBeNull();
  });

  it("refuses bad agent settings, prefixes and ssh destinations with one clear error each", async () => {
    const { checkPrefix } = await import("../src/deploy/layout.js");
    const { checkDestination } = await import("../src/deploy/ssh.js");
    expect(agentConfigFromOptions({})).toBeUndefined();
    expect(() => agentConfigFromOptions({ fleet: "a/b" })).toThrow(/invalid --fleet: letters, digits/);
    expect(() => agentConfigFromOptions({ deviceId: "pi 7" })).toThrow(/invalid --device-id/);
    expect(() => agentConfigFromOptions({ broker: "broker:1883" })).toThrow(/invalid --broker: an MQTT URL/);
    expect(checkPrefix("/tmp/x/")).toBe("/tmp/x/");
    expect(() => checkPrefix("tmp/x")).toThrow(/invalid --prefix/);
    expect(() => checkPrefix("/tmp/../etc")).toThrow(/invalid --prefix/);
    expect(checkDestination("pi@raspberrypi.local")).toBe("pi@raspberrypi.local");
    expect(checkDestination("192.168.1.20")).toBe("192.168.1.20");
    for (const bad of ["-oProxyCommand=x", "pi@-oProxyCommand=x", "pi@host;rm", "a b@host", ""]) {
      expect(() => checkDestination(bad), bad).toThrow(/invalid ssh destination/);
    }
  });
});
