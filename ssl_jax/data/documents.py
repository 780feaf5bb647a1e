"""Readers of document-structured text: documents, each a list of sentences, streamed.

  plain text  one sentence per line (longer lines are split after . ! ?), a blank line
              between documents (google-research/bert's pretraining input format)
  CoNLL-U     `# newdoc` starts a document, `# text = ...` is a sentence
  JSONL, Parquet, Arrow   each row one document, its sentences read as plain text's

A text file is read line by line (ssl_jax/data/sources.py), never whole: a document is the
most that is held at once.
"""

import re
from typing import Iterable, Iterator, List, Sequence

from ssl_jax.data import sources
from ssl_jax.data.text import DataError

Document = List[str]
_SENTENCE_END = re.compile(r'(?<=[.!?])\s+(?=\S)')


def split_sentences(line: str) -> List[str]:
  return [s.strip() for s in _SENTENCE_END.split(line) if s.strip()]


def _plain(lines: Iterable[str]) -> Iterator[Document]:
  current = []
  for line in lines:
    if not line.strip():
      if current:
        yield current
        current = []
      continue
    current.extend(split_sentences(line))
  if current:
    yield current


def _conllu(lines: Iterable[str]) -> Iterator[Document]:
  current = []
  for line in lines:
    if line.startswith('# newdoc'):
      if current:
        yield current
      current = []
    elif line.startswith('# text ='):
      sentence = line[len('# text ='):].strip()
      if sentence:
        current.append(sentence)
  if current:
    yield current


def read_plain(text: str) -> List[Document]:
  return list(_plain(text.splitlines()))


def read_conllu(text: str) -> List[Document]:
  return list(_conllu(text.splitlines()))


def unit_documents(unit, text_field: str = 'text') -> Iterator[Document]:
  """The documents of one source unit (sources.Unit): a text unit must be a whole file (its
  documents may span any byte range), a JSONL/Parquet/Arrow unit any range of rows."""
  if unit.format != 'text':
    for row in sources.documents(unit, text_field):
      doc = [s for d in _plain(row.splitlines()) for s in d]
      if doc:
        yield doc
    return
  lines = text_lines(sources.documents(unit, separator=False))
  yield from (_conllu(lines) if is_conllu(unit.path) else _plain(lines))


def is_conllu(path: str) -> bool:
  """CoNLL-U by its extension, whatever the compression after it (en_ewt-ud-train.conllu.gz)."""
  compression = sources.compression_of(path)
  return path[:len(path) - len(compression)].lower().endswith('.conllu')


def text_lines(pieces: Iterable[str]) -> Iterator[str]:
  """The lines (str.splitlines) of a text read in pieces: a piece may end inside a long line
  (sources.py reads in bounded blocks), whose start waits for the rest."""
  rest = ''
  for piece in pieces:
    lines = (rest + piece).splitlines(keepends=True)
    rest = lines.pop() if lines and lines[-1].splitlines()[0] == lines[-1] else ''
    yield from (line.splitlines()[0] for line in lines)
  if rest:
    yield rest


def iter_documents(paths: Sequence[str], fmt: str = '', text_field: str = 'text') -> Iterator[Document]:
  for unit in sources.units(paths, fmt, split_text=False):
    yield from unit_documents(unit, text_field)


def read_documents(paths: Sequence[str], fmt: str = '', text_field: str = 'text') -> List[Document]:
  """All documents of `paths` in memory (small corpora and tests; training reads them from
  the token cache, ssl_jax/data/shards.py)."""
  docs = list(iter_documents(paths, fmt, text_field))
  if not docs:
    raise DataError(f'empty corpus: no sentences in {", ".join(paths[:3])}')
  return docs
