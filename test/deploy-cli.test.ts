import { execFile } from "node:child_process";
import { access, chmod, mkdir, readFile, symlink, writeFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { makeFixtureBundle, signingKeys } from "./fixtures/deploy/bundle.js";
import { freePort, startSshd, type TestSshd } from "./fixtures/deploy/sshd.js";
import { listTree } from "./fixtures/deploy/tree.js";
import { tempDir } from "./temp-dir.js";

/** The built CLI (`make test` builds dist/ first; run `npx tsc -p .` before running this file alone). */
const CLI = resolve("dist/cli/itera.js");

let sshd: TestSshd;
let work: string;
let xdg: string;
const keys = signingKeys();
let v1: string;
let broken: string;

beforeAll(async () => {
  await access(CLI).catch(() => {
    throw new Error(`${CLI} is missing: build first (npx tsc -p .)`);
  });
  work = await tempDir("itera-deploy-cli-");
  xdg = join(work, "config");
  sshd = await startSshd();
  v1 = await makeFixtureBundle(join(work, "b"), { version: "0.1.0", signWith: keys.privatePem });
  broken = await makeFixtureBundle(join(work, "b"), {
    version: "0.3.0",
    healthy: false,
    signWith: keys.privatePem,
  });
  await writeFile(join(work, "signer.pub"), keys.publicPem);
});

afterAll(async () => {
  await sshd?.stop();
});

function itera(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((done) => {
    execFile(
      "node",
      [CLI, ...args],
      { env: { ...process.env, XDG_CONFIG_HOME: xdg } },
      (err, stdout, stderr) => {
        done({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
      },
    );
  });
}

async function device(name: string) {
  const prefix = join(work, name, "root");
  await mkdir(prefix, { recursive: true });
  const systemctl = join(work, name, "systemctl");
  await writeFile(
    systemctl,
    `#!/bin/sh\necho "$*" >> ${JSON.stringify(join(work, name, "systemctl.log"))}\n`,
  );
  await chmod(systemctl, 0o755);
  return { prefix, systemctl };
}

/** The device's side: known host key, prefix root, stand-in systemctl, quick health check. */
const deviceArgs = (d: { prefix: string; systemctl: string }) => [
  "--known-hosts",
  sshd.knownHosts,
  "--prefix",
  d.prefix,
  "--systemctl",
  d.systemctl,
  "--health-settle",
  "0",
  "--health-timeout",
  "5",
];
const sshArgs = (d: { prefix: string; systemctl: string }) => [
  "--port",
  String(sshd.port),
  "--identity",
  sshd.identity,
  ...deviceArgs(d),
];

describe("itera flash / itera devices (the CLI)", () => {
  it("flashes over ssh, writes the agent config, records the device, and rolls back with exit code 4", async () => {
    const d = await device("pi-1");
    const ok = await itera([
      "flash",
      v1,
      "--ssh",
      "root@127.0.0.1",
      ...sshArgs(d),
      "--key",
      join(work, "signer.pub"),
      "--fleet",
      "lab",
      "--broker",
      "mqtt://127.0.0.1:1883",
      "--device-id",
      "pi-1",
      "--json",
    ]);
    expect(ok.code, ok.stderr).toBe(0);
    expect(JSON.parse(ok.stdout)).toMatchObject({
      ok: true,
      result: "installed",
      current: "0.1.0",
      signer_pinned: true,
    });
    expect(ok.stderr).toMatch(/\[copy\] sent \d+ bytes/);
    expect(ok.stderr).toMatch(/copy \(bytes\) \[#+\]/);
    expect(JSON.parse(await readFile(join(d.prefix, "etc/itera/agent.json"), "utf8"))).toEqual({
      schema: "itera.agent-config/v1",
      fleet: "lab",
      broker: "mqtt://127.0.0.1:1883",
      device_id: "pi-1",
    });
    const list = JSON.parse((await itera(["devices", "list", "--json"])).stdout);
    expect(list).toEqual([
      expect.objectContaining({
        name: "pi-1",
        ssh: "root@127.0.0.1",
        port: sshd.port,
        profile: "laptop-x64-4c",
        fleet: "lab",
        installed_version: "0.1.0",
        bundle_id: "fixture-0.1.0-laptop-x64-4c",
        last_flash: expect.objectContaining({ version: "0.1.0", result: "installed" }),
      }),
    ]);

    // --device takes the address, port and key from the inventory.
    const bad = await itera(["flash", broken, "--device", "pi-1", ...deviceArgs(d), "--json"]);
    expect(bad.code).toBe(4);
    expect(JSON.parse(bad.stdout)).toMatchObject({ ok: false, result: "rolled-back", current: "0.1.0" });
    expect(bad.stderr).toMatch(/error: release 0.3.0 failed its health check .*rolled back to 0.1.0/);
    expect(await readFile(join(d.prefix, "opt/itera/current/manifest.json"), "utf8")).toContain(
      '"version": "0.1.0"',
    );
    const after = JSON.parse((await itera(["devices", "--json"])).stdout)[0];
    expect(after).toMatchObject({
      installed_version: "0.1.0",
      last_flash: { version: "0.3.0", result: "rolled-back" },
    });
  });

  it("devices check connects, updates last seen and the installed version, and reports the unreachable", async () => {
    const d = await device("checked");
    await mkdir(join(d.prefix, "opt/itera/releases/0.9.0"), { recursive: true });
    await symlink("releases/0.9.0", join(d.prefix, "opt/itera/current"));
    const add = (name: string, port: number) =>
      itera([
        "devices",
        "add",
        name,
        "--ssh",
        "root@127.0.0.1",
        "--port",
        String(port),
        "--identity",
        sshd.identity,
      ]);
    expect((await add("check-ok", sshd.port)).code).toBe(0);
    expect((await add("check-down", await freePort())).code).toBe(0);
    const common = ["--known-hosts", sshd.knownHosts, "--prefix", d.prefix, "--json"];
    const one = await itera(["devices", "check", "check-ok", ...common]);
    expect(one.code, one.stderr).toBe(0);
    expect(JSON.parse(one.stdout)).toEqual([
      {
        name: "check-ok",
        reachable: true,
        machine: "x86_64",
        installed_version: "0.9.0",
        free_kb: expect.any(Number),
      },
    ]);
    const entry = JSON.parse((await itera(["devices", "--json"])).stdout).find(
      (x: { name: string }) => x.name === "check-ok",
    );
    expect(entry).toMatchObject({ installed_version: "0.9.0", last_seen: expect.stringMatching(/^\d{4}-/) });
    const both = await itera(["devices", "check", "check-ok", "check-down", ...common]);
    expect(both.code).toBe(3);
    expect(JSON.parse(both.stdout)[1]).toMatchObject({
      name: "check-down",
      reachable: false,
      error: expect.stringMatching(/cannot reach the device/),
    });
  });

  it("--service-manager none enables the unit by its link; --dry-run prints every step and changes nothing", async () => {
    const d = await device("plain");
    const dry = await itera([
      "flash",
      v1,
      "--ssh",
      "root@127.0.0.1",
      ...sshArgs(d),
      "--dry-run",
      "--no-inventory",
    ]);
    expect(dry.code, dry.stderr).toBe(0);
    for (const step of [
      "verify-local",
      "connect",
      "probe",
      "copy",
      "verify-device",
      "install",
      "switch",
      "unit",
      "restart",
      "health",
      "rollback",
      "cleanup",
    ]) {
      expect(dry.stderr).toContain(`[${step}]`);
    }
    expect(dry.stderr).toMatch(/mv -T/);
    expect(await listTree(d.prefix)).toEqual([]);
    const r = await itera([
      "flash",
      v1,
      "--ssh",
      "root@127.0.0.1",
      ...sshArgs(d),
      "--service-manager",
      "none",
      "--no-inventory",
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/\[restart\] skipped: no service manager/);
    expect(r.stderr).toMatch(/installed on root@127.0.0.1 and healthy/);
    expect(await listTree(d.prefix)).toContain(
      "l etc/systemd/system/multi-user.target.wants/itera-agent.service -> /etc/systemd/system/itera-agent.service",
    );
  });

  it("writes a card with --rootfs and records it under its device id", async () => {
    const root = join(work, "card");
    await mkdir(join(root, "etc"), { recursive: true });
    await mkdir(join(root, "bin"));
    await writeFile(join(root, "bin/sh"), await readFile("/bin/dash"));
    const r = await itera([
      "flash",
      v1,
      "--rootfs",
      root,
      "--device-id",
      "pi-card",
      "--fleet",
      "lab",
      "--json",
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({
      mode: "rootfs",
      result: "written-to-rootfs",
      current: "0.1.0",
    });
    const list = JSON.parse((await itera(["devices", "--json"])).stdout);
    expect(list.find((x: { name: string }) => x.name === "pi-card")).toMatchObject({
      installed_version: "0.1.0",
      last_flash: { result: "written-to-rootfs" },
    });
  });

  it("refuses, with exit code 1 and nothing copied, a bundle whose MQTT agent would have no broker", async () => {
    const d = await device("pi-no-broker");
    const agent = await makeFixtureBundle(join(work, "agent"), {
      version: "0.8.0",
      serviceArgs: "agent --config /etc/itera/agent.json",
      signWith: keys.privatePem,
    });
    const r = await itera(["flash", agent, "--ssh", "root@127.0.0.1", ...sshArgs(d)]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(
      "the bundle's service runs the MQTT agent, which needs a broker, but /etc/itera/agent.json on the device has none; nothing was copied",
    );
    expect(r.stderr).toContain(`where: root@127.0.0.1:${join(d.prefix, "etc/itera/agent.json")}`);
    expect(r.stderr).toMatch(/fix: +pass --broker mqtt:\/\/HOST:1883/);
    expect(r.stderr).not.toContain("[copy]");
    expect(await listTree(d.prefix)).toEqual([]);
  });

  it("gives one clear error and a non-zero exit for each bad input", async () => {
    const d = await device("bad");
    // The checks the command line itself makes (the library's own checks are tested in deploy-ssh/rootfs).
    const cases: [string[], RegExp][] = [
      [["flash", v1], /give exactly one of --ssh user@host, --device NAME or --rootfs PATH/],
      [["flash", v1, "--ssh", "-oProxyCommand=touch /tmp/x"], /invalid ssh destination/],
      [["flash", v1, "--ssh", "root@127.0.0.1", "--port", "http"], /invalid --port 'http'/],
      [
        ["flash", v1, "--ssh", "root@127.0.0.1", "--broker", "localhost:1883"],
        /invalid --broker: an MQTT URL/,
      ],
      [["flash", v1, "--ssh", "root@127.0.0.1", "--prefix", "relative/dir"], /invalid --prefix/],
      [
        ["flash", `${join(work, "nowhere")}.tar.gz`, "--ssh", "root@127.0.0.1"],
        /no bundle folder at .*nowhere: give an existing .tar.gz|no bundle folder at/,
      ],
      [["flash", v1, "--device", "ghost"], /no device 'ghost' in the inventory/],
    ];
    // Independent read-only runs: in parallel, to keep the suite short.
    const results = await Promise.all(
      cases.map(([args]) =>
        itera([
          ...args,
          ...(args[0] === "flash" && args.includes("--ssh") && !args.includes("--prefix")
            ? ["--prefix", d.prefix]
            : []),
        ]),
      ),
    );
    cases.forEach(([args, message], i) => {
      expect(results[i]!.code, args.join(" ")).not.toBe(0);
      expect(results[i]!.stderr, args.join(" ")).toMatch(message);
    });
    expect(await listTree(d.prefix)).toEqual([]);
  });

  it("devices add, list and remove; a damaged inventory is one clear error", async () => {
    const own = join(work, "own-config");
    const run = (args: string[]) =>
      new Promise<{ code: number; stdout: string; stderr: string }>((done) =>
        execFile(
          "node",
          [CLI, ...args],
          { env: { ...process.env, XDG_CONFIG_HOME: own } },
          (err, stdout, stderr) =>
            done({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
        ),
      );
    expect(
      (await run(["devices", "add", "pi-a", "--ssh", "pi@pi-a.local", "--profile", "rpi5", "--fleet", "lab"]))
        .code,
    ).toBe(0);
    expect((await run(["devices", "add", "pi-b", "--ssh", "pi@pi-b.local", "--port", "2222"])).code).toBe(0);
    const table = await run(["devices", "list"]);
    expect(table.stdout).toMatch(/\| pi-a +\| pi@pi-a.local +\| rpi5 +\| lab /);
    expect(table.stdout).toMatch(/\| pi-b +\| pi@pi-b.local:2222 /);
    expect((await run(["devices", "remove", "pi-a", "--json"])).stdout).toContain('"removed": "pi-a"');
    expect(
      JSON.parse((await run(["devices", "--json"])).stdout).map((x: { name: string }) => x.name),
    ).toEqual(["pi-b"]);
    await writeFile(
      join(own, "itera/devices.json"),
      '{"schema":"itera.devices/v1","devices":[{"name":"x","port":0}]}',
    );
    const damaged = await run(["devices", "list"]);
    expect(damaged.code).toBe(1);
    expect(damaged.stderr).toMatch(/invalid device inventory: field 'devices.0.port'/);
  });
});
