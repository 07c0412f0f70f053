/**
 * How the single executable carries the agent's script (src/package/agent-script.ts splits it into
 * parts, src/package/sea.ts embeds them, src/agent-host/sea-loader.ts runs them): the parts one after
 * another in one asset and, for a bundle built on its own target, their V8 code caches likewise in a
 * second; the loader has the index (where each part and its cache lie) built in. Two assets, not two
 * per part: Node reads the whole asset table at every start, `--version` included. Each part is
 * compiled as a CommonJS module's function with these parameters and requires another as `./<part>`.
 */
export const AGENT_PARTS_ASSET = "agent.parts";
export const AGENT_CODE_CACHE_ASSET = "agent.parts.v8cache";
/** The part that runs first (src/agent-host/sea-main.ts; esbuild names it after its source). */
export const AGENT_ENTRY_PART = "sea-main.js";
export const AGENT_SCRIPT_PARAMS = ["exports", "require", "module", "__filename", "__dirname"];
/** Part -> its [offset, bytes] in AGENT_PARTS_ASSET, then its cache's in AGENT_CODE_CACHE_ASSET if any. */
export type AgentPartIndex = Record<string, number[]>;
