// Run the exported model from Node.js: the ONNX file, its JSON sidecar, nothing else.
// Usage: node predict.mjs MODEL.onnx GOLDEN.json
// Checks every golden image's logits against the reference in golden.json (a float64 forward pass
// rounded to float32, written by fmnist-export), within the tolerance stored beside it; exit 1 otherwise.
import { readFileSync } from "node:fs";

process.env.ORT_DISABLE_TELEMETRY ??= "1"; // ONNX Runtime's usage telemetry off, as in classify.mjs
const { default: ort } = await import("onnxruntime-node");

const [modelPath, goldenPath] = process.argv.slice(2);
if (!modelPath || !goldenPath) {
  console.error("usage: node predict.mjs MODEL.onnx GOLDEN.json");
  process.exit(2);
}
const sidecar = JSON.parse(readFileSync(`${modelPath}.json`, "utf8"));
const input = sidecar.inputs[0];
if (sidecar.contract_version.split(".")[0] !== "1" || input.dtype !== "uint8") {
  console.error(`unsupported contract ${sidecar.contract_version} / input ${input.dtype}`);
  process.exit(2);
}
const golden = JSON.parse(readFileSync(goldenPath, "utf8"));
const [n, h, w] = golden.shape;
const images = new Uint8Array(Buffer.from(golden.images_base64, "base64"));
const session = await ort.InferenceSession.create(modelPath);
const outputs = await session.run({ [input.name]: new ort.Tensor("uint8", images, [n, h, w]) });
const logits = outputs[sidecar.outputs[0].name].data;
let maxDiff = 0;
let agree = 0;
for (let i = 0; i < n; i++) {
  let best = 0;
  for (let j = 0; j < 10; j++) {
    maxDiff = Math.max(maxDiff, Math.abs(logits[i * 10 + j] - golden.logits[i][j]));
    if (logits[i * 10 + j] > logits[i * 10 + best]) best = j;
  }
  if (best === golden.labels[i]) agree++;
}
const first = sidecar.class_names[logits.slice(0, 10).indexOf(Math.max(...logits.slice(0, 10)))];
console.log(`${n} golden images: max |dlogit| ${maxDiff.toExponential(2)}, ${agree}/${n} correct; first image: ${first}`);
process.exit(maxDiff <= golden.logit_tolerance ? 0 : 1);
