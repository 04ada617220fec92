// Classify image files from Node.js with the exported ONNX file and its JSON sidecar, nothing else:
//   node classify.mjs [--model FILE.onnx] [--top-k K] [--invert] IMAGE|FOLDER... (`-`: more paths on stdin)
// Prints `path: Class (p)` per image, exactly as `fmnist-predict` does; a folder is walked in sorted
// order for its PNG and JPEG files; a problem with an input is one line on stderr (the others are still
// answered, exit 1); a model that is missing, damaged or does not match its sidecar is one line on
// stderr and exit 2. ONNX Runtime's usage telemetry (since 1.29 it keeps a device id and an event store
// under ~/.cache/Microsoft) stays off unless ORT_DISABLE_TELEMETRY is set, as with the Python commands.
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, extname, join } from "node:path";
import { fileURLToPath } from "node:url";
import jpeg from "jpeg-js";
import { PNG } from "pngjs";
import { SIZE, toModelInput, topK } from "../web/preprocess.mjs";

process.env.ORT_DISABLE_TELEMETRY ??= "1"; // read when ONNX Runtime's native library loads: before the import
const { default: ort } = await import("onnxruntime-node");

const HERE = dirname(fileURLToPath(import.meta.url));
const CHUNK = 256;

const USAGE = `usage: node classify.mjs [--model FILE.onnx] [--top-k 1-10] [--invert] IMAGE|FOLDER|- ...

Classify PNG and JPEG images (folders are walked in sorted order; \`-\` reads more paths from standard
input, one per line) with the exported ONNX file and its sidecar. One line per image on stdout:
\`path: Class (p)\`, as fmnist-predict prints it. Exit 1 if an input failed, 2 for a usage or model error.

  --model FILE.onnx  the model [default: artifacts/fmnist_mlp.onnx of this checkout]
  --top-k K          classes per image, 1-10 [default: 1]
  --invert           the images are dark-on-light (photos, scans)
  -h, --help         this text`;

function parseArgs(argv) {
  const options = { model: join(HERE, "..", "..", "artifacts", "fmnist_mlp.onnx"), topK: 1, invert: false, images: [] };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "-h" || argv[i] === "--help") {
      console.log(USAGE);
      process.exit(0);
    } else if (argv[i] === "--model") options.model = argv[++i];
    else if (argv[i] === "--top-k") options.topK = Number(argv[++i]);
    else if (argv[i] === "--invert") options.invert = true;
    else if (argv[i] === "-") {
      options.images.push(...readFileSync(0, "utf8").split("\n").map((line) => line.replace(/\r$/, "")).filter((line) => line.trim()));
    } else if (argv[i].startsWith("-") && argv[i] !== "-") {
      console.error(`error: unknown option ${argv[i]}\n${USAGE.split("\n")[0]}`);
      process.exit(2);
    } else options.images.push(argv[i]);
  }
  if (!options.images.length || !(options.topK >= 1 && options.topK <= 10) || !options.model) {
    console.error(USAGE.split("\n")[0]);
    process.exit(2);
  }
  return options;
}

const IMAGE_SUFFIXES = new Set([".png", ".jpg", ".jpeg"]);

// A folder -> its PNG and JPEG files, recursively, in sorted order (as fmnist-predict walks one);
// anything else stands for itself (a missing file is reported when it is decoded).
function expand(path) {
  let stat;
  try {
    stat = statSync(path);
  } catch {
    return [path];
  }
  if (!stat.isDirectory()) return [path];
  const found = [];
  const walk = (folder) => {
    for (const name of readdirSync(folder).sort()) {
      const child = join(folder, name);
      if (statSync(child).isDirectory()) walk(child);
      else if (IMAGE_SUFFIXES.has(extname(name).toLowerCase())) found.push(child);
    }
  };
  walk(path);
  return found.length ? found : [{ folder: path }];
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
  for (const path of options.images.flatMap(expand)) {
    if (path.folder !== undefined) {
      failed++;
      console.error(`error: ${path.folder}: no PNG or JPEG images found under this folder`);
      continue;
    }
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
