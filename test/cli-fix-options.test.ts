/**
 * No `fix:` text may name an option that its command rejects (issue #14: `itera build` suggested
 * `--budget`, `--mode auto` and `--exclude`, options of `itera quantize` only).
 *
 * Two ways, each checked against the command's real commander option list:
 * - statically: every `fix:` string in the modules `itera build` and `itera quantize` can reach
 *   (their import graphs, dynamic imports included), with the `--options` it names;
 * - by running their error paths: fixes put together at run time (the quantizer names its options
 *   the way its caller spells them) as the user sees them.
 * An option after "itera <other command>" in a fix belongs to that command and is checked there.
 */
import { readFileSync } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { Command } from "commander";
import ts from "typescript";
import { beforeAll, describe, expect, it } from "vitest";
import { registerBuild } from "../src/cli/commands/build.js";
import { registerEval } from "../src/cli/commands/eval.js";
import { registerInspect } from "../src/cli/commands/inspect.js";
import { registerKeygen } from "../src/cli/commands/keygen.js";
import { registerProfiles } from "../src/cli/commands/profiles.js";
import { registerQuantize } from "../src/cli/commands/quantize.js";
import { registerRun } from "../src/cli/commands/run.js";
import { registerVerify } from "../src/cli/commands/verify.js";
import { datasetsDir } from "../src/runtime/eval-text.js";
import { fixtureModel } from "./package-helpers.js";
import { inProcessCli } from "./cli-helpers.js";
import { tempDir } from "./temp-dir.js";

// The two commands checked, and those their fixes may send the user to ("itera eval --window N").
const commands = [
  registerBuild,
  registerQuantize,
  registerEval,
  registerRun,
  registerInspect,
  registerKeygen,
  registerVerify,
  registerProfiles,
];
const program = new Command();
for (const register of commands) register(program);

/** The long option names a command accepts (`--no-x` included), and --help. */
function accepted(command: string): Set<string> {
  const c = program.commands.find((x) => x.name() === command);
  if (!c) throw new Error(`no command ${command}`);
  const names = new Set(["--help"]);
  for (const o of c.options) {
    if (o.long) names.add(o.long);
    // commander keeps `--no-x` as its own option; a negatable `--x` alone does not accept `--no-x`.
  }
  return names;
}

/** The options a fix text names, each with the command it belongs to. */
function namedOptions(text: string, command: string): { command: string; option: string }[] {
  const known = new Set(program.commands.map((c) => c.name()));
  const found: { command: string; option: string }[] = [];
  let current = command;
  for (const m of text.matchAll(/\bitera (\S+)|(?<![\w-])(--[a-z][a-z0-9-]*)/g)) {
    if (m[1] !== undefined) {
      const name = m[1].replace(/[`'".,;:)]+$/, "");
      if (known.has(name)) current = name;
    } else found.push({ command: current, option: m[2]! });
  }
  return found;
}

/** Follow relative imports (static and dynamic) from a source file. */
function reachable(entry: string): string[] {
  const seen = new Set<string>();
  const todo = [resolve(entry)];
  while (todo.length > 0) {
    const file = todo.pop()!;
    if (seen.has(file)) continue;
    seen.add(file);
    const src = ts.createSourceFile(file, readFileSync(file, "utf8"), ts.ScriptTarget.Latest, true);
    const visit = (node: ts.Node): void => {
      let spec: string | undefined;
      if ((ts.isImportDeclaration(node) || ts.isExportDeclaration(node)) && node.moduleSpecifier) {
        if (ts.isStringLiteral(node.moduleSpecifier)) spec = node.moduleSpecifier.text;
      } else if (
        ts.isCallExpression(node) &&
        node.expression.kind === ts.SyntaxKind.ImportKeyword &&
        node.arguments[0] &&
        ts.isStringLiteral(node.arguments[0])
      ) {
        spec = node.arguments[0].text;
      }
      if (spec?.startsWith(".")) todo.push(resolve(dirname(file), spec).replace(/\.js$/, ".ts"));
      ts.forEachChild(node, visit);
    };
    visit(src);
  }
  return [...seen];
}

/** Every `fix:` property's literal text in a file (template placeholders become "…"). */
function fixTexts(file: string): { line: number; text: string }[] {
  const src = ts.createSourceFile(file, readFileSync(file, "utf8"), ts.ScriptTarget.Latest, true);
  const out: { line: number; text: string }[] = [];
  const literal = (node: ts.Node): string => {
    if (ts.isStringLiteral(node) || ts.isNoSubstitutionTemplateLiteral(node)) return node.text;
    if (ts.isTemplateExpression(node))
      return node.head.text + node.templateSpans.map((s) => `…${s.literal.text}`).join("");
    const parts: string[] = [];
    ts.forEachChild(node, (c) => {
      parts.push(literal(c));
    });
    return parts.join(" ");
  };
  const visit = (node: ts.Node): void => {
    if (
      ts.isPropertyAssignment(node) &&
      ((ts.isIdentifier(node.name) && node.name.text === "fix") ||
        (ts.isStringLiteral(node.name) && node.name.text === "fix"))
    ) {
      out.push({
        line: src.getLineAndCharacterOfPosition(node.getStart()).line + 1,
        text: literal(node.initializer),
      });
    }
    ts.forEachChild(node, visit);
  };
  visit(src);
  return out;
}

describe("fix texts name only options their command accepts", () => {
  for (const command of ["build", "quantize"]) {
    it(`statically, in every module itera ${command} can reach`, () => {
      const files = reachable(join("src", "cli", "commands", `${command}.ts`));
      // The scan must see the modules that print the fixes in question.
      expect(files.map((f) => f.replace(`${resolve("src")}/`, ""))).toEqual(
        expect.arrayContaining(
          command === "build"
            ? [
                "package/build.ts",
                "package/quantization.ts",
                "package/model-check.ts",
                "quantize/quantize.ts",
              ]
            : ["quantize/quantize.ts", "quantize/options.ts"],
        ),
      );
      const wrong: string[] = [];
      let named = 0;
      for (const file of files) {
        for (const fix of fixTexts(file)) {
          for (const n of namedOptions(fix.text, command)) {
            named++;
            if (!accepted(n.command).has(n.option)) {
              wrong.push(`${file}:${fix.line}: ${n.option} (itera ${n.command} rejects it): ${fix.text}`);
            }
          }
        }
      }
      expect(named).toBeGreaterThan(3);
      expect(wrong).toEqual([]);
    });
  }

  it("the checker itself: it finds a wrong option, and attributes one after 'itera <command>'", () => {
    expect(namedOptions("raise --budget, or --mode auto", "build").map((n) => n.option)).toEqual([
      "--budget",
      "--mode",
    ]);
    expect(accepted("build").has("--budget")).toBe(false);
    expect(accepted("build").has("--quant-budget")).toBe(true);
    expect(namedOptions("see `itera quantize --help`; --budget x", "build")).toEqual([
      { command: "quantize", option: "--help" },
      { command: "quantize", option: "--budget" },
    ]);
  });
});

describe("fix texts printed by the error paths of itera build and itera quantize", () => {
  const cli = inProcessCli((p) => {
    for (const register of commands) register(p);
  });
  const model = fixtureModel();
  let work: string;
  beforeAll(async () => {
    work = await tempDir("itera-fix-options-");
  });

  /** The first 4,000 characters of tinyshakespeare's last 10 % (the fixture has no model card). */
  async function heldOut(): Promise<string> {
    const file = join(work, "held-out.txt");
    const text = Array.from(await readFile(join(datasetsDir(), "tinyshakespeare.txt"), "utf8"));
    await writeFile(
      file,
      text
        .slice(Math.floor(text.length * 0.9))
        .slice(0, 4000)
        .join(""),
    );
    return file;
  }

  /** Run a command that must fail; returns its fix text after checking each option it names. */
  async function fixOf(command: string, ...args: string[]): Promise<string> {
    const r = await cli(command, ...args, "--json");
    expect(r.code, r.stderr).not.toBe(0);
    const fix = (JSON.parse(r.stdout) as { fix?: string }).fix ?? "";
    for (const n of namedOptions(fix, command)) {
      expect(accepted(n.command), `${fix} names ${n.option}`).toContain(n.option);
    }
    return fix;
  }

  it("itera build", { timeout: 300_000 }, async () => {
    const out = join(work, "b-out");
    const common = ["--model", model.dir, "--profile", "laptop-x64-4c", "--out", out];
    const texts: string[] = [];
    texts.push(await fixOf("build", ...common, "--quant", "int3"));
    texts.push(await fixOf("build", ...common, "--quant", "int8", "--quant-budget", "lots"));
    texts.push(await fixOf("build", ...common, "--quant", "int8", "--exclude", "no_such_node"));
    texts.push(
      await fixOf(
        "build",
        ...common,
        "--quant",
        "auto",
        "--eval",
        await heldOut(),
        "--calib",
        join(work, "none.txt"),
      ),
    );
    texts.push(await fixOf("build", ...common, "--quant", "int8", "--eval", join(work, "none.txt")));
    texts.push(await fixOf("build", ...common, "--quant", "fp32", "--exclude", "x"));
    // The fixture's random weights cost int8 more than 0.01 % on this text: the budget error.
    const over = await fixOf(
      "build",
      ...common,
      "--quant",
      "int8",
      "--quant-budget",
      "0.01%",
      "--eval",
      await heldOut(),
    );
    expect(over).toMatch(/raise --quant-budget, use --quant auto .* or --quant int8, or --exclude/);
    texts.push(over);
    expect(texts.join("\n")).toMatch(/--quant-budget/);
    expect(texts.join("\n")).not.toMatch(/--budget|--mode/);
  });

  it("itera quantize", { timeout: 300_000 }, async () => {
    const out = join(work, "q-out");
    const text = join(work, "short.txt");
    await writeFile(text, "ROMEO: a short text.\n".repeat(20));
    const texts: string[] = [];
    texts.push(await fixOf("quantize", model.dir, "--out", out, "--budget", "lots"));
    texts.push(await fixOf("quantize", model.dir, "--out", out, "--mode", "int3"));
    texts.push(await fixOf("quantize", model.dir, "--out", out, "--exclude", "no_such_node"));
    texts.push(
      await fixOf("quantize", model.dir, "--out", out, "--calib", join(work, "none.txt"), "--mode", "auto"),
    );
    texts.push(await fixOf("quantize", model.dir, "--out", out, "--eval", join(work, "none.txt")));
    const over = await fixOf(
      "quantize",
      model.dir,
      "--out",
      out,
      "--budget",
      "0.01%",
      "--eval",
      await heldOut(),
    );
    expect(over).toMatch(/raise --budget, use --mode auto .* or --mode int8, or --exclude/);
    texts.push(over);
    expect(texts.join("\n")).not.toMatch(/--quant/);
  });
});
