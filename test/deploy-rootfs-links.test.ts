import { copyFile, lstat, mkdir, readFile, readlink, rm, symlink, writeFile } from "node:fs/promises";
import { dirname, join, relative } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { registerFlash } from "../src/cli/commands/flash.js";
import { agentConfigFromOptions } from "../src/deploy/agent-config.js";
import { resolveInRoot } from "../src/deploy/elf.js";
import { flashRootfs } from "../src/deploy/rootfs.js";
import { IteraError } from "../src/errors.js";
import { sha256 } from "../src/util/fs.js";
import { makeFixtureBundle, signingKeys } from "./fixtures/deploy/bundle.js";
import { listTree } from "./fixtures/deploy/tree.js";
import { inProcessCli } from "./cli-helpers.js";
import { tempDir } from "./temp-dir.js";

/**
 * `itera flash --rootfs` on a card with hostile symlinks (issue #15): flash runs as root, so a link
 * on the card that leads to this machine must never be followed there. Each case plants one link at
 * a level the flash writes, links or removes, pointing at a sentinel folder outside the card, and
 * checks that the sentinel is byte for byte as it was, that the card is unchanged (refused before
 * anything is written) and that the error names the link.
 */

const keys = signingKeys();
let work: string;
let host: string;
let bundle: string;
let hostBefore: string[];

const config = agentConfigFromOptions({
  fleet: "lab",
  broker: "mqtt://broker.local:1883",
  deviceId: "pi-7",
})!;

/** Everything under dir: names, types, modes, link targets, and each file's inode and content hash. */
async function snapshot(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const line of await listTree(dir)) {
    if (!line.startsWith("f ")) {
      out.push(line);
      continue;
    }
    const rel = line.split(" ")[1]!;
    const s = await lstat(join(dir, rel));
    out.push(`${line} ino=${s.ino} ${sha256(await readFile(join(dir, rel)))}`);
  }
  return out;
}

/** A minimal x64 card: etc/, and /bin/sh -> dash for the architecture check. */
async function makeCard(name: string): Promise<string> {
  const card = join(work, "cards", name);
  await mkdir(join(card, "etc"), { recursive: true });
  await mkdir(join(card, "usr/bin"), { recursive: true });
  await copyFile("/bin/dash", join(card, "usr/bin/dash"));
  await symlink("usr/bin", join(card, "bin"));
  await symlink("dash", join(card, "usr/bin/sh"));
  return card;
}

async function refusal(p: Promise<unknown>): Promise<IteraError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(IteraError);
  return e as IteraError;
}

beforeAll(async () => {
  work = await tempDir("itera-rootfs-links-");
  bundle = await makeFixtureBundle(join(work, "b"), { version: "0.1.0", signWith: keys.privatePem });
  // The host side every hostile link points into: an old release (an rm -rf target), a systemd
  // folder with a unit and a wants folder, an agent.json, an etc.
  host = join(work, "host");
  await mkdir(join(host, "opt/itera/releases/0.1.0"), { recursive: true });
  await writeFile(join(host, "opt/itera/releases/0.1.0/manifest.json"), '{"host":"old release"}\n');
  await writeFile(join(host, "opt/itera/releases/0.1.0/itera-agent"), "#!/bin/sh\necho host\n");
  await symlink("releases/0.1.0", join(host, "opt/itera/current"));
  await mkdir(join(host, "systemd/system/multi-user.target.wants"), { recursive: true });
  await writeFile(join(host, "systemd/system/itera-agent.service"), "[Unit]\nDescription=host's own\n");
  await writeFile(join(host, "systemd/system/multi-user.target.wants/keep.service"), "[Unit]\n");
  await mkdir(join(host, "itera"));
  await writeFile(join(host, "itera/agent.json"), '{"host":"own config"}\n');
  await mkdir(join(host, "etc"));
  await writeFile(join(host, "etc/hostname"), "host\n");
  hostBefore = await snapshot(host);
});

/** Paths the flash goes through or writes (card side) and the host folder a hostile link there names. */
const LEVELS: [onCard: string, onHost: string][] = [
  ["opt", "opt"],
  ["opt/itera", "opt/itera"],
  ["opt/itera/releases", "opt/itera/releases"],
  ["opt/itera/releases/0.1.0", "opt/itera/releases/0.1.0"],
  ["etc/itera", "itera"],
  ["etc/itera/agent.json", "itera/agent.json"],
  ["etc/systemd", "systemd"],
  ["etc/systemd/system", "systemd/system"],
  ["etc/systemd/system/multi-user.target.wants", "systemd/system/multi-user.target.wants"],
  ["etc/systemd/system/itera-agent.service", "systemd/system/itera-agent.service"],
];

describe("itera flash --rootfs never follows the card's links onto this machine", () => {
  for (const [onCard, onHost] of LEVELS) {
    for (const kind of ["absolute", "..-relative"] as const) {
      it(`refuses ${onCard} -> the host's ${onHost} (${kind}), writing nothing on the card or the host`, async () => {
        const card = await makeCard(`${onCard.replaceAll("/", "_")}-${kind}`);
        const link = join(card, onCard);
        await mkdir(dirname(link), { recursive: true });
        const target = kind === "absolute" ? join(host, onHost) : relative(dirname(link), join(host, onHost));
        if (kind === "..-relative") expect(target.startsWith("../")).toBe(true);
        await symlink(target, link);
        const cardBefore = await snapshot(card);
        for (const dryRun of [true, false]) {
          const e = await refusal(flashRootfs({ bundle, rootfs: card, config, dryRun }));
          expect(e.message).toBe(
            `the card's /${onCard} is a symlink to ${target}, which ${
              kind === "absolute"
                ? "is not on the card (the card's links are resolved inside it, as on the device)"
                : "climbs above the card's root with '..'"
            }; nothing was written`,
          );
          expect(e.where).toBe(link);
          expect(e.fix).toMatch(/point inside the card|point at a folder on the card/);
          expect(await snapshot(card)).toEqual(cardBefore);
          expect(await snapshot(host)).toEqual(hostBefore);
        }
      });
    }
  }

  it("refuses a card whose etc is a link to this machine's, as not a root file system", async () => {
    for (const kind of ["absolute", "..-relative"] as const) {
      const card = await makeCard(`etc-${kind}`);
      await rm(join(card, "etc"), { recursive: true });
      await symlink(
        kind === "absolute" ? join(host, "etc") : relative(card, join(host, "etc")),
        join(card, "etc"),
      );
      const cardBefore = await snapshot(card);
      const e = await refusal(flashRootfs({ bundle, rootfs: card, config }));
      expect(e.message).toBe(`${card} is not a mounted root file system (no etc/ folder)`);
      expect(await snapshot(card)).toEqual(cardBefore);
      expect(await snapshot(host)).toEqual(hostBefore);
    }
  });

  it("refuses a link to a link that leads off the card, a link loop, and a file where a folder goes", async () => {
    const chained = await makeCard("chained");
    await mkdir(join(chained, "data"));
    await symlink("/data/opt", join(chained, "opt"));
    await symlink(join(host, "opt"), join(chained, "data/opt"));
    const e1 = await refusal(flashRootfs({ bundle, rootfs: chained, config }));
    expect(e1.message).toMatch(
      /^the card's \/data\/opt is a symlink to .*\/host\/opt, which is not on the card/,
    );

    const loop = await makeCard("loop");
    await symlink("/opt", join(loop, "opt"));
    const e2 = await refusal(flashRootfs({ bundle, rootfs: loop, config }));
    expect(e2.message).toBe("too many levels of symlinks at the card's /opt");

    const file = await makeCard("file");
    await writeFile(join(file, "opt"), "not a folder\n");
    const before = await snapshot(file);
    const e3 = await refusal(flashRootfs({ bundle, rootfs: file, config }));
    expect(e3.message).toBe("the card's /opt is not a folder");
    expect(e3.where).toBe(join(file, "opt"));
    expect(await snapshot(file)).toEqual(before);
    expect(await snapshot(host)).toEqual(hostBefore);
  });

  it("replaces (never follows) its own links when they point off the card: current, previous, the wants link", async () => {
    const card = await makeCard("own-links");
    await mkdir(join(card, "opt/itera/releases/0.0.9"), { recursive: true });
    await symlink("releases/0.0.9", join(card, "opt/itera/current"));
    await symlink(join(host, "opt/itera/releases/0.1.0"), join(card, "opt/itera/previous"));
    const wants = join(card, "etc/systemd/system/multi-user.target.wants");
    await mkdir(wants, { recursive: true });
    await symlink(join(host, "systemd/system/itera-agent.service"), join(wants, "itera-agent.service"));
    const r = await flashRootfs({ bundle, rootfs: card, config });
    expect(r).toMatchObject({ ok: true, previous: "0.0.9", current: "0.1.0" });
    expect(await readlink(join(card, "opt/itera/previous"))).toBe("releases/0.0.9");
    expect(await readlink(join(wants, "itera-agent.service"))).toBe(
      "/etc/systemd/system/itera-agent.service",
    );

    // A current pointing off the card is replaced too (its old target is only recorded as previous).
    const card2 = await makeCard("own-current");
    await mkdir(join(card2, "opt/itera"), { recursive: true });
    await symlink(join(host, "opt/itera/releases/0.1.0"), join(card2, "opt/itera/current"));
    expect(await flashRootfs({ bundle, rootfs: card2, config })).toMatchObject({
      ok: true,
      current: "0.1.0",
    });
    expect(await readlink(join(card2, "opt/itera/current"))).toBe("releases/0.1.0");
    expect((await lstat(join(card2, "opt/itera/releases/0.1.0"))).isDirectory()).toBe(true);
    expect(await snapshot(host)).toEqual(hostBefore);
  });

  it("follows the card's absolute links inside the card, as the device does at boot", async () => {
    const card = await makeCard("in-card-links");
    // /opt and /etc/itera on a data folder, the wants folder shared from /usr/lib: all absolute, all
    // naming the card's own paths (which do not exist on this machine).
    await mkdir(join(card, "data/opt"), { recursive: true });
    await symlink("/data/opt", join(card, "opt"));
    await mkdir(join(card, "data/itera"), { recursive: true });
    await writeFile(join(card, "data/itera/agent.json"), "{}\n");
    await mkdir(join(card, "etc/systemd/system"), { recursive: true });
    await symlink("/data/itera", join(card, "etc/itera"));
    await mkdir(join(card, "usr/lib/systemd/system/multi-user.target.wants"), { recursive: true });
    await symlink(
      "/usr/lib/systemd/system/multi-user.target.wants",
      join(card, "etc/systemd/system/multi-user.target.wants"),
    );
    // A relative link that stays on the card: the unit file kept in /usr/lib.
    await writeFile(join(card, "usr/lib/systemd/system/itera-agent.service"), "[Unit]\nold\n");
    await symlink(
      "../../../usr/lib/systemd/system/itera-agent.service",
      join(card, "etc/systemd/system/itera-agent.service"),
    );
    const r = await flashRootfs({ bundle, rootfs: card, config });
    expect(r).toMatchObject({ ok: true, result: "written-to-rootfs", current: "0.1.0" });
    const tree = await listTree(card);
    // The card's links are still links, and everything landed where they lead on the card.
    for (const line of [
      "l opt -> /data/opt",
      "l etc/itera -> /data/itera",
      "l etc/systemd/system/multi-user.target.wants -> /usr/lib/systemd/system/multi-user.target.wants",
      "l etc/systemd/system/itera-agent.service -> ../../../usr/lib/systemd/system/itera-agent.service",
      "l data/opt/itera/current -> releases/0.1.0",
      "d data/opt/itera/releases/0.1.0 755",
      "l usr/lib/systemd/system/multi-user.target.wants/itera-agent.service -> /etc/systemd/system/itera-agent.service",
    ]) {
      expect(tree).toContain(line);
    }
    expect(JSON.parse(await readFile(join(card, "data/itera/agent.json"), "utf8"))).toEqual(config);
    expect(await readFile(join(card, "usr/lib/systemd/system/itera-agent.service"), "utf8")).toBe(
      await readFile(join(bundle, "itera-agent.service"), "utf8"),
    );
    // What the device sees at boot: the wants link reaches the unit, current reaches the agent.
    expect(await resolveInRoot(card, "etc/systemd/system/multi-user.target.wants/itera-agent.service")).toBe(
      join(card, "usr/lib/systemd/system/itera-agent.service"),
    );
    expect(await resolveInRoot(card, "opt/itera/current/itera-agent")).toBe(
      join(card, "data/opt/itera/releases/0.1.0/itera-agent"),
    );
    expect(await readFile(join(card, "data/opt/itera/releases/0.1.0/itera-agent"))).toEqual(
      await readFile(join(bundle, "itera-agent")),
    );
    expect(tree.filter((l) => l.includes(".tmp"))).toEqual([]);
    expect(await snapshot(host)).toEqual(hostBefore);
  });
});

describe("itera flash --rootfs on a bad bundle or key", () => {
  it("refuses a bundle file that is a symlink to this machine (its content would be copied onto the card)", async () => {
    const b = await makeFixtureBundle(join(work, "linked"), { version: "0.3.0", signWith: keys.privatePem });
    // The host file has exactly the content the manifest lists, so only the link gives it away.
    const hostCopy = join(work, "README-copy.txt");
    await copyFile(join(b, "README.txt"), hostCopy);
    await rm(join(b, "README.txt"));
    await symlink(hostCopy, join(b, "README.txt"));
    const card = await makeCard("linked-bundle");
    const before = await snapshot(card);
    const e = await refusal(flashRootfs({ bundle: b, rootfs: card }));
    expect(e.message).toBe(
      `the bundle does not match its manifest (tampered or corrupted): README.txt is a symbolic link (to ${hostCopy}), not a file: a bundle holds plain files only`,
    );
    expect(await snapshot(card)).toEqual(before);
  });

  it("says a --key that is not an Ed25519 public key is not one, before touching the card", async () => {
    const flash = inProcessCli(registerFlash);
    const card = await makeCard("bad-key");
    const before = await snapshot(card);
    const r = await flash(
      "flash",
      bundle,
      "--rootfs",
      card,
      "--key",
      join(host, "etc/hostname"),
      "--no-inventory",
    );
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(
      `error: ${join(host, "etc/hostname")} is not an Ed25519 public key (neither a PEM public key nor base64 SPKI)`,
    );
    expect(r.stderr).toMatch(/fix: {3}give the signer's public key file: the \.pub that `itera keygen` made/);
    expect(await snapshot(card)).toEqual(before);
  });
});
