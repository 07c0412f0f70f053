/**
 * A fleet of real agents for `itera fleet update` tests: a real Mosquitto, each device installed first
 * by `itera flash --rootfs`'s code into a temporary root, each agent run from that root by a small
 * supervisor loop like systemd's Restart=always with the update guard as ExecStartPre. Test-only seam:
 * a release's `itera-agent` is a launcher script that runs the development agent
 * (dist/cli/itera-agent.js on the house micro model) with that release's version (ITERA_VERSION), so
 * a restart into a new release really runs a new process reporting a new version.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { copyFile, mkdir, readlink, rm, writeFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import mqtt, { type MqttClient } from "mqtt";
import { flashRootfs } from "../src/deploy/rootfs.js";
import { type BirthPayload, PROTOCOL_VERSION, type UpdateParams } from "../src/protocol/schemas.js";
import { jobTopic } from "../src/protocol/topics.js";
import { makeFixtureBundle, signingKeys } from "./fixtures/deploy/bundle.js";
import { makePartsBundle } from "./fixtures/deploy/parts-bundle.js";
import { Mosquitto, until } from "./mqtt-helpers.js";
import { tempDir } from "./temp-dir.js";

const AGENT = resolve("dist/cli/itera-agent.js");
const ITERA = resolve("dist/cli/itera.js");
const MODEL = resolve("models/itera-lite-micro");

const sha256Hex = (data: Buffer) => createHash("sha256").update(data).digest("hex");

/** The test-only launcher a release ships as its executable (see the header). */
export function launcher(version: string): string {
  return [
    "#!/bin/sh",
    `# test-only launcher: the development agent, reporting version ${version}`,
    `ITERA_VERSION=${version} exec "${process.execPath}" "${AGENT}" "$@" --model "${MODEL}" --profile rpi4 --meter tdp`,
    "",
  ].join("\n");
}

/**
 * The runtime stand-in of itera.bundle/v2 fixtures (test/fixtures/deploy/parts-bundle.ts): the same
 * bytes in every release (so releases share one runtime id), reporting the version of the
 * manifest.json beside it and running the development agent on the release's own model pack, as a
 * real v2 executable loads `model/` beside it. `flavour` makes another runtime (other bytes).
 */
export function releaseLauncher(flavour = "a"): string {
  return [
    "#!/bin/sh",
    `# test-only runtime ${flavour}: the development agent on this release's model pack`,
    'here=$(dirname -- "$0")',
    'v=$(sed -n \'s/^  "version": "\\(.*\\)",$/\\1/p\' "$here/manifest.json" | head -n 1)',
    `ITERA_VERSION=$v exec "${process.execPath}" "${AGENT}" "$@" --model "$here/model" --profile rpi4 --meter tdp`,
    "",
  ].join("\n");
}

/** A release whose agent cannot start (as one whose model fails to load). */
export function brokenLauncher(version: string): string {
  return `#!/bin/sh\necho "itera-agent ${version}: cannot load the model" >&2\nexit 1\n`;
}

/** Like systemd's Restart=always, with the update guard as ExecStartPre. */
const SUPERVISOR = `#!/bin/sh
base="$1"; shift
while :; do
  [ -x "$base/update-guard" ] && "$base/update-guard" "$base"
  "$base/current/itera-agent" "$@"
  echo "agent exited $?" >&2
  sleep 0.3
done
`;

export function itera(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((res) => {
    execFile(process.execPath, [ITERA, ...args], { maxBuffer: 16 * 2 ** 20 }, (e, stdout, stderr) =>
      res({ code: e ? ((e as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
  });
}

/** The devices of one test file, installed with release 1.0.0 and online once `create` returns. */
export class InstalledFleet {
  readonly roots = new Map<string, string>();
  readonly births = new Map<string, BirthPayload>();
  readonly messages: Array<{ topic: string; json: unknown }> = [];
  readonly keys = signingKeys();
  private readonly supervisors = new Map<string, ChildProcess & { log: () => string }>();
  private observer!: MqttClient;
  pub!: string;

  private constructor(
    readonly broker: Mosquitto,
    readonly dir: string,
    readonly fleet: string,
    readonly devices: string[],
    private readonly telemetryS: number,
  ) {}

  /** `first`: the release every device is installed with (default: bundle("1.0.0", launcher("1.0.0"))). */
  static async create(
    fleet: string,
    devices: string[],
    telemetryS = 30,
    first?: (f: InstalledFleet) => Promise<string>,
  ): Promise<InstalledFleet> {
    const f = new InstalledFleet(
      await Mosquitto.create(),
      await tempDir(`itera-${fleet}-`),
      fleet,
      devices,
      telemetryS,
    );
    await f.setUp(first);
    return f;
  }

  private async setUp(firstBundle?: (f: InstalledFleet) => Promise<string>): Promise<void> {
    this.pub = join(this.dir, "signer.pub");
    await writeFile(this.pub, this.keys.publicPem);
    await writeFile(join(this.dir, "supervisor.sh"), SUPERVISOR);
    const first = await (firstBundle ?? ((f) => f.bundle("1.0.0", launcher("1.0.0"))))(this);
    for (const d of this.devices) {
      // A device root as an SD card would hold it: etc/ and a real ELF /bin/sh for the architecture.
      const root = join(this.dir, "roots", d);
      await mkdir(join(root, "etc"), { recursive: true });
      await mkdir(join(root, "bin"), { recursive: true });
      await copyFile("/bin/sh", join(root, "bin/sh"));
      await flashRootfs({ bundle: first, rootfs: root, trustedKey: this.keys.publicPem });
      this.roots.set(d, root);
    }
    this.observer = await mqtt.connectAsync(this.broker.url, { protocolVersion: 5 });
    this.observer.on("message", (topic, payload) => {
      let json: unknown = null;
      try {
        json = JSON.parse(payload.toString());
      } catch {}
      this.messages.push({ topic, json });
      const m = /^itera\/v1\/[^/]+\/([^/]+)\/birth$/.exec(topic);
      if (m && json) this.births.set(m[1]!, json as BirthPayload);
    });
    await this.observer.subscribeAsync(`itera/v1/${this.fleet}/#`, { qos: 1 });
    for (const d of this.devices) this.start(d);
    await until(
      () => this.devices.every((d) => this.version(d) === "1.0.0"),
      "every device online with 1.0.0",
      90_000,
    );
  }

  /** The version in a device's latest birth. */
  version(device: string): string | undefined {
    return this.births.get(device)?.agent.version;
  }

  get observerClient(): MqttClient {
    return this.observer;
  }

  /** A signed bundle of `version` whose agent is `agent`; `pad` bytes more for several chunks (96 KiB each). */
  async bundle(version: string, agent: string, pad = 0): Promise<string> {
    const extra: Record<string, string> = { "itera-agent": agent };
    if (pad > 0)
      extra["pad.txt"] = createHash("sha256")
        .update(version)
        .digest("hex")
        .repeat(Math.ceil(pad / 64));
    return makeFixtureBundle(join(this.dir, "bundles", version), {
      version,
      signWith: this.keys.privatePem,
      profile: "rpi4",
      extraFiles: extra,
    });
  }

  /**
   * An itera.bundle/v2 bundle of `version` signed by this fleet's key: the releaseLauncher runtime
   * (of `flavour`) and the model pack of the model folder `modelDir`.
   */
  partsBundle(
    version: string,
    modelDir: string,
    o: { flavour?: string; packSignWith?: string } = {},
  ): Promise<string> {
    return makePartsBundle(join(this.dir, "bundles", `${version}${o.packSignWith ? "-foreign-pack" : ""}`), {
      version,
      model: "",
      modelDir,
      signWith: this.keys.privatePem,
      runtime: releaseLauncher(o.flavour),
      ...(o.packSignWith ? { packSignWith: o.packSignWith } : {}),
    });
  }

  /**
   * `itera fleet update --json` of `bundle` to this fleet (health timeout 60 s, waves of 120 s, the
   * fleet database in the test folder), with `extra` options.
   */
  update(bundle: string, ...extra: string[]) {
    return this.updateWith("--bundle", bundle, ...extra);
  }

  /** As update(), sending `dir` with `--bundle` or `--model-pack`. */
  updateWith(how: "--bundle" | "--model-pack", dir: string, ...extra: string[]) {
    return itera([
      "fleet",
      "update",
      "--broker",
      this.broker.url,
      "--fleet",
      this.fleet,
      how,
      dir,
      "--health-timeout",
      "60",
      "--timeout",
      "120",
      "--db",
      join(this.dir, "fleet.db"),
      "--json",
      ...extra,
    ]);
  }

  /** Publish an `update` job to one device directly (as a coordinator, or a forger, would), execNo 1. */
  requestUpdate(device: string, jobId: string, params: UpdateParams, deadlineInS = 60): void {
    this.observer.publish(
      jobTopic(this.fleet, device, jobId, "request"),
      JSON.stringify({
        v: PROTOCOL_VERSION,
        jobId,
        execNo: 1,
        deadline: Date.now() + deadlineInS * 1000,
        doc: { type: "update", params },
      }),
      { qos: 1 },
    );
  }

  /** Publish one chunk of an update to a device; `sha` defaults to the data's own sha256. */
  sendChunk(device: string, jobId: string, index: number, data: Buffer, sha = sha256Hex(data)): void {
    this.observer.publish(
      jobTopic(this.fleet, device, jobId, "chunk"),
      JSON.stringify({ v: PROTOCOL_VERSION, jobId, index, sha256: sha, data: data.toString("base64") }),
      { qos: 1 },
    );
  }

  /** Start a device's supervisor (and so its agent) from its installed root. */
  start(device: string): void {
    const root = this.roots.get(device)!;
    const proc = spawn(
      "sh",
      [
        join(this.dir, "supervisor.sh"),
        join(root, "opt/itera"),
        "agent",
        "--broker",
        this.broker.url,
        "--fleet",
        this.fleet,
        "--device",
        device,
        "--state-dir",
        join(root, "var/lib/itera-agent"),
        "--install-root",
        root,
        "--trusted-key",
        this.pub,
        "--telemetry-interval",
        String(this.telemetryS),
      ],
      { detached: true, stdio: ["ignore", "ignore", "pipe"] },
    ) as ChildProcess & { log: () => string };
    let err = "";
    proc.stderr!.on("data", (d: Buffer) => {
      err = (err + d.toString()).slice(-20_000);
    });
    proc.log = () => err;
    this.supervisors.set(device, proc);
    process.once("exit", () => {
      try {
        process.kill(-proc.pid!, "SIGKILL");
      } catch {}
    });
  }

  /** Stop a device's supervisor and agent (SIGTERM: a clean `offline`) and wait until it is gone. */
  async stop(device: string): Promise<void> {
    const p = this.supervisors.get(device);
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    const gone = new Promise((r) => p.once("exit", r));
    try {
      process.kill(-p.pid!, "SIGTERM");
    } catch {}
    await gone;
  }

  /** The stderr of a device's supervisor and its agents. */
  log(device: string): string {
    return this.supervisors.get(device)?.log() ?? "";
  }

  release(device: string): Promise<string> {
    return readlink(join(this.roots.get(device)!, "opt/itera/current"));
  }

  async close(): Promise<void> {
    for (const p of this.supervisors.values()) {
      try {
        process.kill(-p.pid!, "SIGTERM");
      } catch {}
    }
    this.observer?.end(true);
    await this.broker.stop();
    await rm(this.dir, { recursive: true, force: true });
  }
}
