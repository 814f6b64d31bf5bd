#!/usr/bin/env node
// inception3_tfjs.mjs MODEL_DIR OUT.safetensors [H W]
//
// Reference values for pgnd's "inception3" perceptual teacher, computed with
// TensorFlow.js (tfjs-layers on the pure-JS CPU backend) from the very files
// the C side reads: nsfwjs 4.4.0's dist/models/inception_v3 (fetched by
// tools/fetch_inception3.sh).
//
// The Keras InceptionV3 topology is cut after `mixed2`, its input made
// [null, null, null, 3] so it runs at H x W (default 75 x 75), and the
// weights of the removed layers are dropped (specs and bytes).  Two fixed
// pseudo-random images x, y in [-1, 1] (NHWC [1,H,W,3]) are pushed through;
// the file OUT gets (all F32, NCHW):
//   x, y                   [1,3,H,W]
//   activation_3, activation_5, mixed0, mixed1, mixed2   taps of x, [1,C,h,w]
//   loss                   [1]   L = sum_t mean(|phi_t(x) - phi_t(y)|)
//   grad                   [1,3,H,W]   dL/dx (same [-1,1] input space)
// Notes for matching it: BN runs in inference mode (moving stats), tf.abs'
// gradient is sign(d) with sign(0) = 0, ReLU's gradient at 0 is 0, the
// 'same' 3x3 avg-pools divide by the in-bounds pixel count (forward and
// gradient).  Two tfjs 4.22 quirks are patched here (see main): the AvgPool
// gradient (tfjs' own divides by 9 at the borders too, i.e. is not the
// gradient of its forward), and BatchNormalization(scale=false) crashing
// under tf.grad.  A third patch (plain conv2d for the bias-free linear
// convs) only makes tf.grad ~10x faster; its output is bit-identical.
// Checked against an independent float64 re-implementation: taps agree to
// ~1e-6 relative, and the gradient to finite differences to ~6 digits.
//
// Needs the devDependencies @tensorflow/tfjs-core, -layers, -backend-cpu
// (npm ci).  Exits nonzero with a one-line message on any error.

import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';

const require = createRequire(import.meta.url);
const TAPS = ['activation_3', 'activation_5', 'mixed0', 'mixed1', 'mixed2'];
const LAST = 'mixed2';

function fail(msg) {
  process.stderr.write(`inception3_tfjs: error: ${msg}\n`);
  process.exit(1);
}

// The .min.js files are UMD wrappers ("module.exports = <value>").  A plain
// require() can't be used: when MODEL_DIR lies under this repo, the nearest
// package.json says "type": "module" and Node then loads them as ES modules
// (with no exports).  So evaluate the wrapper with its own module object.
function loadUmd(file) {
  let src;
  try { src = fs.readFileSync(file, 'utf8'); } catch (e) { fail(`cannot read ${file}: ${e.message}`); }
  const mod = { exports: {} };
  try {
    // eslint-disable-next-line no-new-func
    new Function('module', 'exports', 'define', 'require', src)(mod, mod.exports, undefined, undefined);
  } catch (e) {
    fail(`cannot evaluate ${file}: ${e.message}`);
  }
  return mod.exports;
}

function bytesPerElement(spec) {
  const q = spec.quantization;
  if (q) {
    if (q.dtype === 'uint8') return 1;
    if (q.dtype === 'uint16' || q.dtype === 'float16') return 2;
    throw new Error(`unknown quantization dtype ${q.dtype} for ${spec.name}`);
  }
  if (spec.dtype === 'float32' || spec.dtype === 'int32') return 4;
  if (spec.dtype === 'bool') return 1;
  throw new Error(`unknown dtype ${spec.dtype} for ${spec.name}`);
}

// Exact gradient of tfjs' AvgPool (NHWC, divisor = in-bounds window count).
function avgPoolGradExact(tf, dy, x, attrs) {
  const pair = (v) => (Array.isArray(v) ? v : [v, v]);
  const [fh, fw] = pair(attrs.filterSize);
  const [sh, sw] = pair(attrs.strides);
  const [, H, W] = x.shape;
  const [, oh, ow] = dy.shape;
  let pt, pl;
  if (attrs.pad === 'valid') { pt = 0; pl = 0; } else if (attrs.pad === 'same') {
    pt = Math.floor(Math.max((oh - 1) * sh + fh - H, 0) / 2);
    pl = Math.floor(Math.max((ow - 1) * sw + fw - W, 0) / 2);
  } else {
    throw new Error(`AvgPool gradient: unsupported pad ${JSON.stringify(attrs.pad)}`);
  }
  const span = (o, s, p, f, n) => Math.min(o * s - p + f, n) - Math.max(o * s - p, 0);
  const scale = new Float32Array(oh * ow);
  for (let i = 0; i < oh; i++) {
    for (let j = 0; j < ow; j++) scale[i * ow + j] = (fh * fw) / (span(i, sh, pt, fh, H) * span(j, sw, pl, fw, W));
  }
  const dyScaled = tf.mul(dy, tf.tensor4d(scale, [1, oh, ow, 1]));
  return tf.engine().runKernel('AvgPoolGrad', { dy: dyScaled, input: x },
    { filterSize: attrs.filterSize, strides: attrs.strides, pad: attrs.pad });
}

function prod(a) { return a.reduce((p, v) => p * v, 1); }

// Deterministic test images, NHWC [1,H,W,3] in [-1,1]: smooth gradients plus
// noise from a 32-bit LCG (Numerical Recipes constants).
function makeImage(H, W, seed, variant) {
  let s = seed >>> 0;
  const rnd = () => { s = (Math.imul(s, 1664525) + 1013904223) >>> 0; return s / 4294967296; };
  const out = new Float32Array(H * W * 3);
  for (let i = 0; i < H; i++) {
    for (let j = 0; j < W; j++) {
      const u = i / Math.max(1, H - 1), v = j / Math.max(1, W - 1);
      for (let c = 0; c < 3; c++) {
        let smooth;
        if (variant === 0) {
          smooth = 0.9 * (u - 0.5) + 0.6 * Math.sin(2 * Math.PI * ((c + 1) * v + 0.3 * u)) * (0.5 + 0.5 * u) - 0.2 * c * (v - 0.5);
        } else {
          const r = Math.hypot(u - 0.4, v - 0.6);
          smooth = 0.7 * Math.cos(2 * Math.PI * (3 * r + 0.25 * c)) + 0.5 * (v - 0.5) * (c - 1) - 0.3 * (u - 0.5);
        }
        const noise = 2 * rnd() - 1;
        const val = smooth + 0.35 * noise;
        out[(i * W + j) * 3 + c] = Math.max(-1, Math.min(1, val));
      }
    }
  }
  return out;
}

// NHWC [1,h,w,c] data -> NCHW [1,c,h,w] data.
function nhwcToNchw(data, h, w, c) {
  const out = new Float32Array(data.length);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) for (let k = 0; k < c; k++) {
    out[(k * h + y) * w + x] = data[(y * w + x) * c + k];
  }
  return out;
}

function writeSafetensors(file, tensors, metadata) {
  const header = { __metadata__: metadata };
  let off = 0;
  for (const t of tensors) {
    if (prod(t.shape) !== t.data.length) throw new Error(`tensor ${t.name}: shape ${t.shape} vs ${t.data.length} values`);
    const n = t.data.length * 4;
    header[t.name] = { dtype: 'F32', shape: t.shape, data_offsets: [off, off + n] };
    off += n;
  }
  let hjson = JSON.stringify(header);
  const hlen = Buffer.byteLength(hjson, 'utf8');
  hjson += ' '.repeat((8 - (hlen % 8)) % 8);
  const hbuf = Buffer.from(hjson, 'utf8');
  const buf = Buffer.alloc(8 + hbuf.length + off);
  buf.writeBigUInt64LE(BigInt(hbuf.length), 0);
  hbuf.copy(buf, 8);
  let p = 8 + hbuf.length;
  for (const t of tensors) {
    for (let i = 0; i < t.data.length; i++, p += 4) buf.writeFloatLE(t.data[i], p);
  }
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.tmp.${process.pid}`);
  try {
    fs.writeFileSync(tmp, buf);
    fs.renameSync(tmp, file);
  } catch (e) {
    try { fs.unlinkSync(tmp); } catch { /* ignore */ }
    throw new Error(`cannot write ${file}: ${e.message}`);
  }
  return buf.length;
}

async function main() {
  const args = process.argv.slice(2);
  if (args.length !== 2 && args.length !== 4) {
    fail('usage: inception3_tfjs.mjs MODEL_DIR OUT.safetensors [H W]');
  }
  const [modelDir, outFile] = args;
  const H = args.length === 4 ? Number(args[2]) : 75;
  const W = args.length === 4 ? Number(args[3]) : 75;
  // 75 is the smallest size Keras allows for the full InceptionV3; up to
  // mixed2 the valid convs/pools need H, W >= 27 (mixed* are then 1x1).
  if (!Number.isInteger(H) || !Number.isInteger(W) || H < 27 || W < 27 || H > 2048 || W > 2048) {
    fail(`bad size ${args[2]} x ${args[3]} (integers in [27, 2048])`);
  }

  let tf, tfl;
  try {
    tf = require('@tensorflow/tfjs-core');
    require('@tensorflow/tfjs-backend-cpu');
    tfl = require('@tensorflow/tfjs-layers');
  } catch (e) {
    fail(`cannot load TensorFlow.js (run npm ci in the repo root): ${e.message.split('\n')[0]}`);
  }
  // Speed: tfjs-layers runs every Conv2D through tf.fused.conv2d, whose
  // customGrad also computes the (unneeded) filter gradient, the bulk of
  // tf.grad's time on the CPU backend.  These convs have no bias and a linear
  // activation, so the plain conv2d op computes the same values and lets
  // tf.grad skip the filter gradient.
  const fusedConv2d = tf.fused.conv2d;
  tf.fused.conv2d = (a) => {
    if (a.bias == null && (a.activation == null || a.activation === 'linear') && a.preluActivationWeights == null) {
      return tf.conv2d(a.x, a.filter, a.strides, a.pad, a.dataFormat || 'NHWC', a.dilations || [1, 1], a.dimRoundingMode);
    }
    return fusedConv2d(a);
  };
  // Correctness: tfjs-backend-cpu's AvgPoolGrad always scales by
  // 1/(filter area), while its AvgPool forward (like TF/Keras) divides by the
  // number of in-bounds pixels of each 'same'-padded window; the gradient
  // near the borders of the avg-pool branches is then wrong (inconsistent
  // with the forward; a finite-difference check is off by ~2-10 %).  Replace
  // the AvgPool gradient with the exact one: AvgPoolGrad applied to
  // dy * area / count.
  tf.registerGradient({
    kernelName: 'AvgPool',
    inputsToSave: ['x'],
    gradFunc: (dy, saved, attrs) => {
      const [x] = saved;
      return { x: () => avgPoolGradExact(tf, dy, x, attrs) };
    },
  });
  const layersVersion = tfl.version_layers || require('@tensorflow/tfjs-layers/package.json').version;
  if (!(await tf.setBackend('cpu'))) fail('cannot set the tfjs cpu backend');
  await tf.ready();

  const t0 = Date.now();
  const model = loadUmd(path.join(modelDir, 'model.min.js'));
  if (!model || !model.modelTopology || !Array.isArray(model.weightsManifest)) {
    fail(`${modelDir}/model.min.js: no {modelTopology, weightsManifest}`);
  }
  const topo = JSON.parse(JSON.stringify(model.modelTopology));
  const cfg = topo.model_config && topo.model_config.config;
  if (!cfg || !Array.isArray(cfg.layers)) fail('modelTopology.model_config.config.layers missing');

  // Shards: base64 strings, concatenated in the manifest's path order.
  const shardBufs = [];
  for (const group of model.weightsManifest) {
    for (const p of group.paths) {
      const b64 = loadUmd(path.join(modelDir, `${p}.min.js`));
      if (typeof b64 !== 'string') fail(`${p}.min.js does not export a base64 string`);
      shardBufs.push(Buffer.from(b64, 'base64'));
    }
  }
  const allData = Buffer.concat(shardBufs);
  const allSpecs = model.weightsManifest.flatMap((g) => g.weights);
  let need = 0;
  for (const s of allSpecs) need += prod(s.shape) * bytesPerElement(s);
  if (need !== allData.length) fail(`weight data is ${allData.length} bytes, specs need ${need}`);

  // Keep only the ancestors of mixed2 (inclusive).
  const byName = new Map(cfg.layers.map((l) => [l.name, l]));
  for (const t of TAPS) if (!byName.has(t)) fail(`layer ${t} not in the topology`);
  const keep = new Set();
  const stack = [LAST];
  while (stack.length) {
    const n = stack.pop();
    if (keep.has(n)) continue;
    keep.add(n);
    const l = byName.get(n);
    for (const node of l.inbound_nodes || []) for (const inb of node) stack.push(inb[0]);
  }
  for (const t of TAPS) if (!keep.has(t)) fail(`tap ${t} is not an ancestor of ${LAST}`);
  cfg.layers = cfg.layers.filter((l) => keep.has(l.name));
  if (cfg.input_layers.length !== 1) fail('expected one input layer');
  const inName = cfg.input_layers[0][0];
  const inLayer = cfg.layers.find((l) => l.name === inName);
  if (!inLayer || inLayer.class_name !== 'InputLayer') fail(`input layer ${inName} missing`);
  inLayer.config.batch_input_shape = [null, null, null, 3];
  cfg.output_layers = TAPS.map((t) => [t, 0, 0]);
  delete topo.training_config;

  // Filter the weight specs and slice their bytes out of the concatenation.
  const weightSpecs = [];
  const parts = [];
  let nQuant = 0, nFloat = 0, off = 0;
  for (const s of allSpecs) {
    const n = prod(s.shape) * bytesPerElement(s);
    if (keep.has(s.name.split('/')[0])) {
      weightSpecs.push(s);
      parts.push(allData.subarray(off, off + n));
      if (s.quantization) nQuant++; else nFloat++;
    }
    off += n;
  }
  // tfjs 4.22 bug: a BatchNormalization with scale=false crashes under
  // tf.grad (the FusedBatchNorm kernel saves its undefined `scale` input for
  // the backward pass).  Work around it with scale=true and gamma = 1
  // (float32, unquantised), which computes exactly the same values.
  let nGamma = 0;
  for (const l of cfg.layers) {
    if (l.class_name !== 'BatchNormalization' || l.config.scale !== false) continue;
    const beta = weightSpecs.find((s) => s.name === `${l.name}/beta`);
    if (!beta) fail(`${l.name}/beta missing`);
    l.config.scale = true;
    weightSpecs.push({ name: `${l.name}/gamma`, shape: beta.shape.slice(), dtype: 'float32' });
    parts.push(Buffer.from(new Float32Array(prod(beta.shape)).fill(1).buffer));
    nGamma++;
  }
  const kept = Buffer.concat(parts);
  const weightData = kept.buffer.slice(kept.byteOffset, kept.byteOffset + kept.byteLength);

  const net = await tfl.loadLayersModel(tf.io.fromMemory({ modelTopology: topo, weightSpecs, weightData }));
  const tLoad = Date.now() - t0;
  console.log(`tfjs-core ${tf.version_core}, tfjs-layers ${layersVersion}, backend ${tf.getBackend()}`);
  console.log(`model: ${cfg.layers.length} layers kept up to ${LAST}, ${nQuant + nFloat} weights `
    + `(${nQuant} uint8-quantised, ${nFloat} unquantised) of ${allData.length} bytes; `
    + `+${nGamma} gamma=1 (scale=false workaround); load ${tLoad} ms`);

  const xData = makeImage(H, W, 12345, 0);
  const yData = makeImage(H, W, 987654321, 1);
  const x = tf.tensor4d(xData, [1, H, W, 3]);
  const y = tf.tensor4d(yData, [1, H, W, 3]);

  const t1 = Date.now();
  const phiX = net.apply(x, { training: false });
  const phiY = net.apply(y, { training: false });
  const lossOf = (xi) => {
    const fx = net.apply(xi, { training: false });
    let L = tf.scalar(0);
    for (let k = 0; k < TAPS.length; k++) L = tf.add(L, tf.mean(tf.abs(tf.sub(fx[k], phiY[k]))));
    return L;
  };
  await Promise.all(phiY.map((t) => t.data()));
  const tFwd = Date.now() - t1;
  const loss = tf.tidy(() => lossOf(x));
  const lossVal = (await loss.data())[0];
  const t2 = Date.now();
  const grad = tf.tidy(() => tf.grad(lossOf)(x));
  await grad.data();
  const tGrad = Date.now() - t2;
  const tRun = Date.now() - t1;

  const tensors = [
    { name: 'x', shape: [1, 3, H, W], data: nhwcToNchw(xData, H, W, 3) },
    { name: 'y', shape: [1, 3, H, W], data: nhwcToNchw(yData, H, W, 3) },
  ];
  for (let k = 0; k < TAPS.length; k++) {
    const [b, h, w, c] = phiX[k].shape;
    if (b !== 1) fail(`tap ${TAPS[k]}: batch ${b}`);
    const d = await phiX[k].data();
    let mx = 0;
    for (let i = 0; i < d.length; i++) mx = Math.max(mx, Math.abs(d[i]));
    const dy = await phiY[k].data();
    let diff = 0;
    for (let i = 0; i < d.length; i++) diff += Math.abs(d[i] - dy[i]);
    console.log(`tap ${TAPS[k].padEnd(12)} NCHW [1,${c},${h},${w}]  max|phi(x)|=${mx.toPrecision(6)}  mean|phi(x)-phi(y)|=${(diff / d.length).toPrecision(6)}`);
    tensors.push({ name: TAPS[k], shape: [1, c, h, w], data: nhwcToNchw(d, h, w, c) });
  }
  const g = await grad.data();
  let gmax = 0, gl1 = 0;
  for (let i = 0; i < g.length; i++) { gmax = Math.max(gmax, Math.abs(g[i])); gl1 += Math.abs(g[i]); }
  tensors.push({ name: 'loss', shape: [1], data: new Float32Array([lossVal]) });
  tensors.push({ name: 'grad', shape: [1, 3, H, W], data: nhwcToNchw(g, H, W, 3) });

  const bytes = writeSafetensors(outFile, tensors, {
    source: `tfjs-layers ${layersVersion}`,
    model: 'nsfwjs 4.4.0 inception_v3',
    input_space: 'pm1',
  });
  console.log(`input ${H}x${W}  loss=${lossVal.toPrecision(9)}  max|grad|=${gmax.toExponential(4)}  sum|grad|=${gl1.toExponential(4)}`);
  console.log(`time: load ${tLoad} ms, forward x+y ${tFwd} ms, forward+loss+grad ${tRun} ms (grad ${tGrad} ms), total ${Date.now() - t0} ms`);
  console.log(`wrote ${outFile} (${bytes} bytes)`);
}

main().catch((e) => { if (process.env.INC3_DEBUG) console.error(e); fail(e && e.message ? e.message.split('\n')[0] : String(e)); });
