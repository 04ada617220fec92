// Fashion-MNIST preprocessing in plain JavaScript, step for step as the Python runtime
// (fmnist_deploy/runtime/images.py, on Pillow) does it, so that Node.js and the browser feed the
// model the same 28x28 bytes as fmnist-predict:
//   1. transparency composited onto black (onto white with `invert`), Pillow's integer formula;
//   2. 8-bit grayscale, ITU-R 601-2 luma with Pillow's fixed-point weights;
//   3. padded to a square with the (banker's-rounded) mean of the border pixels, centred;
//   4. resized to 28x28 with Pillow's Lanczos (a = 3) resampling, its 22-bit fixed-point coefficients;
//   5. with `invert`, 255 - x.
// Pure functions on RGBA pixel arrays: decoding stays with the caller (pngjs / jpeg-js in Node.js,
// a canvas in the browser).

export const SIZE = 28;

// Python's round(): halves go to the even neighbour.
function roundHalfEven(x) {
  const floor = Math.floor(x);
  const diff = x - floor;
  if (diff > 0.5) return floor + 1;
  if (diff < 0.5) return floor;
  return floor % 2 === 0 ? floor : floor + 1;
}

// Pillow AlphaComposite.c with an opaque background: 7 extra bits of precision, rounded divisions.
function compositeChannel(src, alpha, background) {
  if (alpha === 0) return background;
  const blend = 255 * (255 - alpha);
  const outa255 = alpha * 255 + blend;
  const coef1 = Math.floor((alpha * 255 * 255 * 128) / outa255);
  const coef2 = 255 * 128 - coef1;
  const tmp = src * coef1 + background * coef2 + (0x80 << 7);
  return (((tmp >>> 8) + tmp) >>> 8) >>> 7;
}

/** RGBA bytes (width*height*4) -> 8-bit luma (width*height), transparency composited first. */
export function toGray(rgba, width, height, invert = false) {
  const gray = new Uint8Array(width * height);
  const background = invert ? 255 : 0;
  let transparent = false;
  for (let i = 3; i < rgba.length; i += 4) {
    if (rgba[i] !== 255) {
      transparent = true;
      break;
    }
  }
  for (let p = 0; p < width * height; p++) {
    let r = rgba[4 * p];
    let g = rgba[4 * p + 1];
    let b = rgba[4 * p + 2];
    if (transparent) {
      const a = rgba[4 * p + 3];
      r = compositeChannel(r, a, background);
      g = compositeChannel(g, a, background);
      b = compositeChannel(b, a, background);
    }
    gray[p] = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >>> 16; // Pillow's L24
  }
  return gray;
}

function lanczos(x) {
  const sinc = (v) => (v === 0 ? 1 : Math.sin(Math.PI * v) / (Math.PI * v));
  return x >= -3 && x < 3 ? sinc(x) * sinc(x / 3) : 0;
}

const PRECISION_BITS = 32 - 8 - 2;

// Pillow Resample.c precompute_coeffs + normalize_coeffs_8bpc for one axis.
function coefficients(inSize, outSize) {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1);
  const support = 3 * filterScale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = [];
  const weights = [];
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    const k = new Float64Array(ksize);
    const ss = 1 / filterScale;
    let total = 0;
    for (let x = 0; x < xmax; x++) {
      const w = lanczos((x + xmin - center + 0.5) * ss);
      k[x] = w;
      total += w;
    }
    const fixed = new Int32Array(ksize);
    for (let x = 0; x < xmax; x++) {
      const w = total !== 0 ? k[x] / total : k[x];
      fixed[x] = w < 0 ? Math.trunc(-0.5 + w * (1 << PRECISION_BITS)) : Math.trunc(0.5 + w * (1 << PRECISION_BITS));
    }
    bounds.push([xmin, xmax]);
    weights.push(fixed);
  }
  return { bounds, weights };
}

function clip8(value) {
  if (value >= 1 << PRECISION_BITS << 8) return 255;
  if (value <= 0) return 0;
  return Math.floor(value / (1 << PRECISION_BITS));
}

// One separable pass along x (horizontal) or y, as Pillow's ImagingResample{Horizontal,Vertical}_8bpc.
function resamplePass(src, width, height, outW, outH, horizontal) {
  const { bounds, weights } = coefficients(horizontal ? width : height, horizontal ? outW : outH);
  const out = new Uint8Array(outW * outH);
  for (let y = 0; y < outH; y++) {
    for (let x = 0; x < outW; x++) {
      const [min, count] = bounds[horizontal ? x : y];
      const k = weights[horizontal ? x : y];
      let sum = 1 << (PRECISION_BITS - 1);
      for (let i = 0; i < count; i++) {
        sum += (horizontal ? src[y * width + min + i] : src[(min + i) * width + x]) * k[i];
      }
      out[y * outW + x] = clip8(sum);
    }
  }
  return out;
}

/** 8-bit gray (width x height) -> (outW x outH) with Pillow's Lanczos, horizontal pass first. */
export function resizeLanczos(gray, width, height, outW, outH) {
  let data = gray;
  let w = width;
  if (outW !== width) {
    data = resamplePass(data, w, height, outW, height, true);
    w = outW;
  }
  if (outH !== height) data = resamplePass(data, w, height, w, outH, false);
  return data;
}

/** Pad a gray image to a square with the mean of its border, centred as Pillow's ImageOps.pad does. */
export function padToSquare(gray, width, height) {
  if (width === height) return { data: gray, side: width };
  let sum = 0;
  let count = 0;
  for (let x = 0; x < width; x++) sum += gray[x] + gray[(height - 1) * width + x];
  for (let y = 0; y < height; y++) sum += gray[y * width] + gray[y * width + width - 1];
  count = 2 * width + 2 * height;
  const fill = roundHalfEven(sum / count);
  const side = Math.max(width, height);
  const out = new Uint8Array(side * side).fill(fill);
  const x0 = width < side ? roundHalfEven((side - width) * 0.5) : 0;
  const y0 = height < side ? roundHalfEven((side - height) * 0.5) : 0;
  for (let y = 0; y < height; y++) out.set(gray.subarray(y * width, (y + 1) * width), (y + y0) * side + x0);
  return { data: out, side };
}

/** RGBA pixels of a decoded image -> the model's uint8 28x28 input (784 bytes). */
export function toModelInput(rgba, width, height, { invert = false } = {}) {
  let gray = toGray(rgba, width, height, invert);
  if (width !== SIZE || height !== SIZE) {
    const { data, side } = padToSquare(gray, width, height);
    gray = resizeLanczos(data, side, side, SIZE, SIZE);
  }
  if (invert) gray = gray.map((v) => 255 - v);
  return gray;
}

/** The top k (class name, probability) pairs of one row of probabilities, most probable first. */
export function topK(probabilities, classNames, k = 1) {
  return Array.from(probabilities, (p, i) => [classNames[i], p])
    .map((pair, i) => [...pair, i])
    .sort((a, b) => b[1] - a[1] || a[2] - b[2])
    .slice(0, k)
    .map(([name, p]) => [name, p]);
}
