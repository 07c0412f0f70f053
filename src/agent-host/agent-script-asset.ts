/**
 * How the single executable carries the agent's script (src/package/sea.ts writes it,
 * src/agent-host/sea-loader.ts runs it): as an asset, compiled as a CommonJS module's function with
 * these parameters, and, for a bundle built on its own target, with V8's code cache beside it.
 */
export const AGENT_SCRIPT_ASSET = "agent.cjs";
export const AGENT_CODE_CACHE_ASSET = "agent.cjs.v8cache";
export const AGENT_SCRIPT_PARAMS = ["exports", "require", "module", "__filename", "__dirname"];
