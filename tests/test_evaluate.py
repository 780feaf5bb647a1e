"""Few-shot prompts and scoring, ROUGE on hand-worked examples, and the fewshot and summarize commands."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from ssl_jax import cli, evaluate, generate, summarize, trainer
from ssl_jax.models.gpt import GPT
from ssl_jax.models.layers import TransformerConfig

TRAIN = [{'context': f'q{i}:', 'choices': [' a', ' bb'], 'label': i % 2} for i in range(10)]


def test_demonstrations_are_seeded_distinct_and_joined_by_newlines():
  first = evaluate.draw_demonstrations(TRAIN, 3, seed=0, index=7)
  assert first == evaluate.draw_demonstrations(TRAIN, 3, seed=0, index=7)
  assert len({d['context'] for d in first}) == 3
  assert any(evaluate.draw_demonstrations(TRAIN, 3, seed=0, index=i) != first for i in range(3))
  query = {'context': 'Review: fine\nSentiment:', 'choices': [' negative', ' positive'], 'label': 1}
  prompt = evaluate.build_prompt(query, [TRAIN[1], TRAIN[2], {'context': 'x =', 'target': ' 4'}])
  assert prompt == 'q1: bb\nq2: a\nx = 4\nReview: fine\nSentiment:'
  assert evaluate.build_prompt(query, []) == query['context']
  with pytest.raises(ValueError, match='3 shots asked'):
    evaluate.draw_demonstrations(TRAIN[:2], 3, seed=0, index=0)


TINY_CFG = TransformerConfig(num_layers=2, num_heads=2, d_model=32, d_ff=64, vocab_size=30, max_len=16, init_std=0.2)


@pytest.fixture(scope='module')
def tiny_model():
  model = GPT(TINY_CFG)
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))['params'])
  return model, params


@jax.jit
def _forward(params, inputs):
  return GPT(TINY_CFG).apply({'params': params}, inputs)


def plain_logprob(model, params, ids, n):
  """Sum of log p of the last n of `ids`, from one forward pass over them (right-padded to
  the model's length, which a causal model does not see)."""
  inputs = np.zeros((1, model.cfg.max_len), np.int32)
  inputs[0, :len(ids) - 1] = ids[:-1]
  logp = np.asarray(jax.nn.log_softmax(_forward(params, inputs), axis=-1))[0]
  return float(sum(logp[t, ids[t + 1]] for t in range(len(ids) - 1 - n, len(ids) - 1)))


def test_choice_loglikelihood_is_the_sum_of_a_plain_forward_pass(tiny_model):
  model, params = tiny_model
  requests = [([3, 4, 5], [6]), ([1], [2, 9, 9, 4]), (list(range(1, 26)), [7, 8])]  # the last: past 16 positions
  got = evaluate.continuation_logprobs(model, params, requests)
  assert [len(g) for g in got] == [1, 4, 2]
  for (ctx, cont), lp in zip(requests, got):
    ids = (ctx + cont)[-17:]                         # the rightmost max_len + 1 tokens
    assert lp.sum() == pytest.approx(plain_logprob(model, params, ids, len(cont)), abs=1e-4)


class Digits:
  """A tokenizer of the characters 0-9, a-t (30 ids): enough for the scoring test."""
  alphabet = '0123456789abcdefghijklmnopqrst'
  vocab_size = 30

  def encode(self, text):
    return np.asarray([self.alphabet.index(c) for c in text], np.int32)

  def decode(self, ids):
    return ''.join(self.alphabet[i] for i in ids)


class Merging:
  """Characters as ids, except that "ab" is one token (id 99): a joint tokenization can differ."""

  def encode(self, text):
    ids, i = [], 0
    while i < len(text):
      ids.append(99 if text.startswith('ab', i) else ord(text[i]))
      i += 2 if ids[-1] == 99 else 1
    return np.asarray(ids, np.int32)


def test_a_choice_is_tokenized_after_its_context_unless_that_splits_the_context():
  tok = Merging()
  assert evaluate.split_tokens(tok, 'x:', 'ab') == ([ord('x'), ord(':')], [99])
  assert evaluate.split_tokens(tok, 'xa', 'b') == ([ord('x'), ord('a')], [ord('b')])   # joint: x, ab


def test_sum_and_per_token_scores_pick_as_computed_by_hand(tiny_model):
  model, params = tiny_model
  tok = Digits()
  test = [{'context': c, 'choices': ['a', 'bcd', 'e'], 'label': label} for c, label in (('12', 0), ('345', 1),
                                                                                           ('6', 2), ('78', 1))]
  [row] = evaluate.evaluate(model, params, tok, test, [], [0])
  summed, per_token = [], []
  for ex in test:
    scores = [plain_logprob(model, params, list(tok.encode(ex['context'] + c)), len(c)) for c in ex['choices']]
    summed.append(int(np.argmax(scores)) == ex['label'])
    per_token.append(int(np.argmax([s / len(c) for s, c in zip(scores, ex['choices'])])) == ex['label'])
  assert row['accuracy_sum'] == np.mean(summed) and row['accuracy_per_token'] == np.mean(per_token)
  assert row['chance'] == pytest.approx(1 / 3) and row['shots'] == 0 and row['examples'] == 4


class Copier:
  """A decoder by hand that predicts whatever followed the current token where it last occurred
  (an induction head): logit 5 on that token, 0 on every other; nothing seen, a tie."""

  def __init__(self, vocab_size, max_len=64):
    self.cfg, self.vocab_size = TransformerConfig(max_len=max_len, vocab_size=vocab_size), vocab_size

  def apply(self, variables, inputs):                                    # (B, T) -> (B, T, V)
    del variables
    t = inputs.shape[1]
    same = inputs[:, :, None] == inputs[:, None, :]                       # (B, T, S): token t is token s
    earlier = jnp.arange(t)[None, :] < jnp.arange(t)[:, None]             # (T, S): s before t
    after = jax.nn.one_hot(jnp.roll(inputs, -1, axis=1), self.vocab_size)  # (B, S, V): the token after s
    return 5.0 * jnp.einsum('bts,bsv->btv', (same & earlier).astype(jnp.float32), after)


class Chars:
  alphabet = '#abpq:\n'

  def encode(self, text):
    return np.asarray([self.alphabet.index(c) for c in text], np.int32)


def test_k_shot_prompts_hold_k_examples_and_change_the_answer(monkeypatch):
  # The answer after "q:" is "b" in every demonstration; with none, the two choices tie and the
  # first ("a", wrong) is taken. So K = 0 must score 0 and every K > 0 must score 1.
  train = [{'context': f'{c}q:', 'choices': ['a', 'b'], 'label': 1} for c in 'ap']
  test = [{'context': 'q:', 'choices': ['a', 'b'], 'label': 1}] * 3
  contexts, score = [], evaluate.continuation_logprobs

  def spy(model, params, requests):
    contexts.append([''.join(Chars.alphabet[i] for i in ctx) for ctx, _ in requests])
    return score(model, params, requests)

  monkeypatch.setattr(evaluate, 'continuation_logprobs', spy)
  rows = evaluate.evaluate(Copier(len(Chars.alphabet)), {}, Chars(), test, train, [0, 1, 2])
  assert [(r['shots'], r['accuracy_sum'], r['accuracy_per_token']) for r in rows] == [(0, 0, 0), (1, 1, 1), (2, 1, 1)]
  for k, prompts in zip([0, 1, 2], contexts):
    assert len(prompts) == 2 * len(test)                               # each choice of each example
    for prompt in prompts:
      *shown, query = prompt.split('\n')
      assert query == 'q:' and len(shown) == k and set(shown) <= {'aq:b', 'pq:b'} and len(set(shown)) == k


def test_rouge_on_hand_worked_examples():
  r = summarize.rouge('The cat sat on the mat.', 'the cat is on the mat')
  assert r['rouge1'] == pytest.approx({'recall': 5 / 6, 'precision': 5 / 6, 'f1': 5 / 6})
  assert r['rouge2'] == pytest.approx({'recall': 3 / 5, 'precision': 3 / 5, 'f1': 3 / 5})
  assert r['rougeL'] == pytest.approx({'recall': 5 / 6, 'precision': 5 / 6, 'f1': 5 / 6})
  short = summarize.rouge('the cat', 'the cat sat on the mat')
  assert short['rouge1'] == pytest.approx({'recall': 2 / 6, 'precision': 1.0, 'f1': 0.5})
  assert short['rouge2'] == pytest.approx({'recall': 1 / 5, 'precision': 1.0, 'f1': 1 / 3})
  # Lin (2004), section 3: against "police killed the gunman", S2 has LCS 3, S3 only 2.
  assert summarize.rouge_l('police kill the gunman', 'police killed the gunman')['f1'] == pytest.approx(3 / 4)
  assert summarize.rouge_l('the gunman kill police', 'police killed the gunman')['f1'] == pytest.approx(2 / 4)
  assert summarize.rouge_n('the the the', 'the cat', 1) == pytest.approx({'recall': 1 / 2, 'precision': 1 / 3,
                                                                          'f1': 0.4})   # clipped counts
  assert summarize.rouge_n('', 'the cat', 2)['f1'] == 0.0
  assert summarize.first_sentences('One. Two!  Three?\nFour. Five') == 'One. Two! Three?'
  assert summarize.first_sentences('no end in sight') == 'no end in sight'


@pytest.fixture(scope='module')
def trained(corpus, tmp_path_factory):
  """A tiny character-level GPT trained a few steps, and its corpus text."""
  workdir = str(tmp_path_factory.mktemp('fewshot') / 'run')
  trainer.train_and_evaluate(tiny_config(corpus), workdir)
  with open(corpus) as f:
    return workdir, f.read()


def write_jsonl(path, rows):
  with open(path, 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in rows)
  return str(path)


def test_fewshot_command_end_to_end(trained, tmp_path, capsys):
  workdir, text = trained
  # Contexts and choices cut from the corpus, so every character is in the tokenizer's alphabet.
  rows = [{'context': text[i:i + 20], 'choices': [text[i + 20:i + 24], text[i + 500:i + 510]], 'label': 0}
          for i in range(0, 3000, 200)]
  # Two free-form rows in the test file, scored by greedy exact match: one whose target is what
  # the model decodes (found here the way the command decodes it, for the longest target + 2
  # tokens), one whose target it does not.
  import ssl_jax  # pylint: disable=import-outside-toplevel
  model = ssl_jax.load(workdir)
  miss = {'context': text[100:120], 'target': text[120:126]}
  contexts = [text[i:i + 20] for i in range(0, 20000, 97)]
  decoded = generate.complete(model.setup.model, model.params, model.tokenizer,
                              [evaluate.build_prompt({'context': c, 'target': ''}, []) for c in contexts],
                              len(model.encode(miss['target'])) + 2, stop=['\n'], temperature=0.0)
  # A context whose greedy answer ends (a newline, or spaces) within the tokens the command decodes.
  found = [(c, d.strip()) for c, d in zip(contexts, decoded)
           if 0 < len(model.encode(d.strip())) <= len(model.encode(miss['target'])) and d.strip() != miss['target']]
  assert found, decoded[:5]
  hit = {'context': found[0][0], 'target': found[0][1]}
  task = write_jsonl(tmp_path / 'task.jsonl', rows[:8] + [hit, miss])
  train_file = write_jsonl(tmp_path / 'train.jsonl', rows[8:])
  cli.run('fewshot', '', [], config_given=False, workdir=workdir, task_file=task, train_file=train_file,
          shots='0,1,2')
  out = capsys.readouterr().out
  assert 'accuracy_sum' in out and 'accuracy_per_token' in out
  with open(os.path.join(workdir, 'fewshot_task.json')) as f:
    results = json.load(f)['results']
  assert [r['shots'] for r in results] == [0, 1, 2]
  assert all(0 <= r['accuracy_sum'] <= 1 and 0 <= r['accuracy_per_token'] <= 1 for r in results)
  assert results[0]['accuracy'] == 0.5 and all(r['accuracy'] in (0.0, 0.5, 1.0) for r in results)
  assert all(r['examples'] == 10 for r in results)
  assert os.path.getsize(os.path.join(workdir, 'fewshot_task.png')) > 0


def test_summarize_command_writes_summaries_and_rouge(trained, tmp_path):
  workdir, text = trained
  if not all(c in text for c in summarize.PROMPT_SUFFIX):
    pytest.skip('the generated fallback corpus lacks the characters of "TL;DR:"')
  rows = [{'article': text[i:i + 200], 'reference': text[i + 200:i + 260]} for i in (0, 1000)]
  cli.run('summarize', '', [], config_given=False, workdir=workdir, input_file=write_jsonl(tmp_path / 'a.jsonl', rows))
  with open(os.path.join(workdir, 'rouge.json')) as f:
    result = json.load(f)
  with open(os.path.join(workdir, 'summaries.jsonl')) as f:
    records = [json.loads(line) for line in f]
  assert result['articles'] == 2 and result['scored'] == 2 and len(records) == 2
  # rouge.json holds the means of the summaries' scores against their references (sentences
  # one a line), plain and stemmed, each side by side.
  for name in ('rouge1', 'rouge2', 'rougeL', 'rougeLsum'):
    for stem, key in ((False, f'{name}_f1'), (True, f'{name}_f1_stemmed')):
      scores = [summarize.rouge(summarize.one_sentence_a_line(r['summary']),
                                summarize.one_sentence_a_line(row['reference']), stem=stem)[name]['f1']
                for r, row in zip(records, rows)]
      assert result[key] == pytest.approx(np.mean(scores), abs=1e-12)
      assert [r['rouge_stemmed' if stem else 'rouge'][name]['f1'] for r in records] == scores


def test_generate_command_cuts_at_stop_strings(trained, capsys):
  workdir, text = trained
  prompt = text[:30]
  cli.run('generate', '', [], config_given=False, workdir=workdir, prompt=prompt, max_new_tokens=60,
          temperature=1.0, top_k=0, top_p=0.9, stop=['\n', 'e'])
  printed = capsys.readouterr().out.split(prompt, 1)[1]
  assert '\n' not in printed.rstrip('\n') and 'e' not in printed
