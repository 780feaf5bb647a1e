"""Readers of document-structured text: lists of documents, each a list of sentences.

  plain text  one sentence per line (longer lines are split after . ! ?), a blank line
              between documents (google-research/bert's pretraining input format)
  CoNLL-U     `# newdoc` starts a document, `# text = ...` is a sentence
"""

import re
from typing import List, Sequence

from ssl_jax.data.text import DataError, read_text

Document = List[str]
_SENTENCE_END = re.compile(r'(?<=[.!?])\s+(?=\S)')


def split_sentences(line: str) -> List[str]:
  return [s.strip() for s in _SENTENCE_END.split(line) if s.strip()]


def read_plain(text: str) -> List[Document]:
  docs, current = [], []
  for line in text.splitlines():
    if not line.strip():
      if current:
        docs.append(current)
        current = []
      continue
    current.extend(split_sentences(line))
  if current:
    docs.append(current)
  return docs


def read_conllu(text: str) -> List[Document]:
  docs, current = [], []
  for line in text.splitlines():
    if line.startswith('# newdoc'):
      if current:
        docs.append(current)
      current = []
    elif line.startswith('# text ='):
      sentence = line[len('# text ='):].strip()
      if sentence:
        current.append(sentence)
  if current:
    docs.append(current)
  return docs


def read_documents(paths: Sequence[str], fmt: str = '', text_field: str = 'text') -> List[Document]:
  """All documents of `paths`: text files as above (by extension: .conllu or plain), and each
  JSONL / Parquet / Arrow row (data.format, data.text_field; ssl_jax/data/sources.py) one
  document, its sentences read as plain text's."""
  from ssl_jax.data import sources  # pylint: disable=import-outside-toplevel
  docs = []
  for path in paths:
    kind = sources.format_of(path, fmt)
    if kind != 'text':
      for row in sources.iter_documents([path], kind, text_field):
        docs.extend(d for d in [sum(read_plain(row), [])] if d)
      continue
    text = read_text(path) if not sources.compression_of(path) and not sources.is_url(path) else \
        ''.join(sources.iter_documents([path], kind))
    found = read_conllu(text) if path.endswith('.conllu') else read_plain(text)
    docs.extend(found)
  if not docs:
    raise DataError(f'empty corpus: no sentences in {", ".join(paths[:3])}')
  return docs
