"""Extractive question answering data (SQuAD v1.1 and v2.0 JSON): reading, windowing, decoding.

A context longer than a row is cut into windows of `seq_len - len(question) - 3` tokens,
each `doc_stride` tokens after the last; every row is `[CLS] question [SEP] window [SEP]`.
Each context token keeps the character span it came from, so a predicted token span maps
back to exact character offsets of the original context. An answer outside a window, and
an unanswerable question (v2.0), point at [CLS] (position 0).
"""

import dataclasses
import json
import re
import string
import unicodedata
from collections import Counter
from typing import List, Tuple

import numpy as np

from ssl_jax.data.text import DataError


@dataclasses.dataclass
class Example:
  id: str
  question: str
  context: str
  answers: List[Tuple[str, int]]     # (text, character start); empty when unanswerable
  impossible: bool = False


def read_squad(path: str) -> List[Example]:
  try:
    with open(path, encoding='utf-8') as f:
      data = json.load(f)['data']
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise DataError(f'{path}: not a SQuAD-style JSON file ({type(e).__name__}: {e})') from None
  examples = []
  try:
    for article in data:
      for paragraph in article['paragraphs']:
        context = _string(paragraph['context'])
        for qa in paragraph['qas']:
          answers = [(_string(a['text']), int(a['answer_start'])) for a in qa.get('answers', [])]
          for text, start in answers:
            if not 0 <= start <= len(context) - len(text) or context[start:start + len(text)] != text:
              raise DataError(f'{path}: question {qa["id"]}: answer {text!r} is not at character {start} '
                              'of its context')
          examples.append(Example(str(qa['id']), _string(qa['question']), context, answers,
                                  bool(qa.get('is_impossible', False)) or not answers))
  except DataError:
    raise
  except (KeyError, TypeError, ValueError, AttributeError) as e:
    raise DataError(f'{path}: not SQuAD-style data (data / paragraphs / context, qas / id, question, '
                    f'answers): {type(e).__name__}: {e}') from None
  if not examples:
    raise DataError(f'{path}: no questions')
  return examples


def _string(value) -> str:
  if not isinstance(value, str):
    raise TypeError(f'expected a string, got {value!r:.40}')
  return value


# Tokens with the character spans they came from.

def _wordpiece_spans(tokenizer, word: str):
  """(id, start, end) of each WordPiece of one whitespace-free word, spans within the word."""
  norm, where = [], []
  for i, ch in enumerate(word):
    c = ch.lower() if tokenizer.lowercase else ch
    if tokenizer.strip_accents:
      c = ''.join(x for x in unicodedata.normalize('NFD', c) if unicodedata.category(x) != 'Mn')
    norm.extend(c)
    where.extend([i] * len(c))
  norm = ''.join(norm)
  out, position = [], 0
  for basic in tokenizer._basic_split(word):  # pylint: disable=protected-access
    found = norm.find(basic, position)
    pieces = tokenizer._wordpiece(basic)   # pylint: disable=protected-access
    if found < 0:                          # normalisation changed the length: the whole word then
      return [(tokenizer.piece_id(p), 0, len(word)) for b in tokenizer._basic_split(word)  # pylint: disable=protected-access
              for p in tokenizer._wordpiece(b)]  # pylint: disable=protected-access
    a = found
    for piece in pieces:
      length = len(basic) if piece == '[UNK]' else len(piece) - (2 if piece.startswith('##') else 0)
      out.append((tokenizer.piece_id(piece), where[a], where[a + length - 1] + 1))
      a += length
    position = found + len(basic)
  return out


def _plain_spans(tokenizer, word: str):
  """Sentencepiece or characters: pieces whose texts spell the word (identity normalisation);
  otherwise every piece spans the whole word."""
  ids = [int(i) for i in tokenizer.encode(word)]
  if tokenizer.kind == 'char':
    texts = [tokenizer.decode([i]) for i in ids]
  else:
    texts = [tokenizer.sp.id_to_piece(i).replace('\u2581', '') for i in ids]
  if ''.join(texts) != word:
    return [(i, 0, len(word)) for i in ids]
  out, a = [], 0
  for i, t in zip(ids, texts):   # a bare word-start piece spans nothing: (a, a)
    out.append((i, a, a + len(t)))
    a += len(t)
  return out


def tokens_with_spans(tokenizer, text: str):
  """(ids, starts, ends): the text's tokens and their character spans [start, end) in `text`."""
  spans = _wordpiece_spans if tokenizer.kind == 'wordpiece' else _plain_spans
  ids, starts, ends = [], [], []
  for match in re.finditer(r'\S+', text):
    for i, s, e in spans(tokenizer, match.group()):
      ids.append(i)
      starts.append(match.start() + s)
      ends.append(match.start() + e)
  return np.asarray(ids, np.int32), np.asarray(starts, np.int32), np.asarray(ends, np.int32)


@dataclasses.dataclass
class Features:
  arrays: dict                 # tokens, segments, padding, start_positions, end_positions (rows)
  example_index: np.ndarray    # (rows,) which example each row is a window of
  char_start: np.ndarray       # (rows, seq_len) character span of each context token; -1 elsewhere
  char_end: np.ndarray


def make_features(examples: List[Example], tokenizer, seq_len: int, doc_stride: int, max_query: int = 64) -> Features:
  cls, sep, pad = (tokenizer.piece_id(p) for p in ('[CLS]', '[SEP]', '[PAD]'))
  rows, example_index, char_start, char_end = [], [], [], []
  for e_index, ex in enumerate(examples):
    question = list(tokenizer.encode(ex.question))[:max_query]
    ids, starts, ends = tokens_with_spans(tokenizer, ex.context)
    room = seq_len - len(question) - 3
    if room <= 0:
      raise DataError(f'data.seq_len={seq_len} leaves no room for a context after a {len(question)}-token question')
    window = 0
    while True:
      stop = min(window + room, len(ids))
      body = ids[window:stop]
      tokens = np.full(seq_len, pad, np.int32)
      row = [cls] + question + [sep] + body.tolist() + [sep]
      tokens[:len(row)] = row
      offset = len(question) + 2
      segments = np.zeros(seq_len, np.int32)
      segments[offset:len(row)] = 1
      c_start, c_end = np.full(seq_len, -1, np.int32), np.full(seq_len, -1, np.int32)
      c_start[offset:offset + len(body)], c_end[offset:offset + len(body)] = starts[window:stop], ends[window:stop]
      start_pos = end_pos = 0
      if not ex.impossible:
        text, a = ex.answers[0]
        b = a + len(text)
        inside = np.nonzero((ends[window:stop] > a) & (starts[window:stop] < b))[0]
        if len(inside) and starts[window + inside[0]] <= a and ends[window + inside[-1]] >= b:
          start_pos, end_pos = offset + inside[0], offset + inside[-1]
      rows.append((tokens, segments, start_pos, end_pos))
      example_index.append(e_index)
      char_start.append(c_start)
      char_end.append(c_end)
      if stop >= len(ids):
        break
      window += doc_stride
  tokens, segments, starts_, ends_ = (np.stack([r[i] for r in rows]) for i in range(4))
  arrays = {'tokens': tokens, 'segments': segments, 'padding': tokens != pad,
            'start_positions': starts_.astype(np.int32), 'end_positions': ends_.astype(np.int32)}
  return Features(arrays, np.asarray(example_index), np.stack(char_start), np.stack(char_end))


def decode(examples: List[Example], features: Features, start_logits: np.ndarray, end_logits: np.ndarray,
           max_answer_len: int = 30, allow_impossible: bool = False, best_k: int = 20) -> List[str]:
  """The predicted answer text of each example: the best valid span over its windows (start <=
  end, at most max_answer_len tokens, inside the context); with allow_impossible, '' when
  [CLS]'s score (start + end logits at 0) beats it, as BERT's SQuAD 2.0 recipe does."""
  best: List[Tuple[float, str]] = [(-np.inf, '') for _ in examples]
  null: List[float] = [np.inf for _ in examples]
  for row, e_index in enumerate(features.example_index):
    s_log, e_log, cs, ce = start_logits[row], end_logits[row], features.char_start[row], features.char_end[row]
    null[e_index] = min(null[e_index], float(s_log[0] + e_log[0]))
    context = cs >= 0
    starts = [i for i in np.argsort(-s_log)[:best_k] if context[i]]
    ends = [i for i in np.argsort(-e_log)[:best_k] if context[i]]
    for i in starts:
      for j in ends:
        if i <= j < i + max_answer_len and s_log[i] + e_log[j] > best[e_index][0]:
          best[e_index] = (float(s_log[i] + e_log[j]), examples[e_index].context[cs[i]:ce[j]])
  return ['' if allow_impossible and null[k] > best[k][0] else best[k][1] for k in range(len(examples))]


# SQuAD's official metrics.

def normalize_answer(text: str) -> str:
  text = ''.join(ch for ch in text.lower() if ch not in set(string.punctuation))
  text = re.sub(r'\b(a|an|the)\b', ' ', text)
  return ' '.join(text.split())


def f1_score(prediction: str, truth: str) -> float:
  p, t = normalize_answer(prediction).split(), normalize_answer(truth).split()
  if not p or not t:
    return float(p == t)
  common = sum((Counter(p) & Counter(t)).values())
  if not common:
    return 0.0
  precision, recall = common / len(p), common / len(t)
  return 2 * precision * recall / (precision + recall)


def score(examples: List[Example], predictions: List[str]) -> dict:
  """exact_match and f1 in percent; an unanswerable question's only right answer is ''."""
  em = f1 = 0.0
  for ex, prediction in zip(examples, predictions):
    truths = [t for t, _ in ex.answers] if not ex.impossible else ['']
    em += max(float(normalize_answer(prediction) == normalize_answer(t)) for t in truths)
    f1 += max(f1_score(prediction, t) for t in truths)
  n = max(len(examples), 1)
  return {'exact_match': 100 * em / n, 'f1': 100 * f1 / n}


def version_2(examples: List[Example]) -> bool:
  return any(ex.impossible for ex in examples)
