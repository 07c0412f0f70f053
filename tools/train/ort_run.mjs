// Runs an exported model folder's model.onnx with onnxruntime-node for the python parity checks
// (Debian's python3-onnx has no reference evaluator and onnxruntime is not packaged for python here).
// Request (JSON file argv[2]): a list of jobs {model, ids: [[...]], chunks: [n1, n2, ...], state: {name: dims}}.
// The ids are fed chunk by chunk, each chunk's present.* outputs becoming the next chunk's past_key_values.*.
// Prints, per job, {logits: {dims, data}, state: {name: {dims, data}}} with every chunk's logits concatenated.
import { readFileSync } from "node:fs";
import * as ort from "onnxruntime-node";

// DESIGN.md §3 pairing: past_key_values.N.* -> present.N.*, past_N -> present_N.
const presentName = (name) => name.replace(/^past_key_values\./, "present.").replace(/^past_(\d+)$/, "present_$1");

async function runJob(req) {
const session = await ort.InferenceSession.create(req.model, { intraOpNumThreads: 1, graphOptimizationLevel: "all" });
const batch = req.ids.length;
let state = Object.fromEntries(
  Object.entries(req.state).map(([name, dims]) => [
    name,
    new ort.Tensor("float32", new Float32Array(dims.reduce((a, b) => a * b, 1)), dims),
  ]),
);
const logits = [];
let vocab = 0;
let pos = 0;
for (const n of req.chunks) {
  const ids = req.ids.map((row) => row.slice(pos, pos + n));
  const feeds = { ...state, input_ids: new ort.Tensor("int64", BigInt64Array.from(ids.flat(), BigInt), [batch, n]) };
  if (session.inputNames.includes("attention_mask")) {
    const mask = new BigInt64Array(batch * (pos + n)).fill(1n);
    feeds.attention_mask = new ort.Tensor("int64", mask, [batch, pos + n]);
    const positions = ids.flatMap((row) => row.map((_, i) => BigInt(pos + i)));
    feeds.position_ids = new ort.Tensor("int64", BigInt64Array.from(positions), [batch, n]);
  }
  const out = await session.run(feeds);
  vocab = out.logits.dims[2];
  logits.push({ n, data: out.logits.data });
  state = Object.fromEntries(Object.keys(state).map((name) => [name, out[presentName(name)]]));
  pos += n;
}
// Reassemble [batch, total, vocab] from per-chunk [batch, n, vocab].
const total = pos;
const all = new Float32Array(batch * total * vocab);
let offset = 0;
for (const { n, data } of logits) {
  for (let b = 0; b < batch; b++) all.set(data.subarray(b * n * vocab, (b + 1) * n * vocab), (b * total + offset) * vocab);
  offset += n;
}
return {
  logits: { dims: [batch, total, vocab], data: Array.from(all) },
  state: Object.fromEntries(Object.entries(state).map(([k, t]) => [k, { dims: t.dims, data: Array.from(t.data) }])),
};
}

const jobs = JSON.parse(readFileSync(process.argv[2], "utf8"));
const results = [];
for (const job of jobs) results.push(await runJob(job));
process.stdout.write(JSON.stringify(results));
