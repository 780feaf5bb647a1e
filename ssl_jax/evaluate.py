"""Few-shot evaluation of a decoder by prompting alone, as in GPT-3 (Brown et al. 2020, section 2).

A task is a JSONL file, one example a line, of one of two kinds:
  {"context": "Review: a gem\\nSentiment:", "choices": [" positive", " negative"], "label": 0}
  {"context": "Q: 2 + 2 =", "target": " 4"}
For K shots, K examples are drawn from a training JSONL (seeded, per test example), each
written as its context followed by its answer (the labelled choice, or the target), and
joined by newlines ahead of the test example's context. No parameter changes.

Multiple choice: each choice is scored by the log-likelihood of its tokens after the
prompt, summed, and divided by its number of tokens (per-token normalised); the prediction
is the best-scoring choice, and both accuracies are reported (the paper uses either per
task). Free form: greedy generation up to a newline, exact match after stripping spaces.
A choice's tokens are those of prompt + choice past the prompt's own tokens (so " positive"
after "Sentiment:" is the model's usual word-initial piece); where the joint tokenization
does not start with the prompt's, the two are tokenized apart and joined.
A prompt longer than the model's positions keeps its rightmost tokens (the oldest
demonstrations go first), as a decoder reading a stream would.

  python run.py fewshot --workdir W --task TEST.jsonl --train TRAIN.jsonl --shots 0,1,4
  python -m ssl_jax.evaluate sst2 SST2_TRAIN.tsv OUT_DIR      # a two-choice SST-2 task
"""

import functools
import json
import os
import sys
from typing import List, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax import generate, storage
from ssl_jax.data import sources
from ssl_jax.data.text import DataError

BATCH = 16          # rows scored per forward pass
PAD_MULTIPLE = 32   # scored lengths are rounded up to this, so few shapes compile


def read_task(path: str) -> List[dict]:
  """The examples of a JSONL task file, each checked to be multiple choice or free form."""
  if not path or not _is_file(path):
    raise DataError(f'task file {path!r} does not exist')
  examples = []
  for where, ex in sources.jsonl_rows(path):   # a local path or a URL
    multiple_choice = (isinstance(ex.get('choices'), list) and isinstance(ex.get('label'), int)
                       and 0 <= ex['label'] < len(ex['choices']) and all(isinstance(c, str) for c in ex['choices']))
    if not isinstance(ex.get('context'), str) or not (multiple_choice or isinstance(ex.get('target'), str)):
      raise DataError(f'{where}: expected "context" and either "choices" with a "label" index or "target"')
    examples.append(ex)
  if not examples:
    raise DataError(f'task file {path} holds no examples')
  return examples


def answer(example: dict) -> str:
  return example['choices'][example['label']] if 'choices' in example else example['target']


def draw_demonstrations(train: Sequence[dict], k: int, seed: int, index: int) -> List[dict]:
  """K training examples for test example `index`: the same for every run of (seed, index)."""
  if k > len(train):
    raise DataError(f'{k} shots asked, but the training file holds {len(train)} examples')
  rng = np.random.default_rng([seed, index])
  return [train[i] for i in rng.choice(len(train), size=k, replace=False)]


def build_prompt(example: dict, demonstrations: Sequence[dict]) -> str:
  """Each demonstration's context and answer, then the example's context; one per line."""
  return '\n'.join([d['context'] + answer(d) for d in demonstrations] + [example['context']])


@functools.partial(jax.jit, static_argnames='model')
def _token_logprobs(model, params, inputs, targets):
  """inputs, targets (B, L) -> log p(targets[b, t] | inputs[b, :t + 1]) (B, L)."""
  logits = model.apply({'params': params}, inputs)                      # (B, L, V)
  logp = jax.nn.log_softmax(logits, axis=-1)
  return jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


def continuation_logprobs(model, params, requests: Sequence[Tuple[Sequence[int], Sequence[int]]]) -> List[np.ndarray]:
  """For each (context ids, continuation ids), the log-probability of each continuation token.

  Context and continuation are joined and the rightmost max_len + 1 tokens kept (the
  model reads max_len of them and predicts the last max_len)."""
  context = model.cfg.max_len
  rows = []
  for ctx, cont in requests:
    if len(ctx) == 0 or len(cont) == 0:
      raise DataError('a context and a continuation must each be at least one token')
    ids = (list(ctx) + list(cont))[-(context + 1):]
    rows.append((ids, min(len(cont), len(ids) - 1)))
  out = []
  for start in range(0, len(rows), BATCH):
    chunk = rows[start:start + BATCH]
    width = min(-(-max(len(ids) - 1 for ids, _ in chunk) // PAD_MULTIPLE) * PAD_MULTIPLE, context)
    inputs = np.zeros((BATCH, width), np.int32)    # a full batch always: one shape per width
    targets = np.zeros((BATCH, width), np.int32)
    for r, (ids, _) in enumerate(chunk):
      inputs[r, :len(ids) - 1], targets[r, :len(ids) - 1] = ids[:-1], ids[1:]
    logp = np.asarray(_token_logprobs(model, params, jnp.asarray(inputs), jnp.asarray(targets)))
    out += [logp[r, len(ids) - 1 - n:len(ids) - 1] for r, (ids, n) in enumerate(chunk)]
  return out


def split_tokens(tokenizer, context: str, continuation: str) -> Tuple[List[int], List[int]]:
  """(context ids, continuation ids), the continuation's as tokenized after the context."""
  ctx = [int(i) for i in tokenizer.encode(context)]
  joint = [int(i) for i in tokenizer.encode(context + continuation)]
  if joint[:len(ctx)] == ctx and len(joint) > len(ctx):
    return ctx, joint[len(ctx):]
  return ctx, [int(i) for i in tokenizer.encode(continuation)]


def evaluate(model, params, tokenizer, test: Sequence[dict], train: Sequence[dict], shots: Sequence[int],
             seed: int = 0) -> List[dict]:
  """One row per K: accuracy (free form), or accuracy_sum and accuracy_per_token (multiple choice)."""
  results = []
  for k in shots:
    prompts = [build_prompt(ex, draw_demonstrations(train, k, seed, i)) for i, ex in enumerate(test)]
    row = {'shots': k, 'examples': len(test)}
    choice = [i for i, ex in enumerate(test) if 'choices' in ex]
    if choice:
      requests, owners = [], []
      for i in choice:
        for c in test[i]['choices']:
          requests.append(split_tokens(tokenizer, prompts[i], c))
          owners.append(i)
      logprobs = continuation_logprobs(model, params, requests)
      by_example = {}
      for i, lp in zip(owners, logprobs):
        by_example.setdefault(i, []).append(lp)
      summed = [int(np.argmax([lp.sum() for lp in by_example[i]])) == test[i]['label'] for i in choice]
      per_token = [int(np.argmax([lp.mean() for lp in by_example[i]])) == test[i]['label'] for i in choice]
      row.update(accuracy_sum=float(np.mean(summed)), accuracy_per_token=float(np.mean(per_token)),
                 chance=float(np.mean([1 / len(test[i]['choices']) for i in choice])))
    free = [i for i, ex in enumerate(test) if 'choices' not in ex]
    if free:
      longest = max(len(tokenizer.encode(test[i]['target'])) for i in free)
      texts = generate.complete(model, params, tokenizer, [prompts[i] for i in free], longest + 2, stop=['\n'],
                                temperature=0.0, seed=seed)
      row['accuracy'] = float(np.mean([t.strip() == test[i]['target'].strip() for t, i in zip(texts, free)]))
    results.append(row)
  return results


METRICS = ('accuracy_sum', 'accuracy_per_token', 'accuracy')


def table(results: Sequence[dict]) -> str:
  """Accuracy against K as a fixed-width text table."""
  columns = [m for m in METRICS if any(m in r for r in results)]
  lines = ['  '.join(['shots'] + [f'{c:>18}' for c in columns])]
  for r in results:
    lines.append('  '.join([f'{r["shots"]:>5}'] + [f'{r[c]:>18.4f}' if c in r else f'{"":>18}' for c in columns]))
  return '\n'.join(lines)


def _is_file(path: str) -> bool:
  return storage.exists(path) if storage.is_url(path) else os.path.isfile(path)


def plot(results: Sequence[dict], title: str, out: str) -> str:
  """A PNG at `out` (a local path or a URL: drawn into a buffer, then written whole)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
  shots = [r['shots'] for r in results]
  for m in METRICS:
    if any(m in r for r in results):
      ax.plot(shots, [r.get(m, np.nan) for r in results], 'o-', label=m)
  if 'chance' in results[0]:
    ax.axhline(results[0]['chance'], color='gray', linestyle='--', label='chance')
  ax.set_xlabel('examples in the prompt (K)')
  ax.set_ylabel('accuracy')
  ax.set_xticks(shots)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  buffer = storage.buffer()
  fig.savefig(buffer, format='png')
  plt.close(fig)
  storage.write_bytes(out, buffer.getvalue())
  return out


def fewshot_command(setup, params, task_file: str, train_file: str, shots: str, workdir: str) -> List[dict]:
  """`run.py fewshot`: the table printed, fewshot_<task>.json and fewshot_<task>.png in the workdir."""
  try:
    ks = [int(k) for k in shots.split(',') if k.strip()]
  except ValueError:
    raise DataError(f'--shots {shots!r}: expected integers separated by commas, e.g. 0,1,4') from None
  test = read_task(task_file)
  train = read_task(train_file) if train_file else []
  if any(ks) and not train:
    raise DataError('shots above 0 need --train, the JSONL the examples are drawn from')
  params = jax.device_get(params)
  results = evaluate(setup.model, params, setup.tokenizer, test, train, ks, seed=setup.config.seed)
  name = os.path.splitext(os.path.basename(task_file))[0]
  print(f'{name}: {len(test)} examples, accuracy against the number of examples in the prompt (K)')
  print(table(results), flush=True)
  path = storage.join(workdir, f'fewshot_{name}.json')
  storage.write_text(path, json.dumps({'task': task_file, 'train': train_file, 'results': results}, indent=2))
  png = plot(results, name, storage.join(workdir, f'fewshot_{name}.png'))
  print(f'wrote {path} and {png}')
  return results


# SST-2 as a two-choice task.

SST2_CHOICES = (' negative', ' positive')   # SST-2's labels 0 and 1


def sst2_task(tsv_path: str, out_dir: str, num_test: int = 500, num_train: int = 2000) -> Tuple[str, str]:
  """Writes test.jsonl and train.jsonl from SST-2's labelled train.tsv: context
  "Review: <sentence>\\nSentiment:", choices " negative"/" positive". Train comes from the
  first rows, test from the last: disjoint parts of the file."""
  with open(tsv_path, encoding='utf-8') as f:
    rows = [line.rstrip('\n').split('\t') for line in f][1:]   # header: sentence, label
  rows = [(text.strip(), int(label)) for text, label in rows if text.strip()]
  if len(rows) < num_test + num_train:
    raise DataError(f'{tsv_path}: {len(rows)} rows, fewer than {num_test} test + {num_train} train')
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for name, part in (('test', rows[-num_test:]), ('train', rows[:num_train])):
    path = os.path.join(out_dir, f'sst2_{name}.jsonl')
    with open(path, 'w', encoding='utf-8') as f:
      for text, label in part:
        f.write(json.dumps({'context': f'Review: {text}\nSentiment:', 'choices': list(SST2_CHOICES),
                            'label': label}) + '\n')
    paths.append(path)
  return tuple(paths)


if __name__ == '__main__':
  if len(sys.argv) != 4 or sys.argv[1] != 'sst2':
    sys.exit('usage: python -m ssl_jax.evaluate sst2 SST2_TRAIN.tsv OUT_DIR')
  print('\n'.join(sst2_task(sys.argv[2], sys.argv[3])))
