// Run the exported model from Node.js: the ONNX file, its JSON sidecar, nothing else.
// Usage: node predict.mjs MODEL.onnx GOLDEN.npz
// Checks every golden image's logits against the reference stored in golden.npz (a float64 forward
// pass rounded to float32), within the tolerance stored beside it, and exits 1 otherwise.
import { readFileSync } from "node:fs";
import { inflateRawSync } from "node:zlib";
import ort from "onnxruntime-node";

// A .npz is a zip of .npy files: read each local entry (stored or deflated).
function readNpz(path) {
  const buf = readFileSync(path);
  const arrays = {};
  let at = 0;
  while (buf.readUInt32LE(at) === 0x04034b50) {
    const method = buf.readUInt16LE(at + 8);
    const size = buf.readUInt32LE(at + 18);
    const nameLen = buf.readUInt16LE(at + 26);
    const extraLen = buf.readUInt16LE(at + 28);
    const name = buf.toString("utf8", at + 30, at + 30 + nameLen).replace(/\.npy$/, "");
    const start = at + 30 + nameLen + extraLen;
    const raw = buf.subarray(start, start + size);
    arrays[name] = readNpy(method === 8 ? inflateRawSync(raw) : raw);
    at = start + size;
  }
  return arrays;
}

// .npy: magic, version, little-endian header length, a Python-dict header, then the data.
function readNpy(buf) {
  const major = buf[6];
  const headerLen = major === 1 ? buf.readUInt16LE(8) : buf.readUInt32LE(8);
  const offset = (major === 1 ? 10 : 12) + headerLen;
  const header = buf.toString("latin1", offset - headerLen, offset);
  const descr = /'descr':\s*'([^']+)'/.exec(header)[1];
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header)[1].split(",").filter((s) => s.trim()).map(Number);
  const data = buf.subarray(offset);
  const copy = (Type) => new Type(data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength));
  const types = { "|u1": Uint8Array, "<f4": Float32Array, "<f8": Float64Array, "<i8": BigInt64Array };
  return { descr, shape, data: types[descr] ? copy(types[descr]) : data };
}

const [modelPath, goldenPath] = process.argv.slice(2);
const sidecar = JSON.parse(readFileSync(`${modelPath}.json`, "utf8"));
const input = sidecar.inputs[0];
if (sidecar.contract_version.split(".")[0] !== "1" || input.dtype !== "uint8") {
  console.error(`unsupported contract ${sidecar.contract_version} / input ${input.dtype}`);
  process.exit(2);
}
const golden = readNpz(goldenPath);
const tolerance = golden.logit_tolerance.data[0];
const [n, h, w] = golden.images.shape;
const session = await ort.InferenceSession.create(modelPath);
const feeds = { [input.name]: new ort.Tensor("uint8", golden.images.data, [n, h, w]) };
const outputs = await session.run(feeds);
const logits = outputs[sidecar.outputs[0].name].data;
let maxDiff = 0;
let agree = 0;
for (let i = 0; i < n; i++) {
  let best = 0;
  for (let j = 0; j < 10; j++) {
    maxDiff = Math.max(maxDiff, Math.abs(logits[i * 10 + j] - golden.logits.data[i * 10 + j]));
    if (logits[i * 10 + j] > logits[i * 10 + best]) best = j;
  }
  if (BigInt(best) === golden.labels.data[i]) agree++;
}
const first = sidecar.class_names[logits.slice(0, 10).indexOf(Math.max(...logits.slice(0, 10)))];
console.log(`${n} golden images: max |dlogit| ${maxDiff.toExponential(2)}, ${agree}/${n} correct; first image: ${first}`);
process.exit(maxDiff <= tolerance ? 0 : 1);
