/**
 * State tensors of a step model, paired by name (DESIGN.md §3):
 *   past_key_values.N.*  <-> present.N.*
 *   past_N               <-> present_N        (fused key/value caches of older GPT-2 exports)
 *   past_conv.N          <-> present_conv.N
 * KV caches grow along the past-sequence axis; conv and recurrent states keep a fixed shape.
 */
export type StateKind = "kv" | "conv" | "recurrent";

export interface StatePair {
  input: string;
  output: string;
  layer: number;
  kind: StateKind;
}

const rules: { input: RegExp; output: (m: RegExpMatchArray) => string }[] = [
  { input: /^past_key_values\.(\d+)\.(.+)$/, output: (m) => `present.${m[1]}.${m[2]}` },
  { input: /^past_conv\.(\d+)$/, output: (m) => `present_conv.${m[1]}` },
  { input: /^past_(\d+)$/, output: (m) => `present_${m[1]}` },
  { input: /^past\.(\d+)\.(.+)$/, output: (m) => `present.${m[1]}.${m[2]}` },
];

function kindOf(input: string): StateKind {
  if (/conv/.test(input)) return "conv";
  if (/recurrent|ssm|ssd|state$/.test(input)) return "recurrent";
  return "kv";
}

/** Pair state inputs with outputs. Inputs that look like state but have no matching output are returned too. */
export function pairStates(
  inputs: readonly string[],
  outputs: readonly string[],
): { pairs: StatePair[]; unpaired: string[] } {
  const outSet = new Set(outputs);
  const pairs: StatePair[] = [];
  const unpaired: string[] = [];
  for (const input of inputs) {
    for (const rule of rules) {
      const m = input.match(rule.input);
      if (!m) continue;
      const output = rule.output(m);
      if (outSet.has(output)) pairs.push({ input, output, layer: Number(m[1]), kind: kindOf(input) });
      else unpaired.push(input);
      break;
    }
  }
  pairs.sort((a, b) => a.layer - b.layer || a.input.localeCompare(b.input));
  return { pairs, unpaired };
}
