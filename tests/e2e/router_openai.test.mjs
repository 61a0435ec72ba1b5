// End-to-end test of the router through the official `openai` npm client: two prefill workers
// and one decode worker (cpu backend, test-tiny model, dummy weights) behind
// `pdpool-agent router`, all real processes on loopback. Checks what a user of the OpenAI API
// sees: model list, completions and chat (plain and streamed, the stream adding up to the plain
// text at temperature 0), seeded sampling, max_tokens, and the errors the client raises.
//
// Run: cd tests/e2e && npm ci && PDPOOL_BUILD_DIR=../../build node --test
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import OpenAI from 'openai';

const here = path.dirname(fileURLToPath(import.meta.url));
const buildDir = path.resolve(here, process.env.PDPOOL_BUILD_DIR ?? '../../build');
const agentBinary = path.join(buildDir, 'pdpool-agent');
const MODEL = 'tiny';
const READY_DEADLINE_MS = 120_000;

const processes = [];
let workDir;
let routerUrl;
let client;

// A port the kernel considers free right now on loopback.
function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

// Starts `pdpool-agent <args>`, keeping the tail of its output for failure messages.
function startAgent(name, args) {
  const child = spawn(agentBinary, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const proc = { name, child, output: '', exited: null };
  const keep = (data) => {
    proc.output = (proc.output + data.toString()).slice(-8000);
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  child.on('exit', (code, signal) => {
    proc.exited = { code, signal };
  });
  processes.push(proc);
  return proc;
}

// Polls GET /readyz until 200, the process exits, or the deadline passes.
async function waitReady(proc, port) {
  const deadline = Date.now() + READY_DEADLINE_MS;
  while (Date.now() < deadline) {
    if (proc.exited) {
      throw new Error(`${proc.name} exited (${JSON.stringify(proc.exited)}):\n${proc.output}`);
    }
    try {
      const res = await fetch(`http://127.0.0.1:${port}/readyz`);
      if (res.status === 200) return;
    } catch {
      // not listening yet
    }
    await sleep(100);
  }
  throw new Error(`${proc.name} not ready after ${READY_DEADLINE_MS} ms:\n${proc.output}`);
}

async function stopAll() {
  await Promise.all(
    processes.map(async (proc) => {
      if (proc.exited) return;
      const exited = new Promise((resolve) => proc.child.once('exit', resolve));
      proc.child.kill('SIGTERM');
      const timer = setTimeout(() => proc.child.kill('SIGKILL'), 15_000);
      await exited;
      clearTimeout(timer);
    }),
  );
}

before(async () => {
  assert.ok(existsSync(agentBinary), `no ${agentBinary}: build it or set PDPOOL_BUILD_DIR`);
  workDir = mkdtempSync(path.join(tmpdir(), 'pdpool-e2e-'));
  const tokenFile = path.join(workDir, 'token');
  writeFileSync(tokenFile, 'e2e-pool-token\n', { mode: 0o600 });

  const [prefillA, prefillB, decode, router] = [
    await freePort(),
    await freePort(),
    await freePort(),
    await freePort(),
  ];
  const worker = (role, port) =>
    startAgent(`${role} worker :${port}`, [
      'worker', '--role', role, '--backend', 'cpu', '--model', 'test-tiny',
      '--weights', 'dummy:1', '--port', String(port), '--auth-token-file', tokenFile,
    ]);
  const workers = [
    [worker('prefill', prefillA), prefillA],
    [worker('prefill', prefillB), prefillB],
    [worker('decode', decode), decode],
  ];
  const routerProc = startAgent('router', [
    'router', '--port', String(router), '--served-model-name', MODEL,
    '--prefill', `127.0.0.1:${prefillA},127.0.0.1:${prefillB}`,
    '--decode', `127.0.0.1:${decode}`, '--auth-token-file', tokenFile,
  ]);
  try {
    for (const [proc, port] of workers) await waitReady(proc, port);
    await waitReady(routerProc, router);
  } catch (err) {
    await stopAll();
    throw err;
  }
  routerUrl = `http://127.0.0.1:${router}`;
  client = new OpenAI({ baseURL: `${routerUrl}/v1`, apiKey: 'unused', maxRetries: 0, timeout: 60_000 });
});

after(async () => {
  await stopAll();
  if (workDir) rmSync(workDir, { recursive: true, force: true });
});

// Collects a streamed completion or chat completion.
async function collect(stream) {
  let text = '';
  let finishReason = null;
  let usage = null;
  const chunks = [];
  for await (const chunk of stream) {
    chunks.push(chunk);
    if (chunk.usage) usage = chunk.usage;
    const choice = chunk.choices?.[0];
    if (!choice) continue;
    text += choice.text ?? choice.delta?.content ?? '';
    if (choice.finish_reason) finishReason = choice.finish_reason;
  }
  return { text, finishReason, usage, chunks };
}

test('models.list names the served model', async () => {
  const page = await client.models.list();
  assert.deepEqual(page.data.map((m) => m.id), [MODEL]);
  assert.equal(page.data[0].object, 'model');
  assert.equal(page.data[0].owned_by, 'pdpool');
});

test('completion, plain and streamed, agree at temperature 0', async () => {
  const params = { model: MODEL, prompt: 'The capital of France is', max_tokens: 12, temperature: 0 };
  const plain = await client.completions.create(params);
  assert.equal(plain.object, 'text_completion');
  assert.equal(plain.model, MODEL);
  assert.match(plain.id, /^cmpl-/);
  assert.equal(plain.choices.length, 1);
  const choice = plain.choices[0];
  assert.ok(['length', 'stop'].includes(choice.finish_reason), choice.finish_reason);
  assert.equal(typeof choice.text, 'string');
  assert.ok(plain.usage.prompt_tokens > 0);
  assert.ok(plain.usage.completion_tokens >= 1 && plain.usage.completion_tokens <= 12);
  assert.equal(plain.usage.total_tokens, plain.usage.prompt_tokens + plain.usage.completion_tokens);

  const streamed = await collect(
    await client.completions.create({ ...params, stream: true, stream_options: { include_usage: true } }),
  );
  assert.ok(streamed.chunks.length >= 2);
  for (const chunk of streamed.chunks) assert.equal(chunk.object, 'text_completion');
  assert.equal(streamed.text, choice.text);
  assert.equal(streamed.finishReason, choice.finish_reason);
  assert.deepEqual(streamed.usage, plain.usage);
});

test('chat completion, plain and streamed', async () => {
  const params = {
    model: MODEL,
    messages: [
      { role: 'system', content: 'You are terse.' },
      { role: 'user', content: 'Say hello.' },
    ],
    max_tokens: 8,
    temperature: 0,
  };
  const plain = await client.chat.completions.create(params);
  assert.equal(plain.object, 'chat.completion');
  assert.match(plain.id, /^chatcmpl-/);
  const message = plain.choices[0].message;
  assert.equal(message.role, 'assistant');
  assert.equal(typeof message.content, 'string');
  assert.ok(['length', 'stop'].includes(plain.choices[0].finish_reason));
  assert.ok(plain.usage.completion_tokens <= 8);

  const streamed = await collect(await client.chat.completions.create({ ...params, stream: true }));
  assert.equal(streamed.chunks[0].object, 'chat.completion.chunk');
  assert.equal(streamed.chunks[0].choices[0].delta.role, 'assistant');
  assert.equal(streamed.text, message.content);
  assert.equal(streamed.finishReason, plain.choices[0].finish_reason);
});

test('the same seed gives the same text at temperature 0.8', async () => {
  const params = { model: MODEL, prompt: 'Once upon a time', max_tokens: 16, temperature: 0.8, seed: 1234 };
  const a = await client.completions.create(params);
  const b = await client.completions.create(params);
  assert.equal(a.choices[0].text, b.choices[0].text);
  assert.equal(a.usage.completion_tokens, b.usage.completion_tokens);
});

test('max_tokens is respected exactly with ignore_eos', async () => {
  for (const max_tokens of [1, 7]) {
    const res = await client.completions.create({
      model: MODEL, prompt: 'Count:', max_tokens, temperature: 0, ignore_eos: true,
    });
    assert.equal(res.usage.completion_tokens, max_tokens);
    assert.equal(res.choices[0].finish_reason, 'length');
  }
  const chat = await client.chat.completions.create({
    model: MODEL, messages: [{ role: 'user', content: 'Go on.' }], max_completion_tokens: 5,
    ignore_eos: true,
  });
  assert.equal(chat.usage.completion_tokens, 5);
});

test('bad requests raise the client errors', async () => {
  const isStatus = (cls, status) => (err) => {
    assert.ok(err instanceof cls, `${err?.constructor?.name}: ${err?.message}`);
    assert.equal(err.status, status);
    return true;
  };
  await assert.rejects(
    client.completions.create({ model: MODEL, prompt: 'x', max_tokens: 0 }),
    isStatus(OpenAI.BadRequestError, 400),
  );
  await assert.rejects(
    client.completions.create({ model: MODEL, prompt: 'x'.repeat(200_000), max_tokens: 4 }),
    isStatus(OpenAI.BadRequestError, 400),
  );
  // A streamed request fails before its stream starts: a status, not an event.
  await assert.rejects(
    client.completions.create({ model: MODEL, prompt: 'x', temperature: 5, stream: true }),
    isStatus(OpenAI.BadRequestError, 400),
  );
  await assert.rejects(
    client.completions.create({ model: 'no-such-model', prompt: 'x', max_tokens: 4 }),
    isStatus(OpenAI.NotFoundError, 404),
  );
  await assert.rejects(
    client.chat.completions.create({ model: MODEL, messages: [], max_tokens: 4 }),
    isStatus(OpenAI.BadRequestError, 400),
  );

  const res = await fetch(`${routerUrl}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: '{"model": "tiny", "prompt": ',
  });
  assert.equal(res.status, 400);
  const body = await res.json();
  assert.equal(body.error.type, 'invalid_request_error');
  assert.equal(typeof body.error.message, 'string');
});
