"""TL;DR summarisation by prompting alone (GPT-2, Radford et al. 2019, section 3.6), and ROUGE.

The recipe is the paper's: "\\nTL;DR:" after the article, 100 tokens sampled with top-k 2
(temperature 1), the first 3 sentences of what comes out kept as the summary.

ROUGE (Lin 2004) is written out here, as Google's `rouge-score` package (the figures papers
report) computes it: text is lower-cased and split into runs of letters and digits, words of
more than 3 letters optionally Porter-stemmed (`stem=True`, its `use_stemmer`; `porter.py`).
ROUGE-N counts the n-grams a summary shares with the reference (each counted at most as often
as it occurs in both), ROUGE-L the longest common subsequence of the two token lists, and
ROUGE-Lsum, summary-level ROUGE-L, the union of the LCSs of each reference line with every
summary line (lines are sentences: one a line), each token counted at most as often as it
occurs in both. Each gives recall (over the reference), precision (over the summary) and F1.

  python run.py summarize --workdir W --input ARTICLES.jsonl    # {"article": ..., "reference": ...} a line
"""

import collections
import json
import os
import re
from typing import Dict, List, Sequence

import jax
import numpy as np

from ssl_jax import generate, porter, storage
from ssl_jax.data import sources
from ssl_jax.data.text import DataError

PROMPT_SUFFIX = '\nTL;DR:'
NEW_TOKENS = 100
TOP_K = 2
SENTENCES = 3


def words(text: str, stem: bool = False) -> List[str]:
  tokens = re.findall(r'[a-z0-9]+', text.lower())
  return [porter.stem(t) if len(t) > 3 else t for t in tokens] if stem else tokens


def _scores(overlap: int, reference_total: int, summary_total: int) -> Dict[str, float]:
  recall = overlap / reference_total if reference_total else 0.0
  precision = overlap / summary_total if summary_total else 0.0
  f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
  return {'recall': recall, 'precision': precision, 'f1': f1}


def rouge_n(summary: str, reference: str, n: int, stem: bool = False) -> Dict[str, float]:
  """Shared n-grams, clipped to the smaller count of each, over the reference's and summary's."""
  def grams(tokens):
    return collections.Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
  s, r = grams(words(summary, stem)), grams(words(reference, stem))
  return _scores(sum((s & r).values()), sum(r.values()), sum(s.values()))


def lcs_table(a: Sequence[str], b: Sequence[str]) -> List[List[int]]:
  """table[i][j]: the length of the longest common subsequence of a[:i] and b[:j]."""
  table = [[0] * (len(b) + 1)]
  for x in a:
    previous, current = table[-1], [0]
    for j, y in enumerate(b):
      current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
    table.append(current)
  return table


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
  return lcs_table(a, b)[-1][-1]


def lcs_positions(a: Sequence[str], b: Sequence[str]) -> List[int]:
  """Positions in a of one longest common subsequence with b, read back from the end; on a tie
  the walk drops a's token (ROUGE-1.5.5's choice, which decides the union in ROUGE-Lsum)."""
  table, i, j, positions = lcs_table(a, b), len(a), len(b), []
  while i and j:
    if a[i - 1] == b[j - 1]:
      i, j = i - 1, j - 1
      positions.append(i)
    elif table[i][j - 1] > table[i - 1][j]:
      j -= 1
    else:
      i -= 1
  return positions[::-1]


def rouge_l(summary: str, reference: str, stem: bool = False) -> Dict[str, float]:
  s, r = words(summary, stem), words(reference, stem)
  return _scores(lcs_length(s, r), len(r), len(s))


def rouge_lsum(summary: str, reference: str, stem: bool = False) -> Dict[str, float]:
  """Summary-level ROUGE-L over the texts' lines (Lin 2004, section 3.2; ROUGE-1.5.5's counting)."""
  summary_lines = [words(line, stem) for line in summary.split('\n') if line]
  reference_lines = [words(line, stem) for line in reference.split('\n') if line]
  summary_left = collections.Counter(t for line in summary_lines for t in line)
  reference_left = collections.Counter(t for line in reference_lines for t in line)
  hits = 0
  for line in reference_lines:
    union = sorted(set().union(*[lcs_positions(line, other) for other in summary_lines]))
    for token in (line[i] for i in union):
      if summary_left[token] > 0 and reference_left[token] > 0:  # no token counted twice
        hits += 1
        summary_left[token] -= 1
        reference_left[token] -= 1
  return _scores(hits, sum(len(line) for line in reference_lines), sum(len(line) for line in summary_lines))


def rouge(summary: str, reference: str, stem: bool = False) -> Dict[str, Dict[str, float]]:
  """ROUGE-1, -2, -L and -Lsum (sentences one a line for Lsum) of a summary against its reference."""
  return {'rouge1': rouge_n(summary, reference, 1, stem), 'rouge2': rouge_n(summary, reference, 2, stem),
          'rougeL': rouge_l(summary, reference, stem), 'rougeLsum': rouge_lsum(summary, reference, stem)}


def sentences(text: str) -> List[str]:
  """The sentences of a text (ended by . ! or ?, or the text's end), whitespace collapsed."""
  return [s.strip() for s in re.findall(r'[^.!?]*[.!?]+|[^.!?]+$', ' '.join(text.split())) if s.strip()]


def first_sentences(text: str, count: int = SENTENCES) -> str:
  """The first `count` sentences (ended by . ! or ?, or the text's end), on one line."""
  return ' '.join(sentences(text)[:count])


def summarize(model, params, tokenizer, articles: Sequence[str], seed: int = 0) -> List[str]:
  """One summary per article: the TL;DR recipe above (long articles keep their end)."""
  texts = generate.complete(model, params, tokenizer, [a + PROMPT_SUFFIX for a in articles], NEW_TOKENS,
                            temperature=1.0, top_k=TOP_K, seed=seed)
  return [first_sentences(t) for t in texts]


def read_articles(path: str) -> List[dict]:
  if not path or not (storage.exists(path) if storage.is_url(path) else os.path.isfile(path)):
    raise DataError(f'--input {path!r} does not exist (a JSONL of "article" and optional "reference")')
  rows = []
  for where, row in sources.jsonl_rows(path):   # a local path or a URL
    if not isinstance(row.get('article'), str):
      raise DataError(f'{where}: no "article" string')
    rows.append(row)
  if not rows:
    raise DataError(f'{path} holds no articles')
  return rows


def one_sentence_a_line(text: str) -> str:
  """What ROUGE-Lsum reads: each line of the text split into its sentences, one a line."""
  return '\n'.join(s for line in text.split('\n') for s in sentences(line))


def summarize_command(setup, params, input_file: str, workdir: str) -> dict:
  """`run.py summarize`: summaries.jsonl and, where references exist, rouge.json: the mean ROUGE
  F1s, plain (`rouge1_f1`, ...) and Porter-stemmed (`rouge1_f1_stemmed`, ..., as papers report)."""
  rows = read_articles(input_file)
  summaries = summarize(setup.model, jax.device_get(params), setup.tokenizer, [r['article'] for r in rows],
                        seed=setup.config.seed)
  scored, lines = [], []
  for row, summary in zip(rows, summaries):
    record = {'summary': summary}
    if isinstance(row.get('reference'), str):
      pair = one_sentence_a_line(summary), one_sentence_a_line(row['reference'])
      record['rouge'], record['rouge_stemmed'] = rouge(*pair), rouge(*pair, stem=True)
      scored.append(record)
    lines.append(json.dumps(record) + '\n')
    print(f'TL;DR: {summary}', flush=True)
  storage.write_text(storage.join(workdir, 'summaries.jsonl'), ''.join(lines))   # whole: the workdir may be a URL
  result = {'articles': len(rows), 'scored': len(scored)}
  if scored:
    for name in ('rouge1', 'rouge2', 'rougeL', 'rougeLsum'):
      result[f'{name}_f1'] = float(np.mean([r['rouge'][name]['f1'] for r in scored]))
      result[f'{name}_f1_stemmed'] = float(np.mean([r['rouge_stemmed'][name]['f1'] for r in scored]))
  storage.write_text(storage.join(workdir, 'rouge.json'), json.dumps(result, indent=2))
  print(json.dumps(result), flush=True)
  return result
