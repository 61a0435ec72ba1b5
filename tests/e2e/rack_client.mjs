// rack_client.mjs — the official `openai` npm client against a pool's router, for the rack
// end-to-end test (tests/integration/rack_e2e_test.cc). It checks nothing itself: it prints what
// a user of the OpenAI API got, as JSON on stdout, and the C++ test judges it. Not a
// `*.test.mjs`: tests/CMakeLists.txt runs those standalone, this one needs a running rack.
//
//   node rack_client.mjs check --base-url http://IP:8080/v1 --model NAME [--max-tokens N]
//       models.list, one completion and one streamed chat completion (ignore_eos, so exactly
//       N tokens are due); prints one JSON object and exits 0, or prints {"error": ...} and
//       exits 1 when the client raised.
//   node rack_client.mjs load --base-url URL --model NAME [--rate R] [--prompt-chars C]
//       [--max-tokens N] [--max-inflight K] [--duration S]
//       streamed completions started at R per second (at most K in flight; a start that
//       would exceed K is counted as skipped, not queued), until SIGTERM/SIGINT or S seconds
//       (0: until signalled). Prints a JSON progress line every second and a final line
//       {"summary": true, ...} after the requests in flight finished (at most 20 s).
import OpenAI from 'openai';

function parseArgs(argv) {
  const [mode, ...rest] = argv;
  const opts = { mode };
  for (let i = 0; i < rest.length; i += 2) {
    const key = rest[i];
    const value = rest[i + 1];
    if (!key?.startsWith('--') || value === undefined) {
      throw new Error(`bad argument ${key ?? ''}: options are --name value pairs`);
    }
    opts[key.slice(2)] = value;
  }
  if (!['check', 'load'].includes(mode)) throw new Error(`mode must be check or load, got ${mode}`);
  for (const required of ['base-url', 'model']) {
    if (!opts[required]) throw new Error(`--${required} is required`);
  }
  return opts;
}

function numberOpt(opts, name, fallback) {
  if (opts[name] === undefined) return fallback;
  const n = Number(opts[name]);
  if (!Number.isFinite(n) || n < 0) throw new Error(`--${name} must be a number >= 0, got ${opts[name]}`);
  return n;
}

// What a stream delivered, chunk by chunk.
async function collect(stream) {
  const out = { chunks: 0, contentChunks: 0, text: '', role: null, finishReason: null, usage: null, objects: [] };
  for await (const chunk of stream) {
    out.chunks += 1;
    if (!out.objects.includes(chunk.object)) out.objects.push(chunk.object);
    if (chunk.usage) out.usage = chunk.usage;
    const choice = chunk.choices?.[0];
    if (!choice) continue;
    const piece = choice.text ?? choice.delta?.content ?? '';
    if (piece.length > 0) out.contentChunks += 1;
    out.text += piece;
    if (choice.delta?.role) out.role ??= choice.delta.role;
    if (choice.finish_reason) out.finishReason = choice.finish_reason;
  }
  return out;
}

async function check(client, opts) {
  const model = opts.model;
  const maxTokens = numberOpt(opts, 'max-tokens', 16);
  const models = await client.models.list();
  const completion = await client.completions.create({
    model,
    prompt: 'The rack end-to-end test asks:',
    max_tokens: maxTokens,
    temperature: 0,
    ignore_eos: true,
  });
  const chat = await collect(
    await client.chat.completions.create({
      model,
      messages: [
        { role: 'system', content: 'You are terse.' },
        { role: 'user', content: 'Count to ten.' },
      ],
      max_tokens: maxTokens,
      temperature: 0,
      ignore_eos: true,
      stream: true,
      stream_options: { include_usage: true },
    }),
  );
  return {
    models: models.data.map((m) => m.id),
    completion: {
      object: completion.object,
      model: completion.model,
      text: completion.choices[0]?.text ?? '',
      finishReason: completion.choices[0]?.finish_reason ?? null,
      usage: completion.usage,
    },
    chatStream: chat,
  };
}

async function load(client, opts) {
  const rate = numberOpt(opts, 'rate', 20);
  const promptChars = numberOpt(opts, 'prompt-chars', 3000);
  const maxTokens = numberOpt(opts, 'max-tokens', 16);
  const maxInflight = numberOpt(opts, 'max-inflight', 64);
  const durationS = numberOpt(opts, 'duration', 0);
  if (rate <= 0) throw new Error('--rate must be > 0');
  const prompt = 'a'.repeat(promptChars);
  const counts = { started: 0, ok: 0, failed: 0, short: 0, skipped: 0, tokens: 0, inflight: 0 };
  let lastError = '';
  const inflight = new Set();
  const stopper = new AbortController();

  const one = async () => {
    counts.started += 1;
    counts.inflight += 1;
    try {
      const stream = await client.completions.create(
        {
          model: opts.model,
          prompt,
          max_tokens: maxTokens,
          ignore_eos: true,
          stream: true,
          stream_options: { include_usage: true },
        },
        { signal: stopper.signal },
      );
      const got = await collect(stream);
      const tokens = got.usage?.completion_tokens ?? 0;
      counts.tokens += tokens;
      if (tokens === maxTokens && got.text.length > 0) {
        counts.ok += 1;
      } else {
        counts.short += 1;
        lastError = `stream ended with ${tokens} of ${maxTokens} tokens (finish ${got.finishReason})`;
      }
    } catch (err) {
      if (!stopper.signal.aborted) {
        counts.failed += 1;
        lastError = `${err?.constructor?.name}: ${err?.status ?? ''} ${err?.message}`;
      }
    } finally {
      counts.inflight -= 1;
    }
  };

  let stopping = false;
  let resolveStop;
  const stopped = new Promise((resolve) => {
    resolveStop = resolve;
  });
  const stop = () => {
    if (stopping) return;
    stopping = true;
    resolveStop();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  const startedAt = Date.now();
  if (durationS > 0) setTimeout(stop, durationS * 1000).unref();

  // Starts on a fixed schedule (open loop), catching up after timer lateness.
  let due = 0;
  const ticker = setInterval(() => {
    const target = Math.floor(((Date.now() - startedAt) / 1000) * rate);
    while (due < target && !stopping) {
      due += 1;
      if (counts.inflight >= maxInflight) {
        counts.skipped += 1;
        continue;
      }
      const p = one();
      inflight.add(p);
      p.finally(() => inflight.delete(p));
    }
  }, 10);
  const progress = setInterval(() => {
    console.log(JSON.stringify({ progress: true, elapsedS: (Date.now() - startedAt) / 1000, ...counts }));
  }, 1000);

  await stopped;
  clearInterval(ticker);
  // Let the streams in flight finish; past 20 s, abort them (not counted as failures).
  const abortTimer = setTimeout(() => stopper.abort(), 20_000);
  await Promise.allSettled([...inflight]);
  clearTimeout(abortTimer);
  clearInterval(progress);
  return { summary: true, elapsedS: (Date.now() - startedAt) / 1000, ...counts, lastError };
}

async function main() {
  let opts;
  try {
    opts = parseArgs(process.argv.slice(2));
  } catch (err) {
    console.log(JSON.stringify({ error: `usage: ${err.message}` }));
    process.exit(2);
  }
  const client = new OpenAI({
    baseURL: opts['base-url'],
    apiKey: 'unused',
    maxRetries: 0,
    timeout: 120_000,
  });
  try {
    const result = opts.mode === 'check' ? await check(client, opts) : await load(client, opts);
    console.log(JSON.stringify(result));
    process.exit(0);
  } catch (err) {
    console.log(
      JSON.stringify({ error: `${err?.constructor?.name}: ${err?.status ?? ''} ${err?.message}` }),
    );
    process.exit(1);
  }
}

await main();
