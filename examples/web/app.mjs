// The page: load the ONNX file and its sidecar, decode a picked or dropped image, preprocess it exactly
// as the Python runtime does (preprocess.mjs), run it, show the 28x28 input and the top 3 classes.
import * as ort from "./node_modules/onnxruntime-web/dist/ort.wasm.min.mjs";
import { SIZE, toModelInput, topK } from "./preprocess.mjs";

const params = new URLSearchParams(location.search);
const MODEL_URL = new URL(params.get("model") ?? "../../artifacts/fmnist_mlp.onnx", location.href);
// An absolute URL path: a relative one would resolve against the library's own folder.
ort.env.wasm.wasmPaths = new URL("./node_modules/onnxruntime-web/dist/", import.meta.url).pathname;
ort.env.wasm.numThreads = 1; // threads need cross-origin isolation, which a plain static server does not give

const $ = (id) => document.getElementById(id);
let model = null;

function say(text, isError = false) {
  $("message").textContent = text;
  $("message").className = isError ? "error" : "";
}

async function loadModel() {
  const [sidecarResponse, modelResponse] = await Promise.all([fetch(`${MODEL_URL}.json`), fetch(MODEL_URL)]);
  if (!sidecarResponse.ok || !modelResponse.ok) {
    throw new Error(`cannot fetch ${MODEL_URL.pathname} (HTTP ${modelResponse.status}) or its sidecar (HTTP ${sidecarResponse.status})`);
  }
  const sidecar = await sidecarResponse.json();
  const bytes = new Uint8Array(await modelResponse.arrayBuffer());
  const digest = Array.from(new Uint8Array(await crypto.subtle.digest("SHA-256", bytes)), (b) => b.toString(16).padStart(2, "0")).join("");
  if (digest !== sidecar.file_sha256) throw new Error("the model file does not match its sidecar's sha256: damaged or replaced");
  const input = sidecar.inputs[0];
  if (String(sidecar.contract_version).split(".")[0] !== "1" || input.dtype !== "uint8") {
    throw new Error(`unsupported contract ${sidecar.contract_version} / input ${input.dtype}`);
  }
  const session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
  return { session, sidecar };
}

async function decode(file) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  } catch {
    throw new Error(`Cannot read ${file.name} as an image`);
  }
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(bitmap, 0, 0);
  const { data } = context.getImageData(0, 0, bitmap.width, bitmap.height, { colorSpace: "srgb" });
  return { rgba: data, width: bitmap.width, height: bitmap.height };
}

function showInput(pixels) {
  const context = $("input28").getContext("2d");
  const image = context.createImageData(SIZE, SIZE);
  pixels.forEach((v, i) => image.data.set([v, v, v, 255], 4 * i));
  context.putImageData(image, 0, 0);
}

function showResults(name, ranked) {
  const results = $("results");
  results.dataset.input = name;
  results.dataset.label = ranked[0][0];
  results.dataset.probability = String(ranked[0][1]);
  results.innerHTML = "";
  for (const [label, p] of ranked) {
    const row = document.createElement("div");
    row.className = "bar";
    row.innerHTML = `<span class="name"></span><span class="track"><span class="fill"></span></span><span class="value"></span>`;
    row.querySelector(".name").textContent = label;
    row.querySelector(".fill").style.width = `${(100 * p).toFixed(1)}%`;
    row.querySelector(".value").textContent = p.toFixed(3);
    results.append(row);
  }
}

async function classify(file) {
  let loaded = model;
  if (!loaded) {
    // Picked (or dropped) before the model arrived: answer it once the model is ready.
    say(`The model is still loading: ${file.name} will be classified as soon as it is ready.`);
    try {
      loaded = await modelReady;
    } catch {
      return; // the page already says why the model could not be loaded
    }
  }
  try {
    const { rgba, width, height } = await decode(file);
    const pixels = toModelInput(rgba, width, height, { invert: $("invert").checked });
    $("original").src = URL.createObjectURL(file);
    showInput(pixels);
    const { inputs, outputs, class_names: classNames } = loaded.sidecar;
    const feeds = { [inputs[0].name]: new ort.Tensor("uint8", pixels, [1, SIZE, SIZE]) };
    const probabilities = (await loaded.session.run(feeds))[outputs[1].name].data;
    showResults(file.name, topK(probabilities, classNames, 3));
    say(`${file.name}: ${classNames[probabilities.indexOf(Math.max(...probabilities))]}`);
  } catch (error) {
    $("results").innerHTML = "";
    $("results").dataset.input = file.name;
    $("results").dataset.label = "";
    say(error.message, true);
  }
}

$("file").addEventListener("change", () => $("file").files[0] && classify($("file").files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  if (event.dataTransfer.files[0]) classify(event.dataTransfer.files[0]);
});

const modelReady = loadModel();
try {
  model = await modelReady;
  if ($("results").dataset.input === undefined) say("Model ready: pick or drop an image.");
  document.body.dataset.ready = "true";
} catch (error) {
  say(`The model could not be loaded: ${error.message}`, true);
  document.body.dataset.ready = "error";
}
