// Classify image files from Node.js with the exported ONNX file and its JSON sidecar, nothing else:
//   node classify.mjs [--model FILE.onnx] [--top-k K] [--invert] IMAGE... (`-`: more paths on stdin)
// Prints `path: Class (p)` per image, exactly as `fmnist-predict` does; a problem with an input is
// one line on stderr (the others are still answered, exit 1); a model that is missing, damaged or
// does not match its sidecar is one line on stderr and exit 2.
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import jpeg from "jpeg-js";
import ort from "onnxruntime-node";
import { PNG } from "pngjs";
import { SIZE, toModelInput, topK } from "../web/preprocess.mjs";

const HERE = dirname(fileURLToPath(import.meta.url));
const CHUNK = 256;

function parseArgs(argv) {
  const options = { model: join(HERE, "..", "..", "artifacts", "fmnist_mlp.onnx"), topK: 1, invert: false, images: [] };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--model") options.model = argv[++i];
    else if (argv[i] === "--top-k") options.topK = Number(argv[++i]);
    else if (argv[i] === "--invert") options.invert = true;
    else if (argv[i] === "-") options.images.push(...readFileSync(0, "utf8").split("\n").filter((line) => line.trim()));
    else options.images.push(argv[i]);
  }
  if (!options.images.length || !(options.topK >= 1 && options.topK <= 10)) {
    console.error("usage: node classify.mjs [--model FILE.onnx] [--top-k 1-10] [--invert] IMAGE...");
    process.exit(2);
  }
  return options;
}

class ModelError extends Error {}

// The sidecar describes the file (contract, class names) and proves it intact (file_sha256).
async function loadModel(path) {
  let bytes;
  let sidecar;
  try {
    bytes = readFileSync(path);
  } catch (error) {
    throw new ModelError(`${path}: cannot read the model (${error.code ?? error.message})`);
  }
  try {
    sidecar = JSON.parse(readFileSync(`${path}.json`, "utf8"));
  } catch (error) {
    throw new ModelError(`${path}.json: cannot read the sidecar (${error.code ?? error.message})`);
  }
  const digest = createHash("sha256").update(bytes).digest("hex");
  if (digest !== sidecar.file_sha256) {
    throw new ModelError(`${path}: sha256 ${digest.slice(0, 12)}… does not match its sidecar: damaged or replaced`);
  }
  const input = sidecar.inputs?.[0];
  const outputs = (sidecar.outputs ?? []).map((o) => o.name);
  if (String(sidecar.contract_version).split(".")[0] !== "1" || input?.dtype !== "uint8") {
    throw new ModelError(`${path}.json: unsupported contract ${sidecar.contract_version} / input ${input?.dtype}`);
  }
  let session;
  try {
    session = await ort.InferenceSession.create(path);
  } catch (error) {
    throw new ModelError(`${path}: ONNX Runtime cannot load it (${error.message.split("\n")[0]})`);
  }
  const same = (a, b) => a.length === b.length && a.every((v, i) => v === b[i]);
  if (!same(session.inputNames, [input.name]) || !same(session.outputNames, outputs)) {
    throw new ModelError(
      `${path}: the graph has inputs [${session.inputNames}] and outputs [${session.outputNames}], ` +
        `its sidecar says [${input.name}] and [${outputs}]`,
    );
  }
  return { session, sidecar, bytes }; // the session reads the model from `bytes`: keep them alive
}

// PNG (pngjs) or JPEG (jpeg-js) -> RGBA; anything else is an input error.
function decode(path) {
  const bytes = readFileSync(path);
  if (bytes.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]))) {
    const png = PNG.sync.read(bytes);
    return { rgba: png.data, width: png.width, height: png.height };
  }
  if (bytes[0] === 0xff && bytes[1] === 0xd8) {
    const image = jpeg.decode(bytes, { useTArray: true, formatAsRGBA: true, maxMemoryUsageInMB: 512 });
    return { rgba: image.data, width: image.width, height: image.height };
  }
  throw new Error("not a PNG or JPEG image");
}

// onnxruntime-node 1.30 crashes (SIGSEGV) while creating a session in a process whose command line is
// longer than ~32 KB (measured: 28 000 bytes pass, 32 000 crash). A long list of images is handed to a
// child process on stdin instead, transparently.
const MAX_ARGV_BYTES = 16_000;

function rerunWithPathsOnStdin(argv) {
  const flags = [];
  const paths = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--model" || argv[i] === "--top-k") flags.push(argv[i], argv[++i]);
    else if (argv[i] === "--invert") flags.push(argv[i]);
    else paths.push(argv[i]);
  }
  const child = spawnSync(process.execPath, [fileURLToPath(import.meta.url), ...flags, "-"], {
    input: paths.join("\n"),
    stdio: ["pipe", "inherit", "inherit"],
  });
  process.exit(child.status ?? 1);
}

async function main() {
  const argv = process.argv.slice(2);
  if (Buffer.byteLength(argv.join(" ")) > MAX_ARGV_BYTES && !argv.includes("-")) rerunWithPathsOnStdin(argv);
  const options = parseArgs(argv);
  let model;
  try {
    model = await loadModel(options.model);
  } catch (error) {
    console.error(`error: ${error.message}`);
    process.exit(error instanceof ModelError ? 2 : 1);
  }
  const good = [];
  let failed = 0;
  for (const path of options.images) {
    try {
      const { rgba, width, height } = decode(path);
      good.push({ path, pixels: toModelInput(rgba, width, height, { invert: options.invert }) });
    } catch (error) {
      failed++;
      console.error(`error: ${path}: ${error.code === "ENOENT" ? "no such file" : error.message}`);
    }
  }
  // Model calls of at most CHUNK images, as fmnist-predict makes them (onnxruntime-node 1.30 crashes
  // on a single call of a few thousand images).
  for (let start = 0; start < good.length; start += CHUNK) {
    const chunk = good.slice(start, start + CHUNK);
    const batch = new Uint8Array(chunk.length * SIZE * SIZE);
    chunk.forEach((item, i) => batch.set(item.pixels, i * SIZE * SIZE));
    const feeds = { [model.sidecar.inputs[0].name]: new ort.Tensor("uint8", batch, [chunk.length, SIZE, SIZE]) };
    const probabilities = (await model.session.run(feeds))[model.sidecar.outputs[1].name].data;
    chunk.forEach((item, i) => {
      const row = probabilities.subarray(i * 10, (i + 1) * 10);
      const best = topK(row, model.sidecar.class_names, options.topK);
      console.log(`${item.path}: ${best.map(([name, p]) => `${name} (${p.toFixed(3)})`).join(", ")}`);
    });
  }
  if (failed) {
    console.error(`${failed} input(s) failed`);
    process.exit(1);
  }
}

await main();
