// A small static file server for the page, bound to 127.0.0.1 only:
//   node serve.mjs [PORT] [--for SECONDS]     (PORT 0: a free port)
// then open http://127.0.0.1:PORT/examples/web/ . It serves what the page needs and nothing else of the
// checkout: the page and its modules, ONNX Runtime Web's files, and the ONNX model files with their
// sidecars (artifacts/*.onnx, *.onnx.json); anything else (.git, the checkpoint, the sources) is 404.
// It stops by itself after --for seconds (default: never).
import { createReadStream, statSync } from "node:fs";
import { createServer } from "node:http";
import { extname, join, normalize, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = resolve(fileURLToPath(new URL("../..", import.meta.url)));
const TYPES = {
  ".html": "text/html; charset=utf-8", ".mjs": "text/javascript", ".js": "text/javascript",
  ".wasm": "application/wasm", ".json": "application/json", ".onnx": "application/octet-stream",
  ".png": "image/png", ".jpg": "image/jpeg", ".css": "text/css", ".map": "application/json",
};
// What the page loads, as paths relative to the repository root (no "..": normalised before the test).
const SERVED = [
  /^examples\/web\/(index\.html|app\.mjs|preprocess\.mjs)?$/,
  /^examples\/web\/node_modules\/onnxruntime-web\/dist\/[\w.-]+\.(mjs|wasm|map)$/,
  /^artifacts\/[\w.-]+\.onnx(\.json)?$/,
];

/** Whether the page may fetch this path (relative to the repository root, forward slashes). */
export function served(relative) {
  return SERVED.some((pattern) => pattern.test(relative));
}

/** Serve `root` on 127.0.0.1:`port`; resolves to the listening server (server.address().port). */
export function startServer(root = ROOT, port = 0) {
  const server = createServer((request, response) => {
    const url = new URL(request.url, "http://127.0.0.1");
    let path;
    try {
      path = normalize(join(root, decodeURIComponent(url.pathname)));
    } catch {
      response.writeHead(400).end("bad request");
      return;
    }
    const relative = path.slice(root.length + 1).split(sep).join("/");
    if (!path.startsWith(root + sep) || !served(relative)) {
      response.writeHead(404).end("not found");
      return;
    }
    try {
      if (statSync(path).isDirectory()) path = join(path, "index.html");
      const size = statSync(path).size;
      response.writeHead(200, { "Content-Type": TYPES[extname(path)] ?? "application/octet-stream", "Content-Length": size });
      createReadStream(path).pipe(response);
    } catch {
      response.writeHead(404).end("not found");
    }
  });
  return new Promise((done) => server.listen(port, "127.0.0.1", () => done(server)));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const port = Number(process.argv[2] ?? 8080);
  const forIndex = process.argv.indexOf("--for");
  const server = await startServer(ROOT, port);
  console.log(`serving the page at http://127.0.0.1:${server.address().port}/examples/web/`);
  if (forIndex > 0) setTimeout(() => server.close(() => process.exit(0)), Number(process.argv[forIndex + 1]) * 1000).unref();
}
