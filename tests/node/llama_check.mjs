// llama_check.mjs: drive the real llama.cpp runtime (node-llama-cpp's prebuilt
// CPU binaries) on one GGUF file and print what it did as JSON on stdout.
//
// Used by tests/python/test_llama_runtime.py to check kiln's output against an
// independent reference. Must stay true:
// - CPU only (gpu: false), 2 threads, no download or build of binaries at run
//   time (build: "never"), so it behaves the same on a developer's laptop and CI;
// - token ids in and out, never text, so tokenizer and model checks stay apart;
// - greedy decisions are made here from raw logits (argmax, lowest id on a tie),
//   and the top logits are reported, so the caller can judge how clear each
//   decision was instead of trusting a sampler;
// - stdout carries exactly one JSON document; llama.cpp's logs go to stderr.
//
// Usage: node llama_check.mjs REQUEST.json   (or the request on stdin)
// Request: {
//   "model": "path/to/file.gguf",
//   "tokenize": ["text", ...],               // -> tokenize: [[ids], ...] (no BOS added, no special parsing)
//   "evaluate": {"tokens": [ids], "top": 5, "full": false},
//       // teacher-forced: one forward pass over all tokens; for every position
//       // i, the logits predicting token i+1 -> evaluate: [{argmax, top: [[id, logit], ...], logits?}]
//   "generate": {"prompt": [ids], "n": 16, "top": 2}
//       // greedy: -> generate: {tokens: [ids], steps: [{argmax, top}]}
// }

import fs from "node:fs";
import {getLlama, LlamaLogLevel} from "node-llama-cpp";

function readRequest() {
    const arg = process.argv[2];
    const text = arg && arg !== "-" ? fs.readFileSync(arg, "utf8") : fs.readFileSync(0, "utf8");
    return JSON.parse(text);
}

function checkIds(name, ids, nVocab) {
    if (!Array.isArray(ids) || ids.length === 0)
        throw new Error(`${name}: expected a non-empty array of token ids`);
    for (const id of ids) {
        if (!Number.isInteger(id) || id < 0 || id >= nVocab)
            throw new Error(`${name}: token id ${id} outside the vocabulary [0, ${nVocab})`);
    }
}

// Map<id, logit> sorted by logit (node-llama-cpp's order) -> [[id, logit], ...]
// re-sorted by (logit desc, id asc) so that ties resolve the same way every run.
function topList(logitsMap, top) {
    const all = Array.from(logitsMap.entries());
    all.sort((a, b) => (b[1] - a[1]) || (a[0] - b[0]));
    return all.slice(0, top);
}

function fullLogits(logitsMap, nVocab) {
    const out = new Array(nVocab).fill(null);
    for (const [id, logit] of logitsMap.entries())
        out[id] = logit;
    return out;
}

async function evaluateAll(context, tokens, top, full, nVocab) {
    const sequence = context.getSequence();
    try {
        const logitsOpt = full ? true : {filter: {tokens: [], includeTop: Math.max(top, 2)}};
        const input = tokens.map((t) => [t, {generateNext: {logits: logitsOpt}}]);
        const results = await sequence.controlledEvaluate(input);
        return results.map((r, i) => {
            if (r?.next?.logits == null)
                throw new Error(`no logits returned for position ${i}`);
            const list = topList(r.next.logits, Math.max(top, 2));
            const row = {argmax: list[0][0], top: list.slice(0, top)};
            if (full)
                row.logits = fullLogits(r.next.logits, nVocab);
            return row;
        });
    } finally {
        sequence.dispose();
    }
}

async function generateGreedy(context, prompt, n, top) {
    const sequence = context.getSequence();
    try {
        const tokens = [];
        const steps = [];
        const logitsOpt = {filter: {tokens: [], includeTop: Math.max(top, 2)}};
        // First call: the whole prompt, logits only at its last position.
        let input = prompt.map((t, i) => (i === prompt.length - 1 ? [t, {generateNext: {logits: logitsOpt}}] : t));
        for (let step = 0; step < n; step++) {
            const results = await sequence.controlledEvaluate(input);
            const last = results[results.length - 1];
            if (last?.next?.logits == null)
                throw new Error(`no logits returned at generation step ${step}`);
            const list = topList(last.next.logits, Math.max(top, 2));
            const next = list[0][0];
            tokens.push(next);
            steps.push({argmax: next, top: list.slice(0, top)});
            input = [[next, {generateNext: {logits: logitsOpt}}]];
        }
        return {tokens, steps};
    } finally {
        sequence.dispose();
    }
}

async function main() {
    const req = readRequest();
    if (typeof req.model !== "string")
        throw new Error("request needs \"model\": a path to a .gguf file");
    if (!fs.existsSync(req.model))
        throw new Error(`model file not found: ${req.model}`);

    const llama = await getLlama({
        gpu: false,
        build: "never",
        skipDownload: true,
        usePrebuiltBinaries: true,
        progressLogs: false,
        maxThreads: 2,
        logLevel: LlamaLogLevel.error,
        logger: (level, message) => process.stderr.write(`[llama ${level}] ${message}\n`),
    });
    const model = await llama.loadModel({modelPath: req.model, gpuLayers: 0, useMmap: true, checkTensors: true});
    const nVocab = model.fileInfo.metadata?.tokenizer?.ggml?.tokens?.length;
    if (!Number.isInteger(nVocab) || nVocab <= 0)
        throw new Error("could not read the vocabulary size (tokenizer.ggml.tokens) from the file");
    const out = {
        model: req.model,
        info: {
            vocabularyType: model.vocabularyType,
            nVocab,
            trainContextSize: model.trainContextSize,
            bos: model.tokens.bos ?? null,
            eos: model.tokens.eos ?? null,
            architecture: model.fileInfo.metadata?.general?.architecture ?? null,
        },
    };

    if (req.tokenize !== undefined) {
        out.tokenize = req.tokenize.map((s) => Array.from(model.tokenize(s, false)));
    }

    const needed = Math.max(
        req.evaluate ? req.evaluate.tokens.length : 0,
        req.generate ? req.generate.prompt.length + req.generate.n : 0,
    );
    if (needed > 0) {
        const contextSize = Math.max(64, needed + 8);
        const context = await model.createContext({
            contextSize,
            batchSize: contextSize,
            sequences: 2,  // one for evaluate, one for generate
            threads: 2,
            seed: 0,
            // F32 KV cache: the default F16 cache rounds K and V, which would be
            // the largest error left between an F32 file and the float64 reference.
            experimentalKvCacheKeyType: "F32",
            experimentalKvCacheValueType: "F32",
            flashAttention: false,
        });
        try {
            if (req.evaluate) {
                checkIds("evaluate.tokens", req.evaluate.tokens, nVocab);
                out.evaluate = await evaluateAll(context, req.evaluate.tokens, req.evaluate.top ?? 5, !!req.evaluate.full, nVocab);
            }
            if (req.generate) {
                checkIds("generate.prompt", req.generate.prompt, nVocab);
                out.generate = await generateGreedy(context, req.generate.prompt, req.generate.n, req.generate.top ?? 2);
            }
        } finally {
            await context.dispose();
        }
    }
    await model.dispose();
    await llama.dispose();
    process.stdout.write(JSON.stringify(out) + "\n");
}

main().catch((err) => {
    process.stderr.write(`llama_check: ${err?.stack ?? err}\n`);
    process.exit(1);
});
