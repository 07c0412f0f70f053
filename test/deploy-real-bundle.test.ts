import { chmod, copyFile, mkdir, writeFile } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { flashOverSsh } from "../src/deploy/flash-ssh.js";
import { flashRootfs } from "../src/deploy/rootfs.js";
import { type BuildResult, buildBundle } from "../src/package/build.js";
import { signingKeys } from "./fixtures/deploy/bundle.js";
import { startSshd, type TestSshd } from "./fixtures/deploy/sshd.js";
import { listTree } from "./fixtures/deploy/tree.js";
import { fixtureModel } from "./package-helpers.js";
import { tempDir } from "./temp-dir.js";

/**
 * End to end: a real laptop-x64-4c bundle made by `itera build` (Node single executable with the
 * model and onnxruntime inside) flashed over a real sshd, and its own `itera-agent info --json` is
 * the health check. The build takes ~25 s on the 2-core CI machine (Node binaries come from the cache).
 */
let sshd: TestSshd;
let work: string;
// The bundle's unit runs the MQTT agent (`agent --config /etc/itera/agent.json`), so a flash needs a broker.
const config = { schema: "itera.agent-config/v1", broker: "mqtt://127.0.0.1:1883" } as const;
let built: BuildResult;
const keys = signingKeys();

beforeAll(async () => {
  work = await tempDir("itera-deploy-real-");
  await writeFile(join(work, "signing.key"), keys.privatePem);
  [sshd, built] = await Promise.all([
    startSshd(),
    buildBundle({
      model: fixtureModel().dir,
      profile: "laptop-x64-4c",
      quant: "fp32",
      sign: join(work, "signing.key"),
      out: join(work, "bundles"),
      version: "1.0.0",
      quiet: true,
    }),
  ]);
});

afterAll(async () => {
  await sshd?.stop();
});

describe("flashing a real bundle built by itera build", () => {
  it("installs over ssh and passes the agent's own health check", async () => {
    const prefix = join(work, "device");
    await mkdir(prefix);
    const systemctl = join(work, "systemctl");
    await writeFile(systemctl, "#!/bin/sh\nexit 0\n");
    await chmod(systemctl, 0o755);
    const r = await flashOverSsh({
      bundle: built.dir,
      trustedKey: keys.publicPem,
      target: {
        destination: "root@127.0.0.1",
        port: sshd.port,
        identity: sshd.identity,
        knownHosts: sshd.knownHosts,
      },
      prefix,
      systemctl,
      // The first start extracts onnxruntime and the model from the executable.
      healthTimeoutS: 120,
      healthSettleS: 0,
      keep: 3,
      config,
    });
    expect(r).toMatchObject({ ok: true, result: "installed", current: "1.0.0", signer_pinned: true });
    expect(r.copy!.bytes_sent).toBe(r.copy!.bytes_total);
    expect(r.copy!.bytes_total).toBeGreaterThan(50_000_000);
    expect(r.health?.info).toMatchObject({
      manifest: { bundle_id: built.manifest.bundle_id, version: "1.0.0" },
      profile: { name: "laptop-x64-4c" },
    });
    const tree = await listTree(prefix);
    expect(tree).toContain("l opt/itera/current -> releases/1.0.0");
    expect(tree).toContain(`f opt/itera/releases/1.0.0/itera-agent 755 ${built.sizes.executable}`);
  });

  it("writes it to a root file system", async () => {
    const root = join(work, "card");
    await mkdir(join(root, "etc"), { recursive: true });
    await mkdir(join(root, "bin"));
    await copyFile("/bin/dash", join(root, "bin/sh"));
    // Only the .tar.gz, as downloaded from a build server: flash unpacks it into a temp folder.
    const archive = join(work, "download", basename(built.tarball));
    await mkdir(dirname(archive));
    await copyFile(built.tarball, archive);
    const r = await flashRootfs({ bundle: archive, rootfs: root, trustedKey: keys.publicPem, config });
    expect(r).toMatchObject({ ok: true, result: "written-to-rootfs", current: "1.0.0" });
    expect(await listTree(root)).toContain(
      "l etc/systemd/system/multi-user.target.wants/itera-agent.service -> /etc/systemd/system/itera-agent.service",
    );
  });
});
