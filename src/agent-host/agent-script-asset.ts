/**
 * How the single executable carries the agent's script (src/package/agent-script.ts splits it into
 * parts, src/package/sea.ts embeds them, src/agent-host/sea-loader.ts runs them): the parts one after
 * another in one asset and, for a bundle built on its own target, their V8 code caches likewise in a
 * second; the loader has the index (where each part and its cache lie) built in. Two assets, not two
 * per part: Node reads the whole asset table at every start, `--version` included. Each part is
 * stored in Node's CommonJS wrapper (AGENT_PART_HEAD + part + AGENT_PART_TAIL, src/package/sea.ts
 * wrapAgentPart) and compiled as a vm.Script, whose code cache can be made after it ran; it requires
 * another as `./<part>`.
 */
export const AGENT_PARTS_ASSET = "agent.parts";
export const AGENT_CODE_CACHE_ASSET = "agent.parts.v8cache";
/** The part that runs first (src/agent-host/sea-main.ts; esbuild names it after its source). */
export const AGENT_ENTRY_PART = "sea-main.js";
/** The wrapper's first line (the part's own lines follow it: the loader gives lineOffset -1). */
export const AGENT_PART_HEAD = "(function (exports, require, module, __filename, __dirname) {\n";
export const AGENT_PART_TAIL = "\n})";
/**
 * A folder: the loader writes there, at exit, the code cache of every part it compiled (named as the
 * part), made after the run; the build runs its new executable once with it (src/package/build.ts).
 */
export const AGENT_CODE_CACHE_OUT_ENV = "ITERA_AGENT_CODE_CACHE_OUT";
/** Part -> its [offset, bytes] in AGENT_PARTS_ASSET, then its cache's in AGENT_CODE_CACHE_ASSET if any. */
export type AgentPartIndex = Record<string, number[]>;
