import {
  copyFile,
  chmod,
  lstat,
  mkdir,
  readFile,
  readlink,
  rename,
  rm,
  stat,
  statfs,
  symlink,
} from "node:fs/promises";
import { dirname, join } from "node:path";
import { IteraError } from "../errors.js";
import { sha256File, tempPathFor, writeDirAtomic, writeFileAtomic } from "../util/fs.js";
import { type AgentConfig, renderAgentConfig } from "./agent-config.js";
import { brokerNeedOfBundle, checkBroker } from "./broker-check.js";
import { type VerifiedBundle, verifyLocally } from "./bundle.js";
import { readElfArch, resolveInRoot } from "./elf.js";
import { deviceLayout, MANIFEST_FILE, releaseLinkTarget, UNIT_LINK_TARGET, UNIT_NAME } from "./layout.js";
import { type FlashReport, newReport, versionOfLink } from "./report.js";
import { StepLog } from "./steps.js";
import { spaceMarginBytes } from "./flash-ssh.js";

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

/** Replace a symlink atomically: create it under a temp name, then rename over the old one. */
async function atomicSymlink(target: string, linkPath: string): Promise<void> {
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
  if (
    !rootStat?.isDirectory() ||
    !(await stat(join(o.rootfs, "etc")).catch(() => undefined))?.isDirectory()
  ) {
    throw new IteraError(`${o.rootfs} is not a mounted root file system (no etc/ folder)`, {
      where: o.rootfs,
      fix: "mount the SD card's root partition (e.g. mount /dev/sdX2 /mnt/rootfs) and give that folder",
    });
  }
  await log.run(
    "check-rootfs",
    "check the root file system's architecture, free space and the agent's broker",
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
      let dir = L.base;
      while (!(await stat(dir).catch(() => undefined))) dir = dirname(dir);
      const fs = await statfs(dir);
      const free = fs.bavail * fs.bsize;
      const need = bundle.totalBytes + spaceMarginBytes(bundle.totalBytes);
      if (free < need) {
        throw new IteraError(
          `not enough free space on the card: ${Math.floor(free / 1024)} KiB free, ${Math.ceil(need / 1024)} KiB needed; nothing was written`,
          { where: o.rootfs, fix: "free space on the card's root partition (or grow it), then flash again" },
        );
      }
      return { ...elf, broker };
    },
    (c) => `${c.machine} (from /${c.probe}); broker: ${c.broker}`,
  );
  const previousLink = await readlink(L.current).catch(() => null);
  report.previous = versionOfLink(previousLink);
  report.current = report.previous;
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

  await log.run(
    "install",
    `copy the bundle to ${rel}`,
    async () => {
      const existing = await readFile(join(rel, MANIFEST_FILE)).catch(() => undefined);
      if (existing?.equals(await readFile(join(bundle.dir, MANIFEST_FILE)))) return "reused";
      if (existing && previousLink === releaseLinkTarget(m.version)) {
        throw new IteraError(`release ${m.version} is already on the card with different content`, {
          where: rel,
          fix: "give the new build its own version number",
        });
      }
      await writeDirAtomic(rel, async (tmp) => {
        for (const f of bundle.files) {
          const dest = join(tmp, f.name);
          await mkdir(dirname(dest), { recursive: true });
          await copyFile(join(bundle.dir, f.name), dest);
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
    (how) => (how === "reused" ? "identical release already there: reused" : "written and read back"),
  );
  if (o.config) {
    const cfg = o.config;
    await log.run("config", `write ${L.configFile}`, () =>
      writeFileAtomic(L.configFile, `${renderAgentConfig(cfg)}\n`),
    );
  }
  await log.run("switch", `point ${L.current} at releases/${m.version} (atomic rename)`, async () => {
    const target = releaseLinkTarget(m.version);
    if (previousLink && previousLink !== target) await atomicSymlink(previousLink, L.previous);
    await atomicSymlink(target, L.current);
  });
  report.current = m.version;
  await log.run("unit", `install ${L.unit} and enable it (multi-user.target.wants link)`, async () => {
    const unitSrc = join(rel, UNIT_NAME);
    await writeFileAtomic(L.unit, await readFile(unitSrc));
    await chmod(L.unit, 0o644);
    const link = await lstat(L.wantsLink).catch(() => undefined);
    if (!link?.isSymbolicLink() || (await readlink(L.wantsLink)) !== UNIT_LINK_TARGET) {
      await atomicSymlink(UNIT_LINK_TARGET, L.wantsLink);
    }
  });
  report.result = "written-to-rootfs";
  return report;
}
