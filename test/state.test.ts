import { describe, expect, it } from "vitest";
import { pairStates } from "../src/model/state.js";

describe("state pairing (DESIGN.md §3)", () => {
  it("pairs every naming scheme and classifies the state", () => {
    const inputs = [
      "input_ids",
      "past_key_values.0.key",
      "past_key_values.0.value",
      "past_key_values.1.conv_state",
      "past_key_values.1.recurrent_state",
      "past_0",
      "past_conv.2",
      "past_key_values.3.key",
    ];
    const outputs = [
      "logits",
      "present.0.key",
      "present.0.value",
      "present.1.conv_state",
      "present.1.recurrent_state",
      "present_0",
      "present_conv.2",
    ];
    const { pairs, unpaired } = pairStates(inputs, outputs);
    expect(pairs.map((p) => [p.input, p.output, p.kind])).toEqual([
      ["past_0", "present_0", "kv"],
      ["past_key_values.0.key", "present.0.key", "kv"],
      ["past_key_values.0.value", "present.0.value", "kv"],
      ["past_key_values.1.conv_state", "present.1.conv_state", "conv"],
      ["past_key_values.1.recurrent_state", "present.1.recurrent_state", "recurrent"],
      ["past_conv.2", "present_conv.2", "conv"],
    ]);
    expect(unpaired).toEqual(["past_key_values.3.key"]);
  });
});
