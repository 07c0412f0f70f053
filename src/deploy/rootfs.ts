import {
  copyFile,
  chmod,
  link,
  lstat,
  mkdir,
  open,
  readFile,
  readlink,
  rename,
  rm,
  stat,
  statfs,
  symlink,
} from "node:fs/promises";
import { constants } from "node:fs";
import { dirname, isAbsolute, join } from "node:path";
import { manifestSchema } from "../bundle/manifest.js";
import { changedParts } from "../bundle/model-pack.js";
import { IteraError } from "../errors.js";
import { sha256File, tempPathFor, writeFileAtomic } from "../util/fs.js";
import { type AgentConfig, renderAgentConfig } from "./agent-config.js";
import { brokerNeedOfBundle, checkBroker } from "./broker-check.js";
import { type VerifiedBundle, verifyLocally } from "./bundle.js";
import { readElfArch, resolveInRoot } from "./elf.js";
import { deviceLayout, MANIFEST_FILE, releaseLinkTarget, UNIT_LINK_TARGET, UNIT_NAME } from "./layout.js";
import { type FlashReport, newReport, versionOfLink } from "./report.js";
import { StepLog } from "./steps.js";
import { reusableFiles, spaceMarginBytes } from "./flash-ssh.js";

export interface RootfsFlashOptions {
  bundle: string;
  trustedKey?: string;
  /** The mounted root file system of the SD card (its root partition). */
  rootfs: string;
  config?: AgentConfig;
  dryRun?: boolean;
  say?: (line: string) => void;
}

/** Programs whose ELF header tells the rootfs's architecture (first found wins). */
const ARCH_PROBES = ["bin/sh", "usr/bin/sh", "bin/ls", "usr/bin/ls", "bin/busybox"];

async function rootfsArch(rootfs: string) {
  for (const p of ARCH_PROBES) {
    const host = await resolveInRoot(rootfs, p);
    if (!host) continue;
    const elf = await readElfArch(host).catch(() => undefined);
    if (elf) return { probe: p, ...elf };
  }
  throw new IteraError("cannot tell the root file system's architecture: no ELF /bin/sh or /bin/ls in it", {
    where: rootfs,
    fix: "give the mounted ROOT partition of the SD card (the one with /bin, /etc, /usr), not the boot partition",
  });
}

/** A symlink met on the way to a path on the card, for the error that names it. */
interface Via {
  link: string;
  target: string;
}

function linkError(root: string, via: Via, why: string, fix: string): IteraError {
  return new IteraError(
    `the card's ${via.link} is a symlink to ${via.target}, which ${why}; nothing was written`,
    { where: join(root, via.link), fix },
  );
}

async function walkCard(
  root: string,
  hops: { n: number },
  base: string[],
  parts: string[],
  followLast: boolean,
  via?: Via,
): Promise<string[]> {
  const resolved = [...base];
  const names = parts.filter((p) => p !== "" && p !== ".");
  const shown = (...more: string[]) => `/${[...resolved, ...more].join("/")}`;
  for (let i = 0; i < names.length; i++) {
    const part = names[i]!;
    const last = i === names.length - 1;
    if (part === "..") {
      // A chroot would stay at its root; on this machine the same link leads out of the card.
      if (resolved.length === 0) {
        throw linkError(
          root,
          via ?? { link: shown(), target: parts.join("/") },
          "climbs above the card's root with '..'",
          "make that link point inside the card (an absolute target such as /data/opt is read inside the card), then flash again",
        );
      }
      resolved.pop();
      continue;
    }
    const s = await lstat(join(root, ...resolved, part)).catch(() => undefined);
    if (!s) {
      if (via) {
        throw linkError(
          root,
          via,
          "is not on the card (the card's links are resolved inside it, as on the device)",
          "make that link point at a folder on the card, or remove it, then flash again",
        );
      }
      // Not there yet: the flash makes it, and what follows, as plain folders and files.
      return [...resolved, ...names.slice(i)];
    }
    if (s.isSymbolicLink() && (!last || followLast)) {
      if (++hops.n > 40) {
        throw new IteraError(`too many levels of symlinks at the card's ${shown(part)}`, {
          where: join(root, ...resolved, part),
          fix: "remove the link loop on the card, then flash again",
        });
      }
      const target = await readlink(join(root, ...resolved, part));
      const inner = await walkCard(root, hops, isAbsolute(target) ? [] : resolved, target.split("/"), true, {
        link: shown(part),
        target,
      });
      resolved.splice(0, resolved.length, ...inner);
      if (!last && !(await stat(join(root, ...resolved))).isDirectory()) {
        throw new IteraError(`the card's ${shown()} (reached through a symlink) is not a folder`, {
          where: join(root, ...resolved),
          fix: "make it a folder (or a link to one on the card), then flash again",
        });
      }
      continue;
    }
    if (!last && !s.isDirectory()) {
      throw new IteraError(`the card's ${shown(part)} is not a folder`, {
        where: join(root, ...resolved, part),
        fix: "make it a folder (or a link to one on the card), then flash again",
      });
    }
    resolved.push(part);
  }
  return resolved;
}

/**
 * Where `path` (relative to the card's root) is on this machine, for the flash to write, link or
 * remove it (it runs as root). Every symlink on the way is resolved inside the card, as a chroot or
 * the booted device would (absolute targets from the card's root), so the result lies inside the
 * card and has no symlink left in it. A link followed must lead to something that is on the card; one
 * whose '..' climbs above the card's root is refused, not clamped: on this machine it leads out of
 * the card, and a real image has none. The last component is followed only with `followLast`;
 * otherwise it is what the flash replaces by rename (its own links: current, previous, the wants link).
 */
export async function cardPath(root: string, path: string, followLast = false): Promise<string> {
  return join(root, ...(await walkCard(root, { n: 0 }, [], path.split("/"), followLast)));
}

/** Read a file only when it is a plain file: a symlink there is never followed out of the card. */
async function readPlainFile(path: string): Promise<Buffer | undefined> {
  const fh = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW).catch(() => undefined);
  if (!fh) return undefined;
  try {
    return (await fh.stat()).isFile() ? await fh.readFile() : undefined;
  } finally {
    await fh.close();
  }
}

/**
 * Every path the flash writes, links or removes, resolved on the card before anything is written.
 * Followed when a link: the folders on the way, the release folder, the unit and agent.json (written
 * through an in-card link, as on the device). Replaced when a link: current, previous, the wants link.
 */
async function writablePaths(root: string, version: string, writesConfig: boolean) {
  const L = deviceLayout("");
  return {
    base: await cardPath(root, L.base, true),
    release: await cardPath(root, `${L.releases}/${version}`, true),
    current: await cardPath(root, L.current),
    previous: await cardPath(root, L.previous),
    // Only looked at when written: a card's own odd agent.json link is not the flash's business otherwise.
    config: writesConfig ? await cardPath(root, L.configFile, true) : undefined,
    unit: await cardPath(root, L.unit, true),
    wantsLink: await cardPath(root, L.wantsLink),
  };
}

/**
 * The card's current release (what `current` points at, resolved inside the card) and its manifest,
 * when it is a plain `releases/<version>` link to a folder with a valid manifest; else null.
 */
async function currentRelease(root: string, currentLink: string) {
  const target = await readlink(currentLink).catch(() => null);
  if (!target || !/^releases\/[A-Za-z0-9][A-Za-z0-9._+-]*$/.test(target)) return null;
  try {
    const dir = await cardPath(root, `opt/itera/${target}`, true);
    const text = await readPlainFile(join(dir, MANIFEST_FILE));
    const m = text ? manifestSchema.safeParse(JSON.parse(text.toString("utf8"))) : undefined;
    return m?.success ? { dir, manifest: m.data } : null;
  } catch {
    return null; // a card whose current release cannot be read: everything is written
  }
}

/** Hard-link `src` to `dest` when it is a plain file (never a symlink, which could lead off the card). */
async function linkPlainFile(src: string, dest: string): Promise<boolean> {
  const st = await lstat(src).catch(() => undefined);
  if (!st?.isFile()) return false;
  return link(src, dest).then(
    () => true,
    () => false,
  );
}

/**
 * Fill a release folder under a temp name beside it and move it into place only when complete. `dir`
 * comes from cardPath: its parents hold no symlink, and rm removes a link there, never its target.
 */
async function replaceDir(dir: string, fill: (tmp: string) => Promise<void>): Promise<void> {
  await mkdir(dirname(dir), { recursive: true });
  const tmp = tempPathFor(dir);
  await mkdir(tmp);
  try {
    await fill(tmp);
    await rm(dir, { recursive: true, force: true });
    await rename(tmp, dir);
  } catch (e) {
    await rm(tmp, { recursive: true, force: true });
    throw e;
  }
}

/** Replace a symlink atomically: create it under a temp name, then rename over the old one. */
export async function atomicSymlink(target: string, linkPath: string): Promise<void> {
  await mkdir(dirname(linkPath), { recursive: true });
  const tmp = tempPathFor(linkPath);
  await symlink(target, tmp);
  try {
    await rename(tmp, linkPath);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
}

/**
 * `itera flash BUNDLE --rootfs PATH`: install into a mounted SD-card root file system, offline:
 * the release folder, the `current` link, the unit enabled through its multi-user.target.wants
 * link (what `systemctl enable` would make) and etc/itera/agent.json. The agent starts at first boot;
 * there is no health check or rollback offline (the previous release, if any, stays installed).
 */
export async function flashRootfs(o: RootfsFlashOptions): Promise<FlashReport> {
  const log = new StepLog(o.say ?? (() => {}));
  const bundle = await verifyLocally(log, o.bundle, o.trustedKey);
  try {
    return await writeVerified(o, log, bundle);
  } finally {
    await bundle.dispose();
  }
}

async function writeVerified(
  o: RootfsFlashOptions,
  log: StepLog,
  bundle: VerifiedBundle,
): Promise<FlashReport> {
  const m = bundle.manifest;
  const L = deviceLayout(o.rootfs);
  const report = newReport("rootfs", o.rootfs, bundle, o.dryRun === true, log.steps);
  const rootStat = await stat(o.rootfs).catch(() => undefined);
  const etc = rootStat?.isDirectory() ? await resolveInRoot(o.rootfs, "etc") : undefined;
  if (!etc || !(await stat(etc)).isDirectory()) {
    throw new IteraError(`${o.rootfs} is not a mounted root file system (no etc/ folder)`, {
      where: o.rootfs,
      fix: "mount the SD card's root partition (e.g. mount /dev/sdX2 /mnt/rootfs) and give that folder",
    });
  }
  const { paths, current, reuse } = await log.run(
    "check-rootfs",
    "check the root file system's architecture, every path the flash writes, free space and the agent's broker",
    async () => {
      const elf = await rootfsArch(o.rootfs);
      if (elf.arch !== m.target.arch) {
        throw new IteraError(
          `wrong architecture: the bundle is for ${m.target.arch} but the root file system is ${elf.bits}-bit ${elf.machine} (from /${elf.probe}); nothing was written`,
          {
            where: o.rootfs,
            fix:
              elf.arch === undefined
                ? "write a 64-bit OS image to the card (e.g. Raspberry Pi OS 64-bit)"
                : `build a bundle for a ${elf.arch} profile`,
          },
        );
      }
      const brokerNeed = await brokerNeedOfBundle(bundle);
      const onCard = (path?: string) => (path ? join(o.rootfs, path) : o.rootfs);
      // The card's own symlinks resolve inside the card, never on this machine.
      const configOnCard = brokerNeed?.configPath
        ? await resolveInRoot(o.rootfs, brokerNeed.configPath)
        : undefined;
      const deviceConfig = configOnCard ? await readFile(configOnCard, "utf8").catch(() => null) : null;
      const broker = checkBroker(brokerNeed, o.config, deviceConfig, onCard);
      const paths = await writablePaths(o.rootfs, m.version, o.config !== undefined);
      const current = await currentRelease(o.rootfs, paths.current);
      const reuse = reusableFiles(bundle, current?.manifest ?? null);
      let dir = paths.base;
      while (!(await stat(dir).catch(() => undefined))) dir = dirname(dir);
      const fs = await statfs(dir);
      const free = fs.bavail * fs.bsize;
      // Linked files take no space on the card.
      const toWrite = bundle.totalBytes - reuse.bytes;
      const need = toWrite + spaceMarginBytes(toWrite);
      if (free < need) {
        throw new IteraError(
          `not enough free space on the card: ${Math.floor(free / 1024)} KiB free, ${Math.ceil(need / 1024)} KiB needed; nothing was written`,
          { where: o.rootfs, fix: "free space on the card's root partition (or grow it), then flash again" },
        );
      }
      return { ...elf, broker, paths, current, reuse };
    },
    (c) => `${c.machine} (from /${c.probe}); broker: ${c.broker}`,
  );
  const previousLink = await readlink(paths.current).catch(() => null);
  report.previous = versionOfLink(previousLink);
  report.current = report.previous;
  report.parts = changedParts(m, current?.manifest ?? null);
  const rel = join(L.releases, m.version);
  if (o.dryRun) {
    log.plan("install", `copy the bundle to ${rel}`, bundle.files.map((f) => f.name).join(", "));
    if (o.config)
      log.plan("config", `write ${L.configFile}`, renderAgentConfig(o.config).replace(/\n\s*/g, " "));
    log.plan(
      "switch",
      `point ${L.current} at releases/${m.version}`,
      "symlink under a temp name, then rename (atomic)",
    );
    log.plan("unit", `install ${L.unit} and enable it`, `${L.wantsLink} -> ${UNIT_LINK_TARGET}`);
    return report;
  }

  const linked: string[] = [];
  let written = 0;
  await log.run(
    "install",
    `copy the bundle to ${rel}`,
    async () => {
      const existing = await readPlainFile(join(paths.release, MANIFEST_FILE));
      if (existing?.equals(await readFile(join(bundle.dir, MANIFEST_FILE)))) return "reused";
      if (existing && previousLink === releaseLinkTarget(m.version)) {
        throw new IteraError(`release ${m.version} is already on the card with different content`, {
          where: rel,
          fix: "give the new build its own version number",
        });
      }
      await replaceDir(paths.release, async (tmp) => {
        for (const f of bundle.files) {
          const dest = join(tmp, f.name);
          await mkdir(dirname(dest), { recursive: true });
          // A file the current release has byte for byte (its runtime, when only the model pack
          // changed) is hard-linked, not written again; it is read back and hashed like the rest.
          if (
            current &&
            reuse.names.includes(f.name) &&
            (await linkPlainFile(join(current.dir, f.name), dest))
          ) {
            linked.push(f.name);
          } else {
            await copyFile(join(bundle.dir, f.name), dest);
            written += f.bytes;
          }
          await chmod(dest, f.name === "itera-agent" || f.name.endsWith(".sh") ? 0o755 : 0o644);
          // Read back what landed on the card: a failing card shows up here, not at boot.
          if ((await sha256File(dest)) !== f.sha256) {
            throw new IteraError(`${f.name} was not written correctly to the card`, {
              where: dest,
              fix: "check the SD card (it may be failing) and flash again",
            });
          }
        }
        await chmod(tmp, 0o755);
      });
      return "copied";
    },
    (how) =>
      how === "reused"
        ? "identical release already there: reused"
        : `written and read back${linked.length > 0 ? `; linked from the current release: ${linked.join(", ")}` : ""}`,
  );
  const linkedBytes = bundle.files.filter((f) => linked.includes(f.name)).reduce((n, f) => n + f.bytes, 0);
  report.copy = {
    bytes_total: bundle.totalBytes,
    bytes_sent: written,
    bytes_resumed: 0,
    bytes_linked: linkedBytes,
    linked,
  };
  if (o.config && paths.config) {
    const cfg = o.config;
    const configPath = paths.config;
    await log.run("config", `write ${L.configFile}`, () =>
      writeFileAtomic(configPath, `${renderAgentConfig(cfg)}\n`),
    );
  }
  await log.run("switch", `point ${L.current} at releases/${m.version} (atomic rename)`, async () => {
    const target = releaseLinkTarget(m.version);
    if (previousLink && previousLink !== target) await atomicSymlink(previousLink, paths.previous);
    await atomicSymlink(target, paths.current);
  });
  report.current = m.version;
  await log.run("unit", `install ${L.unit} and enable it (multi-user.target.wants link)`, async () => {
    // From the verified bundle: a reused release on the card is only known by its manifest.
    await writeFileAtomic(paths.unit, await readFile(join(bundle.dir, UNIT_NAME)));
    await chmod(paths.unit, 0o644);
    const link = await lstat(paths.wantsLink).catch(() => undefined);
    if (!link?.isSymbolicLink() || (await readlink(paths.wantsLink)) !== UNIT_LINK_TARGET) {
      await atomicSymlink(UNIT_LINK_TARGET, paths.wantsLink);
    }
  });
  report.result = "written-to-rootfs";
  return report;
}
