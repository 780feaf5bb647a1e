"""TL;DR summarisation by prompting alone (GPT-2, Radford et al. 2019, section 3.6), and ROUGE.

The recipe is the paper's: "\\nTL;DR:" after the article, 100 tokens sampled with top-k 2
(temperature 1), the first 3 sentences of what comes out kept as the summary.

ROUGE (Lin 2004) is written out here: text is lower-cased and split into runs of letters
and digits; ROUGE-N counts the n-grams a summary shares with the reference (each counted
at most as often as it occurs in both), ROUGE-L the longest common subsequence of tokens.
Each gives recall (over the reference), precision (over the summary) and F1.

  python run.py summarize --workdir W --input ARTICLES.jsonl    # {"article": ..., "reference": ...} a line
"""

import collections
import json
import os
import re
from typing import Dict, List, Sequence

import jax
import numpy as np

from ssl_jax import generate
from ssl_jax.data.text import DataError

PROMPT_SUFFIX = '\nTL;DR:'
NEW_TOKENS = 100
TOP_K = 2
SENTENCES = 3


def words(text: str) -> List[str]:
  return re.findall(r'[a-z0-9]+', text.lower())


def _scores(overlap: int, reference_total: int, summary_total: int) -> Dict[str, float]:
  recall = overlap / reference_total if reference_total else 0.0
  precision = overlap / summary_total if summary_total else 0.0
  f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
  return {'recall': recall, 'precision': precision, 'f1': f1}


def rouge_n(summary: str, reference: str, n: int) -> Dict[str, float]:
  """Shared n-grams, clipped to the smaller count of each, over the reference's and summary's."""
  def grams(tokens):
    return collections.Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
  s, r = grams(words(summary)), grams(words(reference))
  return _scores(sum((s & r).values()), sum(r.values()), sum(s.values()))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
  """Length of the longest common subsequence (dynamic programming, one row at a time)."""
  previous = [0] * (len(b) + 1)
  for x in a:
    current = [0]
    for j, y in enumerate(b):
      current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
    previous = current
  return previous[-1]


def rouge_l(summary: str, reference: str) -> Dict[str, float]:
  s, r = words(summary), words(reference)
  return _scores(lcs_length(s, r), len(r), len(s))


def rouge(summary: str, reference: str) -> Dict[str, Dict[str, float]]:
  return {'rouge1': rouge_n(summary, reference, 1), 'rouge2': rouge_n(summary, reference, 2),
          'rougeL': rouge_l(summary, reference)}


def first_sentences(text: str, count: int = SENTENCES) -> str:
  """The first `count` sentences (ended by . ! or ?, or the text's end), on one line."""
  sentences = re.findall(r'[^.!?]*[.!?]+|[^.!?]+$', ' '.join(text.split()))
  return ' '.join(s.strip() for s in sentences[:count] if s.strip())


def summarize(model, params, tokenizer, articles: Sequence[str], seed: int = 0) -> List[str]:
  """One summary per article: the TL;DR recipe above (long articles keep their end)."""
  texts = generate.complete(model, params, tokenizer, [a + PROMPT_SUFFIX for a in articles], NEW_TOKENS,
                            temperature=1.0, top_k=TOP_K, seed=seed)
  return [first_sentences(t) for t in texts]


def read_articles(path: str) -> List[dict]:
  if not path or not os.path.isfile(path):
    raise DataError(f'--input {path!r} does not exist (a JSONL of "article" and optional "reference")')
  rows = []
  with open(path, encoding='utf-8') as f:
    for n, line in enumerate(f, 1):
      if line.strip():
        row = json.loads(line)
        if not isinstance(row.get('article'), str):
          raise DataError(f'{path}:{n}: no "article" string')
        rows.append(row)
  if not rows:
    raise DataError(f'{path} holds no articles')
  return rows


def summarize_command(setup, params, input_file: str, workdir: str) -> dict:
  """`run.py summarize`: summaries.jsonl (and the mean ROUGE F1s, where references exist) in the workdir."""
  rows = read_articles(input_file)
  summaries = summarize(setup.model, jax.device_get(params), setup.data.tokenizer, [r['article'] for r in rows],
                        seed=setup.config.seed)
  scored = []
  with open(os.path.join(workdir, 'summaries.jsonl'), 'w', encoding='utf-8') as f:
    for row, summary in zip(rows, summaries):
      record = {'summary': summary}
      if isinstance(row.get('reference'), str):
        record['rouge'] = rouge(summary, row['reference'])
        scored.append(record['rouge'])
      f.write(json.dumps(record) + '\n')
      print(f'TL;DR: {summary}', flush=True)
  result = {'articles': len(rows), 'scored': len(scored)}
  for name in ('rouge1', 'rouge2', 'rougeL'):
    if scored:
      result[f'{name}_f1'] = float(np.mean([s[name]['f1'] for s in scored]))
  with open(os.path.join(workdir, 'rouge.json'), 'w') as f:
    json.dump(result, f, indent=2)
  print(json.dumps(result), flush=True)
  return result
