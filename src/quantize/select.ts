/**
 * Mixed precision under a quality budget: given each layer's measured sensitivity (the change in
 * loss when only that layer is quantized to a precision) and the bytes each precision costs, pick
 * per layer the smallest precision such that the predicted total loss increase fits the budget.
 *
 * The prediction adds the per-layer increases (a first-order model; interactions are caught by
 * measuring the chosen combination afterwards and tightening the budget if it does not hold).
 */

export interface LayerChoice<P extends string> {
  name: string;
  /** candidate precisions from smallest to largest; the last one is the reference (increase 0) */
  options: { precision: P; bytes: number; deltaLoss: number }[];
}

export interface Selection<P extends string> {
  choice: Map<string, P>;
  predictedDelta: number;
  bytes: number;
}

/**
 * Greedy: start every layer at its smallest option, then while the predicted increase exceeds the
 * budget, take the single upgrade step that removes the most loss per extra byte.
 * Negative measured increases (noise) count as 0, so that no layer is credited with improving the model.
 */
export function choosePrecisions<P extends string>(
  layers: LayerChoice<P>[],
  budgetDelta: number,
): Selection<P> {
  const level = new Map<string, number>(layers.map((l) => [l.name, 0]));
  const cost = (l: LayerChoice<P>, i: number) => Math.max(0, l.options[i]!.deltaLoss);
  let predicted = layers.reduce((s, l) => s + cost(l, 0), 0);
  while (predicted > budgetDelta) {
    let best: { layer: LayerChoice<P>; gainPerByte: number; gain: number } | undefined;
    for (const l of layers) {
      const i = level.get(l.name)!;
      if (i >= l.options.length - 1) continue;
      const gain = cost(l, i) - cost(l, i + 1);
      const extra = Math.max(1, l.options[i + 1]!.bytes - l.options[i]!.bytes);
      const gainPerByte = gain / extra;
      if (!best || gainPerByte > best.gainPerByte || (gainPerByte === best.gainPerByte && gain > best.gain)) {
        best = { layer: l, gainPerByte, gain };
      }
    }
    if (!best) break; // everything at full precision
    const i = level.get(best.layer.name)!;
    level.set(best.layer.name, i + 1);
    predicted -= best.gain;
  }
  const choice = new Map<string, P>();
  let bytes = 0;
  for (const l of layers) {
    const opt = l.options[level.get(l.name)!]!;
    choice.set(l.name, opt.precision);
    bytes += opt.bytes;
  }
  return { choice, predictedDelta: Math.max(0, predicted), bytes };
}
